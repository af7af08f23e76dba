"""Answers the gateway gives itself, with no backend: model lists, health, readiness, status, usage, metrics, and the Ollama management endpoints."""

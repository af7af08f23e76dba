"""Surfaces served over the chat dialect: Anthropic Messages and OpenAI Responses."""

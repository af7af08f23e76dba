"""Ollama clients served by OpenAI-compatible backends: native ``/api/*`` requests -> ``/v1/*`` bodies, OpenAI answers and SSE streams -> native JSON and NDJSON."""

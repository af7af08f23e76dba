"""OpenAI clients served by Ollama backends: OpenAI requests -> native ``/api/*`` bodies, native answers and NDJSON streams -> OpenAI JSON and SSE."""

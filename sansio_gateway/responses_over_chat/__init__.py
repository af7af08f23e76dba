"""OpenAI Responses over the chat dialect: request, whole answer and stream translation."""

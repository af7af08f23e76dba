"""Where requests go: the model catalogue, backend kinds (the registry plugins extend), circuit breakers, and the retry and fallback policy."""

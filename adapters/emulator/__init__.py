"""Emulated backends (Ollama's native API, an OpenAI-compatible API) served over real HTTP.

``sansio-gateway emulate`` runs one from the command line, so a deployment or a client can be
tried with no model installed; the test suite and the benchmarks run the same code in-process.
They answer with canned text in the exact wire formats: everything but the model is real.
"""

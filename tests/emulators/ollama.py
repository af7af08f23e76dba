"""The emulated Ollama now ships as ``sansio_gateway.adapters.emulator.ollama``; this name stays
for the tests and benchmarks that import it or run ``python -m tests.emulators.ollama``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from sansio_gateway.adapters.emulator.command import run_emulate
from sansio_gateway.adapters.emulator.ollama import (
    OLLAMA_VERSION,
    EmulatorModel,
    Failure,
    OllamaEmulator,
    RecordedRequest,
    ScriptedReply,
    default_models,
    embedding_for,
    model_key,
    run_ollama_emulator,
    serve_ollama_emulator,
    token_chunks,
)

__all__ = [
    "OLLAMA_VERSION",
    "EmulatorModel",
    "Failure",
    "OllamaEmulator",
    "RecordedRequest",
    "ScriptedReply",
    "default_models",
    "embedding_for",
    "main",
    "model_key",
    "run_ollama_emulator",
    "serve_ollama_emulator",
    "token_chunks",
]


def main(argv: Sequence[str] | None = None) -> None:
    """The old command line: ``--fast`` both caches answers and coalesces unpaced streams, as
    the benchmarks measured it; ``sansio-gateway emulate`` offers the two separately."""
    parser = argparse.ArgumentParser(description="Emulated Ollama server for tests and benchmarks")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument("--fast", action="store_true")
    parser.add_argument("--tokens", type=int, default=None)
    args = parser.parse_args(argv)
    run_emulate(
        argparse.Namespace(
            kind="ollama", host=args.host, port=args.port, tokens=args.tokens,
            token_delay_ms=0.0, fail_rate=0.0, seed=None, fast=args.fast, coalesce=args.fast,
            api_key=None,
        )
    )  # fmt: skip


if __name__ == "__main__":
    main()

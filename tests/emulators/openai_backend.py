"""The emulated OpenAI-compatible server now ships as ``sansio_gateway.adapters.emulator.openai``;
this name stays for the tests that import it or run ``python -m tests.emulators.openai_backend``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from sansio_gateway.adapters.emulator.command import run_emulate
from sansio_gateway.adapters.emulator.openai import (
    EmulatorModel,
    Failure,
    OpenAIEmulator,
    RecordedRequest,
    ScriptedReply,
    default_models,
    embedding_for,
    run_openai_emulator,
)

__all__ = [
    "EmulatorModel",
    "Failure",
    "OpenAIEmulator",
    "RecordedRequest",
    "ScriptedReply",
    "default_models",
    "embedding_for",
    "main",
    "run_openai_emulator",
]


def main(argv: Sequence[str] | None = None) -> None:
    """The old command line; ``sansio-gateway emulate --kind openai`` is the shipped one."""
    parser = argparse.ArgumentParser(description="Emulated OpenAI-compatible server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", help="require this bearer key (default: none)")
    args = parser.parse_args(argv)
    run_emulate(
        argparse.Namespace(
            kind="openai", host=args.host, port=args.port, tokens=None,
            token_delay_ms=0.0, fail_rate=0.0, seed=None, fast=False, coalesce=False, api_key=args.api_key,
        )
    )  # fmt: skip


if __name__ == "__main__":
    main()

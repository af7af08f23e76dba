"""``sansio-gateway emulate``: an emulated backend from the command line.

It serves the same emulators the test suite uses, until Ctrl-C or SIGTERM, and prints the URL
it listens on (``--port 0`` picks a free port) and how to put the gateway in front of it.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
from typing import Any

import anyio

from .anthropic import AnthropicEmulator
from .anthropic import default_models as anthropic_models
from .ollama import OllamaEmulator, token_chunks
from .ollama import default_models as ollama_models
from .openai import OpenAIEmulator
from .openai import default_models as openai_models

__all__ = ["add_emulate_parser", "build_emulator"]

# Where each server listens by default.
_DEFAULT_PORTS = {"ollama": 11434, "openai": 8000, "anthropic": 8001}
Emulator = OllamaEmulator | OpenAIEmulator | AnthropicEmulator


def add_emulate_parser(sub: Any) -> None:
    """Add the ``emulate`` command to the CLI's subparsers."""
    emulate = sub.add_parser(
        "emulate",
        help="run an emulated Ollama, OpenAI-compatible or Anthropic backend (no model needed)",
        description="Serve an emulated backend with canned answers in the exact wire format.",
    )
    emulate.add_argument("--kind", choices=sorted(_DEFAULT_PORTS), default="ollama")
    emulate.add_argument("--host", default="127.0.0.1")
    emulate.add_argument(
        "--port",
        type=int,
        help="default 11434 (ollama), 8000 (openai) or 8001 (anthropic); 0 picks a free port",
    )
    emulate.add_argument(
        "--tokens", type=_non_negative_int, help="pieces per answer (default: a short sentence)"
    )
    emulate.add_argument(
        "--token-delay-ms",
        type=_non_negative_float,
        default=0.0,
        help="pause between a stream's tokens (default 0)",
    )
    emulate.add_argument(
        "--fail-rate",
        type=_rate,
        default=0.0,
        help="ollama, openai: fraction of generation requests that fail: 503 busy, 500,"
        " or a stream cut mid-way",
    )
    emulate.add_argument("--seed", type=int, help="seed the failures, for repeatable runs")
    emulate.add_argument(
        "--fast",
        action="store_true",
        help="ollama: cache rendered answers and skip the request log (benchmarks)",
    )
    emulate.add_argument(
        "--coalesce",
        action="store_true",
        help="ollama: send an unpaced stream as one HTTP chunk (default: one chunk per line)",
    )
    emulate.add_argument(
        "--api-key",
        help="openai: require this bearer key; anthropic: this x-api-key (default: none)",
    )
    emulate.set_defaults(func=run_emulate)


def build_emulator(args: argparse.Namespace) -> Emulator:
    delay = args.token_delay_ms / 1000
    if args.kind == "anthropic":
        models = anthropic_models()
        for model in models:
            if args.tokens is not None:
                model.reply.chunks = token_chunks(args.tokens)
            model.reply.delay_between_chunks = delay
        return AnthropicEmulator(models, api_key=args.api_key)
    if args.kind == "openai":
        return OpenAIEmulator(
            openai_models(args.tokens, delay),
            api_key=args.api_key,
            fail_rate=args.fail_rate,
            seed=args.seed,
        )
    # Nobody reads the request log of a foreground server; it would only grow.
    return OllamaEmulator(
        ollama_models(args.tokens, delay),
        fast=args.fast,
        coalesce=args.coalesce,
        record_requests=False,
        fail_rate=args.fail_rate,
        seed=args.seed,
    )


def run_emulate(args: argparse.Namespace) -> int:
    emulator = build_emulator(args)
    port = _DEFAULT_PORTS[args.kind] if args.port is None else args.port
    with contextlib.suppress(KeyboardInterrupt):  # a Ctrl-C before the signal handler is set
        anyio.run(_serve, emulator, args.kind, args.host, port)
    return 0


async def _serve(emulator: Emulator, kind: str, host: str, port: int) -> None:
    async with anyio.create_task_group() as tg:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            url = await tg.start(emulator.serve, host, port)
            if isinstance(emulator, OllamaEmulator):
                names = [model.full_name for model in emulator.models.values()]
            else:
                names = [model.id for model in emulator.models.values()]
            print(f"models: {', '.join(names)}", flush=True)
            if kind == "ollama":
                print(f"gateway: OLLAMA_HOST={url} sansio-gateway serve", flush=True)
            else:
                print(
                    f'gateway: a [[backends]] entry with kind = "{kind}", url = "{url}"',
                    flush=True,
                )
            # The last line: scripts wait for it (docs/quickstart.md).
            print(f"emulated {kind} listening on {url}", flush=True)
            async for signum in signals:
                print(f"{signal.Signals(signum).name}: stopping", flush=True)
                break
        tg.cancel_scope.cancel()
    print("stopped", flush=True)


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {text}")
    return value

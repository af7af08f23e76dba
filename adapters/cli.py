"""sansio-gateway: an LLM API gateway (OpenAI and Ollama APIs, keys, limits, usage).

Commands: serve, check-config, usage, new-key.  Guides: docs/quickstart.md,
docs/configuration.md, docs/deployment.md, docs/rate-limiting.md.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import secrets
import signal
import sys
from functools import partial
from pathlib import Path

import anyio

from sansio_gateway.accounting.usage_query import (
    UsageQuery,
    parse_time,
    render_csv,
    render_rows,
    render_table,
)
from sansio_gateway.auth import Authenticator, anonymous_bind_problem
from sansio_gateway.config import ConfigError, GatewayConfig, redact_url, sqlite_path
from sansio_gateway.errors import GatewayError

from .app import GatewayApp
from .emulator.command import add_emulate_parser
from .heap import settle_heap
from .ledger import open_ledger
from .metrics import BatchedStreamHandler, write_access_lines_to
from .rlimits import raise_open_file_limit
from .wiring import STARTUP_CHECK, ConfigSource, checked_config, load_config, with_overrides
from .workers import run_workers

__all__ = ["main"]


def _cmd_serve(args: argparse.Namespace) -> int:
    # Until the event loop handles SIGHUP (a reload), one must not end the
    # process; a change made meanwhile is found by the check once it listens.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    config = checked_config(args.config)
    updates: dict[str, object] = {}
    if args.host:
        updates["host"] = args.host
    if args.port is not None:
        updates["port"] = args.port
    if args.runtime:
        updates["runtime"] = args.runtime
    if args.transport:
        updates["transport"] = args.transport
    config = with_overrides(config, updates)
    problem = anonymous_bind_problem(config.server.host, Authenticator(config.auth))
    if problem and not args.allow_anonymous:
        print(f"sansio-gateway: {problem}", file=sys.stderr)
        return 2
    if args.workers > 1:
        child = ["--log-level", args.log_level, "serve",
                 *(["--config", args.config] if args.config else []),
                 "--host", config.server.host, "--runtime", config.server.runtime,
                 "--transport", config.server.transport]  # fmt: skip
        if args.allow_anonymous:
            child.append("--allow-anonymous")
        return run_workers(args.workers, child, config.server.host, config.server.port)
    if args.worker_count > 1 and args.worker_index == 0 and config.store.url.startswith("memory"):
        logging.getLogger("sansio_gateway").warning(
            "memory store with %d workers: each enforces 1/%d of every limit;"
            " use a Redis store ([store] url) for exact shared limits",
            args.worker_count,
            args.worker_count,
        )
    fds = raise_open_file_limit()  # each stream holds two sockets
    if args.worker_index == 0:
        logging.getLogger("sansio_gateway").info("%s", fds.describe())
    source = ConfigSource(
        args.config,
        overrides=updates,
        bind_host=config.server.host,
        allow_anonymous=args.allow_anonymous,
    )
    app = GatewayApp(
        config,
        worker_count=args.worker_count,
        reuse_port=args.reuse_port,
        worker_index=args.worker_index,
        source=source,
        supervisor_pid=args.supervisor_pid,
    )
    settle_heap()  # the app is built: what exists now lives as long as the process
    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(
            partial(_serve, app),
            backend=config.server.runtime,
            backend_options=_loop_options(config),
        )
    return 0


def _loop_options(config: GatewayConfig) -> dict[str, bool]:
    """uvloop, when installed and wanted, roughly halves the event loop's
    share of each request on asyncio (see docs/benchmarks.md)."""
    if config.server.runtime != "asyncio" or not config.server.uvloop:
        return {}
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}


async def _serve(app: GatewayApp) -> None:
    # Signals are received from the start: one that arrives while the
    # backends are discovered waits for the gateway to listen.
    wanted = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    with anyio.open_signal_receiver(*wanted) as signals:
        # A --workers child starts with them blocked (workers.py): now that
        # they are received, any that came early is delivered and handled.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, wanted)
        async with anyio.create_task_group() as tg:
            host, port = await tg.start(app.serve)
            if app.announce:  # once, not once per worker
                for line in app.describe():
                    print(line, flush=True)
            print(
                f"sansio-gateway listening on http://{host}:{port}"
                f" ({app.config.server.runtime}, {'fast' if app.fast else 'anyio'} transport)",
                flush=True,
            )
            await app.reload(STARTUP_CHECK)
            async for signum in signals:
                if signum == signal.SIGHUP:
                    # Logged by the reload: what changed, or the keys at fault.
                    await app.reload("SIGHUP")
                    continue
                print(f"{signal.Signals(signum).name}: shutting down", flush=True)
                break
            cut = await app.shutdown()
            print(f"stopped ({cut} requests cut short after the grace period)", flush=True)


def _cmd_check_config(args: argparse.Namespace) -> int:
    config = checked_config(args.file)
    print(
        f"{args.file}: OK ({len(config.backends)} backends, {len(config.models)} models,"
        f" {len(config.auth.keys)} keys)"
    )
    return 0


def _cmd_new_key(args: argparse.Namespace) -> int:
    key = "sk-gw-" + secrets.token_urlsafe(32)
    digest = hashlib.sha256(key.encode()).hexdigest()
    print(key)
    print()
    print("Give the key above to its user; it is not stored anywhere.")
    print("Paste this into the config:")
    print()
    print("[[auth.keys]]")
    print(f'id     = "{args.id}"')
    print(f'user   = "{args.user}"')
    print(f'sha256 = "{digest}"')
    print('models = ["*"]')
    if args.admin:
        print("admin  = true   # may also read GET /admin/usage")
    return 0


def _cmd_usage(args: argparse.Namespace) -> int:
    """Read the configured ledger (``[store] usage``) wherever it is: SQLite,
    Redis or Redis Cluster, through the query ``/admin/usage`` runs."""
    config = load_config(args.config)
    url = config.store.usage
    if url == "memory://":
        print(
            "usage: store.usage = memory:// lives inside the serving process;"
            " read it through GET /admin/usage",
            file=sys.stderr,
        )
        return 2
    if url.startswith("sqlite:///") and not Path(sqlite_path(url)).exists():
        print(f"no usage recorded yet ({sqlite_path(url)} does not exist)")
        return 0
    try:
        query = UsageQuery(
            user=args.user,
            model=args.model,
            since=parse_time(args.since, param="--since") if args.since else None,
            until=parse_time(args.until, param="--until", end_of_day=True) if args.until else None,
        )
    except GatewayError as exc:
        print(f"usage: {exc.message}", file=sys.stderr)
        return 2
    ledger = open_ledger(url)
    try:
        rows = ledger.query_sync(query)
    except Exception as exc:  # an unreachable Redis: one line, never a traceback
        print(f"usage: cannot read store.usage = {redact_url(url)}: {exc}", file=sys.stderr)
        return 1
    finally:
        ledger.close_sync()
    if args.json:
        print(json.dumps(render_rows(query, rows)["data"], indent=2))
    elif args.csv:
        print(render_csv(rows), end="")
    else:
        print("\n".join(render_table(rows)))
    return 0


def _parser() -> argparse.ArgumentParser:
    # Extend these commands and flags, never rename them: operators' scripts use them.
    parser = argparse.ArgumentParser(prog="sansio-gateway", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve",
        help="run the gateway",
        description="Run the gateway.  SIGHUP (or POST /admin/reload with an admin key)"
        " reloads the config file without a restart: keys, models, backends and limits"
        " apply to new requests; a config with an error, or one changing a setting that"
        " needs a restart (listen address, runtime, transport, [store], [tracing]), is refused and the"
        ' running config stays (docs/operations.md, "Reloading").',
    )
    serve.add_argument("--config", help="TOML config file (default: one local Ollama)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument(
        "--runtime", choices=["asyncio", "trio"], help="event loop (default asyncio)"
    )
    serve.add_argument(
        "--transport",
        choices=["fast", "anyio"],
        help="on asyncio: fast (asyncio.Protocol, the default) or anyio (as on trio)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes sharing the port (SIGHUP to the parent reloads every one)",
    )
    serve.add_argument(
        "--allow-anonymous",
        action="store_true",
        help="serve without API keys on a non-loopback address",
    )
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    serve.add_argument("--worker-count", type=int, default=1, help=argparse.SUPPRESS)
    serve.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    serve.add_argument("--supervisor-pid", type=int, default=None, help=argparse.SUPPRESS)
    serve.set_defaults(func=_cmd_serve)

    check = sub.add_parser("check-config", help="validate a config file")
    check.add_argument("file")
    check.set_defaults(func=_cmd_check_config)

    usage = sub.add_parser("usage", help="show recorded usage per user, model and day")
    usage.add_argument("--config", help="TOML config file (its [store] usage ledger)")
    usage.add_argument("--user")
    usage.add_argument("--model")
    usage.add_argument("--since", help="YYYY-MM-DD, ISO 8601 time, or unix seconds")
    usage.add_argument("--until", help="exclusive; a bare date means the end of that day")
    usage.add_argument("--json", action="store_true", help="print JSON rows")
    usage.add_argument("--csv", action="store_true", help="print CSV, as /admin/usage?format=csv")
    usage.set_defaults(func=_cmd_usage)

    new_key = sub.add_parser("new-key", help="make an API key and its config entry")
    new_key.add_argument("--id", default="my-key")
    new_key.add_argument("--user", default="me")
    new_key.add_argument(
        "--admin", action="store_true", help="an admin key: may also read GET /admin/usage"
    )
    new_key.set_defaults(func=_cmd_new_key)

    add_emulate_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    # Nothing this process logs shows the caller's file and line, thread or
    # process: not looking them up for every record (a stack walk, among
    # others) halves logging's cost per request, the access line's included.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # Access lines are JSON, one per request, on stdout, without a prefix,
    # written in batches (one write per 50 ms at most, not one per request).
    access = logging.getLogger("sansio_gateway.access")
    handler = BatchedStreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(handler)
    access.propagate = False
    write_access_lines_to(handler)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

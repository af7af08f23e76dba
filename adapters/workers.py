"""``serve --workers N``: N gateway processes sharing one port.

The parent binds the port once with SO_REUSEPORT (without listening, so it
never takes a connection itself) to learn the port when 0 was asked for and
to hold it, then starts N children that each bind the same port with
SO_REUSEPORT; the kernel spreads connections across them.  The parent
forwards SIGTERM/SIGINT so every child drains gracefully, and exits 0 only
if every child did.

Shared state: with the memory store each child enforces 1/N of every limit
(a warning says so; Redis is the real answer).  Metrics use prometheus-
client's multiprocess mode in a directory the parent creates, so a scrape
of any worker counts all of them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from types import FrameType

from prometheus_client import multiprocess as prom_multiprocess

__all__ = ["run_workers", "signal_supervisor"]


def _reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock, int(sock.getsockname()[1])


def run_workers(n: int, child_args: list[str], host: str, port: int) -> int:
    """Run ``n`` children of ``sansio-gateway serve``; returns the exit code."""
    if not hasattr(socket, "SO_REUSEPORT"):
        print("--workers needs SO_REUSEPORT, which this platform lacks", file=sys.stderr)
        return 2
    holder, port = _reserve_port(host, port)
    env = dict(os.environ)
    metrics_dir = env.get("PROMETHEUS_MULTIPROC_DIR")
    if not metrics_dir:
        metrics_dir = tempfile.mkdtemp(prefix="sansio-gateway-metrics-")
        env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    cmd = [sys.executable, "-m", "sansio_gateway.adapters.cli", *child_args, "--port", str(port), "--reuse-port",
           "--worker-count", str(n), "--supervisor-pid", str(os.getpid())]  # fmt: skip
    # Children start with SIGHUP ignored (inherited through exec), so one
    # that arrives before a worker has its handler cannot kill it; a worker
    # checks the file once it listens, so the change is not lost either.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # Children also start with SIGTERM and SIGINT blocked (the mask survives
    # exec): one sent while a worker is still importing would otherwise kill
    # it outright and make the whole run exit 1.  A worker unblocks them once
    # its handlers are in place (cli._serve), and a pending one is then
    # handled like any other: a graceful stop.  The parent installs its own
    # handlers before it unblocks, so a signal meanwhile is forwarded too.
    stopping = (signal.SIGTERM, signal.SIGINT)
    signal.pthread_sigmask(signal.SIG_BLOCK, stopping)
    try:
        children = [subprocess.Popen([*cmd, "--worker-index", str(i)], env=env) for i in range(n)]
    except BaseException:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stopping)
        raise

    def forward(signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            print("SIGHUP: every worker reloads its config", flush=True)
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    # A reload (docs/operations.md, "Reloading"): SIGHUP here, or a worker
    # that answered POST /admin/reload and asks the others to follow.
    signal.signal(signal.SIGHUP, forward)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, stopping)
    print(f"sansio-gateway: {n} workers on http://{host}:{port}", flush=True)
    codes = []
    for child in children:
        codes.append(child.wait())
        # Its live gauges (in flight, up, ...) no longer count in a scrape.
        prom_multiprocess.mark_process_dead(child.pid, metrics_dir)  # type: ignore[no-untyped-call]
    holder.close()
    return 0 if all(code == 0 for code in codes) else 1


def signal_supervisor(pid: int) -> bool:
    """Ask the ``--workers`` parent ``pid`` to have every worker reload.
    Only if it is still this process's parent: once it is gone its pid may
    belong to anything."""
    if os.getppid() != pid:
        return False
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError:
        return False
    return True

"""Real redis-server processes for tests: standalone and a 3-primary cluster.

Each test module starts its own servers on free loopback ports, so tests
can stop, pause or break them without touching the machine's Redis.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial

import redis

REDIS_SERVER = shutil.which("redis-server")


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(*, with_bus: bool = False) -> int:
    """A free loopback port (and, for cluster nodes, port + 10000 too)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if not with_bus or (port < 55535 and port_is_free(port + 10000)):
            return port
    raise RuntimeError("no free port")


def wait_until(check: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``check`` until true (never a blind sleep)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.002)


def _pings(port: int) -> bool:
    try:
        with redis.Redis(port=port, socket_connect_timeout=0.2, socket_timeout=0.2) as c:
            return bool(c.ping())
    except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
        return False


@dataclass
class RedisServer:
    """A redis-server process of our own on a fixed port."""

    port: int
    workdir: str
    extra: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        assert REDIS_SERVER is not None
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--dir", self.workdir, *self.extra]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: _pings(self.port), what=f"redis-server on {self.port}")
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)


@contextlib.contextmanager
def redis_server(extra: tuple[str, ...] = (), port: int | None = None) -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory(prefix="rl-redis-") as workdir:
        server = RedisServer(
            port=port or free_port(with_bus=bool(extra)), workdir=workdir, extra=extra
        )
        try:
            yield server.start()
        finally:
            if server.proc is not None and server.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(server.proc.pid, signal.SIGCONT)
            server.kill()


SLOT_RANGES = ((0, 5460), (5461, 10922), (10923, 16383))


def _cluster_ok(port: int) -> bool:
    try:
        with redis.Redis(port=port, socket_timeout=0.5) as c:
            info = c.execute_command("CLUSTER INFO")
    except redis.RedisError:
        return False
    if isinstance(info, bytes):
        return b"cluster_state:ok" in info
    return bool(info.get("cluster_state") == "ok")


def _create_by_hand(ports: list[int]) -> None:
    """What ``redis-cli --cluster create`` does, for machines without it."""
    for port, (lo, hi) in zip(ports, SLOT_RANGES, strict=True):
        with redis.Redis(port=port) as c:
            c.execute_command("CLUSTER", "ADDSLOTSRANGE", lo, hi)
    with redis.Redis(port=ports[0]) as c:
        for port in ports[1:]:
            c.execute_command("CLUSTER", "MEET", "127.0.0.1", port)


@contextlib.contextmanager
def redis_cluster() -> Iterator[list[int]]:
    with redis_cluster_servers() as (ports, _):
        yield ports


@contextlib.contextmanager
def redis_cluster_servers() -> Iterator[tuple[list[int], list[RedisServer]]]:
    """A 3-primary cluster; also yields its servers, to kill and restart one."""
    flags = ("--cluster-enabled", "yes", "--cluster-node-timeout", "5000")
    with contextlib.ExitStack() as stack:
        servers: list[RedisServer] = []
        for _ in range(3):
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="rl-cluster-"))
            server = RedisServer(port=free_port(with_bus=True), workdir=workdir, extra=flags)
            stack.callback(server.kill)
            servers.append(server.start())
        ports = [s.port for s in servers]
        cli = shutil.which("redis-cli")
        if cli is not None:
            nodes = [f"127.0.0.1:{p}" for p in ports]
            subprocess.run(
                [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
                check=True,
                capture_output=True,
                timeout=60,
            )
        else:
            _create_by_hand(ports)
        for port in ports:
            wait_until(partial(_cluster_ok, port), timeout=30, what="cluster_state:ok")
        yield ports, servers

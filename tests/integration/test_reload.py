"""Reloading the config of a real ``sansio-gateway serve`` process, under load
(issue 15, item 2): a key added and another removed by rewriting the file and
reloading -- SIGHUP or ``POST /admin/reload``, on the fast and the anyio
transports -- takes effect within a second, and no request in flight fails.
Also: an invalid config is refused with a 400 naming the key while the old
one keeps serving, and ``--workers 2`` reload together."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.emulators.ollama import OllamaEmulator, ScriptedReply, run_ollama_emulator

CLI = [sys.executable, "-m", "sansio_gateway.adapters.cli"]
MODEL = "llama3.2:1b"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def slow_emulator() -> Iterator[OllamaEmulator]:
    """Streams of 20 chunks 50 ms apart: a second in flight, across the reload."""
    with run_ollama_emulator() as emu:
        emu.set_reply(MODEL, ScriptedReply(chunks=["w "] * 20, delay_between_chunks=0.05))
        yield emu


def _key(id_: str, user: str, *, admin: bool = False) -> str:
    digest = hashlib.sha256(f"sk-{id_}".encode()).hexdigest()
    return (
        f'[[auth.keys]]\nid = "{id_}"\nuser = "{user}"\nsha256 = "{digest}"\n'
        f"admin = {'true' if admin else 'false'}\n"
    )


def _config(tmp_path: Path, emulator: OllamaEmulator, keys: list[str], extra: str = "") -> str:
    return (
        f'[store]\nusage = "sqlite:///{tmp_path}/usage.db"\n'
        f'[[backends]]\nname = "local"\nurl = "{emulator.url}"\n'
        + "".join(_key(k, k, admin=k == "root") for k in keys)
        + extra
    )


def _auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer sk-{key}"}


def _poll(check: Callable[[], object], what: str, timeout: float = 30.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            value = check()
            if value:
                return value
        time.sleep(0.02)  # polling a process we started; there is no event to await
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Served:
    proc: subprocess.Popen[str]
    url: str
    lines: list[str] = field(default_factory=list)


@contextlib.contextmanager
def serve(cfg: Path, *extra: str, workers: int = 1) -> Iterator[Served]:
    args = [*CLI, "serve", "--config", str(cfg), "--port", "0", *extra]
    if workers > 1:
        args += ["--workers", str(workers)]
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    served = Served(proc=proc, url="")
    reader = threading.Thread(
        target=lambda: served.lines.extend(iter(proc.stdout.readline, "")),  # type: ignore[union-attr]
        daemon=True,
    )
    reader.start()
    try:
        marker = " workers on " if workers > 1 else "listening on "
        found = _poll(lambda: [x for x in served.lines if marker in x], "the listening line")
        served.url = str(found[0]).split(" on ")[1].split()[0]  # type: ignore[index]
        listening = lambda: sum("listening on" in x for x in served.lines) == workers  # noqa: E731
        _poll(listening, "every worker")
        yield served
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the workers too
        proc.wait()
        reader.join(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


@dataclass
class Load:
    """Clients streaming and not, with a key that stays and one that goes."""

    url: str
    stop: threading.Event = field(default_factory=threading.Event)
    first_chunks: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    # (key, stream, first chunk at (streams), done at, outcome) per request
    results: list[tuple[str, bool, float | None, float, str]] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)
    mid_stream: set[str] = field(default_factory=set)  # keys with a stream past its first chunk

    def start(self) -> None:
        for key in ("keep", "old"):
            for stream in (True, False):
                thread = threading.Thread(target=self._loop, args=(key, stream), daemon=True)
                self.threads.append(thread)
                thread.start()

    def _loop(self, key: str, stream: bool) -> None:
        with httpx.Client(timeout=30, headers=_auth(key)) as client:
            while not self.stop.is_set():
                outcome, first_chunk_at = self.one(client, stream, key)
                self.results.append((key, stream, first_chunk_at, time.monotonic(), outcome))
                if outcome == "status:401":
                    return  # the key is gone: nothing more to learn from it

    def one(self, client: httpx.Client, stream: bool, key: str = "") -> tuple[str, float | None]:
        """One request: its outcome, and when a stream's first chunk came."""
        try:
            if not stream:
                response = client.post(self.url + "/v1/chat/completions", json=CHAT)
                if response.status_code != 200:
                    return f"status:{response.status_code}", None
                content = response.json()["choices"][0]["message"]["content"]
                return ("ok" if content else "empty"), None
            return self._stream(client, key)
        except Exception as exc:
            return f"exception:{exc!r}", None

    def _stream(self, client: httpx.Client, key: str) -> tuple[str, float | None]:
        first_chunk_at = None
        body = {**CHAT, "stream": True}
        with client.stream("POST", self.url + "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                response.read()
                return f"status:{response.status_code}", None
            data: list[str] = []
            for line in response.iter_lines():
                if line.startswith("data: "):
                    data.append(line[6:])
                    if len(data) == 1:  # this stream is in flight, in the gateway too
                        first_chunk_at = time.monotonic()
                        self.mid_stream.add(key)
                        self.first_chunks.release()
            self.mid_stream.discard(key)
        complete = data and data[-1] == "[DONE]" and len(data) > 20
        return ("ok" if complete else f"broken:{data[-2:]}"), first_chunk_at

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)


def _status_of(url: str, key: str) -> int:
    return httpx.post(url + "/v1/chat/completions", json=CHAT, headers=_auth(key)).status_code


@pytest.mark.parametrize(
    ("transport", "trigger"),
    [("fast", "SIGHUP"), ("anyio", "admin"), ("fast", "admin"), ("anyio", "SIGHUP"),
     ("trio", "SIGHUP")],
)  # fmt: skip
def test_a_key_added_and_one_removed_under_load(
    slow_emulator: OllamaEmulator, tmp_path: Path, transport: str, trigger: str
) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text(_config(tmp_path, slow_emulator, ["root", "keep", "old"]))
    runtime = ["--runtime", "trio"] if transport == "trio" else ["--transport", transport]
    with serve(cfg, *runtime) as gw:
        assert _status_of(gw.url, "new") == 401
        load = Load(gw.url)
        load.start()
        try:
            for _ in range(4):  # the streaming clients are at it, twice over
                assert load.first_chunks.acquire(timeout=30)
            # a stream of the key about to be removed is mid-way
            _poll(lambda: "old" in load.mid_stream and "keep" in load.mid_stream, "streams")
            cfg.write_text(_config(tmp_path, slow_emulator, ["root", "keep", "new"]))
            reloaded_at = time.monotonic()
            if trigger == "SIGHUP":
                gw.proc.send_signal(signal.SIGHUP)
            else:
                answer = httpx.post(gw.url + "/admin/reload", headers=_auth("root"))
                assert answer.status_code == 200, answer.text
                summary = answer.json()
                assert summary["keys"] == {"added": 1, "removed": 1, "changed": 0, "total": 3}
                assert "sk-new" not in answer.text
            _poll(lambda: _status_of(gw.url, "new") == 200, "the new key", timeout=5)
            assert time.monotonic() - reloaded_at < 1.0
            _poll(lambda: _status_of(gw.url, "old") == 401, "the removed key refused", 5)
            assert time.monotonic() - reloaded_at < 1.0
            for _ in range(2):  # streams of the key that stays still run after the reload
                assert load.first_chunks.acquire(timeout=30)
        finally:
            load.finish()
        log = "".join(gw.lines)
    assert "config reloaded from" in log and "keys +1 -1 ~0 (3 in all)" in log, log
    # No request failed: everything of the kept key ran to its end, and the
    # removed key's requests either did or were refused whole (401: they
    # reached the gateway after the reload; only the gateway knows when).
    assert load.results
    for key, stream, _, _, outcome in load.results:
        expected = ("ok",) if key == "keep" else ("ok", "status:401")
        assert outcome in expected, (key, stream, outcome)
    # A stream of the removed key that was mid-way when the reload was asked
    # for -- in flight in the gateway, then -- finished on the old config.
    across = [
        outcome
        for key, stream, first, done, outcome in load.results
        if key == "old" and stream and first is not None and first < reloaded_at < done
    ]
    assert across == ["ok"], across
    assert any(key == "old" and o == "status:401" for key, _, _, _, o in load.results)


def test_an_invalid_config_is_refused_naming_the_key_and_the_old_one_serves(
    slow_emulator: OllamaEmulator, tmp_path: Path
) -> None:
    cfg = tmp_path / "gw.toml"
    good = _config(tmp_path, slow_emulator, ["root", "keep"])
    cfg.write_text(good)
    with serve(cfg) as gw:
        assert httpx.post(gw.url + "/admin/reload").status_code == 401
        forbidden = httpx.post(gw.url + "/admin/reload", headers=_auth("keep"))
        assert forbidden.status_code == 403 and forbidden.json()["error"]["message"]
        bad_limit = "[limits.users.keep]\nrequests_per_minute = 0\n"
        cfg.write_text(_config(tmp_path, slow_emulator, ["root", "keep", "new"], bad_limit))
        refused = httpx.post(gw.url + "/admin/reload", headers=_auth("root"))
        assert refused.status_code == 400
        error = refused.json()["error"]
        assert error["param"] == "limits.users.keep.requests_per_minute"
        assert "limits.users.keep.requests_per_minute" in error["message"]
        assert _status_of(gw.url, "keep") == 200 and _status_of(gw.url, "new") == 401
        # a setting only a restart applies: refused too, naming it (the port
        # is not one here: `serve --port` overrides the file's, on reload too)
        cfg.write_text('[server]\nport = 1\ntransport = "anyio"\n' + good)
        restart = httpx.post(gw.url + "/admin/reload", headers=_auth("root"))
        assert restart.status_code == 400, restart.text
        assert restart.json()["error"]["param"] == "server.transport"
        # and a broken file sent by SIGHUP is logged, naming the key
        cfg.write_text(_config(tmp_path, slow_emulator, ["root", "keep"], bad_limit))
        gw.proc.send_signal(signal.SIGHUP)
        _poll(
            lambda: any("refused" in x and "limits.users.keep" in x for x in gw.lines),
            "the refusal in the log",
        )
        assert _status_of(gw.url, "keep") == 200
        status = httpx.get(gw.url + "/status", headers=_auth("root")).json()
        assert status["process"]["config"]["generation"] == 1  # nothing was applied
        cfg.write_text(good + _key("new", "new"))
        answer = httpx.post(gw.url + "/admin/reload", headers=_auth("root"))
        assert answer.status_code == 200 and answer.json()["generation"] == 2
        assert _status_of(gw.url, "new") == 200


def test_two_workers_both_reload_on_sighup_and_on_admin_reload(
    slow_emulator: OllamaEmulator, tmp_path: Path
) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text(_config(tmp_path, slow_emulator, ["root", "keep"]))

    def pids_serving(key: str, generation: int) -> Callable[[], bool]:
        seen: set[int] = set()

        def check() -> bool:
            # A new connection each time, so the kernel spreads them over both workers.
            response = httpx.get(gw.url + "/status", headers=_auth(key))
            if response.status_code == 200:
                process = response.json()["process"]
                if process["config"]["generation"] == generation:
                    seen.add(process["pid"])
            return len(seen) == 2

        return check

    with serve(cfg, workers=2) as gw:
        _poll(pids_serving("root", 1), "both workers at generation 1")
        cfg.write_text(
            _config(tmp_path, slow_emulator, ["root", "keep"]) + _key("ops", "ops", admin=True)
        )
        gw.proc.send_signal(signal.SIGHUP)  # to the parent, which forwards it
        _poll(pids_serving("ops", 2), "both workers serving the new key")
        # POST /admin/reload on whichever worker answers reloads the other too
        cfg.write_text(
            _config(tmp_path, slow_emulator, ["keep"]) + _key("ops2", "ops2", admin=True)
        )
        answer = httpx.post(gw.url + "/admin/reload", headers=_auth("ops"))
        assert answer.status_code == 200 and answer.json()["workers_told"] is True
        _poll(pids_serving("ops2", 3), "both workers serving the second new key")
        _poll(lambda: httpx.get(gw.url + "/status", headers=_auth("root")).status_code == 401,
              "the removed admin key refused")  # fmt: skip
    assert "SIGHUP: every worker reloads its config" in "".join(gw.lines)


def test_the_asgi_app_reloads_on_post_admin_reload(
    slow_emulator: OllamaEmulator, tmp_path: Path
) -> None:
    from sansio_gateway.adapters.asgi import create_app
    from sansio_gateway.adapters.ledger import MemoryLedger

    from tests.integration.test_asgi import serve_uvicorn

    cfg = tmp_path / "gw.toml"
    cfg.write_text(_config(tmp_path, slow_emulator, ["root", "keep"]))
    with serve_uvicorn(create_app(str(cfg), ledger=MemoryLedger())) as url:
        assert _status_of(url, "new") == 401
        cfg.write_text(_config(tmp_path, slow_emulator, ["root", "new"]))
        answer = httpx.post(url + "/admin/reload", headers=_auth("root"))
        assert answer.status_code == 200, answer.text
        assert answer.json()["keys"] == {"added": 1, "removed": 1, "changed": 0, "total": 2}
        assert _status_of(url, "new") == 200 and _status_of(url, "keep") == 401
        cfg.write_text(
            _config(
                tmp_path, slow_emulator, ["root", "new"], "[limits]\nrequests_per_minute = -1\n"
            )
        )
        refused = httpx.post(url + "/admin/reload", headers=_auth("root"))
        assert refused.status_code == 400
        assert refused.json()["error"]["param"] == "limits.requests_per_minute"
        assert _status_of(url, "new") == 200


def test_an_asgi_app_made_from_a_config_object_has_nothing_to_reload(
    slow_emulator: OllamaEmulator, tmp_path: Path
) -> None:
    from sansio_gateway.adapters.asgi import create_app
    from sansio_gateway.adapters.ledger import MemoryLedger

    from sansio_gateway.config import parse_config
    from tests.integration.test_asgi import serve_uvicorn

    config = parse_config(_config(tmp_path, slow_emulator, ["root"]), source="x", env={})
    with serve_uvicorn(create_app(config, ledger=MemoryLedger())) as url:
        answer = httpx.post(url + "/admin/reload", headers=_auth("root"))
        assert answer.status_code == 409
        assert answer.json()["error"]["code"] == "reload_unavailable"


def test_removing_every_key_leaves_an_asgi_app_closed_to_the_network(tmp_path: Path) -> None:
    """The ASGI app judges each request's server address with the Gateway
    that serves it: a reload that removes every key closes it to non-loopback
    addresses at once."""
    import anyio
    from sansio_gateway.adapters.asgi import create_app
    from sansio_gateway.adapters.ledger import MemoryLedger

    cfg = tmp_path / "gw.toml"
    backend = '[[backends]]\nname = "local"\nurl = "http://127.0.0.1:9"\ndiscover = false\n'
    cfg.write_text(backend + _key("root", "root", admin=True))
    app = create_app(str(cfg), ledger=MemoryLedger())

    def call(path: str, method: str = "GET") -> int:
        scope = {
            "type": "http", "method": method, "path": path, "query_string": b"",
            "headers": [(b"authorization", b"Bearer sk-root")], "server": ("10.1.2.3", 8080),
        }  # fmt: skip
        sent: list[dict[str, object]] = []

        async def receive() -> dict[str, object]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, object]) -> None:
            sent.append(message)

        anyio.run(app, scope, receive, send)
        return int(sent[0]["status"])  # type: ignore[call-overload]

    assert call("/status") == 200
    cfg.write_text(backend)
    assert call("/admin/reload", "POST") == 200
    assert call("/status") == 503


def test_limit_state_carries_over_and_changed_limits_judge_it(
    slow_emulator: OllamaEmulator, tmp_path: Path
) -> None:
    """6 requests a minute: one passes (a 10 s burst, 10 s a request), the
    next is a 429 for 10 s.  Within those 10 s, after a reload: alice
    (unchanged) is still at her limit; bob, lowered to 3 a minute, gets no
    fresh quota (a reset would let him pass); carol, raised to 600, passes
    (her 10 s of use fit the new 10 s burst)."""
    cfg = tmp_path / "gw.toml"
    limits = "[limits.users.{}]\nrequests_per_minute = {}\n"

    def write(bob: int, carol: int, *extra: str) -> None:
        cfg.write_text(
            _config(tmp_path, slow_emulator, ["root", "alice", "bob", "carol", *extra])
            + limits.format("alice", 6)
            + limits.format("bob", bob)
            + limits.format("carol", carol)
        )

    write(6, 6)
    with serve(cfg) as gw:
        for user in ("alice", "bob", "carol"):
            assert [_status_of(gw.url, user) for _ in range(2)] == [200, 429], user
        write(3, 600, "dave")
        answer = httpx.post(gw.url + "/admin/reload", headers=_auth("root"))
        assert answer.status_code == 200, answer.text
        assert answer.json()["limits"]["users_changed"] == ["bob", "carol"]
        assert _status_of(gw.url, "alice") == 429
        assert _status_of(gw.url, "bob") == 429
        _poll(lambda: _status_of(gw.url, "carol") == 200, "carol's raised limit", timeout=2)
        assert _status_of(gw.url, "dave") == 200


def test_a_stream_in_flight_finishes_when_its_backend_is_removed(
    slow_emulator: OllamaEmulator, tmp_path: Path
) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text(_config(tmp_path, slow_emulator, ["root", "keep"]))
    with serve(cfg) as gw:
        outcome: list[str] = []
        first = threading.Semaphore(0)

        def stream() -> None:
            load = Load(gw.url)
            load.first_chunks = first
            with httpx.Client(timeout=30, headers=_auth("keep")) as client:
                outcome.append(load.one(client, stream=True)[0])

        thread = threading.Thread(target=stream)
        thread.start()
        assert first.acquire(timeout=30)
        renamed = _config(tmp_path, slow_emulator, ["root", "keep"]).replace(
            'name = "local"', 'name = "other"'
        )
        cfg.write_text(renamed)
        answer = httpx.post(gw.url + "/admin/reload", headers=_auth("root"))
        assert answer.status_code == 200, answer.text
        assert answer.json()["backends"]["removed"] == ["local"]
        assert answer.json()["backends"]["added"] == ["other"]
        thread.join(timeout=30)
        assert outcome == ["ok"]
        status = httpx.get(gw.url + "/status", headers=_auth("root")).json()
        assert [b["name"] for b in status["backends"]] == ["other"]
        assert _status_of(gw.url, "keep") == 200  # now through "other"

"""The command line as an operator runs it: workers, anonymous-bind refusal,
check-config, new-key, usage."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sansio_gateway.auth import hash_key
from tests.emulators.ollama import OllamaEmulator

CLI = [sys.executable, "-m", "sansio_gateway.adapters.cli"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)


def test_check_config_names_the_key_and_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nport = "eighty"\n[[backends]]\nname = "x"\nurl = "ftp://nope"\n')
    result = run("check-config", str(bad))
    assert result.returncode != 0
    assert f"{bad}: server.port" in result.stderr and f"{bad}: backends[0].url" in result.stderr
    typo = tmp_path / "typo.toml"
    typo.write_text("[server]\nmax_body_byte = 5\n")
    result = run("check-config", str(typo))
    assert result.returncode != 0 and "server.max_body_byte: unknown key" in result.stderr
    good = tmp_path / "good.toml"
    good.write_text('[[backends]]\nname = "x"\nurl = "http://127.0.0.1:1"\n')
    assert run("check-config", str(good)).returncode == 0


def test_new_key_prints_a_key_and_its_sha256_line() -> None:
    result = run("new-key", "--id", "laptop", "--user", "alice")
    assert result.returncode == 0
    key = result.stdout.splitlines()[0]
    assert key.startswith("sk-gw-") and len(key) > 40
    assert f'sha256 = "{hash_key(key)}"' in result.stdout
    assert result.stdout.count(key) == 1  # the config lines never contain the key itself


def test_refuses_an_open_gateway_on_a_public_address(tmp_path: Path) -> None:
    result = run("serve", "--host", "0.0.0.0", "--port", "0")
    assert result.returncode == 2
    assert "--allow-anonymous" in result.stderr


def _wait_healthy(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)  # polling a process we started; there is no event to await
    raise AssertionError("gateway did not come up")


def test_two_workers_share_the_port_and_their_metrics(
    emulator: OllamaEmulator, tmp_path: Path
) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text(
        f'[store]\nusage = "sqlite:///{tmp_path}/usage.db"\n'
        f'[[backends]]\nname = "local"\nurl = "{emulator.url}"\n'
    )
    proc = subprocess.Popen(
        [
            *CLI,
            "--log-level",
            "WARNING",
            "serve",
            "--config",
            str(cfg),
            "--port",
            "0",
            "--workers",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "2 workers on " in line
        url = line.split(" on ")[1].split()[0]
        _wait_healthy(url)
        body = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}]}
        for _ in range(12):
            # a new connection each time, so the kernel spreads them over workers
            assert httpx.post(url + "/v1/chat/completions", json=body).status_code == 200
        total = 0.0
        for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
            for sample in family.samples:
                if (
                    sample.name == "gateway_requests_total"
                    and sample.labels["route"] == "chat.completions"
                ):
                    total += sample.value
        assert total == 12  # whichever worker answered the scrape counts both
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        usage = run("usage", "--config", str(cfg), "--json")
        assert usage.returncode == 0 and '"requests": 12' in usage.stdout
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


BAD_CONFIGS = {
    "store-url": '[store]\nurl = "redis//127.0.0.1:6379/3"\n',
    "store-usage": '[store]\nusage = "http://127.0.0.1:1/usage"\n',
    "usage-dir": '[store]\nusage = "sqlite:///./no/such/dir/usage.db"\n',
    "kind": '[[backends]]\nname = "b"\nkind = "nope"\nurl = "http://127.0.0.1:1"\n',
    "trio-redis": '[server]\nruntime = "trio"\n[store]\nurl = "redis://127.0.0.1:1/0"\n',
    "admin-yes": f'[[auth.keys]]\nid = "k"\nuser = "u"\nsha256 = "{"a" * 64}"\nadmin = "yes"\n',
}


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_serve_refuses_what_check_config_refuses_with_the_same_line(
    name: str, tmp_path: Path
) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('[[backends]]\nname = "a"\nurl = "http://127.0.0.1:1"\n' + BAD_CONFIGS[name])
    checked = run("check-config", str(path))
    assert checked.returncode == 2
    assert len(checked.stderr.splitlines()) == 1 and str(path) in checked.stderr
    for extra in ([], ["--workers", "2"]):
        served = run("serve", "--config", str(path), "--port", "0", *extra)
        assert served.returncode == 2, served.stderr
        assert served.stderr == checked.stderr
        assert "Traceback" not in served.stderr + served.stdout


def test_new_key_admin_writes_an_entry_that_loads_as_an_admin_key(tmp_path: Path) -> None:
    from sansio_gateway.config import parse_config

    result = run("new-key", "--id", "ops", "--user", "ops", "--admin")
    assert result.returncode == 0
    entry = result.stdout[result.stdout.index("[[auth.keys]]") :]
    config = parse_config(entry, source="gw.toml", env={})
    assert config.auth.keys[0].admin is True
    plain = run("new-key")
    entry = plain.stdout[plain.stdout.index("[[auth.keys]]") :]
    assert parse_config(entry, source="gw.toml", env={}).auth.keys[0].admin is False


OUTSIDE_DOCS = ("DESIGN.md", "STYLE.md", "ollama-openai-wire.md", "/work/shared")


def test_help_lists_every_command_and_cites_only_the_repo() -> None:
    top = run("--help")
    assert top.returncode == 0
    for command in ("serve", "check-config", "usage", "new-key"):
        assert command in top.stdout
        sub = run(command, "--help")
        assert sub.returncode == 0
        assert not any(name in sub.stdout for name in OUTSIDE_DOCS), (command, sub.stdout)
    assert not any(name in top.stdout for name in OUTSIDE_DOCS)
    for doc in ("quickstart.md", "configuration.md", "deployment.md"):
        assert f"docs/{doc}" in top.stdout and (Path("docs") / doc).exists()


def test_no_docstring_or_comment_cites_a_design_document_outside_the_repo() -> None:
    offenders = [
        f"{path}:{n}"
        for root in ("sansio_gateway", "adapters")
        for path in sorted(Path(root).rglob("*.py"))
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "DESIGN.md" in line or "STYLE.md" in line
    ]
    assert offenders == []

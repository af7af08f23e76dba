"""The container deployment: Dockerfile, .dockerignore, compose.yaml and deploy/gateway.toml.

No Docker engine runs here or in CI (only the client is installed), so the image itself is
never built. What can be checked without one is checked for real: the files are parsed and
their properties asserted, and the Dockerfile's build and run steps are executed the way the
image would run them -- the builder's wheel command, the runtime stage's install command into
a fresh directory, the image's ENTRYPOINT and CMD against a mounted-config stand-in with keys
from the environment, then the HEALTHCHECK command against that server.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from sansio_gateway.adapters.emulator.ollama import run_ollama_emulator
from sansio_gateway.adapters.plugins import load_registry

from sansio_gateway.config import parse_config
from sansio_gateway.gateway import Gateway

ROOT = Path(__file__).resolve().parents[2]
CONFIG_IN_IMAGE = "/etc/sansio-gateway/gateway.toml"


# --------------------------------------------------------------------------- a Dockerfile parser


@dataclass
class Instruction:
    keyword: str  # upper case
    flags: dict[str, str]  # --name=value options before the arguments
    args: str  # the rest, as written

    @property
    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form CMD/ENTRYPOINT/RUN/HEALTHCHECK CMD, else None."""
        text = self.args.removeprefix("CMD").strip() if self.keyword == "HEALTHCHECK" else self.args
        if not text.startswith("["):
            return None
        value = json.loads(text)
        assert isinstance(value, list) and all(isinstance(item, str) for item in value)
        return value


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def one(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert len(found) == 1, f"{keyword}: {len(found)} in stage {self.name or self.base}"
        return found[0]


def parse_dockerfile(text: str) -> list[Stage]:
    """Instructions grouped by stage, with line continuations joined, comments dropped and
    ``${ARG}`` in FROM resolved from the global ARG defaults (Docker's own rules)."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comment lines inside a continuation are dropped too
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a line continuation"
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        flags: dict[str, str] = {}
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            name, _, value = flag[2:].partition("=")
            flags[name] = value
            rest = rest.strip()
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            global_args[name] = default
            continue
        if keyword == "FROM":
            base, *alias = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], base)
            name = alias[1] if len(alias) == 2 and alias[0].upper() == "AS" else None
            stages.append(Stage(base, name))
            continue
        assert stages, f"{keyword} before the first FROM"
        stages[-1].instructions.append(Instruction(keyword, flags, rest))
    return stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text(encoding="utf-8"))


def _run_command(instruction: Instruction) -> list[str]:
    """A shell-form RUN as its words (the only RUNs this test executes are single commands)."""
    assert instruction.exec_form is None and "&&" not in instruction.args
    return shlex.split(instruction.args)


def _pip_run(stage: Stage, verb: str) -> Instruction:
    runs = [run for run in stage.all("RUN") if f"pip {verb} " in run.args]
    assert len(runs) == 1, f"one 'pip {verb}' RUN in stage {stage.name or stage.base}"
    return runs[0]


# --------------------------------------------------------------------------- the Dockerfile


def test_dockerfile_is_multi_stage_with_a_slim_runtime(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    builder, runtime = stages[0], stages[-1]
    assert builder.name == "builder" and builder.base.startswith("python:")
    assert re.fullmatch(r"python:3\.1[1-9]-slim", runtime.base), runtime.base
    assert "pip wheel" in _pip_run(builder, "wheel").args
    # The runtime takes the builder's wheels and installs them offline, and nothing else.
    install = _pip_run(runtime, "install")
    copies_from_builder = [c for c in runtime.all("COPY") if c.flags.get("from") == "builder"]
    mounts_builder = "from=builder" in install.flags.get("mount", "")
    assert mounts_builder or copies_from_builder
    assert "--no-index" in install.args and "sansio-gateway" in install.args
    assert not runtime.all("ADD")


def test_dockerfile_runs_as_a_non_root_user(stages: list[Stage]) -> None:
    runtime = stages[-1]
    users = runtime.all("USER")
    assert users, "the runtime stage sets USER"
    user = users[-1].args.split(":")[0]
    assert user not in ("root", "0")
    position = runtime.instructions.index(users[-1])
    later = [i.keyword for i in runtime.instructions[position + 1 :]]
    assert "RUN" not in later and "USER" not in later  # nothing runs as root after it
    assert runtime.instructions.index(runtime.one("ENTRYPOINT")) > position


def test_dockerfile_healthcheck_asks_health_without_curl(stages: list[Stage]) -> None:
    runtime = stages[-1]
    check = runtime.one("HEALTHCHECK")
    command = check.exec_form
    assert command is not None and command[0] == "python" and command[1] == "-c"
    assert "urllib.request" in command[2] and "/health" in command[2]
    assert not any(tool in check.args for tool in ("curl", "wget"))
    assert {"interval", "timeout", "retries"} <= set(check.flags)
    port = re.search(r"127\.0\.0\.1:(\d+)/health", command[2])
    assert port is not None and port.group(1) in runtime.one("EXPOSE").args.split()


def test_dockerfile_reads_a_mounted_config_and_holds_no_secret(stages: list[Stage]) -> None:
    runtime = stages[-1]
    entrypoint, cmd = runtime.one("ENTRYPOINT").exec_form, runtime.one("CMD").exec_form
    assert entrypoint == ["sansio-gateway"] and cmd is not None
    assert cmd[0] == "serve" and cmd[cmd.index("--config") + 1] == CONFIG_IN_IMAGE
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    secret = re.compile(r"KEY|TOKEN|SECRET|PASSWORD", re.IGNORECASE)
    for stage in stages:
        for instruction in stage.all("ENV") + stage.all("ARG"):
            assert not secret.search(instruction.args), instruction.args
        for copy in stage.all("COPY"):
            assert not copy.args.split()[0].endswith(".toml") or "pyproject" in copy.args


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path, or one of its parents, wins."""
    ignored = False
    parts = path.split("/")
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.removeprefix("!").rstrip("/").removeprefix("**/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if pattern.removeprefix("!").startswith("**/"):
            candidates += ["/".join(parts[i:]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(candidate, glob) for candidate in candidates):
            ignored = not negate
    return ignored


def test_dockerignore_sends_only_what_the_build_copies(stages: list[Stage]) -> None:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    sources = [s for copy in stages[0].all("COPY") for s in copy.args.split()[:-1]]
    assert sources
    for source in sources:
        assert (ROOT / source).exists() and not _dockerignored(source, patterns), source
        if (ROOT / source).is_dir():
            assert not _dockerignored(f"{source}/__init__.py", patterns)
    for private in (".venv/bin/python", ".git/config", "tests/helpers.py", "gateway.toml",
                    "sansio-gateway-usage.db", "adapters/__pycache__/cli.cpython-311.pyc"):  # fmt: skip
        assert _dockerignored(private, patterns), private


# --------------------------------------------------------------------------- compose.yaml


@pytest.fixture(scope="module")
def compose() -> dict[str, object]:
    loaded = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def _service(compose: dict[str, object], name: str) -> dict[str, object]:
    services = compose["services"]
    assert isinstance(services, dict) and isinstance(services[name], dict)
    return services[name]


def _mounted_config(gateway: dict[str, object]) -> Path:
    volumes = gateway["volumes"]
    assert isinstance(volumes, list)
    mounts = [v.split(":") for v in volumes if isinstance(v, str) and CONFIG_IN_IMAGE in v]
    assert len(mounts) == 1 and mounts[0][2:] == ["ro"], "the config is mounted read-only"
    return ROOT / mounts[0][0]


def test_compose_has_gateway_redis_and_ollama_with_healthchecks(
    compose: dict[str, object],
) -> None:
    gateway = _service(compose, "gateway")
    assert gateway["build"] == "."
    for name in ("gateway", "redis", "ollama"):
        check = _service(compose, name)["healthcheck"]
        assert isinstance(check, dict) and check["test"][0] == "CMD", name
    assert _service(compose, "redis")["image"].startswith("redis:")  # type: ignore[union-attr]
    assert _service(compose, "ollama")["image"].startswith("ollama/ollama")  # type: ignore[union-attr]
    assert gateway["depends_on"] == {
        "redis": {"condition": "service_healthy"},
        "ollama": {"condition": "service_healthy"},
    }
    assert "/health" in " ".join(gateway["healthcheck"]["test"])  # type: ignore[index]


def _compose_command(compose: dict[str, object]) -> str:
    """The gateway's ``sh -c`` command as the shell receives it (compose turns $$ into $)."""
    gateway = _service(compose, "gateway")
    assert gateway["entrypoint"] == ["/bin/sh", "-c"]
    command = gateway["command"]
    assert isinstance(command, list) and len(command) == 1
    return str(command[0]).replace("$$", "$")


@pytest.mark.parametrize("override", [None, "3"])
def test_compose_sets_workers_from_the_cpu_count(
    compose: dict[str, object], override: str | None
) -> None:
    command = _compose_command(compose)
    assert command.startswith("exec sansio-gateway serve ")
    # Run the very shell line, with printf standing in for the gateway, to see its arguments.
    probe = command.replace("exec sansio-gateway", "printf '%s\\n'", 1)
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_WORKERS"}
    if override is not None:
        env["GATEWAY_WORKERS"] = override
    done = subprocess.run(["/bin/sh", "-c", probe], env=env, capture_output=True, text=True,
                          timeout=30, check=True)  # fmt: skip
    argv = done.stdout.splitlines()
    expected = override or str(len(os.sched_getaffinity(0)))  # what nproc counts
    assert argv[argv.index("--workers") + 1] == expected
    assert argv[argv.index("--config") + 1] == CONFIG_IN_IMAGE


def test_compose_config_shares_state_in_redis_and_takes_keys_from_the_environment(
    compose: dict[str, object],
) -> None:
    gateway = _service(compose, "gateway")
    path = _mounted_config(gateway)
    text = path.read_text(encoding="utf-8")
    named = re.findall(r'^\s*(?:key_env|api_key_env)\s*=\s*"(\w+)"', text, flags=re.MULTILINE)
    assert named, "keys come from the environment"
    environment = gateway["environment"]
    assert isinstance(environment, dict)
    for name in named:  # compose passes each one and refuses to start without it
        assert str(environment[name]).startswith(f"${{{name}:?"), name
    config = parse_config(text, source=str(path), env={name: f"sk-{name}" for name in named})
    Gateway(config, registry=load_registry())  # what check-config also checks
    assert config.store.url == config.store.usage == "redis://redis:6379/0"
    assert "redis" in _service(compose, "gateway")["depends_on"]  # type: ignore[operator]
    backends = {urlsplit(backend.url).netloc for backend in config.backends}
    assert backends == {"ollama:11434"}
    assert any(key.admin for key in config.auth.keys)


# --------------------------------------------------------------------------- build and run


@pytest.fixture(scope="module")
def installed_image(tmp_path_factory: pytest.TempPathFactory, stages: list[Stage]) -> Path:
    """The builder's and the runtime stage's commands, run here: the wheel built from a copy of
    what the builder COPYs, then installed into a fresh directory by the install command.

    The same commands, made offline by pip's own environment variables: no dependencies (this
    test's venv has them) and no build isolation (its setuptools builds the wheel)."""
    base = tmp_path_factory.mktemp("image")
    builder, runtime = stages[0], stages[-1]
    context = base / "src"
    context.mkdir()
    for copy in builder.all("COPY"):
        *sources, _target = copy.args.split()
        for source in sources:
            origin = ROOT / source
            if origin.is_dir():
                shutil.copytree(
                    origin, context / source, ignore=shutil.ignore_patterns("__pycache__")
                )
            else:
                shutil.copy2(origin, context / source)
    offline = {
        **os.environ,
        "PIP_CONFIG_FILE": os.devnull,  # this machine's pip settings are not the image's
        "PIP_NO_INDEX": "1",
        "PIP_NO_DEPS": "1",
        "PIP_NO_BUILD_ISOLATION": "0",  # pip reads this as "isolation off"
        "PIP_NO_CACHE_DIR": "1",
    }
    wheels, target = base / "wheels", base / "site"
    build = [
        arg.replace("/wheels", str(wheels)) for arg in _run_command(_pip_run(builder, "wheel"))
    ]
    assert build[:3] == ["python", "-m", "pip"]
    subprocess.run([sys.executable, *build[1:]], cwd=context, env=offline, check=True,
                   capture_output=True, timeout=300)  # fmt: skip
    built = list(wheels.glob("sansio_gateway-*.whl"))
    assert len(built) == 1, built
    install = [
        a.replace("/wheels", str(wheels)) for a in _run_command(_pip_run(runtime, "install"))
    ]
    subprocess.run([sys.executable, *install[1:], "--target", str(target)], env=offline,
                   check=True, capture_output=True, timeout=300)  # fmt: skip
    return target


def _serve_env(target: Path, **extra: str) -> dict[str, str]:
    # The installed directory first on the path: the wheel's code, not this checkout's.
    return {**os.environ, "PYTHONPATH": str(target), **extra}


def test_the_wheel_holds_the_whole_package(installed_image: Path) -> None:
    probe = ("import sansio_gateway, sansio_gateway.adapters.cli, sansio_gateway.adapters.emulator"
             ".command as c; print(sansio_gateway.__file__); print(c.__file__)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", probe], env=_serve_env(installed_image),
                          cwd=installed_image, capture_output=True, text=True, check=True)  # fmt: skip
    for line in done.stdout.splitlines():
        assert Path(line).is_relative_to(installed_image), line
    assert (installed_image / "bin" / "sansio-gateway").exists()  # the ENTRYPOINT


def test_the_image_command_serves_and_its_healthcheck_passes(
    installed_image: Path, stages: list[Stage], tmp_path: Path
) -> None:
    runtime = stages[-1]
    entrypoint, cmd = runtime.one("ENTRYPOINT").exec_form, runtime.one("CMD").exec_form
    check = runtime.one("HEALTHCHECK").exec_form
    assert entrypoint and cmd and check
    port = str(_free_port())
    exposed = runtime.one("EXPOSE").args.split()[0]
    with run_ollama_emulator() as emulator:
        # The mounted-config stand-in: a key from the environment, as the image expects.
        config = tmp_path / "gateway.toml"
        config.write_text(
            f'[[backends]]\nname = "ollama"\nkind = "ollama"\nurl = "{emulator.url}"\n'
            '[[auth.keys]]\nid = "alice"\nuser = "alice"\nkey_env = "ALICE_KEY"\n'
        )
        argv = [str(config) if a == CONFIG_IN_IMAGE else a for a in cmd]
        argv = [port if a == exposed else a for a in argv]
        script = installed_image / "bin" / entrypoint[0]
        env = _serve_env(installed_image, ALICE_KEY="sk-alice-from-env")
        # WORKDIR: the runtime stage runs in its own directory (the SQLite ledger lands there).
        workdir = tmp_path / "workdir"
        workdir.mkdir()
        with _process([sys.executable, str(script), *argv], env, workdir) as lines:
            assert any("listening on http://0.0.0.0:" + port in line for line in lines)
            health = [arg.replace(f":{exposed}/", f":{port}/") for arg in check]
            assert health[0] == "python"
            ran = subprocess.run([sys.executable, *health[1:]], capture_output=True, timeout=30,
                                 check=False)  # fmt: skip
            assert ran.returncode == 0, ran.stderr
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            body = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "Hi"}]}
            assert httpx.post(url, json=body, timeout=30).status_code == 401
            ok = httpx.post(url, json=body, timeout=30,
                            headers={"Authorization": "Bearer sk-alice-from-env"})  # fmt: skip
            assert ok.status_code == 200, ok.text
        assert (workdir / "sansio-gateway-usage.db").exists()
    # With the server gone the same check fails, as Docker would then mark it unhealthy.
    ran = subprocess.run(
        [sys.executable, *health[1:]], capture_output=True, timeout=30, check=False
    )
    assert ran.returncode != 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _process:
    """Run a server until its "listening on" line; stop it with SIGTERM, as Docker does."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)  # fmt: skip

    def __enter__(self) -> list[str]:
        assert self.proc.stdout is not None
        lines: list[str] = []
        for line in self.proc.stdout:
            lines.append(line)
            if "listening on" in line:
                return lines
        self.proc.wait(30)
        raise AssertionError("the server exited: " + "".join(lines))

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        assert self.proc.returncode == 0, out


def test_the_emulator_override_runs_from_the_image_and_its_healthcheck_passes(
    installed_image: Path, compose: dict[str, object], tmp_path: Path
) -> None:
    """compose.emulator.yaml swaps Ollama for the image's ``emulate``, on the port the mounted
    config's backend URL names; run its command and healthcheck as the container would."""
    override = yaml.safe_load((ROOT / "compose.emulator.yaml").read_text(encoding="utf-8"))
    ollama = override["services"]["ollama"]
    assert ollama["image"] == _service(compose, "gateway")["image"] and ollama["build"] == "."
    argv = [*ollama["entrypoint"], *ollama["command"]]
    assert argv[:2] == ["sansio-gateway", "emulate"] and argv[argv.index("--host") + 1] == "0.0.0.0"
    text = _mounted_config(_service(compose, "gateway")).read_text(encoding="utf-8")
    config = parse_config(text, source="gateway.toml", env={"ALICE_KEY": "a", "OPS_KEY": "o"})
    listen = argv[argv.index("--port") + 1]
    assert [urlsplit(b.url).netloc for b in config.backends] == [f"ollama:{listen}"]
    port = str(_free_port())
    argv = [port if arg == listen else arg for arg in argv]
    check = [arg.replace(f":{listen}/", f":{port}/") for arg in ollama["healthcheck"]["test"][1:]]
    with _process([sys.executable, str(installed_image / "bin" / argv[0]), *argv[1:]],
                  _serve_env(installed_image), tmp_path):  # fmt: skip
        ran = subprocess.run([sys.executable, *check[1:]], capture_output=True, timeout=30,
                             check=False)  # fmt: skip
        assert ran.returncode == 0, ran.stderr

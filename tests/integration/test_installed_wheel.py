"""The project installed as a wheel, next to another distribution's ``adapters``.

AdapterHub's ``adapters`` distribution installs a top-level package named
``adapters``, like the folder the gateway's I/O adapters live in.  The
wheel installs that folder as ``sansio_gateway.adapters`` instead, so both
can be installed side by side.  Here the project's wheel is built, installed
with a stand-in ``adapters`` distribution into one directory, and run from
outside the repo with only that directory and this venv's site-packages on
the path (no ``site``, so the editable install of the repo is not seen).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.emulators.ollama import OllamaEmulator, run_ollama_emulator

ROOT = Path(__file__).resolve().parents[2]
PROJECT_FILES = ("pyproject.toml", "README.md", "sansio_gateway", "adapters")
STANDIN = "adapterhub-stand-in"
IO_MODULES = ("anyio", "h11", "trio", "asyncio", "redis", "sqlite3", "prometheus_client", "httpx")


@pytest.fixture(scope="module")
def emulator() -> Iterator[OllamaEmulator]:
    with run_ollama_emulator() as emu:
        yield emu


def _pip(*args: str, cwd: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
        cwd=cwd,
        check=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DIR holding the project's wheel and the stand-in, installed side by side."""
    work = tmp_path_factory.mktemp("wheel")
    # A copy of the sources, so building writes nothing into the repo.
    source = work / "source"
    for name in PROJECT_FILES:
        if (ROOT / name).is_dir():
            shutil.copytree(
                ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    wheels = work / "wheels"
    _pip("wheel", ".", "--no-deps", "-w", str(wheels), cwd=source)
    (wheel,) = wheels.glob("sansio_gateway-*.whl")
    target = work / "site"
    _pip(
        "install", "--no-deps", "--target", str(target), str(wheel), str(_standin(wheels)), cwd=work
    )
    return target


def _standin(folder: Path) -> Path:
    """A wheel of a distribution named ``adapters`` with a top-level
    ``adapters`` package, as AdapterHub's installs (written by hand: it is
    three small files)."""
    files = {
        "adapters/__init__.py": f"STANDIN = {STANDIN!r}\n",
        "adapters-0.0.1.dist-info/METADATA": (
            "Metadata-Version: 2.1\nName: adapters\nVersion: 0.0.1\n"
        ),
        "adapters-0.0.1.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = [f"{name},sha256={_digest(text)},{len(text.encode())}" for name, text in files.items()]
    files["adapters-0.0.1.dist-info/RECORD"] = "\n".join(
        [*record, "adapters-0.0.1.dist-info/RECORD,,", ""]
    )
    path = folder / "adapters-0.0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return path


def _digest(text: str) -> str:
    raw = hashlib.sha256(text.encode()).digest()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _env(target: Path) -> dict[str, str]:
    env = dict(os.environ)
    paths = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    env["PYTHONPATH"] = os.pathsep.join([str(target), *paths])
    return env


def _python(*args: str) -> list[str]:
    # -S: no site, so no .pth file (the editable install of the repo) is read.
    return [sys.executable, "-S", *args]


PROBE = """
import importlib, json, pathlib, sys
import sansio_gateway
# Found on disk, not with pkgutil.walk_packages: that imports every package
# it walks into, sansio_gateway.adapters included.
top = pathlib.Path(sansio_gateway.__file__).parent
core = sorted(
    ".".join(("sansio_gateway", *p.relative_to(top).with_suffix("").parts)).removesuffix(".__init__")
    for p in top.rglob("*.py") if p.relative_to(top).parts[0] != "adapters"
)
for name in core:
    importlib.import_module(name)
loaded_by_core = sorted(n for n in sys.modules
                        if n.split(".")[0] in IO or n.startswith("sansio_gateway.adapters"))
import adapters
import sansio_gateway.adapters.cli
import sansio_gateway.adapters.asgi
print(json.dumps({
    "core_modules": len(core),
    "loaded_by_core": loaded_by_core,
    "standin": getattr(adapters, "STANDIN", None),
    "standin_file": adapters.__file__,
    "core_file": sansio_gateway.__file__,
    "adapters_file": sansio_gateway.adapters.__file__,
    "path": sys.path,
}))
"""


def test_both_import_and_the_core_loads_no_io(installed: Path, tmp_path: Path) -> None:
    probe = f"IO = {IO_MODULES!r}\n" + PROBE
    out = subprocess.run(
        _python("-c", probe),
        cwd=tmp_path,
        env=_env(installed),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    found = json.loads(out.stdout)
    assert str(ROOT) not in found["path"]
    assert found["standin"] == STANDIN
    assert Path(found["standin_file"]) == installed / "adapters" / "__init__.py"
    assert Path(found["core_file"]) == installed / "sansio_gateway" / "__init__.py"
    assert Path(found["adapters_file"]) == installed / "sansio_gateway" / "adapters" / "__init__.py"
    assert found["core_modules"] > 20
    assert found["loaded_by_core"] == []


def test_serve_from_the_installed_wheel_answers_health(
    installed: Path, emulator: OllamaEmulator, tmp_path: Path
) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[store]\nusage = "sqlite:///{tmp_path}/usage.db"\n'
        f'[[backends]]\nname = "local"\nurl = "{emulator.url}"\n'
    )
    command = _python("-m", "sansio_gateway.adapters.cli")
    proc = subprocess.Popen(
        [*command, "--log-level", "WARNING", "serve", "--config", str(config), "--port", "0"],
        cwd=tmp_path,
        env=_env(installed),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:  # startup lines, then the address
            seen.append(line)
            if "listening on " in line:
                break
        else:
            raise AssertionError("".join(seen))
        url = line.split("listening on ")[1].split()[0]
        response = httpx.get(url + "/health", timeout=10)
        assert response.status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

"""The user guide builds: `mkdocs build --strict` (broken links, missing snippets,
unknown pages all fail it), into a temporary directory, never into the repo."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    site = tmp_path / "site"
    # Material for MkDocs prints a banner about MkDocs 2.0 unless told not to.
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=ROOT,  # the snippets' base_path is relative to the working directory
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for page in ("index", "quickstart", "configuration", "deployment", "embedding"):
        path = site / "index.html" if page == "index" else site / page / "index.html"
        assert path.is_file(), page
    assert (site / "examples" / "minimal_adapter.py").is_file()
    walkthrough = (site / "embedding" / "index.html").read_text(encoding="utf-8")
    # The snippets were included (highlighting splits the code into spans).
    assert "MinimalAdapter" in walkthrough and "record_discovery_failure" in walkthrough
    assert "--8&lt;--" not in walkthrough

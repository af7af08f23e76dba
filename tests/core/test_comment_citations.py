"""Comments and docstrings cite only what a clone of the repo holds.

Wire facts live in docs/wire-notes.md, limiter behaviour in docs/rate-limiting.md,
and so on; a citation names the page and a heading, as in
``docs/wire-notes.md, "Tool-call ids"``.  Numbered tags into notes kept outside the
repo (pitfall numbers, numbered sections, the style and design files) mean
nothing to a reader of a clone, so they fail here.

Only comments (tokenize) and docstrings (ast) are read, never other string
literals: a test may well hold the forbidden names as data.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("sansio_gateway", "adapters", "tests", "benchmarks")

# Built from pieces so that this file's own docstring stays clean of them.
_OUTSIDE = "|".join(
    (
        r"\bpitfalls? \d+",
        r"\b[Ss]ections? \d+",
        "\u00a7",
        r"\bSTYLE(\.md|:)",
        r"\bDESIGN(\.md|:)",
        r"ollama-openai-wire",
        r"/work/shared",
        r"\b[Rr]eference section",
        r"\bwire reference\b",
    )
)
FORBIDDEN = re.compile(_OUTSIDE)
# Any "<name>.md, "<Title>" citation; the page must be under docs/.
CITATION = re.compile(r'([\w./-]+\.md), "')


def _texts(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every comment block and docstring, whitespace collapsed."""
    source = path.read_text(encoding="utf-8")
    found: list[tuple[int, str]] = []
    block: list[str] = []
    start = last = 0
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type != tokenize.COMMENT:
            continue
        line = tok.start[0]
        if block and line != last + 1:
            found.append((start, " ".join(block)))
            block = []
        if not block:
            start = line
        block.append(tok.string.lstrip("#").strip())
        last = line
    if block:
        found.append((start, " ".join(block)))
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                line = node.body[0].lineno if node.body else 1
                found.append((line, " ".join(doc.split())))
    return found


def _files() -> list[Path]:
    return [p for root in SCANNED for p in sorted((ROOT / root).rglob("*.py"))]


def _headings(page: Path) -> set[str]:
    titles = set()
    for line in page.read_text(encoding="utf-8").splitlines():
        match = re.match(r"#{1,6} (.+?)\s*(\{#[^}]*\})?\s*$", line)
        if match:
            titles.add(match.group(1).replace("`", ""))
    return titles


def test_no_comment_cites_a_numbered_tag_or_a_file_outside_the_repo() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {match.group(0)!r}"
        for path in _files()
        for line, text in _texts(path)
        for match in FORBIDDEN.finditer(text)
    ]
    assert not offenders, "\n".join(offenders)


def test_every_doc_citation_names_an_existing_page_and_heading() -> None:
    headings: dict[str, set[str]] = {}
    offenders = []
    for path in _files():
        for line, text in _texts(path):
            for match in CITATION.finditer(text):
                page, where = match.group(1), f"{path.relative_to(ROOT)}:{line}"
                if not page.startswith("docs/") or not (ROOT / page).is_file():
                    offenders.append(f"{where}: no page {page}")
                    continue
                titles = headings.setdefault(page, _headings(ROOT / page))
                rest = text[match.end() :]
                # A title may itself hold quotes: accept any heading followed by '"'.
                if not any(rest.startswith(title + '"') for title in titles):
                    offenders.append(f"{where}: no heading in {page}: {rest[:50]!r}")
    assert not offenders, "\n".join(offenders)


def test_the_checks_see_a_bad_citation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        '"""See docs/rate-limiting.md, "No such heading"."""\n'
        "# Ollama drops it (pitfall" + " 3).\n",
        encoding="utf-8",
    )
    texts = _texts(bad)
    assert any(FORBIDDEN.search(text) for _, text in texts)
    assert any(CITATION.search(text) for _, text in texts)


# The user guide and the README are read by people with only a clone, too.
PAGES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
LINK = re.compile(r"\]\(([\w./-]+\.md)(?:#([\w-]+))?\)")


def _slug(title: str) -> str:
    """The anchor Python-Markdown's table of contents gives a heading."""
    text = re.sub(r"[^\w\s-]", "", title.lower())
    return re.sub(r"[\s]+", "-", text.strip())


def test_no_page_cites_a_numbered_tag_or_a_file_outside_the_repo() -> None:
    offenders = [
        f"{page.relative_to(ROOT)}:{n}: {match.group(0)!r}"
        for page in PAGES
        for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
        for match in FORBIDDEN.finditer(line)
    ]
    assert not offenders, "\n".join(offenders)


def test_every_link_between_pages_names_an_existing_page_and_heading() -> None:
    offenders = []
    for page in PAGES:
        for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            for match in LINK.finditer(line):
                target = (page.parent / match.group(1)).resolve()
                where = f"{page.relative_to(ROOT)}:{n}"
                if not target.is_file():
                    offenders.append(f"{where}: no page {match.group(1)}")
                elif match.group(2) and match.group(2) not in {_slug(t) for t in _headings(target)}:
                    offenders.append(f"{where}: no heading #{match.group(2)} in {target.name}")
    assert not offenders, "\n".join(offenders)


def test_the_page_checks_see_a_bad_link() -> None:
    assert _slug("tool_choice") == "tool_choice"
    assert _slug("Native options over /v1") == "native-options-over-v1"
    match = LINK.search("see [x](wire-notes.md#no-such-heading).")
    assert match is not None and match.group(2) == "no-such-heading"

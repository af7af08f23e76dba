"""Generate docs/configuration.md from the pydantic models in sansio_gateway/config.py.

    python docs/gen_config_reference.py            # rewrite docs/configuration.md
    python docs/gen_config_reference.py --check    # exit 1 if it is out of date

Everything about a key -- its name, type, default and constraints -- is read
from the models, and its description from the comments beside the field in
``config.py`` (falling back to ``FALLBACK`` below for keys the source leaves
uncommented).  Only the section prose and the example values live here.  A
test (``tests/core/test_config_reference.py``) fails when the page and the
models disagree, and when a model grows a section this script does not know.
"""

from __future__ import annotations

import argparse
import ast
import io
import sys
import tokenize
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere in a checkout
    sys.path.insert(0, str(ROOT))

from sansio_gateway import config as config_module  # noqa: E402
from sansio_gateway.config import (  # noqa: E402
    AuthConfig,
    AuthKey,
    BackendConfig,
    GatewayConfig,
    LimitsConfig,
    LimitValues,
    ModelConfig,
    ServerConfig,
    StoreConfig,
    TracingConfig,
)

TARGET = ROOT / "docs" / "configuration.md"
SHA256_EXAMPLE = "4c4a1f2a1e0b5d0b0c7e6f9c8d7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a"


@dataclass(frozen=True)
class Section:
    """One TOML table of the file, documented from one model."""

    key: str  # dotted prefix of its keys in the reference, e.g. "auth.keys[]"
    header: str  # the TOML header in the example, e.g. "[[auth.keys]]"
    model: type[BaseModel]
    intro: str
    skip: frozenset[str] = frozenset()  # fields documented as sections of their own
    examples: dict[str, Any] = field(default_factory=dict)  # values that differ from defaults
    commented: frozenset[str] = frozenset()  # alternatives shown commented out
    sparse: bool = False  # the example shows only ``examples`` (overrides)


SECTIONS = (
    Section(
        "server",
        "[server]",
        ServerConfig,
        "Where the gateway listens and the transport limits it enforces.  Every key is optional.",
        examples={"default_max_tokens": 4096},
    ),
    Section(
        "backends[]",
        "[[backends]]",
        BackendConfig,
        "The servers that run the models, tried in config order.  With no"
        " `[[backends]]` at all the gateway uses one `ollama` backend at"
        " `$OLLAMA_HOST` (default `http://127.0.0.1:11434`).",
        examples={
            "name": "local",
            "url": "http://127.0.0.1:11434",
            "api_key_env": "UPSTREAM_KEY",
        },
    ),
    Section(
        "models[]",
        "[[models]]",
        ModelConfig,
        "Aliases and routing.  Models discovered on backends are served under"
        " their own names without any entry here; an entry renames a model,"
        " pins it to a backend, or gives it fallbacks.",
        examples={
            "name": "gpt-4o-mini",
            "backend": "local",
            "target": "llama3.2:1b",
            "fallbacks": ("local:llama3.2:3b",),
        },
    ),
    Section(
        "auth.keys[]",
        "[[auth.keys]]",
        AuthKey,
        "API keys.  With no keys the gateway is open, which `serve` allows only"
        " on a loopback address unless `--allow-anonymous` is given.  Clients"
        " send a key as `Authorization: Bearer <key>` (OpenAI SDKs) or"
        " `x-api-key`.  Give each key exactly one of `sha256` and `key_env`."
        "  `models` is an array of model names or patterns (a lone string such as"
        " `models = \"*\"` counts as a one-item array).  An admin key (`admin = true`,"
        " which `sansio-gateway new-key --admin` writes for you) may also call"
        " `GET /admin/usage` (see the rate limiting guide, \"Reading usage\").",
        examples={
            "id": "alice-laptop",
            "user": "alice",
            "sha256": SHA256_EXAMPLE,
            "key_env": "ALICE_KEY",
            "models": ("gpt-4o-mini", "llama3*"),
        },
        commented=frozenset({"key_env"}),
    ),
    Section(
        "limits",
        "[limits]",
        LimitsConfig,
        "Defaults for every user.  A limit that is not set does not apply; with"
        " no limits anywhere, no limit store is consulted.  The algorithm, the"
        " `x-ratelimit-*` headers and the 429s are described in the rate limiting"
        " guide (`docs/rate-limiting.md`).",
        skip=frozenset({"users", "models"}),
        examples={
            "requests_per_minute": 60,
            "tokens_per_minute": 100_000,
            "tokens_per_day": 2_000_000,
            "concurrent_requests": 8,
        },
    ),
    Section(
        "limits.users.<user>",
        "[limits.users.alice]",
        LimitValues,
        "Overrides for one user (the `user` of their keys); keys not given keep the defaults.",
        examples={"tokens_per_minute": 200_000},
        sparse=True,
    ),
    Section(
        'limits.models."<model>"',
        '[limits.models."gpt-4o-mini"]',
        LimitValues,
        "Extra limits for each user calling one model (the model the name resolves"
        " to, whatever spelling the client uses), checked on top of the user's own.  Per model, `requests_per_minute`"
        " and `tokens_per_minute` apply; the other keys are accepted but only"
        " count per user.",
        examples={"requests_per_minute": 30},
        sparse=True,
    ),
    Section(
        "store",
        "[store]",
        StoreConfig,
        "Where limit state and the usage ledger live.  The defaults keep"
        " everything in the process and a local SQLite file.",
    ),
    Section(
        "tracing",
        "[tracing]",
        TracingConfig,
        "OpenTelemetry traces, off unless `enabled = true`; they need the `otel` extra"
        " (`pip install 'sansio-gateway[otel]'`).  One span per request, with child spans"
        " for the limit check and each upstream attempt; a client's W3C `traceparent`"
        " is the parent and goes upstream with each attempt.  Empty keys fall back to"
        " the standard `OTEL_*` environment variables (the tracing guide,"
        " `docs/tracing.md`).",
        examples={"enabled": True, "endpoint": "http://127.0.0.1:4318", "sample_ratio": 0.1},
        commented=frozenset({"service_name"}),
    ),
)

# Descriptions for keys that config.py leaves uncommented.  A comment in the
# source wins; prefer adding one there.
FALLBACK = {
    "server.host": "Address to listen on.  Anything but loopback needs `[[auth.keys]]`"
    " (or `serve --allow-anonymous`).",
    "server.port": "TCP port to listen on.",
    "server.max_body_bytes": "Largest request body accepted; larger requests get 413.",
    "server.max_header_bytes": "Largest request head accepted; larger heads get 431.",
    "server.read_timeout": "Seconds to receive a request's head and body once it starts"
    " (408 after that).",
    "server.keepalive_timeout": "Seconds an idle keep-alive connection stays open.",
    "server.shutdown_grace": "Seconds requests in flight get to finish on SIGTERM; the rest"
    " end with an error (an in-band error event for streams).",
    "server.runtime": "Event loop `serve` runs on.",
    "backends[].name": "Name that models and fallbacks refer to (no `:` or whitespace).",
    "backends[].kind": '`"ollama"` (the native API), `"openai"` (any OpenAI-compatible'
    ' server: vLLM, llama.cpp, OpenAI, another gateway) or `"anthropic"` (an'
    " Anthropic-compatible Messages API: `/v1/messages` passes through).",
    "backends[].url": "Base URL: the server root for `ollama`; the base URL including"
    " `/v1` for `openai` and `anthropic` (`https://api.anthropic.com/v1`).",
    "backends[].api_key_env": "Environment variable holding the key sent upstream as"
    " `Authorization: Bearer` (as `x-api-key` for `anthropic`); the config file never"
    " holds it.",
    "backends[].connect_timeout": "Seconds to open a connection.",
    "backends[].first_byte_timeout": "Seconds to wait for the response head (a model may"
    " need minutes to load).",
    "backends[].idle_timeout": "Seconds allowed between two chunks of a stream.",
    "backends[].total_timeout": "Seconds for the whole upstream request.",
    "backends[].discover": "List the backend's models at startup and on every probe"
    " (`/api/tags` or `/models`); the probe also feeds `/ready` and the circuit breaker.",
    "models[].name": "The model name clients ask for.",
    "models[].backend": "The backend that serves it.",
    "models[].target": "What the backend calls the model (default: `name`).",
    "models[].fallbacks": 'Tried in order when the backend fails: `"backend:model"`.',
    "auth.keys[].id": "Names the key in logs, metrics and usage records.",
    "auth.keys[].user": "The user whose limits and usage the key counts against.",
    "auth.keys[].sha256": "Hex sha256 of the key (`sansio-gateway new-key` prints it);"
    " the key itself is never stored.",
    "auth.keys[].key_env": "Instead of `sha256`: an environment variable holding the key,"
    " hashed when the config is loaded.",
    "auth.keys[].models": "Allow-list of model names, with `*` globs; other models look"
    " like they do not exist.",
    "auth.keys[].admin": "May call `/admin/usage`.",
    "requests_per_minute": "Requests per minute.",
    "tokens_per_minute": "Prompt plus completion tokens per minute: estimated at admission,"
    " settled with the real count.",
    "tokens_per_day": "Prompt plus completion tokens per day.",
    "concurrent_requests": "Requests in flight at once.",
    "store.url": '`"memory://"` (one process) or `"redis://host:6379/0"`,'
    ' `"redis+cluster://host:7000"` (shared by processes and machines;'
    " `rediss://` for TLS).",
    "store.on_error": 'When the shared store fails: `"open"` admits, `"closed"` refuses'
    ' with 503, `"local"` falls back to per-process limits.',
    "store.usage": 'The usage ledger: `"sqlite:///PATH"` (one machine), `"memory://"`, or'
    ' a Redis URL (`"redis://host:6379/0"`, `"redis+cluster://host:7000"`) shared by every'
    " gateway process.  `\"sqlite:///PATH?synchronous=full\"` syncs every commit to disk"
    " (default `normal`; see deployment.md, \"What a crash can lose\").",
}

_PRAGMAS = ("fmt:", "type:", "noqa", "pragma")


# ---- reading the source's comments --------------------------------------------------


def field_comments(source: str) -> dict[tuple[str, str], str]:
    """(class name, field name) -> the comments above and beside the field."""
    comments = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            text = token.string.lstrip("#").strip()
            if not text.startswith(_PRAGMAS):
                comments[token.start[0]] = text
    lines = source.splitlines()
    found = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef):
            for stmt in node.body:
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                    text = _comments_of(stmt, comments, lines)
                    found[(node.name, stmt.target.id)] = text
    return found


def _comments_of(stmt: ast.AnnAssign, comments: dict[int, str], lines: list[str]) -> str:
    above: list[str] = []
    line = stmt.lineno - 1
    while line in comments and lines[line - 1].lstrip().startswith("#"):
        above.insert(0, comments[line])
        line -= 1
    end = stmt.end_lineno or stmt.lineno
    beside = [comments[n] for n in range(stmt.lineno, end + 1) if n in comments]
    return " ".join(above + beside)


# ---- rendering values and types ---------------------------------------------------


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML form for {value!r}")


def type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        names = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(names)
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{toml_value(a)}`" for a in args)
    if origin in (tuple, list):
        return f"array of {type_name(args[0])}s"
    if origin is dict:
        return f"tables of {type_name(args[1])}"
    simple = {str: "string", int: "integer", float: "number", bool: "boolean"}
    if annotation in simple:
        return simple[annotation]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "table"
    raise TypeError(f"no name for type {annotation!r}")


def constraints(info: FieldInfo) -> list[str]:
    out = []
    for item in info.metadata:
        if isinstance(item, annotated_types.Ge):
            out.append(f">= {item.ge}")
        elif isinstance(item, annotated_types.Gt):
            out.append(f"> {item.gt}")
        elif isinstance(item, annotated_types.Le):
            out.append(f"<= {item.le}")
        elif isinstance(item, annotated_types.Lt):
            out.append(f"< {item.lt}")
        elif isinstance(item, annotated_types.MinLen):
            size = item.min_length
            out.append("non-empty" if size == 1 else f"at least {size} characters")
        elif getattr(item, "pattern", None):
            out.append(f"matches `{item.pattern}`")
    return out


def default_of(info: FieldInfo) -> Any:
    """The default value, or PydanticUndefined when the key is required."""
    if info.default_factory is not None:
        return info.default_factory()  # type: ignore[call-arg]
    return info.default


def default_text(info: FieldInfo) -> str:
    value = default_of(info)
    if value is PydanticUndefined:
        return "**required**"
    if value is None:
        return "not set"
    return f"`{toml_value(value)}`"


# ---- the page -----------------------------------------------------------------------


def documented_fields(section: Section) -> Iterator[tuple[str, FieldInfo]]:
    for name, info in section.model.model_fields.items():
        # Excluded fields are filled in by the loader (api_key from api_key_env).
        if name not in section.skip and not info.exclude:
            yield name, info


def description(section: Section, name: str, comments: dict[tuple[str, str], str]) -> str:
    for cls in section.model.__mro__:
        text = comments.get((cls.__name__, name))
        if text:
            return _sentence(text)
    dotted = f"{section.key}.{name}"
    return FALLBACK.get(dotted) or FALLBACK.get(name, "")


def _sentence(text: str) -> str:
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", ")", "!", "?")) else text + "."


def example_line(section: Section, name: str, info: FieldInfo) -> str:
    value = section.examples.get(name, default_of(info))
    if value is PydanticUndefined or value is None:
        raise ValueError(f"{section.key}.{name}: give an example value in SECTIONS")
    line = f"{name} = {toml_value(value)}"
    return f"# {line}" if name in section.commented else line


def example_block(section: Section) -> list[str]:
    lines = [section.header]
    for name, info in documented_fields(section):
        if name in section.examples or not section.sparse:
            lines.append(example_line(section, name, info))
    return lines


def render_section(section: Section, comments: dict[tuple[str, str], str]) -> list[str]:
    out = [f"## `{section.header}`", "", section.intro, ""]
    out += ["| key | type | default | description |", "|---|---|---|---|"]
    for name, info in documented_fields(section):
        kind = ", ".join([type_name(info.annotation), *constraints(info)])
        text = description(section, name, comments).replace("|", "\\|")
        out.append(f"| `{name}` | {kind} | {default_text(info)} | {text} |")
    out += ["", "```toml", *example_block(section), "```", ""]
    return out


HEADER = """\
<!-- Generated by docs/gen_config_reference.py from sansio_gateway/config.py.
     Do not edit: run `python docs/gen_config_reference.py` instead. -->

# Configuration reference

The gateway reads one TOML file: `sansio-gateway serve --config FILE`
(`sansio-gateway check-config FILE` validates it and names the key and the
problem when something is wrong).  Without a file it serves the Ollama at
`$OLLAMA_HOST` (or `http://127.0.0.1:11434`) on `127.0.0.1:8080`.

Unknown keys are errors, so a typo never goes unnoticed.  Secrets never sit
in the file: keys are stored as their sha256, and `*_env` keys name
environment variables that are read when the file is loaded.

A running gateway reads the file again on SIGHUP or `POST /admin/reload`
(an admin key), without a restart: keys, models, backends, limits and most
`[server]` keys apply to new requests; `server.host`, `server.port`,
`server.runtime`, `server.uvloop`, `server.transport`, every `[store]` and
every `[tracing]` key need a restart, and a reload that changes one is refused (see
[Operations](operations.md#reloading)).

Types are strict: a value must have the TOML type the table names.
`port = "8090"` and `tokens_per_minute = "6000"` are errors (write
`8090`, `6000`), and so is `admin = "yes"` (write `true`).  An integer is
accepted where a number of seconds is expected.  Every URL is checked
for its scheme and form (`backends[i].url`, `store.url`, `store.usage`),
and the error names the key.  `check-config` runs exactly the checks
`serve` runs before it starts, and both exit 2 with the same one-line
message, so `check-config` in `ExecStartPre` catches whatever `serve`
would refuse.

"""


def full_example() -> str:
    """Every section's example, as one file (the test loads it)."""
    blocks = ["\n".join(example_block(section)) for section in SECTIONS]
    return "\n\n".join(blocks) + "\n"


def render() -> str:
    check_coverage()
    comments = field_comments(Path(config_module.__file__).read_text(encoding="utf-8"))
    out = [HEADER.rstrip("\n"), ""]
    for section in SECTIONS:
        out += render_section(section, comments)
    out += [
        "## A complete example",
        "",
        "Every key above, in one file (`UPSTREAM_KEY` must be set in the environment):",
        "",
        "```toml",
        full_example().rstrip("\n"),
        "```",
        "",
    ]
    return "\n".join(out)


def check_coverage() -> None:
    """Fail loudly when the models grow a section this script does not document."""
    known = {section.key.split(".")[0].rstrip("[]") for section in SECTIONS}
    for name in GatewayConfig.model_fields:
        if name not in known:
            raise ValueError(f"config section {name!r} is not documented: add it to SECTIONS")
    for name in AuthConfig.model_fields:
        if f"auth.{name}[]" not in {s.key for s in SECTIONS}:
            raise ValueError(f"auth.{name} is not documented: add it to SECTIONS")
    for section in SECTIONS:
        for name, info in documented_fields(section):
            if type_name(info.annotation) == "table" or "tables of" in type_name(info.annotation):
                raise ValueError(f"{section.key}.{name} is a table: give it a Section")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if TARGET.read_text(encoding="utf-8") != text:
            print(f"{TARGET.relative_to(ROOT)} is out of date: run python {Path(__file__).name}")
            return 1
        print(f"{TARGET.relative_to(ROOT)} is up to date")
        return 0
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

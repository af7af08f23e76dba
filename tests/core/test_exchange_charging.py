"""What is charged, through the Exchange (issue 17 items 1, 2, 3, 9, 11).

The property that closes the class: on every generating route and backend
kind, the output cap charged at admission is at least the cap sent upstream
(in the field that kind of backend reads), and the prompt estimate is at
least an upper bound of the prompt text forwarded.  The Exchange is driven
with scripted results (tests/helpers.py); the SendUpstream body is compared
with the CheckLimits charge.
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from sansio_gateway.accounting.tokens import IMAGE_TOKENS, estimate_text
from sansio_gateway.actions import (
    CheckLimits,
    ClientDisconnected,
    UpstreamChunkReceived,
    UpstreamClosed,
    UpstreamFailed,
    UpstreamResponseStarted,
)
from sansio_gateway.backends.catalogue import DiscoveredModel
from sansio_gateway.errors import UpstreamError, UpstreamTimeout
from sansio_gateway.gateway import Gateway
from sansio_gateway.limits import MemoryLimitStore

from ..helpers import NOW, ExchangeDriver, make_config

BACKENDS = """
[[backends]]
name = "oa"
kind = "openai"
url = "http://oa.test/v1"

[[backends]]
name = "ol"
kind = "ollama"
url = "http://ol.test"

[[models]]
name = "on-openai"
backend = "oa"
target = "gpt-4o-mini"

[[models]]
name = "on-ollama"
backend = "ol"
target = "llama3.2:1b"
"""
MODELS = {"openai": "on-openai", "ollama": "on-ollama"}
ROUTES = {
    "chat.completions": "/v1/chat/completions",
    "completions": "/v1/completions",
    "ollama.chat": "/api/chat",
    "ollama.generate": "/api/generate",
    "anthropic.messages": "/v1/messages",
    "responses": "/v1/responses",
}


def gateway(limits: str = "[limits]\ntokens_per_day = 1000000\n") -> Gateway:
    gw = Gateway(make_config(BACKENDS + limits))
    gw.record_discovery("oa", [DiscoveredModel(name="gpt-4o-mini")], NOW - 5)
    gw.record_discovery("ol", [DiscoveredModel(name="llama3.2:1b")], NOW - 5)
    return gw


def charged(d: ExchangeDriver) -> int:
    checks = [a for a in d.seen.actions if isinstance(a, CheckLimits)]
    assert len(checks) == 1
    return checks[0].costs.tokens


def sent(d: ExchangeDriver) -> dict[str, Any]:
    assert d.seen.upstream, d.seen.body
    body = orjson.loads(d.seen.upstream[-1].body)
    assert isinstance(body, dict)
    return body


def sent_cap(kind: str, body: dict[str, Any]) -> int | None:
    """The output cap a backend of ``kind`` reads from ``body`` (None: unbounded)."""
    if kind == "ollama":
        value = (body.get("options") or {}).get("num_predict")
        return value if isinstance(value, int) and value > 0 else None
    caps = [body.get(k) for k in ("max_completion_tokens", "max_tokens", "n_predict")]
    given_caps = [c for c in caps if isinstance(c, int) and c > 0]
    # a server may read any of them: the largest is the bound it can be made to honour
    return max(given_caps) if given_caps else None


# ---- item 1: the Ollama passthrough reads options.num_predict ----------------------------


def test_a_top_level_max_tokens_does_not_dodge_the_daily_quota_on_api_chat() -> None:
    gw = gateway("[limits]\ntokens_per_day = 1000\n")
    store = MemoryLimitStore()
    honest = ExchangeDriver(gw, limits=store)
    honest.start("POST", "/api/chat", _chat("on-ollama", options={"num_predict": 100000}))
    assert honest.seen.status == 429
    dodge = ExchangeDriver(gw, request_id="req2", limits=store)
    body = _chat("on-ollama", options={"num_predict": 100000}, max_tokens=1)
    dodge.start("POST", "/api/chat", body)
    assert dodge.seen.status == 429  # was 200, with num_predict 100000 sent upstream


def test_the_default_cap_is_written_when_num_predict_is_unbounded() -> None:
    for value in (-1, -2, 0):
        d = ExchangeDriver(gateway())
        d.start("POST", "/api/generate", {"model": "on-ollama", "prompt": "hi",
                                          "options": {"num_predict": value}, "max_tokens": 5})  # fmt: skip
        assert sent(d)["options"]["num_predict"] == 4096
        assert charged(d) >= 4096


# ---- item 2: a cap is written to OpenAI-compatible backends ----------------------------


def test_an_output_cap_reaches_openai_backends_on_every_route() -> None:
    cases = [
        ("/v1/chat/completions", _chat("on-openai")),
        ("/v1/completions", {"model": "on-openai", "prompt": "hi"}),
        ("/api/chat", _chat("on-openai", options={"num_predict": -1})),
        ("/api/generate", {"model": "on-openai", "prompt": "hi", "options": {"num_predict": -2}}),
    ]
    for path, body in cases:
        d = ExchangeDriver(gateway())
        d.start("POST", path, body)
        assert sent(d).get("max_tokens") == 4096, path


def test_every_cap_field_an_openai_backend_may_read_is_set_to_the_charged_cap() -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", "/v1/chat/completions",
            _chat("on-openai", max_completion_tokens=10, max_tokens=100000))  # fmt: skip
    body = sent(d)
    assert body["max_completion_tokens"] == body["max_tokens"] == 10


def test_the_cap_is_written_on_every_attempt_in_the_field_of_its_backend_kind() -> None:
    gw = Gateway(
        make_config(
            BACKENDS
            + '[[models]]\nname = "both"\nbackend = "oa"\ntarget = "gpt-4o-mini"\n'
            + 'fallbacks = ["ol:llama3.2:1b"]\n[limits]\ntokens_per_day = 1000000\n'
        )
    )
    gw.record_discovery("oa", [DiscoveredModel(name="gpt-4o-mini")], NOW - 5)
    gw.record_discovery("ol", [DiscoveredModel(name="llama3.2:1b")], NOW - 5)
    d = ExchangeDriver(gw)
    d.start("POST", "/api/chat", _chat("both", options={"num_predict": -1}))
    assert orjson.loads(d.seen.upstream[0].body)["max_tokens"] == 4096
    refused = UpstreamError("could not connect", code="upstream_unreachable")
    while d.seen.upstream[-1].url.startswith("http://oa.test"):
        d.handle(UpstreamFailed(error=refused))
    assert sent(d)["options"]["num_predict"] == 4096


# ---- item 3: every forwarded prompt field is counted ---------------------------------


def test_a_generate_template_is_charged() -> None:
    template = "x" * 200_000
    gw = gateway("[limits]\ntokens_per_day = 5000\n")
    d = ExchangeDriver(gw)
    d.start("POST", "/api/generate", {"model": "on-ollama", "prompt": "hi", "template": template,
                                      "options": {"num_predict": 1}})  # fmt: skip
    assert d.seen.status == 429
    assert charged(d) >= 100_000


# ---- item 11: the default cap fits the burst --------------------------------------------


def test_a_small_tokens_per_minute_gets_a_fitted_cap_not_a_permanent_429() -> None:
    gw = gateway("[limits]\ntokens_per_minute = 6000\n")  # burst 1000 tokens
    d = ExchangeDriver(gw)
    d.start("POST", "/v1/chat/completions", _chat("on-ollama"))
    assert d.seen.status is None  # admitted, waiting for the backend
    cap = sent(d)["options"]["num_predict"]
    assert 0 < cap < 1000 and charged(d) <= 1000
    explicit = ExchangeDriver(gw, request_id="req2")
    explicit.start("POST", "/v1/chat/completions", _chat("on-ollama", max_tokens=4096))
    assert explicit.seen.status == 429  # the client's own cap is never shrunk


# ---- item 9: the charging rule on every ending -----------------------------------------


def _commit_after(
    *results: object, stream: bool = False, path: str = "/api/chat"
) -> tuple[int, int]:
    """(estimate, actual) of the one CommitLimits after feeding ``results``;
    an UpstreamFailed is repeated while the Exchange keeps retrying."""
    d = ExchangeDriver(gateway())
    d.start("POST", path, _chat("on-ollama", stream=stream, options={"num_predict": 100}))
    for result in results:
        sends = len(d.seen.upstream)
        d.handle(result)  # type: ignore[arg-type]
        while isinstance(result, UpstreamFailed) and len(d.seen.upstream) > sends:
            sends = len(d.seen.upstream)
            d.handle(result)
    [commit] = d.seen.commits
    return commit.estimate, commit.actual


HEAD_500 = UpstreamResponseStarted(status=500, headers=())
HEAD_200 = UpstreamResponseStarted(status=200, headers=())


def test_an_upstream_5xx_after_the_send_is_charged_the_reserved_amount() -> None:
    est, actual = _commit_after(HEAD_500, UpstreamChunkReceived(data=b'{"error":"oom"}'),
                                UpstreamClosed())  # fmt: skip
    assert actual == est  # was 0


def test_a_malformed_200_is_charged_the_reserved_amount() -> None:
    est, actual = _commit_after(HEAD_200, UpstreamChunkReceived(data=b"<html>"), UpstreamClosed())
    assert actual == est  # was 0


def test_a_first_byte_timeout_is_charged_the_reserved_amount() -> None:
    timeout = UpstreamTimeout("backend 'ol' timed out (waiting for the first byte)")
    est, actual = _commit_after(UpstreamFailed(error=timeout))
    assert actual == est  # was 0, after maybe minutes of generation


def test_a_non_stream_client_disconnect_is_charged_the_reserved_amount() -> None:
    est, actual = _commit_after(ClientDisconnected())
    assert actual == est  # was a prompt guess
    est, actual = _commit_after(HEAD_200, ClientDisconnected())
    assert actual == est


def test_a_stream_client_disconnect_is_charged_what_was_used_so_far() -> None:
    line = {"model": "m", "message": {"role": "assistant", "content": "x"}, "done": False}
    est, actual = _commit_after(HEAD_200, UpstreamChunkReceived(data=orjson.dumps(line) + b"\n"),
                                ClientDisconnected(), stream=True)  # fmt: skip
    assert 0 < actual < est


def test_only_a_failure_before_the_send_or_a_4xx_refusal_refunds() -> None:
    refused = UpstreamError("could not connect", code="upstream_unreachable")
    assert _commit_after(UpstreamFailed(error=refused))[1] == 0
    head_400 = UpstreamResponseStarted(status=400, headers=())
    assert _commit_after(head_400, UpstreamChunkReceived(data=b'{"error":"bad"}'),
                         UpstreamClosed())[1] == 0  # fmt: skip


def test_a_client_leaving_during_a_4xx_refusal_is_refunded() -> None:
    head_400 = UpstreamResponseStarted(status=400, headers=())
    assert _commit_after(head_400, ClientDisconnected())[1] == 0


def test_the_backends_own_counts_are_charged_when_it_gives_them() -> None:
    done = {"model": "m", "message": {"role": "assistant", "content": "x"}, "done": True,
            "prompt_eval_count": 7, "eval_count": 3}  # fmt: skip
    est, actual = _commit_after(HEAD_200, UpstreamChunkReceived(data=orjson.dumps(done)),
                                UpstreamClosed())  # fmt: skip
    assert actual == 10 < est


# ---- the property that closes the class --------------------------------------------------

text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=60)
IMAGE = "iVBORw0KGgoA" + "A" * 3000  # a PNG's base64, larger than its flat 1,024 tokens
cap_value = st.none() | st.integers(-2, 0) | st.integers(1, 50_000)


def _put(body: dict[str, Any], key: str, value: int | None) -> None:
    if value is not None:
        body[key] = value


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, dict[str, Any]]:
    route = draw(st.sampled_from(sorted(ROUTES)))
    kind = draw(st.sampled_from(["openai", "ollama"]))
    body: dict[str, Any] = {"model": MODELS[kind]}
    if route in ("anthropic.messages", "responses"):
        return route, kind, _over_chat(draw, route, body)
    if route in ("chat.completions", "ollama.chat"):
        msg: dict[str, Any] = {"role": draw(st.sampled_from(["user", "system"])),
                               "content": draw(text)}  # fmt: skip
        if route == "ollama.chat" and draw(st.booleans()):
            msg["images"] = [IMAGE] * draw(st.integers(1, 2))
        body["messages"] = [msg]
    else:
        body["prompt"] = draw(text)
    if route == "ollama.generate":
        for key in ("system", "template", "suffix"):
            if draw(st.booleans()):
                body[key] = draw(text)
        if draw(st.booleans()):
            body["images"] = [IMAGE] * draw(st.integers(1, 2))
        if draw(st.booleans()):
            body["context"] = draw(st.lists(st.integers(0, 10**5), max_size=20))
    if route == "chat.completions" and draw(st.booleans()):
        body["tools"] = [{"type": "function", "function": {"name": "f", "description": draw(text),
                                                           "parameters": {}}}]  # fmt: skip
    if draw(st.booleans()):
        body["stream"] = draw(st.booleans())
    for key in ("max_tokens", "max_completion_tokens"):
        _put(body, key, draw(cap_value.filter(lambda v: v is None or v > 0)))
    if route == "completions":
        body.pop("max_completion_tokens", None)
    predict = draw(cap_value)
    if predict is not None:
        body["options"] = {"num_predict": predict}
    return route, kind, body


def _over_chat(draw: st.DrawFn, route: str, body: dict[str, Any]) -> dict[str, Any]:
    """A Messages or Responses body: each is charged as the chat body it becomes."""
    if route == "anthropic.messages":
        body["max_tokens"] = draw(st.integers(1, 50_000))  # required in Anthropic's API
        body["messages"] = [{"role": "user", "content": draw(text)}]
        if draw(st.booleans()):
            body["system"] = draw(text)
    else:
        body["input"] = draw(text)
        if draw(st.booleans()):
            body["instructions"] = draw(text)
        _put(body, "max_output_tokens", draw(cap_value.filter(lambda v: v is None or v > 0)))
    if draw(st.booleans()):
        body["stream"] = draw(st.booleans())
    return body


def forwarded_prompt_bound(body: dict[str, Any]) -> int:
    """An upper bound of the prompt tokens in a forwarded body: every string
    value outside routing (model), runner options, and caps, at 2 bytes per
    token; every context id one token; images at their flat rate."""
    total = 0
    stack: list[Any] = [v for k, v in body.items() if k not in ("model", "options", "stream")]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += estimate_text(item)
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            if item.get("type") in ("image_url", "input_image"):
                total += IMAGE_TOKENS
                continue
            images = item.get("images")
            if isinstance(images, list):
                total += IMAGE_TOKENS * len(images)
            stack.extend(v for k, v in item.items() if k != "images")
    images = body.get("images")
    if isinstance(images, list):  # /api/generate's images were counted as text above
        total -= sum(estimate_text(i) for i in images if isinstance(i, str))
        total += IMAGE_TOKENS * len(images)
    context = body.get("context")
    return total + (len(context) if isinstance(context, list) else 0)


@settings(max_examples=300, deadline=None)
@given(req=requests(), day_quota=st.integers(500, 10**7))
def test_the_charged_cap_bounds_the_cap_sent_upstream_on_every_route_and_kind(
    req: tuple[str, str, dict[str, Any]], day_quota: int
) -> None:
    route, kind, body = req
    d = ExchangeDriver(gateway(f"[limits]\ntokens_per_day = {day_quota}\n"))
    d.start("POST", ROUTES[route], body)
    if d.seen.status is not None:  # refused before sending (400, or 429 too large)
        assert not d.seen.upstream
        return
    upstream = sent(d)
    cap = sent_cap(kind, upstream)
    assert cap is not None, (route, kind, upstream)  # never unbounded
    prompt_bound = forwarded_prompt_bound(upstream)
    assert charged(d) >= cap + prompt_bound, (route, kind, body, upstream)


def _chat(model: str, **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **fields}

"""The status page in a real browser: Debian's chromium, driven by playwright.

A real gateway and two emulated Ollama backends on loopback.  The browser
logs in with an admin key, then watches the page follow the gateway: a
backend's breaker turning from closed to open once its emulator is
stopped, a user's 429 count rising after a burst, and a model whose name
holds ``<script>`` shown as text.  Every wait is playwright's auto-waiting
``expect`` (it polls the page), never a sleep.

Never ``playwright install``: it downloads a browser.  The tests launch the
system's ``/usr/bin/chromium`` (CI installs it: ``.ci/run``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, expect, sync_playwright

from sansio_gateway.auth import hash_key
from tests.emulators.ollama import (
    EmulatorModel,
    OllamaEmulator,
    default_models,
    run_ollama_emulator,
)
from tests.helpers import RunningGateway, make_config, running_gateway

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ADMIN_KEY = "sk-ui-admin-0123456789abcdef"
BOB_KEY = "sk-ui-bob-0123456789abcdef"
# Would set window.__xss if the page ever parsed a value as HTML (and the
# CSP let it run); the <img> fires even where inserted <script>s do not.
EVIL_MODEL = "<script>window.__xss=1</script><img src=x onerror=window.__xss=2>:latest"
WAIT_MS = 20_000  # generous: the machine is shared; expect() returns as soon as it holds


@dataclass
class Site:
    gateway: RunningGateway
    flaky: contextlib.ExitStack  # closing it stops the "flaky" backend

    @property
    def url(self) -> str:
        return self.gateway.url


def _config(local: OllamaEmulator, flaky: OllamaEmulator) -> str:
    return f"""
[server]
health_interval = 0.2
breaker_failures = 2
breaker_cooldown = 60
[[backends]]
name = "local"
kind = "ollama"
url = "{local.url}"
[[backends]]
name = "flaky"
kind = "ollama"
url = "{flaky.url}"
connect_timeout = 1
[[models]]
name = "gpt-4o-mini"
backend = "local"
target = "llama3.2:1b"
fallbacks = ["flaky:llama3.2:1b"]
[[auth.keys]]
id = "ops"
user = "root"
sha256 = "{hash_key(ADMIN_KEY)}"
admin = true
[[auth.keys]]
id = "bob-laptop"
user = "bob"
sha256 = "{hash_key(BOB_KEY)}"
[limits]
tokens_per_day = 1000000
[limits.users.bob]
requests_per_minute = 6
"""


@pytest.fixture
def site() -> Iterator[Site]:
    models = [*default_models(), EmulatorModel(EVIL_MODEL)]
    with run_ollama_emulator(models, fast=True) as local, contextlib.ExitStack() as flaky_stack:
        flaky = flaky_stack.enter_context(run_ollama_emulator(fast=True))
        with running_gateway(make_config(_config(local, flaky))) as gateway:
            yield Site(gateway=gateway, flaky=flaky_stack)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[BrowserContext]:
    assert Path(CHROMIUM).exists(), (
        f"{CHROMIUM} is missing: apt-get install chromium (CI does, in .ci/run)"
    )
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh profile per test
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield context
        finally:
            context.close()


def _page(context: BrowserContext) -> tuple[Page, list[str]]:
    page = context.pages[0] if context.pages else context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on(
        "console",
        lambda msg: problems.append(f"console: {msg.text}") if msg.type == "error" else None,
    )
    return page, problems


def _log_in(page: Page, url: str, key: str) -> None:
    response = page.goto(url + "/ui")
    assert response is not None and response.status == 200
    headers = response.headers
    assert headers["content-security-policy"].startswith("default-src 'none'; script-src 'self'")
    assert headers["x-frame-options"] == "DENY"
    assert headers["cache-control"] == "no-store"
    expect(page.locator("#login")).to_be_visible()
    page.fill("#admin-key", key)
    page.click("#login-button")


def _chat(url: str, key: str) -> int:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    request = urllib.request.Request(
        url + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as err:
        err.read()
        return err.code


def test_the_page_follows_breakers_429s_and_shows_hostile_names_as_text(
    site: Site, browser: BrowserContext, tmp_path: Path
) -> None:
    expect.set_options(timeout=WAIT_MS)
    page, problems = _page(browser)
    overview_requests: list[dict[str, str]] = []
    page.on(
        "request",
        lambda r: overview_requests.append(r.headers) if "/admin/overview" in r.url else None,
    )
    _log_in(page, site.url, ADMIN_KEY)
    expect(page.locator("#dashboard")).to_be_visible()
    expect(page.locator("#login")).to_be_hidden()

    # The key stays in this tab's sessionStorage; it is in no URL and no cookie.
    assert page.evaluate("sessionStorage.getItem('sansio-gateway.admin-key')") == ADMIN_KEY
    assert ADMIN_KEY not in page.url
    assert browser.cookies() == []

    # Backends: both probed and closed.
    flaky_row = page.locator('#backends tr[data-backend="flaky"]')
    expect(flaky_row.locator(".circuit")).to_have_text("closed")
    expect(flaky_row).to_contain_text(site.url.rsplit(":", 1)[0])  # its URL is shown
    expect(page.locator('#backends tr[data-backend="local"] .probe')).to_contain_text("ok at")

    # A hostile model name is text: visible verbatim, nothing parsed, nothing run.
    evil = page.locator("#models td.model-name", has_text="<script>window.__xss=1</script>")
    expect(evil).to_have_count(1)
    expect(evil).to_be_visible()
    assert page.locator("#models script, #models img").count() == 0
    assert page.evaluate("window.__xss") is None

    # The models' routes, fallbacks included.
    route = page.locator('#models tr[data-model="gpt-4o-mini"]')
    expect(route).to_contain_text("llama3.2:1b")
    expect(route).to_contain_text("flaky:llama3.2:1b")

    # A burst past bob's requests_per_minute: the page's 429 count follows.
    bob_429s = page.locator('#users tr[data-user="bob"] .rate-limited')
    expect(bob_429s).to_have_text("0")
    statuses = [_chat(site.url, BOB_KEY) for _ in range(5)]
    limited = statuses.count(429)
    assert limited >= 3, statuses
    expect(bob_429s).to_have_text(str(limited))
    expect(page.locator('#users tr[data-user="bob"]')).to_contain_text("requests_per_minute")
    expect(page.locator("#last-requests")).not_to_have_text(re.compile(r"^now 0,"))

    # Stop the flaky backend: failed probes open its breaker, and the page says so.
    site.flaky.close()
    expect(flaky_row.locator(".circuit")).to_have_text("open")
    expect(flaky_row.locator(".probe")).to_contain_text("failed")
    expect(page.locator('#backends tr[data-backend="local"] .circuit')).to_have_text("closed")

    page.screenshot(path=str(tmp_path / "status-page.png"), full_page=True)
    target = os.environ.get("SANSIO_UI_SCREENSHOT")
    if target:
        shutil.copyfile(tmp_path / "status-page.png", target)
    assert (tmp_path / "status-page.png").stat().st_size > 10_000

    # Every refresh carried the key in its header, and never a cookie.
    assert len(overview_requests) >= 2
    assert all(h.get("authorization") == f"Bearer {ADMIN_KEY}" for h in overview_requests)
    assert not any("cookie" in h for h in overview_requests)
    assert problems == []  # no script error, no CSP violation reported


def test_a_key_that_is_not_an_admin_key_is_refused_and_forgotten(
    site: Site, browser: BrowserContext
) -> None:
    expect.set_options(timeout=WAIT_MS)
    page, _ = _page(browser)
    _log_in(page, site.url, BOB_KEY)
    expect(page.locator("#login-error")).to_have_text("That key is not an admin key.")
    expect(page.locator("#dashboard")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('sansio-gateway.admin-key')") is None
    page.fill("#admin-key", "sk-not-a-key")
    page.click("#login-button")
    expect(page.locator("#login-error")).to_have_text("That key was not accepted.")
    # And the right key still opens it, from the same tab.
    page.fill("#admin-key", ADMIN_KEY)
    page.click("#login-button")
    expect(page.locator("#dashboard")).to_be_visible()
    page.click("#logout")
    expect(page.locator("#login")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('sansio-gateway.admin-key')") is None

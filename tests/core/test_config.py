"""Config strictness, URL validation and error wording (issue 16, items 1-4)."""

from __future__ import annotations

import pytest

from sansio_gateway.config import ConfigError, parse_config, redact_url

BACKEND = '[[backends]]\nname = "a"\nurl = "http://127.0.0.1:11434"\n'


def error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="gw.toml", env={})
    return str(info.value)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[limits]\ntokens_per_minute = "6000"\n', "limits.tokens_per_minute"),
        ('[server]\nport = "8090"\n', "server.port"),
        ("[server]\nuvloop = 1\n", "server.uvloop"),
        (
            '[[auth.keys]]\nid = "k"\nuser = "u"\nsha256 = "' + "a" * 64 + '"\nadmin = "yes"\n',
            "auth.keys[0].admin",
        ),
    ],
)
def test_toml_types_must_match(text: str, key: str) -> None:
    assert f"gw.toml: {key}: " in error(BACKEND + text)


def test_admin_yes_never_makes_an_admin_key() -> None:
    text = '[[auth.keys]]\nid = "k"\nuser = "u"\nsha256 = "' + "a" * 64 + '"\nadmin = "yes"\n'
    assert "boolean" in error(text)


def test_integers_still_fill_float_keys() -> None:
    config = parse_config(BACKEND + "[server]\nread_timeout = 5\n", source="gw.toml", env={})
    assert config.server.read_timeout == 5.0


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ('url = "redis//127.0.0.1:6379/3"', "store.url"),
        ('url = "http://127.0.0.1:6379"', "store.url"),
        ('url = "redis://127.0.0.1:99999/0"', "store.url"),
        ('url = "redis://127.0.0.1:6379/three"', "store.url"),
        ('url = "redis://"', "store.url"),
        ('usage = "http://127.0.0.1/usage"', "store.usage"),
        ('usage = "sqlite://usage.db"', "store.usage"),
        ('usage = "redis//127.0.0.1:6379/3"', "store.usage"),
    ],
)
def test_store_urls_are_checked_and_the_error_names_the_key(line: str, key: str) -> None:
    assert f"gw.toml: {key}: " in error(BACKEND + "[store]\n" + line + "\n")


@pytest.mark.parametrize(
    "url", ["ftp://x", "http//127.0.0.1:1", "http://", "http://127.0.0.1:http"]
)
def test_backend_urls_are_checked(url: str) -> None:
    assert "gw.toml: backends[0].url: " in error(f'[[backends]]\nname = "a"\nurl = "{url}"\n')


@pytest.mark.parametrize(
    "text",
    [
        '[store]\nurl = "redis://:pw@127.0.0.1:6379/0"\nusage = "redis+cluster://127.0.0.1:7000"\n',
        '[store]\nurl = "rediss+cluster://127.0.0.1:7000"\nusage = "sqlite:///./u.db"\n',
        '[store]\nurl = "memory://"\nusage = "memory://"\n',
    ],
)
def test_good_store_urls_pass(text: str) -> None:
    parse_config(BACKEND + text, source="gw.toml", env={})


def test_a_password_never_shows_in_the_error() -> None:
    message = error(BACKEND + '[store]\nurl = "redis://:hunter2@127.0.0.1:99999/0"\n')
    assert "hunter2" not in message and ":***@" in message
    assert redact_url("redis://u:pw@h:1/0") == "redis://u:***@h:1/0"
    assert redact_url("redis://h:1/0") == "redis://h:1/0"


def test_cross_check_errors_read_cleanly() -> None:
    text = BACKEND + '[[models]]\nname = "m"\nbackend = "ollama-c"\n'
    assert error(text) == "gw.toml: models[0].backend: 'ollama-c' names no backend (known: a)"


def test_a_lone_model_name_is_a_one_item_list() -> None:
    text = BACKEND + '[[auth.keys]]\nid = "k"\nuser = "u"\nsha256 = "' + "a" * 64 + '"\n'
    config = parse_config(text + 'models = "*"\n', source="gw.toml", env={})
    assert config.auth.keys[0].models == ("*",)
    assert "auth.keys[0].models" in error(text + "models = 5\n")


def test_a_clash_is_reported_once_and_again_when_it_changes() -> None:
    from sansio_gateway.backends.catalogue import changed_clashes

    first = {"llama3": ("a", "b")}
    assert changed_clashes({}, first) == [("llama3", ("a", "b"))]
    assert changed_clashes(first, dict(first)) == []  # every later probe: nothing
    assert changed_clashes(first, {"llama3": ("a", "b", "c")}) == [("llama3", ("a", "b", "c"))]
    assert changed_clashes(first, {}) == []

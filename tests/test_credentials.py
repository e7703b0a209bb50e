"""Credentials providers, secrets that never show, and the reading of platforms' answers."""

from __future__ import annotations

import email.utils
import os
import pickle
import time
from pathlib import Path

import anyio
import msgspec
import pytest

from streamq.config import parse_config
from streamq.errors import ConfigError, Fail, RateLimited
from streamq.platforms import credentials as creds
from streamq.platforms import outcomes
from streamq.platforms.client import resolve_settings
from streamq.platforms.credentials import Credentials, Secret
from streamq.platforms.outcomes import PlatformError, Reply
from streamq.platforms.x import weighted_length


def get(provider: creds.CredentialsProvider, platform: str, account: str | None) -> Credentials:
    async def ask() -> Credentials | None:
        return await provider(platform, account)

    found = anyio.run(ask)
    assert found is not None
    return found


def test_env_credentials_are_named_after_platform_and_account() -> None:
    env = {
        "STREAMQ_INSTAGRAM_ACME_CO_TOKEN": "t-acme",
        "STREAMQ_INSTAGRAM_ACME_CO_USER_ID": "1784",
        "STREAMQ_X_TOKEN": "t-none",
    }
    provider = creds.EnvCredentials(env)
    found = get(provider, "instagram", "acme-co")
    assert (found.token.reveal(), found.user_id) == ("t-acme", "1784")
    assert get(provider, "x", None).token.reveal() == "t-none"
    assert anyio.run(provider, "x", "other") is None
    assert creds.EnvCredentials.variable("x", "a.b") == "STREAMQ_X_A_B_TOKEN"


def test_file_credentials_are_read_again_when_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text('[linkedin.acme]\ntoken = "one"\nuser_id = "urn:li:person:1"\n')
    provider = creds.FileCredentials(path)
    assert get(provider, "linkedin", "acme").token.reveal() == "one"
    path.write_text('[linkedin.acme]\ntoken = "two-rotated"\n[linkedin.default]\ntoken = "d"\n')
    os.utime(path, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert get(provider, "linkedin", "acme").token.reveal() == "two-rotated"
    assert get(provider, "linkedin", None).token.reveal() == "d"
    as_json = tmp_path / "tokens.json"
    as_json.write_text('{"x": {"acme": {"token": "j"}}}')
    assert get(creds.FileCredentials(as_json), "x", "acme").token.reveal() == "j"


def test_a_broken_credentials_file_is_named_but_never_quoted(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text('[x.acme]\ntoken = "leaky-secret\n')
    with pytest.raises(ConfigError) as caught:
        anyio.run(creds.FileCredentials(path), "x", "acme")
    assert str(path) in str(caught.value)
    assert "leaky-secret" not in str(caught.value)


def test_providers_give_what_an_import_brings_along(tmp_path: Path) -> None:
    """Refresh token, expiry (Unix seconds, ISO 8601 or a TOML date-time) and scopes, for
    ``streamq tokens import``; an expiry that will not do is a one-line error that does not
    quote the file."""
    path = tmp_path / "tokens.toml"
    path.write_text(
        '[x.acme]\ntoken = "t"\nrefresh_token = "r"\nexpires_at = 2100-01-01T00:00:00Z\n'
        'scopes = "tweet.write,offline.access"\n[x.old]\ntoken = "t"\n'
    )
    found = get(creds.FileCredentials(path), "x", "acme")
    assert (found.refresh_token, found.expires_at_ms) == (Secret("r"), 4102444800000)
    assert found.scopes == ("tweet.write", "offline.access")
    plain = get(creds.FileCredentials(path), "x", "old")
    assert (plain.refresh_token, plain.expires_at_ms, plain.scopes) == (None, None, ())
    env = {"STREAMQ_X_A_TOKEN": "t", "STREAMQ_X_A_REFRESH": "r", "STREAMQ_X_A_EXPIRES_AT": "1.5"}
    by_env = get(creds.EnvCredentials(env), "x", "a")
    assert (by_env.refresh_token, by_env.expires_at_ms) == (Secret("r"), 1500)
    by_function = get(
        creds.CallableCredentials(
            lambda p, a: {"token": "t", "expires_at": "2100-01-01T01:00:00+01:00", "scopes": ["s"]}
        ),
        "x",
        "a",
    )
    assert (by_function.expires_at_ms, by_function.scopes) == (4102444800000, ("s",))
    path.write_text('[x.acme]\ntoken = "leaky-secret"\nexpires_at = "soon"\n')
    os.utime(path, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    with pytest.raises(ConfigError, match="expires_at must be") as caught:
        anyio.run(creds.FileCredentials(path), "x", "acme")
    assert "leaky-secret" not in str(caught.value)
    naive = {"STREAMQ_X_TOKEN": "t", "STREAMQ_X_EXPIRES_AT": "2100-01-01T00:00:00"}
    with pytest.raises(ConfigError, match="offset"):
        anyio.run(creds.EnvCredentials(naive), "x", None)


def test_callable_credentials_take_sync_and_async_functions() -> None:
    def sync(platform: str, account: str | None) -> dict[str, str]:
        return {"token": f"{platform}-{account}", "user_id": "7"}

    async def asynchronous(platform: str, account: str | None) -> Credentials:
        return Credentials("async-token")

    assert get(creds.CallableCredentials(sync), "x", "a").token.reveal() == "x-a"
    assert get(creds.CallableCredentials(asynchronous), "x", "a").token.reveal() == "async-token"


def test_providers_load_from_their_spec(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("STREAMQ_CREDENTIALS", raising=False)
    assert isinstance(creds.load_provider(None), creds.EnvCredentials)
    assert isinstance(creds.load_provider(f"file:{tmp_path}/t.toml"), creds.FileCredentials)
    loaded = creds.load_provider("tests.test_credentials:sample_provider")
    assert isinstance(loaded, creds.CallableCredentials)
    with pytest.raises(ConfigError, match="credentials 'nowhere:x'"):
        creds.load_provider("nowhere:x")


def sample_provider(platform: str, account: str | None) -> Credentials:
    return Credentials("sample")


def test_a_secret_never_shows_itself() -> None:
    secret = Secret("hunter2")
    shown = [str(secret), repr(secret), f"{secret}", repr(Credentials(secret, "u"))]
    assert not [text for text in shown if "hunter2" in text]
    with pytest.raises(TypeError):
        msgspec.json.encode({"token": secret})
    with pytest.raises(TypeError):
        pickle.dumps(secret)
    assert secret.scrub("the token hunter2 leaked") == "the token *** leaked"
    assert outcomes.clean("a\n  message   with hunter2", secret) == "a message with ***"


def test_retry_after_reads_seconds_dates_and_x_reset() -> None:
    assert outcomes.retry_after({"retry-after": "7"}) == 7.0
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < outcomes.retry_after({"retry-after": later}) <= 30
    assert 55 < outcomes.retry_after({"x-rate-limit-reset": str(int(time.time()) + 60)}) <= 60
    assert outcomes.retry_after({}) == outcomes.DEFAULT_RETRY_AFTER


def test_answers_map_to_outcomes_by_status() -> None:
    def outcome(status: int) -> Exception:
        return outcomes.by_status("x", "m", Reply(status, {"retry-after": "3"}, None))

    limited = outcome(429)
    assert isinstance(limited, RateLimited)
    assert limited.retry_after == 3.0
    assert isinstance(outcome(503), PlatformError)
    token = outcome(401)
    assert isinstance(token, Fail)
    assert token.pause_account
    refused = outcome(403)
    assert isinstance(refused, Fail)
    assert not refused.pause_account
    assert refused.reason == "x: permission: m (HTTP 403)"


def test_x_counts_text_as_x_does() -> None:
    assert weighted_length("hello") == 5
    assert weighted_length("日本") == 4
    assert weighted_length("see https://example.com/a/very/long/path?q=1") == 4 + 23
    assert weighted_length("é") == 1


def test_platform_settings_come_from_defaults_config_then_environment() -> None:
    config = parse_config(
        {"platforms": {"x": {"base_url": "https://proxy.example", "timeout": "5s"}}}
    )
    settings = resolve_settings("x", config, environ={})
    assert (settings.base_url, settings.api_version, settings.timeout) == (
        "https://proxy.example",
        "2",
        5.0,
    )
    assert settings.lookup  # on by default, against the real platforms too
    assert resolve_settings("instagram", config, {}).base_url == "https://graph.facebook.com"
    off = parse_config({"platforms": {"x": {"lookup": False}}})
    simulated = resolve_settings("x", off, {"STREAMQ_PLATFORM_URL": "http://127.0.0.1:9/"})
    assert (simulated.base_url, simulated.lookup) == ("http://127.0.0.1:9/x", False)
    with pytest.raises(ConfigError, match="unknown field"):
        parse_config({"platforms": {"x": {"colour": "red"}}})

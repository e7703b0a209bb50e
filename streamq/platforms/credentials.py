"""Where publishers find each account's token: a pluggable provider keyed by (platform, account).

    EnvCredentials       STREAMQ_<PLATFORM>_<ACCOUNT>_TOKEN (and _USER_ID, _REFRESH,
                         _EXPIRES_AT, _SCOPES); no account: STREAMQ_<PLATFORM>_TOKEN
    FileCredentials      a TOML or JSON file {platform: {account: {token, user_id,
                         refresh_token, expires_at, scopes}}}, read again whenever it changes
                         (rotate tokens without a restart)
    CallableCredentials  your function: (platform, account) -> Credentials, a mapping, or None

Only the token is needed to publish; a refresh token, expiry and scopes, where a provider has
them, go along when ``streamq tokens import`` copies its tokens into the token store, so the
store can refresh them without a new sign-in.

A token is held in a :class:`Secret`, which prints as ``***`` and refuses to be encoded, so it
cannot reach a log line, an error message, a job record or a metric by accident; publishers
also scrub the token out of any text a platform sends back before it goes anywhere.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import tomllib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from streamq.errors import ConfigError, HandlerError
from streamq.scheduler import aware_time

DEFAULT_ACCOUNT = "default"
"""The account name a file uses for jobs enqueued without an account."""


class Secret:
    """A value that never shows itself: ``str()`` and ``repr()`` give ``***``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> Any:
        raise TypeError("a Secret cannot be pickled")

    def scrub(self, text: str) -> str:
        """``text`` with every occurrence of the secret replaced by ``***``."""
        return text.replace(self._value, "***") if self._value else text


class Credentials:
    """An account's token on one platform, and the id it publishes as where the platform needs
    one (a Facebook page id, an Instagram user id, a LinkedIn author URN); with what a provider
    knows of its renewal (refresh token, expiry, scopes), for ``streamq tokens import``."""

    __slots__ = ("expires_at_ms", "refresh_token", "scopes", "token", "user_id", "version")

    def __init__(
        self,
        token: str | Secret,
        user_id: str | None = None,
        *,
        version: int | None = None,
        refresh_token: str | Secret | None = None,
        expires_at_ms: int | None = None,
        scopes: Sequence[str] = (),
    ) -> None:
        self.token = token if isinstance(token, Secret) else Secret(token)
        self.user_id = user_id
        self.version = version
        """The token store's version of this token (None: from another provider)."""
        self.refresh_token = (
            refresh_token
            if refresh_token is None or isinstance(refresh_token, Secret)
            else Secret(refresh_token)
        )
        self.expires_at_ms = expires_at_ms
        """When the token expires (Unix ms), if the provider knows."""
        self.scopes = tuple(scopes)

    def __repr__(self) -> str:
        return f"Credentials(token=***, user_id={self.user_id!r})"


def read_secret_table(path: Path, what: str) -> dict[str, Any]:
    """A TOML (or ``.json``) file of secrets as a table. Errors name the file, never quote it:
    a parse error's message can show the line it failed on."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror}") from None
    try:
        table = json.loads(text) if path.suffix == ".json" else tomllib.loads(text.decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} {path} does not parse ({type(exc).__name__})") from None
    if not isinstance(table, dict):
        raise ConfigError(f"{what} {path} must hold a table")
    return table


def _expires_at_ms(value: Any, where: str) -> int | None:
    """An expiry as a provider gives it: Unix seconds, an ISO 8601 date-time with its offset,
    or a TOML date-time; None when not given."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            value = aware_time(value) or value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return round(value * 1000)
    if isinstance(value, datetime) and value.tzinfo is not None:
        return round(value.timestamp() * 1000)
    raise ConfigError(
        f"{where}: expires_at must be Unix seconds or an ISO 8601 date-time with its offset"
    )


def _scopes(value: Any, where: str) -> tuple[str, ...]:
    """Scopes as a list, or one string separated by spaces or commas (as platforms answer)."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(value.replace(",", " ").split())
    if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise ConfigError(f"{where}: scopes must be a list of strings or one string")


def credentials_from(entry: Mapping[str, Any], where: str) -> Credentials | None:
    """Credentials from a provider's table or mapping (``token``, ``user_id``,
    ``refresh_token``, ``expires_at``, ``scopes``); None without a token."""
    token = entry.get("token")
    if not isinstance(token, str | Secret) or not token:
        return None
    user_id = entry.get("user_id")
    refresh = entry.get("refresh_token")
    if refresh is not None and not isinstance(refresh, str | Secret):
        raise ConfigError(f"{where}: refresh_token must be a string")
    return Credentials(
        token,
        None if user_id is None else str(user_id),
        refresh_token=refresh or None,
        expires_at_ms=_expires_at_ms(entry.get("expires_at"), where),
        scopes=_scopes(entry.get("scopes"), where),
    )


class CredentialsProvider(Protocol):
    async def __call__(self, platform: str, account: str | None) -> Credentials | None: ...


def _env_part(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", name).upper()


class EnvCredentials:
    """Tokens from the environment: ``STREAMQ_INSTAGRAM_ACME_TOKEN`` and
    ``STREAMQ_INSTAGRAM_ACME_USER_ID`` for account ``acme`` (other characters than letters and
    digits become ``_``); ``STREAMQ_INSTAGRAM_TOKEN`` for jobs without an account. Optional,
    for ``streamq tokens import``: ``..._REFRESH`` (the refresh token), ``..._EXPIRES_AT``
    (Unix seconds or ISO 8601), ``..._SCOPES`` (separated by spaces or commas)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = environ if environ is not None else os.environ

    @staticmethod
    def variable(platform: str, account: str | None, what: str = "TOKEN") -> str:
        middle = "" if account is None else f"_{_env_part(account)}"
        return f"STREAMQ_{_env_part(platform)}{middle}_{what}"

    async def __call__(self, platform: str, account: str | None) -> Credentials | None:
        # The refresh token's suffix is _REFRESH, not _REFRESH_TOKEN, which would be the
        # token of an account named "<account>-refresh".
        suffixes = {"user_id": "USER_ID", "refresh_token": "REFRESH",
                    "expires_at": "EXPIRES_AT", "scopes": "SCOPES"}  # fmt: skip
        entry = {
            field: self._environ.get(self.variable(platform, account, suffix))
            for field, suffix in suffixes.items()
        }
        entry["token"] = self._environ.get(self.variable(platform, account))
        return credentials_from(entry, self.variable(platform, account, "*"))


class FileCredentials:
    """Tokens from a TOML (``.toml``) or JSON file, read again whenever it changes::

    [instagram.acme]
    token = "IGQV..."
    user_id = "17841400000000000"
    [x.default]          # jobs enqueued without an account
    token = "..."
    refresh_token = "..."                  # optional, with expires_at and scopes: for
    expires_at = 2026-12-05T11:00:00Z      # ``streamq tokens import``
    scopes = ["tweet.write", "offline.access"]
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int] | None = None
        self._table: dict[str, Any] = {}

    def _load(self) -> dict[str, Any]:
        try:
            info = self.path.stat()
        except OSError as exc:
            raise ConfigError(f"credentials file {self.path}: {exc.strerror}") from None
        stamp = (info.st_mtime_ns, info.st_size)
        if stamp != self._stamp:
            table = read_secret_table(self.path, "credentials file")
            self._table, self._stamp = table, stamp
        return self._table

    async def __call__(self, platform: str, account: str | None) -> Credentials | None:
        name = account or DEFAULT_ACCOUNT
        entry = self._load().get(platform, {}).get(name)
        if not isinstance(entry, dict):
            return None
        return credentials_from(entry, f"credentials file {self.path} [{platform}.{name}]")


CredentialsFunction = Callable[
    [str, "str | None"], "Credentials | Mapping[str, Any] | Awaitable[Any] | None"
]


class CallableCredentials:
    """Your function, sync or async: ``(platform, account) -> Credentials | {"token": ...,
    "user_id": ...} | None``."""

    def __init__(self, function: CredentialsFunction) -> None:
        self.function = function

    async def __call__(self, platform: str, account: str | None) -> Credentials | None:
        value = self.function(platform, account)
        if inspect.isawaitable(value):
            value = await value
        if value is None or isinstance(value, Credentials):
            return value
        if isinstance(value, Mapping) and isinstance(value.get("token"), str | Secret):
            return credentials_from(value, f"credentials of {platform}/{account}")
        raise TypeError("a credentials function must return Credentials, a mapping or None")


def load_provider(spec: str | None) -> CredentialsProvider:
    """A provider from its spec: ``env`` (the default), ``file:PATH``, or
    ``package.module:function`` (a function as CallableCredentials takes)."""
    chosen = spec or os.environ.get("STREAMQ_CREDENTIALS") or "env"
    if chosen == "store":
        raise ConfigError(
            'credentials "store" is the token store: a platforms Session opens it itself'
        )
    if chosen == "env":
        return EnvCredentials()
    if chosen.startswith("file:"):
        return FileCredentials(chosen[len("file:") :])
    from streamq.handler import load_callable

    try:
        function = load_callable(chosen, what="credentials")
    except HandlerError as exc:
        raise ConfigError(str(exc)) from None
    return CallableCredentials(function)

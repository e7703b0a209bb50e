"""Where publishers find each account's token: a pluggable provider keyed by (platform, account).

    EnvCredentials       STREAMQ_<PLATFORM>_<ACCOUNT>_TOKEN (and _USER_ID); no account:
                         STREAMQ_<PLATFORM>_TOKEN
    FileCredentials      a TOML or JSON file {platform: {account: {token, user_id}}}, read
                         again whenever it changes (rotate tokens without a restart)
    CallableCredentials  your function: (platform, account) -> Credentials, a mapping, or None

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
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from streamq.errors import ConfigError, HandlerError

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
    one (a Facebook page id, an Instagram user id, a LinkedIn author URN)."""

    __slots__ = ("token", "user_id", "version")

    def __init__(
        self, token: str | Secret, user_id: str | None = None, *, version: int | None = None
    ) -> None:
        self.token = token if isinstance(token, Secret) else Secret(token)
        self.user_id = user_id
        self.version = version
        """The token store's version of this token (None: from another provider)."""

    def __repr__(self) -> str:
        return f"Credentials(token=***, user_id={self.user_id!r})"


class CredentialsProvider(Protocol):
    async def __call__(self, platform: str, account: str | None) -> Credentials | None: ...


def _env_part(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", name).upper()


class EnvCredentials:
    """Tokens from the environment: ``STREAMQ_INSTAGRAM_ACME_TOKEN`` and
    ``STREAMQ_INSTAGRAM_ACME_USER_ID`` for account ``acme`` (other characters than letters and
    digits become ``_``); ``STREAMQ_INSTAGRAM_TOKEN`` for jobs without an account."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = environ if environ is not None else os.environ

    @staticmethod
    def variable(platform: str, account: str | None, what: str = "TOKEN") -> str:
        middle = "" if account is None else f"_{_env_part(account)}"
        return f"STREAMQ_{_env_part(platform)}{middle}_{what}"

    async def __call__(self, platform: str, account: str | None) -> Credentials | None:
        token = self._environ.get(self.variable(platform, account))
        if not token:
            return None
        return Credentials(token, self._environ.get(self.variable(platform, account, "USER_ID")))


class FileCredentials:
    """Tokens from a TOML (``.toml``) or JSON file, read again whenever it changes::

    [instagram.acme]
    token = "IGQV..."
    user_id = "17841400000000000"
    [x.default]          # jobs enqueued without an account
    token = "..."
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
            text = self.path.read_bytes()
            try:
                if self.path.suffix == ".json":
                    table = json.loads(text)
                else:
                    table = tomllib.loads(text.decode())
            except (ValueError, UnicodeDecodeError) as exc:
                # The message of a parse error can quote the file: never pass it on.
                raise ConfigError(
                    f"credentials file {self.path} does not parse ({type(exc).__name__})"
                ) from None
            if not isinstance(table, dict):
                raise ConfigError(f"credentials file {self.path} must hold a table")
            self._table, self._stamp = table, stamp
        return self._table

    async def __call__(self, platform: str, account: str | None) -> Credentials | None:
        entry = self._load().get(platform, {}).get(account or DEFAULT_ACCOUNT)
        if not isinstance(entry, dict) or not isinstance(entry.get("token"), str):
            return None
        user_id = entry.get("user_id")
        return Credentials(entry["token"], None if user_id is None else str(user_id))


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
            user_id = value.get("user_id")
            return Credentials(value["token"], None if user_id is None else str(user_id))
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

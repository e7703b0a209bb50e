"""Where the server is, and a checked connection to it.

The URL comes from, in order: the caller (``--redis-url``), ``STREAMQ_REDIS_URL``, the config
file's ``redis_url``; with none of these, the embedded Valkey server (started on first use).
A password can stay out of the URL (and so out of ``ps`` and shell history):
``STREAMQ_REDIS_PASSWORD``, or a file named by ``STREAMQ_REDIS_PASSWORD_FILE`` (a mounted
Kubernetes Secret); one in the URL wins.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis import exceptions as redis_errors
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection

from streamq import server
from streamq.errors import ConnectionFailed

SUPPORTED_SCHEMES = ("redis", "rediss", "unix")
SOCKET_TIMEOUT_SECONDS = 10.0
"""How long a command may wait for the server: twice the longest blocking read (5 s), so a
connection that went silent (a stalled network, a black hole) is given up within seconds and
the caller reconnects, rather than hanging. ``socket_timeout`` in the config file changes it."""
MIN_SOCKET_TIMEOUT_SECONDS = 6.0
"""Above the 5 s blocking reads of workers, which must not time out while they wait."""
MIN_VERSIONS = {"redis": (7, 0), "valkey": (7, 2)}
TRANSIENT_ERRORS = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    OSError,
    redis_errors.OutOfMemoryError,
)
"""Failures that pass by themselves: the server is unreachable or silent (the client
reconnects on the next call), or full (at maxmemory with noeviction) until memory is freed.
A long-running loop pauses (``retry_delay``) and tries again; it never gives up on them."""


def retry_delay(failures: int) -> float:
    """Seconds to wait after ``failures`` failures in a row: 0.1 s doubling up to 5 s."""
    return min(5.0, 0.05 * 2.0 ** min(max(failures, 1), 7))


def resolve_url(url: str | None = None, config_url: str | None = None) -> str:
    chosen = url or os.environ.get("STREAMQ_REDIS_URL") or config_url
    if chosen:
        scheme = urlsplit(chosen).scheme
        if scheme not in SUPPORTED_SCHEMES:
            raise ConnectionFailed(
                f"unsupported Redis URL {redact(chosen)!r}: use redis://, rediss:// or unix://"
            )
        return chosen
    return server.ensure_running()


def redact(url: str) -> str:
    """The URL with any password replaced, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def password_from_environment() -> str | None:
    """``STREAMQ_REDIS_PASSWORD``, else the content of ``STREAMQ_REDIS_PASSWORD_FILE``."""
    password = os.environ.get("STREAMQ_REDIS_PASSWORD")
    if password:
        return password
    path = os.environ.get("STREAMQ_REDIS_PASSWORD_FILE")
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as file:
            return file.read().strip() or None
    except OSError as exc:
        raise ConnectionFailed(
            f"cannot read STREAMQ_REDIS_PASSWORD_FILE {path}: {exc.strerror}"
        ) from None


def client(
    url: str,
    *,
    max_connections: int | None = None,
    socket_timeout: float = SOCKET_TIMEOUT_SECONDS,
) -> Redis:
    options: dict[str, Any] = {}
    password = None if urlsplit(url).password else password_from_environment()
    if password is not None:
        options["password"] = password
    if urlsplit(url).scheme != "unix":  # keepalive is a TCP option; unix sockets refuse it
        options["socket_keepalive"] = True
    try:
        pool = ConnectionPool.from_url(
            url,
            # Pinned so reply shapes (lists, not RESP3 maps) do not change with redis-py's default.
            protocol=2,
            decode_responses=False,
            max_connections=max_connections,
            health_check_interval=30,
            # Longer than any blocking read streamq issues (5 s), which redis-py's own default
            # (5 s) is not; still short enough to notice a connection that went silent.
            socket_timeout=socket_timeout,
            socket_connect_timeout=5,
            # No CLIENT SETINFO on connect: Redis 7.0 has no such command, and naming it in
            # least-privilege ACL rules (streamq.acl) would fail there.
            driver_info=None,
            **options,
        )
    except ValueError as exc:
        raise ConnectionFailed(f"invalid Redis URL {redact(url)!r}: {exc}") from None
    pool.connection_class = _closed_transport_is_a_connection_error(pool.connection_class)
    return Redis.from_pool(pool)


_GUARDED: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def _closed_transport_is_a_connection_error(
    base: type[AbstractConnection],
) -> type[AbstractConnection]:
    """``base``, raising ConnectionError when it writes to a connection the peer already closed.

    uvloop raises RuntimeError ("the handler is closed") there, where plain asyncio ignores
    the write and the next read reports the loss; redis-py passes that RuntimeError through,
    so callers that reconnect on ConnectionError would not (uvloop issue 506).
    """

    if base in _GUARDED:
        return _GUARDED[base]

    class Guarded(base):  # type: ignore[valid-type,misc]
        async def send_packed_command(
            self, command: bytes | str | Iterable[bytes], check_health: bool = True
        ) -> None:
            try:
                await super().send_packed_command(command, check_health)
            except RuntimeError as exc:
                if "handler is closed" not in str(exc):
                    raise
                raise redis_errors.ConnectionError(
                    "the connection was closed while sending a command"
                ) from None

    Guarded.__name__ = Guarded.__qualname__ = f"Guarded{base.__name__}"
    _GUARDED[base] = Guarded
    return Guarded


async def check(redis: Redis, url: str) -> str:
    """Reach the server and check its version; returns e.g. 'valkey 8.1.8'."""
    try:
        info = await redis.info("server")
    except redis_errors.AuthenticationError as exc:
        raise ConnectionFailed(f"Redis at {redact(url)} refused the credentials: {exc}") from None
    except redis_errors.ResponseError as exc:
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            raise ConnectionFailed(
                f"Redis at {redact(url)} refused the credentials: {exc}"
            ) from None
        raise ConnectionFailed(f"Redis at {redact(url)} answered with an error: {exc}") from None
    except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
        raise ConnectionFailed(f"cannot reach Redis at {redact(url)}: {exc}") from None
    engine = "valkey" if "valkey_version" in info else "redis"
    version = str(info.get("valkey_version") or info.get("redis_version") or "0")
    numbers = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if numbers < MIN_VERSIONS[engine]:
        low = ".".join(map(str, MIN_VERSIONS[engine]))
        raise ConnectionFailed(
            f"{engine} {version} at {redact(url)} is too old: streamq needs {low}+"
        )
    return f"{engine} {version}"


async def connect(
    url: str | None = None,
    config_url: str | None = None,
    *,
    socket_timeout: float = SOCKET_TIMEOUT_SECONDS,
) -> tuple[Redis, str]:
    """A checked client and the URL it talks to; raises ConnectionFailed or ServerError."""
    resolved = resolve_url(url, config_url)
    redis = client(resolved, socket_timeout=socket_timeout)
    try:
        await check(redis, resolved)
    except BaseException:
        await redis.aclose()
        raise
    return redis, resolved

"""Where the server is, and a checked connection to it.

The URL comes from, in order: the caller (``--redis-url``), ``STREAMQ_REDIS_URL``, the config
file's ``redis_url``; with none of these, the embedded Valkey server (started on first use).
A password can stay out of the URL (and so out of ``ps`` and shell history):
``STREAMQ_REDIS_PASSWORD``, or a file named by ``STREAMQ_REDIS_PASSWORD_FILE`` (a mounted
Kubernetes Secret); one in the URL wins.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis import exceptions as redis_errors
from redis.asyncio import Redis

from streamq import server
from streamq.errors import ConnectionFailed

SUPPORTED_SCHEMES = ("redis", "rediss", "unix")
SOCKET_TIMEOUT_SECONDS = 30.0
MIN_VERSIONS = {"redis": (7, 0), "valkey": (7, 2)}


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


def client(url: str, *, max_connections: int | None = None) -> Redis:
    options: dict[str, Any] = {}
    password = None if urlsplit(url).password else password_from_environment()
    if password is not None:
        options["password"] = password
    if urlsplit(url).scheme != "unix":  # keepalive is a TCP option; unix sockets refuse it
        options["socket_keepalive"] = True
    try:
        return Redis.from_url(
            url,
            # Pinned so reply shapes (lists, not RESP3 maps) do not change with redis-py's default.
            protocol=2,
            decode_responses=False,
            max_connections=max_connections,
            health_check_interval=30,
            # Longer than any blocking read streamq issues (5 s), which redis-py's own default
            # (5 s) is not; still short enough to notice a connection that went silent.
            socket_timeout=SOCKET_TIMEOUT_SECONDS,
            socket_connect_timeout=5,
            # No CLIENT SETINFO on connect: Redis 7.0 has no such command, and naming it in
            # least-privilege ACL rules (streamq.acl) would fail there.
            driver_info=None,
            **options,
        )
    except ValueError as exc:
        raise ConnectionFailed(f"invalid Redis URL {redact(url)!r}: {exc}") from None


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


async def connect(url: str | None = None, config_url: str | None = None) -> tuple[Redis, str]:
    """A checked client and the URL it talks to; raises ConnectionFailed or ServerError."""
    resolved = resolve_url(url, config_url)
    redis = client(resolved)
    try:
        await check(redis, resolved)
    except BaseException:
        await redis.aclose()
        raise
    return redis, resolved

"""The one HTTP client a worker's publishers share, and where their settings come from.

``Session`` owns one ``httpx.AsyncClient``: pooled keep-alive connections, one timeout per
request, HTTP/2 where the platform offers it (negotiated by ALPN over TLS; plain-HTTP
loopback, such as the simulator, speaks HTTP/1.1). Every publisher made by a session sends
through it.

Settings of a platform, later ones winning: the publisher's defaults (the real API's base URL
and version), ``[platforms.<name>]`` in the config file, then ``STREAMQ_PLATFORM_URL``, which
sends every platform to ``<url>/<name>`` — a running ``streamq simulate``, which answers the
same status and listing requests as the real platforms, so publish-once works the same there.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import anyio
import httpx
import msgspec

from streamq import connection, platforms
from streamq.config import Config, load_config
from streamq.errors import Fail
from streamq.platforms.base import PlatformSettings, Publisher
from streamq.platforms.credentials import (
    Credentials,
    CredentialsProvider,
    Secret,
    load_provider,
)
from streamq.platforms.keeper import TokenKeeper
from streamq.platforms.outcomes import PlatformUnavailable, Reply, clean

if TYPE_CHECKING:
    from streamq.job import Job

USER_AGENT = "streamq"
CONNECT_TIMEOUT = 10.0
STORE_WAIT_FOR_CONNECTION = 10.0
"""How long a job waits for one of the token store's connections when all are busy."""


def resolve_settings(
    name: str, config: Config | None = None, environ: Mapping[str, str] | None = None
) -> PlatformSettings:
    """The settings a publisher for ``name`` runs with (see the module docstring)."""
    cls = platforms.publisher_class(name)
    settings = PlatformSettings(base_url=cls.base_url, api_version=cls.api_version)
    configured = (config or Config()).platforms.get(name)
    if configured is not None:
        given = {k: v for k, v in msgspec.structs.asdict(configured).items() if v is not None}
        settings = msgspec.structs.replace(settings, **given)
    root = (os.environ if environ is None else environ).get("STREAMQ_PLATFORM_URL")
    if root:
        from streamq.platforms.refresh import simulated_token_url

        settings = msgspec.structs.replace(
            settings,
            base_url=f"{root.rstrip('/')}/{name}",
            token_url=simulated_token_url(root, name),
        )
    return settings


class Session:
    """Publishers sharing one HTTP client: ``async with Session() as s: s.publisher("x")``."""

    def __init__(
        self,
        config: Config | None = None,
        *,
        credentials: CredentialsProvider | None = None,
        settings: Mapping[str, PlatformSettings] | None = None,
        max_connections: int = 100,
        http2: bool = True,
        redis_url: str | None = None,
    ) -> None:
        self.config = config if config is not None else load_config()
        self._redis: Any = None
        if credentials is None and _provider_spec(self.config) == "store":
            # The token store: its own small pool, so that refreshes never wait behind a
            # worker's batch commands. Every job asks it for a token, more at once than it has
            # connections (partitions x concurrency): a job waits for a free one rather than
            # fail (and a refresh's answer must never fail to be stored for want of one).
            self._redis = connection.client(
                connection.resolve_url(redis_url, self.config.redis_url),
                max_connections=16,
                wait_for_connection=STORE_WAIT_FOR_CONNECTION,
            )
            credentials = TokenKeeper.from_env(self._redis, self.config.tokens)
        self.credentials = credentials or load_provider(self.config.credentials)
        self._settings = dict(settings or {})
        self._max_connections = max_connections
        self._http2 = http2
        self._client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> Self:
        self._client = httpx.AsyncClient(
            http2=self._http2,
            limits=httpx.Limits(
                max_connections=self._max_connections,
                max_keepalive_connections=self._max_connections,
            ),
            timeout=httpx.Timeout(30.0, connect=CONNECT_TIMEOUT),
            headers={"User-Agent": USER_AGENT},
            follow_redirects=False,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if isinstance(self.credentials, TokenKeeper):
            await self.credentials.aclose()
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError("use 'async with Session() as session:' before publishing")
        return self._client

    def settings(self, name: str) -> PlatformSettings:
        if name not in self._settings:
            self._settings[name] = resolve_settings(name, self.config)
        return self._settings[name]

    def publisher(self, name: str) -> Publisher:
        """The built-in publisher for platform ``name``, sending through this session."""
        return platforms.publisher_class(name)(self, self.settings(name))

    async def credentials_for(
        self, platform: str, account: str | None, job: Job | None = None
    ) -> Credentials:
        """The account's credentials (with a token store, refreshed first when due); none
        found pauses the account (a token problem)."""
        if isinstance(self.credentials, TokenKeeper):
            found = await self.credentials.credentials(
                platform, account, job, self.settings(platform)
            )
        else:
            found = await self.credentials(platform, account)
        if found is None:
            who = "jobs without an account" if account is None else f"account {account!r}"
            raise Fail(f"{platform}: token: no credentials for {who}", pause_account=True)
        return found

    async def refreshed(
        self, platform: str, account: str | None, stale: Credentials, job: Job | None = None
    ) -> Credentials | None:
        """A new token for one the platform refused; None when the provider cannot refresh
        (it is not the token store, or the store does not hold the account)."""
        if not isinstance(self.credentials, TokenKeeper):
            return None
        return await self.credentials.refreshed(
            platform, account, stale, job, self.settings(platform)
        )

    async def send(
        self,
        platform: str,
        method: str,
        url: str,
        token: Secret,
        *,
        json: Any = None,
        data: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | AsyncIterator[bytes] | None = None,
        timeout: float = 30.0,  # noqa: ASYNC109 - per request, passed on to httpx
    ) -> Reply:
        """One request with the account's token; raises PlatformUnavailable when no answer
        came. The token goes in the Authorization header only, never in the URL (so it is in
        no log line httpx writes)."""
        sent = {"Authorization": f"Bearer {token.reveal()}", **(headers or {})}
        try:
            response = await self.client.request(
                method,
                url,
                json=json,
                data=data,
                params=params,
                headers=sent,
                content=content,
                timeout=httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT)),
            )
        except httpx.TimeoutException as exc:
            raise PlatformUnavailable(
                f"{platform}: no answer within {timeout:g}s ({type(exc).__name__}); "
                "the request may have reached the platform"
            ) from None
        except httpx.TransportError as exc:
            raise PlatformUnavailable(
                f"{platform}: {type(exc).__name__}: {clean(exc, token) or 'connection failed'}"
            ) from None
        return Reply(response.status_code, response.headers, _body(response))

    async def relay(
        self,
        platform: str,
        source_url: str,
        method: str,
        url: str,
        token: Secret,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,  # noqa: ASYNC109 - per request, passed on to httpx
    ) -> Reply:
        """Stream the bytes at ``source_url`` into a request to the platform (a video upload)
        without holding the whole file in memory."""
        try:
            async with self.client.stream("GET", source_url, timeout=timeout) as source:
                if source.status_code >= 400:
                    kind = "transient" if source.status_code >= 500 else "permanent"
                    message = (
                        f"{platform}: media at {source_url} answered HTTP {source.status_code}"
                    )
                    if kind == "permanent":
                        raise Fail(message)
                    raise PlatformUnavailable(message)
                sent = dict(headers or {})
                length = source.headers.get("content-length")
                if length is not None:
                    sent["Content-Length"] = length
                sent.setdefault("Content-Type", source.headers.get("content-type", "video/*"))
                return await self.send(
                    platform,
                    method,
                    url,
                    token,
                    headers=sent,
                    content=source.aiter_raw(),
                    timeout=timeout,
                )
        except httpx.TimeoutException as exc:
            raise PlatformUnavailable(
                f"{platform}: media at {source_url}: no answer ({type(exc).__name__})"
            ) from None
        except httpx.TransportError as exc:
            raise PlatformUnavailable(f"{platform}: media at {source_url}: {clean(exc)}") from None


def _body(response: httpx.Response) -> Any:
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return response.text[:1000]


def _provider_spec(config: Config) -> str:
    return os.environ.get("STREAMQ_CREDENTIALS") or config.credentials or "env"


@contextlib.asynccontextmanager
async def publishing(
    name: str,
    config: Config | None = None,
    *,
    concurrency: int = 32,
    redis_url: str | None = None,
) -> AsyncIterator[Publisher]:
    """The built-in publisher ``name`` as a worker's handler, its session open meanwhile."""
    async with Session(
        config, max_connections=max(100, concurrency), redis_url=redis_url
    ) as session:
        keeper = session.credentials
        if not isinstance(keeper, TokenKeeper):
            yield session.publisher(name)
            return
        # The token store: due tokens of accounts that post rarely are refreshed meanwhile.
        async with anyio.create_task_group() as background:
            background.start_soon(keeper.keep_alive, {name: session.settings(name)})
            try:
                yield session.publisher(name)
            finally:
                background.cancel_scope.cancel()

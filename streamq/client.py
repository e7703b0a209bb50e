"""The Python API: ``async with streamq.connect() as q: await q.enqueue(...)``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any, Self

from redis.asyncio import Redis

from streamq import connection, stats
from streamq.producer import Producer


class Queue:
    """A connection to streamq: enqueue jobs and read figures. Use as an async context manager."""

    def __init__(self, url: str | None = None, *, config_url: str | None = None) -> None:
        self._url = url
        self._config_url = config_url
        self._redis: Redis | None = None
        self._producer: Producer | None = None
        self.resolved_url: str | None = None

    async def __aenter__(self) -> Self:
        self._redis, self.resolved_url = await connection.connect(self._url, self._config_url)
        self._producer = Producer(self._redis)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    @property
    def redis(self) -> Redis:
        if self._redis is None:
            raise RuntimeError("use 'async with streamq.connect() as q:' before calling q")
        return self._redis

    @property
    def producer(self) -> Producer:
        if self._producer is None:
            raise RuntimeError("use 'async with streamq.connect() as q:' before calling q")
        return self._producer

    async def enqueue(
        self, stream: str, payload: Any, *, key: str | None = None, priority: str = "normal"
    ) -> str:
        """Add one job; returns its id (an existing job's id if ``key`` is held by a live job)."""
        return await self.producer.enqueue(stream, payload, key=key, priority=priority)

    async def enqueue_many(
        self,
        stream: str,
        payloads: Iterable[Any],
        *,
        keys: Sequence[str | None] | None = None,
        priority: str = "normal",
    ) -> list[str]:
        """Add many jobs in pipelined batches; returns one id per payload, in order."""
        return await self.producer.enqueue_many(stream, payloads, keys=keys, priority=priority)

    async def stats(self, streams: list[str] | None = None) -> stats.Snapshot:
        return await stats.snapshot(self.redis, streams)


def connect(url: str | None = None) -> Queue:
    """A Queue for ``url``; None means ``STREAMQ_REDIS_URL``, else the embedded server."""
    return Queue(url)

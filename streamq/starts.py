"""Recording that a job's handler starts: the run counted in its record (start_jobs), and what
earlier runs left there (checkpoints, the "may have been sent" mark) handed to the job.

The count must be in the record before the handler can do anything, so a consumer waits for
it; consumers that start jobs while one call is on the wire share the next call, so a busy
worker pays one round trip per batch of starts, not per job.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from redis.asyncio import Redis

from streamq import scripts
from streamq.job import Job


class _Batch:
    __slots__ = ("done", "jobs", "sent")

    def __init__(self) -> None:
        self.jobs: list[Job] = []
        self.sent = False
        self.done = False


Retrying = Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[Any]]


class Starts:
    """One per worker: ``await starts.start(job)`` before its handler runs."""

    def __init__(self, redis: Redis, stream: str, retrying: Retrying) -> None:
        self.redis = redis
        self.stream = stream
        self._retrying = retrying
        self._open = _Batch()
        self._lock = anyio.Lock()

    async def start(self, job: Job) -> None:
        """Count the job's run and fill in what its earlier runs left (retried while the
        server is unreachable: a job does not start uncounted)."""
        while True:
            batch = self._open
            batch.jobs.append(job)
            async with self._lock:
                if not batch.sent:
                    self._open = _Batch()
                    batch.sent = True
                    await self._retrying("start", functools.partial(self._record, batch.jobs))
                    batch.done = True
            if batch.done:
                return
            # The call that carried it was cancelled (its consumer's job timed out): again.

    async def _record(self, jobs: list[Job]) -> None:
        started = await scripts.start_jobs(
            self.redis, self.stream, [(job.id, job._entry) for job in jobs]
        )
        for job, start in zip(jobs, started, strict=True):
            job._redis = self.redis
            job._runs = start.runs
            job._checkpoints = start.checkpoints
            job._sent_since_ms = job._mark_ms = start.sent_since_ms

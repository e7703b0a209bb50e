"""Counting runs: each job whose handler starts has the run counted in its record (start_jobs),
so the delivery budget (max_deliveries) and a crash's attempts count runs, not deliveries.

The count is sent as the handler starts, not waited for: a consumer queues its job and, when no
call is on the wire, yields once, which lets the sender put the call on the wire before the
handler does anything; jobs that start while a call is on the wire share the next one, sent as
its answer comes (a yield would not send it sooner, so they do not yield: a yield per job cost
about a fifth of a no-op job's worker time, 2026-12-05). A worker killed within that one round
trip may leave its last runs uncounted: they are counted late, never early, so an entry that
never ran is never charged a run. (Waiting for the reply before every start would cost a round
trip per job: short jobs ran several times slower in a first try, 2026-12-04.)
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel
from redis.asyncio import Redis

from streamq import scripts
from streamq.job import Job

Retrying = Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[Any]]


class Starts:
    """One per worker: ``if starts.queue(job): await starts.send_first()`` as its handler
    starts; ``run()`` sends."""

    def __init__(self, redis: Redis, stream: str, retrying: Retrying) -> None:
        self.redis = redis
        self.stream = stream
        self._retrying = retrying
        self._queued: list[Job] = []
        self._wake = anyio.Event()
        self._sending = False  # a call is on the wire: the queued runs go in the next one

    def queue(self, job: Job) -> bool:
        """Queue the count of ``job``'s run; True when the caller must ``await send_first()``
        before its handler starts (no call is on the wire, so the sender is free to send it
        now)."""
        self._queued.append(job)
        if not self._sending:
            self._wake.set()
        # Every starting job yields once, whether or not a call is on the wire: consumers that
        # yielded unequally would start their handlers out of the order they took their jobs
        # (an account's thread out of order: tests/test_order.py found it).
        return True

    async def send_first(self) -> None:
        await anyio.lowlevel.checkpoint()  # the sender goes first

    async def run(self) -> None:
        """Send the queued starts, one call at a time, until cancelled."""
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            await self.flush()

    async def flush(self) -> None:
        while self._queued:
            batch, self._queued = self._queued, []
            pairs = [(job.id, job._entry) for job in batch]
            self._sending = True
            try:
                await self._retrying(
                    "count runs",
                    functools.partial(scripts.start_jobs, self.redis, self.stream, pairs),
                )
            finally:
                self._sending = False

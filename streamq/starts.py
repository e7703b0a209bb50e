"""Counting runs: each job whose handler starts has the run counted in its record (start_jobs),
so the delivery budget (max_deliveries) and a crash's attempts count runs, not deliveries.

The count is sent as the handler starts, not waited for: a consumer queues its job and yields
once, which lets the sender put the call on the wire before the handler does anything; jobs
that start while a call is on the wire share the next one, sent as its answer comes. (Skipping
the yield while a call is on the wire saved about a fifth of a no-op job's worker time, but
let consumers start their handlers out of the order they took their jobs.) A worker killed
within that one round trip may leave its last runs uncounted: they are counted late, never
early, so an entry that never ran is never charged a run. (Waiting for the reply before every
start would cost a round trip per job: short jobs ran several times slower in a first try,
2026-12-04.)

A job whose outcome comes while its start is still queued (a short handler that finished
while a call was on the wire) has its start folded into the outcome's finish_jobs call instead
(streamq.acks): recorded in the same atomic step as the outcome, or not at all when the worker
dies first, like a start still queued (its handler finished: a run that kills its worker never
has an outcome, so its start is always sent on its own). An outcome recorded there ends its
entry, whose run count no longer matters; a stale one (the entry is another consumer's now) has
the run counted there as here. Short jobs under load send fewer start_jobs calls.
"""

from __future__ import annotations

import functools
from asyncio import sleep as _yield
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from redis.asyncio import Redis

from streamq import scripts
from streamq.job import Job

Retrying = Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[Any]]


class Starts:
    """One per worker: ``await starts.start(job)`` as its handler starts; ``run()`` sends."""

    def __init__(self, redis: Redis, stream: str, retrying: Retrying) -> None:
        self.redis = redis
        self.stream = stream
        self._retrying = retrying
        self._queued: list[Job] = []
        self._wake = anyio.Event()

    async def start(self, job: Job) -> None:
        """Queue the count of ``job``'s run and yield once, so that the sender, when free, puts
        it on the wire before the handler starts. Every job yields, whether or not a call is on
        the wire: consumers that yielded unequally would start their handlers out of the order
        they took their jobs (an account's thread out of order; tests/test_order.py).
        The yield is asyncio's ``sleep(0)``, which anyio's checkpoint comes down to on the
        asyncio backend (redis.asyncio runs on no other), without its per-call lookup of the
        running library: about 1.4 µs a job of the worker's CPU (2026-12-06)."""
        job._start_queued = True
        self._queued.append(job)
        self._wake.set()
        await _yield(0)

    async def run(self) -> None:
        """Send the queued starts, one call at a time, until cancelled."""
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            await self.flush()

    async def flush(self) -> None:
        while self._queued:
            batch, self._queued = self._queued, []
            ids: list[str] = []
            entries: list[bytes] = []
            for job in batch:
                if job._start_queued:  # else its outcome took it (streamq.acks.finish)
                    job._start_queued = False
                    ids.append(job.id)
                    entries.append(job._entry)
            if not ids:
                continue
            await self._retrying(
                "count runs",
                functools.partial(scripts.start_jobs, self.redis, self.stream, ids, entries),
            )

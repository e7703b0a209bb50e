"""Acknowledging finished jobs in batches, each with its outcome recorded in the same step.

Consumers hand every job that leaves their hands to :meth:`AckBatcher.finish` with its
outcome (done, retry, dead, deferred, parked, expired, cancelled). The batcher sends what has
collected as one ``finish_jobs`` call (XACK + XDEL + records + reschedules), each call
carrying every job that finished while the previous one was on the wire; two calls may be in
flight, so the worker keeps collecting and the server keeps working meanwhile. A call is
retried until the server answers: an entry is acknowledged only once its outcome is recorded,
so nothing is lost when the server goes away (the entries stay pending and run again).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

import anyio
from redis.asyncio import Redis

from streamq import codec, keys, scripts
from streamq.connection import Retrying
from streamq.job import Job

ACKS_IN_FLIGHT: Final = 2
GIVE_WAY_POLL_SECONDS: Final = 0.002
"""How often the batcher looks again while it gives way (see ``give_way``)."""
GIVE_WAY_MAX_SECONDS: Final = 0.2
"""The longest it gives way before it sends a batch anyway (jobs due in a steady stream are
handed on one after another: what has finished goes out at least this often)."""

Batch = list[tuple[Job, codec.Outcome]]


class AckBatcher:
    def __init__(
        self,
        redis: Redis,
        stream: str,
        *,
        consumer: str,
        retention_ms: int,
        retrying: Retrying,
        on_recorded: Callable[[Batch], Awaitable[None]],
        give_way: Callable[[], bool] | None = None,
    ) -> None:
        self.redis = redis
        self.stream = stream
        self.consumer = consumer
        """Named in each failed run's attempts history (the record's ``attempts``)."""
        self.retention_ms = retention_ms
        self.retrying = retrying
        self.on_recorded = on_recorded
        """Called after each batch is recorded (counts, hooks, pauses in force)."""
        self.give_way = give_way
        """While it says so, nothing is sent: jobs of a burst due at one instant are starting
        (streamq.fetcher.Fetcher.burst_starting, which bounds how long), and building a
        batch would take the loop from them. Finished jobs keep collecting meanwhile."""
        self.finished: Batch = []
        """Jobs finished and not yet on the wire (swapped out whole by each call)."""
        self.in_flight: list[Batch] = []
        """Batches on the wire."""
        self.event: anyio.Event | None = None
        """Set by ``finish`` while the batcher waits for something to send."""
        self._closed = False
        self._done = anyio.Event()

    def finish(self, job: Job, outcome: codec.Outcome) -> None:
        if job._start_queued:  # not sent yet: it goes with the outcome (streamq.starts)
            job._start_queued = False
            job._start_folded = True
        self.finished.append((job, outcome))
        if self.event is not None:
            self.event.set()

    async def run(self) -> None:
        # Batches are disjoint, so the order in which calls land does not matter.
        in_flight = anyio.Semaphore(ACKS_IN_FLIGHT)
        gave_way_since: float | None = None
        async with anyio.create_task_group() as calls:
            while True:
                if not self.finished:
                    if self._closed:
                        break
                    event = self.event = anyio.Event()
                    await event.wait()
                    self.event = None
                    continue
                if self.give_way is not None and not self._closed and self.give_way():
                    now = anyio.current_time()
                    gave_way_since = now if gave_way_since is None else gave_way_since
                    if now - gave_way_since < GIVE_WAY_MAX_SECONDS:
                        await anyio.sleep(GIVE_WAY_POLL_SECONDS)
                        continue
                gave_way_since = None
                await in_flight.acquire()
                batch, self.finished = self.finished, []
                calls.start_soon(self._record_batch, batch, in_flight)
        self._done.set()

    async def close(self, within: float) -> None:
        """Send what is left and wait for it, ``within`` seconds at most: with the server
        gone, unacknowledged jobs stay pending and run again elsewhere."""
        self._closed = True
        if self.event is not None:
            self.event.set()
        with anyio.move_on_after(within):
            await self._done.wait()

    async def _record_batch(self, batch: Batch, in_flight: anyio.Semaphore) -> None:
        self.in_flight.append(batch)
        # Starts that were still queued when their outcomes came go with them.
        folded = ""
        for job, _ in batch:
            if job._start_folded:
                folded = "".join(["1" if job._start_folded else "0" for job, _ in batch])
                break
        try:
            await self.retrying("ack", lambda: self._record(batch, folded))
        finally:
            self.in_flight.remove(batch)
            in_flight.release()
        await self.on_recorded(batch)

    async def _record(self, batch: Batch, folded: str = "") -> None:
        """Acknowledge a batch and record each job's outcome: one script call. ``folded``:
        which of them carry their run's start (scripts.finish_jobs)."""
        ids: list[list[bytes]] = [[] for _ in keys.LANES]
        rows: list[codec.Outcome] = []
        flow_steps: list[str] = []
        for job, outcome in batch:
            ids[job._lane].append(job._entry)
            rows.append(outcome)
            if job.envelope.flow is not None:
                flow_steps.append(codec.outbox_member(job.id, job.envelope.flow))
        await scripts.finish_jobs(
            self.redis,
            self.stream,
            ids,
            rows,
            retention_ms=self.retention_ms,
            consumer=self.consumer,
            flow_steps=flow_steps,
            folded=folded,
        )

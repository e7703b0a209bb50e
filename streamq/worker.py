"""The worker: reads one stream through its consumer group and runs a handler for each job.

    fetcher ──► ready buffer ──► N consumers ──► ack batcher ──► XACK + XDEL (one script call)
       ▲                                              │
       └──────────── room to fetch more ◄─────────────┘
    reclaimer   takes over entries idle past the visibility timeout (crashed consumers)
    refresher   keeps the claims of jobs this worker holds fresh, so nobody takes them over

Nothing is done per job against Redis: entries arrive in batches (``fetch_jobs`` reads the
highest lane first), and completions are acknowledged in batches, each ack call carrying every
job that finished while the previous call was in flight. An entry is acknowledged only after its
handler returned, so a worker that dies loses nothing: its entries stay pending and the
reclaimer of a live worker runs them once they have been idle for the visibility timeout.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import anyio
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from streamq import codec, keys, scripts
from streamq.handler import Handler
from streamq.job import Job

log = logging.getLogger("streamq.worker")

T = TypeVar("T")

RECONNECT_ERRORS: Final = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)
HEARTBEAT_SECONDS: Final = 5.0
"""How often a worker touches its consumer group at the least: the reclaimer's period."""


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    concurrency: int = 32
    prefetch: int | None = None
    """Entries fetched ahead of free slots; None means as many as ``concurrency``."""
    visibility_timeout: float = 60.0
    max_deliveries: int = 5
    grace: float = 30.0
    burst: bool = False
    """Stop once the stream has nothing left for this worker (handy in tests and batch jobs)."""
    block_seconds: float = 5.0
    """Longest wait of one blocking read; a stop request interrupts it at once."""


@dataclass(slots=True)
class WorkerCounts:
    completed: int = 0
    failed: int = 0
    dead_lettered: int = 0
    reclaimed: int = 0
    released: int = 0


@dataclass(slots=True)
class _Batch:
    """Entries per lane in lane order, as the scripts want them."""

    by_lane: list[list[str]] = field(default_factory=lambda: [[] for _ in keys.LANES])

    def add(self, lane: int, entry_id: str) -> None:
        self.by_lane[lane].append(entry_id)

    def args(self) -> list[scripts.EncodableArg]:
        counts: list[scripts.EncodableArg] = [len(ids) for ids in self.by_lane]
        return counts + [i for ids in self.by_lane for i in ids]


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"


class Worker:
    def __init__(
        self,
        redis: Redis,
        stream: str,
        handler: Handler,
        options: WorkerOptions | None = None,
        *,
        consumer: str | None = None,
    ) -> None:
        self.redis = redis
        self.stream = keys.check_stream_name(stream)
        self.handler = handler
        self.options = options or WorkerOptions()
        self.consumer = consumer or consumer_name()
        self.counts = WorkerCounts()
        self._lanes = keys.lanes(stream)
        self._dedup = keys.dedup(stream)
        self._dead = keys.dead(stream)
        prefetch = self.options.prefetch
        self._capacity = self.options.concurrency + (
            self.options.concurrency if prefetch is None else prefetch
        )
        self._refill_at = max(1, self._capacity // 4)
        # Every entry this worker has claimed and not yet finished: (lane index, entry id).
        # Entry ids are unique only within one lane.
        self._held: set[tuple[int, str]] = set()
        self._ready: deque[Job] = deque()
        self._ready_event = anyio.Event()
        self._room_event: anyio.Event | None = None
        self._acks: list[Job] = []
        self._ack_event: anyio.Event | None = None
        self._acks_closed = False
        self._acks_done = anyio.Event()
        self._closing = False
        self._stopping = False
        self._stop_event = anyio.Event()
        self._reader = redis.client()  # one connection of its own for blocking reads
        self._reader_id: int | None = None
        self._cursors: list[str] = ["0-0"] * len(keys.LANES)
        self._last_reclaim_found = 0

    # -- lifecycle ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the worker to stop: no more reads, running jobs get ``grace`` seconds to finish."""
        if not self._stopping:
            self._stopping = True
            self._stop_event.set()
            if self._room_event is not None:
                self._room_event.set()

    async def run(self, *, handle_signals: bool = False) -> WorkerCounts:
        await self.ensure_groups()
        log.info(
            "worker %s consuming %s (concurrency %d)",
            self.consumer,
            self.stream,
            self.options.concurrency,
        )
        try:
            async with anyio.create_task_group() as background:
                if handle_signals:
                    background.start_soon(self._watch_signals, background.cancel_scope)
                background.start_soon(self._unblock_on_stop)
                background.start_soon(self._ack_loop)
                background.start_soon(self._refresh_loop)
                background.start_soon(self._reclaim_loop)
                await self._run_consumers()
                await self._finish_acks()
                background.cancel_scope.cancel()
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await self._retire()
        finally:
            with anyio.CancelScope(shield=True):
                await self._reader.aclose()
        log.info(
            "worker %s stopped: %d completed, %d failed, %d dead-lettered",
            self.consumer,
            self.counts.completed,
            self.counts.failed,
            self.counts.dead_lettered,
        )
        return self.counts

    async def ensure_groups(self) -> None:
        """Create the group on every lane, reading from the start: acknowledged entries are
        deleted, so whatever a lane holds still has to run."""
        for lane in self._lanes:
            try:
                await self.redis.xgroup_create(lane, keys.GROUP, id="0", mkstream=True)
            except redis_errors.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        await self.redis.sadd(keys.STREAM_REGISTRY, self.stream)

    async def _run_consumers(self) -> None:
        with anyio.CancelScope() as grace_scope:
            async with anyio.create_task_group() as consumers:
                for _ in range(self.options.concurrency):
                    consumers.start_soon(self._consume)
                await self._fetch_loop()
                await self._release_ready()
                self._closing = True
                self._wake_consumers()
                # Running handlers now have the grace period; the rest stay pending and are
                # reclaimed by another worker once their visibility timeout passes.
                grace_scope.deadline = anyio.current_time() + self.options.grace
        if grace_scope.cancelled_caught:
            log.warning("grace period over: jobs still running were left pending")

    async def _watch_signals(self, scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                if self._stopping:
                    log.warning("second %s: stopping now", signal.Signals(signum).name)
                    scope.cancel()
                    return
                log.info("%s: finishing running jobs, then stopping", signal.Signals(signum).name)
                self.stop()

    async def _unblock_on_stop(self) -> None:
        await self._stop_event.wait()
        reader_id = self._reader_id
        if reader_id is not None:
            with contextlib.suppress(*RECONNECT_ERRORS):
                await self.redis.client_unblock(reader_id)

    # -- fetching -------------------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        failures = 0
        while not self._stopping:
            room = self._capacity - len(self._held)
            if room < self._refill_at and self._held:
                await self._wait_for_room()
                continue
            try:
                found = await self._fetch(room)
                if not found and not self._held and self.options.burst:
                    if await self._reclaim_once() == 0 and not self._held:
                        self.stop()
                    continue
                if not found and not self._stopping:
                    await self._blocking_fetch(room)
                failures = 0
            except redis_errors.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                log.warning(
                    "consumer group of %s is gone (stream deleted?): recreating", self.stream
                )
                await self.ensure_groups()
            except RECONNECT_ERRORS as exc:
                failures += 1
                self._reader_id = None
                await self._pause_after_failure("fetch", exc, failures)

    async def _fetch(self, count: int) -> int:
        reply = await scripts.fetch_jobs(
            self._reader, self._lanes, [keys.GROUP, self.consumer, count]
        )
        found = 0
        for i in range(0, len(reply), 2):
            found += await self._accept(int(reply[i]) - 1, reply[i + 1])
        return found

    async def _blocking_fetch(self, count: int) -> None:
        if self._reader_id is None:
            self._reader_id = int(await self._reader.client_id())
            if self._stopping:
                return
        reply: Any = await self._reader.xreadgroup(
            keys.GROUP,
            self.consumer,
            dict.fromkeys(self._lanes, ">"),
            count=count,
            block=max(1, int(self.options.block_seconds * 1000)),
        )
        # Several lanes may answer at once: take them in priority order.
        by_name = {_text(name): entries for name, entries in reply or []}
        for lane, name in enumerate(self._lanes):
            if by_name.get(name):
                await self._accept(lane, by_name[name])

    async def _accept(
        self, lane: int, entries: list[Any], deliveries: list[int] | None = None
    ) -> int:
        """Turn raw entries into jobs on the ready buffer; dead-letter what cannot run."""
        priority = keys.LANES[lane]
        held = self._held
        jobs: list[Job] = []
        rejects: list[tuple[str, str, codec.Envelope | None]] = []
        for index, (raw_id, fields) in enumerate(entries):
            entry_id = _text(raw_id)
            held.add((lane, entry_id))
            try:
                env = codec.decode_fields(fields)
            except codec.UnknownEntry as exc:
                rejects.append((entry_id, str(exc), None))
                continue
            if deliveries is not None and deliveries[index] > self.options.max_deliveries:
                reason = (
                    f"delivered {deliveries[index]} times without being acknowledged "
                    f"(max_deliveries={self.options.max_deliveries})"
                )
                rejects.append((entry_id, reason, env))
                continue
            jobs.append(
                Job(
                    env.id,
                    self.stream,
                    env.payload,
                    env.attempt,
                    env.enqueued_at_ms,
                    env.key,
                    priority,
                    entry_id,
                )
            )
        if rejects:
            await self._dead_letter(lane, rejects)
        if jobs:
            self._ready.extend(jobs)
            self._wake_consumers()
        return len(entries)

    async def _dead_letter(
        self, lane: int, rejects: list[tuple[str, str, codec.Envelope | None]]
    ) -> None:
        args: list[scripts.EncodableArg] = [keys.GROUP]
        for entry_id, reason, env in rejects:
            log.warning("dead-lettering %s entry %s: %s", self.stream, entry_id, reason)
            args += (entry_id, reason, (env and env.key) or "", env.id if env else "")
        await self._retrying(
            "dead-letter",
            lambda: scripts.dead_letter(
                self.redis, [self._lanes[lane], self._dead, self._dedup], args
            ),
        )
        for entry_id, _, _ in rejects:
            self._held.discard((lane, entry_id))
        self.counts.dead_lettered += len(rejects)

    async def _wait_for_room(self) -> None:
        event = self._room_event = anyio.Event()
        with anyio.move_on_after(self.options.block_seconds):
            await event.wait()
        self._room_event = None

    def _wake_consumers(self) -> None:
        event, self._ready_event = self._ready_event, anyio.Event()
        event.set()

    async def _release_ready(self) -> None:
        """Hand back jobs fetched but never started, so a stop does not delay them."""
        if not self._ready:
            return
        by_lane = _Batch()
        for job in self._ready:
            lane = keys.LANE_INDEX[job.priority]
            by_lane.add(lane, job.entry_id)
            self._held.discard((lane, job.entry_id))
        self._ready.clear()
        for lane, ids in enumerate(by_lane.by_lane):
            if ids:
                released = await self._retrying(
                    "release",
                    lambda lane=lane, ids=ids: scripts.release_jobs(  # type: ignore[misc]
                        self.redis, [self._lanes[lane]], [keys.GROUP, self.consumer, *ids]
                    ),
                    attempts=3,
                )
                self.counts.released += int(released or 0)

    # -- running --------------------------------------------------------------------------------

    async def _consume(self) -> None:
        ready = self._ready
        handler = self.handler
        while True:
            if ready:
                job = ready.popleft()
            elif self._closing:
                return
            else:
                await self._ready_event.wait()
                continue
            try:
                await handler(job)
            except Exception:
                self.counts.failed += 1
                log.exception(
                    "job %s (stream %s, attempt %d) failed; it stays pending and is delivered "
                    "again after the visibility timeout",
                    job.id,
                    job.stream,
                    job.attempt,
                )
            else:
                self._acks.append(job)
                if self._ack_event is not None:
                    self._ack_event.set()
            finally:
                self._held.discard((keys.LANE_INDEX[job.priority], job.entry_id))
                if self._room_event is not None:
                    self._room_event.set()

    # -- acknowledging --------------------------------------------------------------------------

    async def _ack_loop(self) -> None:
        while True:
            if not self._acks:
                if self._acks_closed:
                    self._acks_done.set()
                    return
                event = self._ack_event = anyio.Event()
                await event.wait()
                self._ack_event = None
                continue
            batch, self._acks = self._acks, []
            await self._retrying("ack", lambda batch=batch: self._ack(batch))  # type: ignore[misc]
            self.counts.completed += len(batch)

    async def _finish_acks(self) -> None:
        self._acks_closed = True
        if self._ack_event is not None:
            self._ack_event.set()
        # Bounded: with the server gone, unacknowledged jobs stay pending and run again elsewhere.
        with anyio.move_on_after(max(self.options.grace, 5.0)):
            await self._acks_done.wait()

    async def _ack(self, batch: list[Job]) -> None:
        ids = _Batch()
        dedup: list[scripts.EncodableArg] = []
        lane_index = keys.LANE_INDEX
        for job in batch:
            ids.add(lane_index[job.priority], job.entry_id)
            if job.key is not None:
                dedup += (job.key, job.id)
        await scripts.ack_jobs(
            self.redis, [*self._lanes, self._dedup], [keys.GROUP, *ids.args(), *dedup]
        )

    # -- recovering -----------------------------------------------------------------------------

    async def _reclaim_loop(self) -> None:
        period = min(HEARTBEAT_SECONDS, self.options.visibility_timeout / 4)
        while True:
            try:
                await self._reclaim_once()
            except RECONNECT_ERRORS as exc:
                log.warning("reclaim failed, will try again: %s", exc)
            except redis_errors.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
            await anyio.sleep(period)

    async def _reclaim_once(self) -> int:
        """Claim entries idle past the visibility timeout; returns how many were taken."""
        if self._closing:
            return 0
        room = max(1, self._capacity - len(self._held))
        reply = await scripts.reclaim_jobs(
            self.redis,
            self._lanes,
            [
                keys.GROUP,
                self.consumer,
                int(self.options.visibility_timeout * 1000),
                room,
                *self._cursors,
            ],
        )
        found = 0
        for lane, (cursor, entries, deliveries) in enumerate(reply):
            self._cursors[lane] = _text(cursor)
            if entries:
                log.info("reclaimed %d idle %s entries", len(entries), self._lanes[lane])
                found += await self._accept(lane, entries, [int(d) for d in deliveries])
        self.counts.reclaimed += found
        return found

    async def _refresh_loop(self) -> None:
        period = self.options.visibility_timeout / 3
        while True:
            await anyio.sleep(period)
            if not self._held:
                continue
            held = _Batch()
            for lane, entry_id in list(self._held):
                held.add(lane, entry_id)
            try:
                lost = await scripts.refresh_claims(
                    self.redis, self._lanes, [keys.GROUP, self.consumer, *held.args()]
                )
            except RECONNECT_ERRORS as exc:
                log.warning("could not refresh claims, will try again: %s", exc)
                continue
            if lost:
                log.warning(
                    "%d entries were taken over by another consumer while running here "
                    "(this worker stalled past the visibility timeout)",
                    len(lost),
                )

    async def _retire(self) -> None:
        try:
            await scripts.retire_consumer(self.redis, self._lanes, [keys.GROUP, self.consumer])
        except (*RECONNECT_ERRORS, redis_errors.ResponseError) as exc:
            log.debug("could not retire consumer %s: %s", self.consumer, exc)

    # -- failures -------------------------------------------------------------------------------

    async def _retrying(
        self, what: str, call: Callable[[], Awaitable[T]], attempts: int | None = None
    ) -> T | None:
        """Run a Redis call until it succeeds, backing off while the server is unreachable.

        Used where giving up would strand work in this process; ``attempts`` bounds it where
        giving up is safe (the entries stay pending and are reclaimed).
        """
        failures = 0
        while True:
            try:
                return await call()
            except RECONNECT_ERRORS as exc:
                failures += 1
                if attempts is not None and failures >= attempts:
                    log.warning("%s failed %d times, giving up: %s", what, failures, exc)
                    return None
                await self._pause_after_failure(what, exc, failures)

    async def _pause_after_failure(self, what: str, exc: BaseException, failures: int) -> None:
        delay = min(5.0, 0.05 * 2 ** min(failures, 7))
        log.warning("%s failed (%s); retrying in %.2fs", what, exc, delay)
        with anyio.move_on_after(delay):
            await self._stop_event.wait() if what == "fetch" else anyio.sleep(delay)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

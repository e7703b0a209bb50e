"""The worker: reads one stream through its consumer group and runs a handler for each job.

    fetcher ──► ready buffer ──► N consumers ──► ack batcher ──► XACK + XDEL (one script call)
       ▲                                              │
       └──────────── room to fetch more ◄─────────────┘
    reclaimer   takes over entries idle past the visibility timeout (crashed consumers)
    refresher   keeps the claims of jobs this worker holds fresh, so nobody takes them over
    promoter    moves due scheduled jobs and retries onto the lanes (streamq.scheduler)
    listener    hears cancellations, platform pauses and wake-ups (streamq.channel)
    watchdog    cancels handlers that run past their job timeout; stamps the heartbeat
    heartbeat   a thread, not a task: keeps the claims fresh while a handler blocks the loop

What is decided lives elsewhere, and this module only acts on it: what a run's result or
exception means (streamq.outcomes), whether a job read may start (streamq.admission), the
server's clock (streamq.channel), how each script is called (streamq.scripts), what a stop
signal means (streamq.signals), the hooks (streamq.handler).

Nothing is done per job against Redis: entries arrive in batches (the highest lane read
first), and completions are acknowledged in batches, each ack call carrying every
job that finished while the previous call was in flight, together with its outcome (done,
retry, dead, deferred, expired, cancelled) so acknowledging and rescheduling are one step. An
entry is acknowledged only after its handler returned, so a worker that dies loses nothing: its
entries stay pending and the reclaimer of a live worker runs them once they have been idle for
the visibility timeout.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import anyio
import msgspec
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from streamq import (
    admission,
    channel,
    codec,
    connection,
    health,
    keys,
    limiter,
    logs,
    metrics,
    outcomes,
    scheduler,
    scripts,
    signals,
)
from streamq.config import StreamConfig
from streamq.connection import TRANSIENT_ERRORS, retry_delay
from streamq.handler import Handler, Hooks, call_hooks
from streamq.heartbeat import Heartbeat
from streamq.job import Job
from streamq.starts import Starts

log = logging.getLogger("streamq.worker")

T = TypeVar("T")

HEARTBEAT_SECONDS: Final = 5.0
ACKS_IN_FLIGHT: Final = 2
WATCHDOG_SECONDS: Final = 0.25
"""How often running jobs are checked against their timeout (and so its precision)."""
MAX_PREFETCH: Final = 1024
"""How often a worker touches its consumer group at the least: the reclaimer's period."""
LANE_NEWS_SECONDS: Final = 0.02
"""How old the news that a higher lane is empty may be when a job of a lower lane starts from
the read-ahead; older news is checked first (one read of those lanes), so a job read ahead
never starts while a higher lane has held a job for longer than this plus one round trip."""


class WorkerOptions(StreamConfig, frozen=True, kw_only=True):
    """A stream's configuration, plus how this worker process runs."""

    burst: bool = False
    """Stop once the stream has nothing left for this worker (handy in tests and batch jobs)."""
    block_seconds: float = 5.0
    """Longest wait of one blocking read; a stop request interrupts it at once."""


@dataclass(slots=True)
class WorkerCounts:
    completed: int = 0
    """Jobs whose handler returned."""
    failed: int = 0
    """Runs that raised or timed out (each retried or dead-lettered)."""
    dead_lettered: int = 0
    deferred: int = 0
    """Runs that raised RateLimited."""
    limited: int = 0
    """Jobs read but not started: over a rate limit, or their account or platform paused."""
    parked: int = 0
    """Jobs that paused their account (Fail(pause_account=True)), or found it pausing."""
    expired: int = 0
    cancelled: int = 0
    reclaimed: int = 0
    released: int = 0


@dataclass(slots=True, eq=False)
class _Slot:
    """One consumer's current job, so the watchdog can find and cancel an overrunning one."""

    job: Job | None = None
    deadline: float = math.inf
    started: int = 0
    scope: anyio.CancelScope | None = None


class JobTimeout(Exception):
    pass


def partition_options(options: WorkerOptions, partitions: int) -> WorkerOptions:
    """One partition's worker options when a process reads ``partitions`` of them: an equal
    share of the concurrency and read-ahead, at least one each."""
    if partitions <= 1:
        return options
    share = {"concurrency": max(1, math.ceil(options.concurrency / partitions))}
    if options.prefetch is not None:
        share["prefetch"] = math.ceil(options.prefetch / partitions)
    return msgspec.structs.replace(options, **share)


async def run_all(workers: list[Worker], *, handle_signals: bool = False) -> list[WorkerCounts]:
    """Run several workers in this process (one per partition of a stream) until they stop;
    SIGTERM or SIGINT stops them all, a second one ends them at once."""
    if len(workers) == 1:
        return [await workers[0].run(handle_signals=handle_signals)]
    counts: list[WorkerCounts] = []

    async def run(worker: Worker) -> None:
        counts.append(await worker.run())

    async with anyio.create_task_group() as tasks:
        if handle_signals:
            tasks.start_soon(stop_on_signals, workers, tasks.cancel_scope)
        async with anyio.create_task_group() as running:
            for worker in workers:
                running.start_soon(run, worker)
        tasks.cancel_scope.cancel()
    return counts


async def stop_on_signals(workers: list[Worker], scope: anyio.CancelScope) -> None:
    """SIGTERM or SIGINT stops ``workers`` (running jobs finish); the next one cancels
    ``scope`` at once."""

    def handle(name: str) -> bool:
        if any(worker.stopping for worker in workers):
            log.warning("second %s: stopping now", name)
            scope.cancel()
            return True
        log.info("%s: finishing running jobs, then stopping", name)
        for worker in workers:
            worker.stop()
        return False

    await signals.on_stop_signals(handle)


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
        clock: Callable[[], float] = time.time,
        hooks: Hooks | None = None,
    ) -> None:
        self.redis = redis
        self.hooks = hooks
        self.stream = keys.check_stream_name(stream)
        self.handler = handler
        self.options = options or WorkerOptions()
        self.consumer = consumer or consumer_name()
        self.counts = WorkerCounts()
        self.metrics = metrics.WorkerMetrics(self.stream)
        self._lanes = keys.lanes(stream)
        self._prefetch = self.options.concurrency
        if self.options.prefetch is not None:
            self._prefetch = self.options.prefetch
        self._starved_reads = 0
        self._adaptive = self.options.prefetch is None
        limits = limiter.limits_for(
            self.stream, self.options.limits, partitions=self.options.partitions
        )
        if limits.any:
            # A rate-limited start is recorded when the job is read: read only what can start
            # at once, so the recorded time is the real one.
            self._prefetch, self._adaptive = 0, False
        # Entries this worker has claimed and not yet finished, per lane (ids are unique only
        # within one lane).
        self._held: list[set[bytes]] = [set() for _ in keys.LANES]
        # Fetched jobs waiting for a free consumer, one queue per lane so a higher lane's job
        # fetched later still starts before a lower lane's fetched earlier.
        self._ready: list[deque[Job]] = [deque() for _ in keys.LANES]
        # When each lane was last seen empty (time.monotonic() as its read was sent), and
        # whether a blocking read on every lane is waiting now (then any entry comes at once).
        self._empty_at = [-math.inf] * len(keys.LANES)
        self._blocking = False
        # Per lane, until when (time.monotonic()) its jobs may start from the read-ahead
        # without a look above: the news above, cached so a consumer checks it in one step.
        self._fresh_until = [math.inf] + [-math.inf] * (len(keys.LANES) - 1)
        self._looking: anyio.Event | None = None  # a look at the higher lanes in flight
        # Per lane, admission calls in flight: their jobs were read but are not ready yet.
        self._admitting_lane = [0] * len(keys.LANES)
        self._admitted = anyio.Event()  # set (and replaced) as each admission call ends
        self._idle = 0  # consumers parked waiting for work
        self._ready_event = anyio.Event()
        self._room_event: anyio.Event | None = None
        self._ack_event: anyio.Event | None = None
        self._acks_closed = False
        self._acks_done = anyio.Event()
        self._closing = False
        self._stopping = False
        self._stop_event = anyio.Event()
        # One connection of its own for reads: a blocking read holds it, and a stop request
        # interrupts that read by its client id. Replies stay raw (no dict per entry).
        self._own_reader: Redis | None = None
        self._reader_id: int | None = None
        self._cursors: list[str] = ["0-0"] * len(keys.LANES)
        self._slots = [_Slot() for _ in range(self.options.concurrency)]
        self._finished: list[tuple[Job, codec.Outcome]] = []
        self._acking: list[list[tuple[Job, codec.Outcome]]] = []  # batches on the wire
        self._retention_ms = round(self.options.retention * 1000)
        self._record_prefix = keys.job(self.stream, "")
        self._id_prefix = f"{self.stream}:"
        self.heartbeat = Heartbeat(
            redis,
            self.stream,
            self.consumer,
            self._held_now,
            self._running_now,
            visibility_timeout=self.options.visibility_timeout,
            give_up_after=self.options.job_timeout,
        )
        self.clock = channel.ServerClock(clock)
        self.gate = admission.Gate(redis, self.stream, self.consumer, limits, self.clock)
        self.starts = Starts(redis, self.stream, self._retrying)
        self.promoter = scheduler.Promoter(
            redis, self.stream, retention_ms=self._retention_ms, clock=self.clock
        )
        self.control = channel.ControlListener(
            redis,
            self.stream,
            on_cancel=self.cancel_local,
            on_platform_pause=self.gate.hold_platform,
            on_wake=self.promoter.wake,
        )

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
        await self.publish_settings()
        await self.control.prepare()
        # A platform pause from before this worker started (later ones come by the control
        # stream, which it now follows).
        paused_until: Any = await self.redis.hget(keys.paused(self.stream), "platform")
        if paused_until is not None:
            self.gate.hold_platform(int(paused_until))
        log.info(
            "worker %s consuming %s (concurrency %d)",
            self.consumer,
            self.stream,
            self.options.concurrency,
            extra={"stream": self.stream, "consumer": self.consumer},
        )
        self.heartbeat.start()
        try:
            async with anyio.create_task_group() as background:
                if handle_signals:
                    background.start_soon(stop_on_signals, [self], background.cancel_scope)
                background.start_soon(self._unblock_on_stop)
                background.start_soon(self._ack_loop)
                background.start_soon(self.starts.run)
                background.start_soon(self._refresh_loop)
                background.start_soon(self._reclaim_loop)
                background.start_soon(self.control.run)
                background.start_soon(self.promoter.run)
                background.start_soon(self._watchdog)
                background.start_soon(
                    health.report_loop,
                    self.redis,
                    self.stream,
                    self.consumer,
                    self.metrics,
                    self.clock.now_ms,
                )
                await self._run_consumers()
                await self._finish_acks()
                background.cancel_scope.cancel()
            self.heartbeat.stop()  # the watchdog stamps no more: that is not a stall
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await self._retire()
        finally:
            self.heartbeat.stop()
            if self._own_reader is not None:
                with anyio.CancelScope(shield=True):
                    await self._own_reader.aclose()
        log.info(
            "worker %s stopped: %d completed, %d failed, %d dead-lettered, %d expired",
            self.consumer,
            self.counts.completed,
            self.counts.failed,
            self.counts.dead_lettered,
            self.counts.expired,
            extra={"stream": self.stream, "consumer": self.consumer},
        )
        return self.counts

    async def publish_settings(self) -> None:
        """Share the stream's event settings with every process that changes its jobs: the
        scripts read them from the meta hash, so producers need no config of their own."""
        events = self.options.events
        await self.redis.hset(
            keys.meta(self.stream),
            mapping={
                "events_cap": events.cap,
                "events_age_ms": events.max_age_ms,
                "events_skip": ",".join(events.skip),
            },
        )

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
                for slot in self._slots:
                    consumers.start_soon(self._consume, slot)
                await self._fetch_loop()
                await self._release_ready()
                self._closing = True
                self._wake_consumers()
                # Running handlers now have the grace period; the rest stay pending and are
                # reclaimed by another worker once their visibility timeout passes.
                grace_scope.deadline = anyio.current_time() + self.options.grace
        if grace_scope.cancelled_caught:
            log.warning("grace period over: jobs still running were left pending")

    @property
    def _reader(self) -> Redis:
        """Made on first use: a cluster client knows which node holds the lanes only after
        its first command."""
        if self._own_reader is None:
            self._own_reader = connection.reader(self.redis, self._lanes[0])
            self._own_reader.set_response_callback("XREADGROUP", _raw)
        return self._own_reader

    async def _replace_reader(self) -> None:
        """After a lost connection: on a cluster the stream's slot may have a new master."""
        self._reader_id = None
        if connection.is_cluster_client(self.redis) and self._own_reader is not None:
            with contextlib.suppress(*TRANSIENT_ERRORS):
                await self._own_reader.aclose()
            self._own_reader = None
            await connection.refresh_topology(self.redis)

    async def _unblock_on_stop(self) -> None:
        await self._stop_event.wait()
        reader_id = self._reader_id
        if reader_id is not None:
            # Another connection to the reader's server: on a cluster, self.redis could send
            # CLIENT UNBLOCK to any node.
            unblocker = Redis(connection_pool=self._reader.connection_pool)
            with contextlib.suppress(*TRANSIENT_ERRORS):
                await unblocker.client_unblock(reader_id)

    # -- fetching -------------------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        failures = 0
        while not self._stopping:
            held_ms = self.gate.platform_wait_ms()
            if held_ms:
                await self._wait_out_platform_pause(held_ms)
                continue
            held = self.claimed
            capacity = self.options.concurrency + self._prefetch
            room = capacity - held
            if room < max(1, capacity // 4) and held:
                await self._wait_for_room()
                continue
            try:
                found, starved = await self._fetch(room)
                if self._adaptive:
                    self._adapt_prefetch(starved, full=found >= room)
                if not found and not self._stopping:
                    await self._idle_until_work(room)
                failures = 0
            except TRANSIENT_ERRORS as exc:  # first: CLUSTERDOWN and MOVED are ResponseErrors
                failures += 1
                await self._pause_after_failure("fetch", exc, failures, until_stop=True)
                await self._replace_reader()
            except redis_errors.ResponseError as exc:
                if not _lane_gone(exc):
                    raise
                log.warning(
                    "consumer group of %s is gone (stream deleted?): recreating", self.stream
                )
                await self._retrying("recreate groups", self.ensure_groups)

    async def _wait_out_platform_pause(self, wait_ms: int) -> None:
        """The platform asked every worker to hold off (a handler raised RateLimited with
        scope="platform"): read nothing until then."""
        wait = wait_ms / 1000
        log.info("platform of %s paused: reading nothing for %.1fs", self.stream, wait)
        with anyio.move_on_after(max(0.0, wait)):
            await self._stop_event.wait()

    async def _idle_until_work(self, room: int) -> None:
        """Nothing new to read: wait for entries, or in burst mode see the last jobs through
        and stop once nothing is left (reclaimable entries included)."""
        if not self.options.burst:
            await self._blocking_fetch(room)
        elif self.claimed:
            await self._wait_for_room()
        elif await self._reclaim_once() == 0 and not self.claimed:
            self.stop()

    def _adapt_prefetch(self, starved: bool, *, full: bool) -> None:
        """Grow the read-ahead while consumers go idle between full reads; shrink it when the
        backlog runs out. Slow jobs never leave consumers idle, so they keep a small read-ahead
        and one worker does not hoard entries other workers could run."""
        if starved and full:
            # The first read after a pause always finds consumers idle: wait for a second.
            self._starved_reads += 1
            if self._starved_reads >= 2:
                self._prefetch = min(self._prefetch * 2, MAX_PREFETCH)
            return
        self._starved_reads = 0
        if not full:
            self._prefetch = max(self.options.concurrency, self._prefetch // 2)

    async def _fetch(self, count: int) -> tuple[int, bool]:
        """Read up to ``count`` new entries, a lane at a time from the highest.

        Plain XREADGROUP per lane rather than one script: a script would have to copy every
        entry into Lua and back, which costs the server twice as much per entry, and reading
        several lanes in one command could claim lower-lane entries that later higher-lane
        jobs would then wait behind. An empty lane costs one short round trip.
        Returns how many entries came, and whether consumers ran out of work meanwhile.
        """
        found = 0
        starved = False
        for lane, key in enumerate(self._lanes):
            if found >= count:
                break
            sent = time.monotonic()
            reply = await self._reader.execute_command(  # type: ignore[no-untyped-call]
                "XREADGROUP", "GROUP", keys.GROUP, self.consumer, "COUNT", count - found,
                "STREAMS", key, ">",
            )  # fmt: skip
            if not reply or len(reply[0][1]) < count - found:
                self._empty_at[lane] = sent
                self._news()
            if reply:
                # Half the consumers parked with nothing buffered: the read-ahead is too short.
                starved = starved or (
                    not any(self._ready) and 2 * self._idle >= self.options.concurrency
                )
                found += await self._accept(lane, reply[0][1])
        return found, starved

    async def _blocking_fetch(self, count: int) -> None:
        """Wait on every lane at once for the next entries (all were empty a moment ago)."""
        if self._reader_id is None:
            self._reader_id = int(await self._reader.client_id())
            if self._stopping:
                return
        self._blocking = True
        self._news()
        try:
            reply = await self._reader.execute_command(  # type: ignore[no-untyped-call]
                "XREADGROUP", "GROUP", keys.GROUP, self.consumer, "COUNT", count,
                "BLOCK", max(1, int(self.options.block_seconds * 1000)),
                "STREAMS", *self._lanes, *[">"] * len(self._lanes),
            )  # fmt: skip
        finally:
            self._blocking = False
            self._news()
        # Several lanes may answer at once: take them in priority order.
        by_name = {codec.text(name): entries for name, entries in reply or []}
        answered = time.monotonic()
        for lane, name in enumerate(self._lanes):
            if len(by_name.get(name) or ()) < count:
                self._empty_at[lane] = answered
        self._news()
        for lane, name in enumerate(self._lanes):
            if by_name.get(name):
                await self._accept(lane, by_name[name])

    def _held_now(self) -> list[list[bytes]]:
        """The entries this worker answers for, per lane, for the heartbeat thread: held ones,
        and finished ones not yet acknowledged (they would run again elsewhere too). set.copy()
        and list() of a list are one step each under the GIL, so the loop changing them
        meanwhile cannot break the copy."""
        held = [ids.copy() for ids in self._held]
        for batch in [list(self._finished), *list(self._acking)]:
            for job, _ in batch:
                held[job._lane].add(job._entry)
        return [list(ids) for ids in held]

    def _running_now(self) -> list[str]:
        """Ids of the jobs running now (read by the heartbeat thread for its warning)."""
        jobs = [slot.job for slot in self._slots]
        return [job.id for job in jobs if job is not None]

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def claimed(self) -> int:
        """Entries this worker holds: running, or fetched and waiting for a free slot."""
        return sum(map(len, self._held))

    @property
    def prefetch(self) -> int:
        """The current read-ahead (it adapts unless WorkerOptions.prefetch was given)."""
        return self._prefetch

    async def _accept(
        self, lane: int, entries: list[Any], deliveries: list[int] | None = None
    ) -> int:
        """Turn raw entries into jobs on the ready buffer; dead-letter what cannot run."""
        priority = keys.LANES[lane]
        held = self._held[lane]
        stream = self.stream
        jobs: list[Job] = []
        rejects: list[tuple[bytes, str, codec.Envelope | None]] = []
        for entry_id, fields in entries:
            held.add(entry_id)
            try:
                env = codec.decode_fields(fields)
            except codec.UnknownEntry as exc:
                rejects.append((entry_id, str(exc), None))
                continue
            if not env.id.startswith(self._id_prefix):
                # Written by hand or copied from another stream: its record would be filed
                # where no lookup by its id could find it.
                reason = f"job id {env.id[:100]!r} does not belong to stream {stream!r}"
                rejects.append((entry_id, reason, None))
                continue
            jobs.append(Job(stream, priority, env, lane, entry_id, _redis=self.redis))
        if jobs:
            jobs = await self._read_records(jobs, deliveries, entries, rejects)
        if rejects:
            await self._dead_letter(lane, rejects)
        if jobs:
            with self.gate.admitting():
                self._admitting_lane[lane] += 1
                self._news()
                try:
                    jobs = await self._admit(lane, jobs, reclaimed=deliveries is not None)
                finally:
                    self._admitting_lane[lane] -= 1
                    self._news()
                    admitted, self._admitted = self._admitted, anyio.Event()
                    admitted.set()
            if self.gate.pausing_accounts:
                jobs = self._park_pausing(jobs)
        if jobs:
            self._ready[lane].extend(jobs)
            self._wake_consumers()
        return len(entries)

    async def _read_records(
        self,
        jobs: list[Job],
        deliveries: list[int] | None,
        entries: list[Any],
        rejects: list[tuple[bytes, str, codec.Envelope | None]],
    ) -> list[Job]:
        """Hand each job what its earlier runs left in its record (checkpoints, the "may have
        been sent" mark: streamq.job). For jobs reclaimed from a worker that died
        (``deliveries`` given), the record also decides whether they run again, run only to
        verify, or are dead (streamq.outcomes.reclaimed), and a cancel sent meanwhile (which
        only flagged the record) is seen. Returns the jobs that may run."""
        # Retried until it answers: these entries are held here now, and giving up would
        # leave them held (and refreshed) with nobody to run them.
        found = await self._retrying("read records", lambda: self._records_of(jobs))
        assert found is not None  # unbounded retries
        if deliveries is None:
            for job, (_, _, _, _, sent_since, saved) in zip(jobs, found, strict=True):
                job._sent_since_ms = job._mark_ms = None if sent_since is None else int(sent_since)
                if saved is not None:
                    job._checkpoints = codec.checkpoints(saved)
            return jobs
        delivered = {entry[0]: count for entry, count in zip(entries, deliveries, strict=True)}
        keep = []
        for job, (state, cancel, runs, run_entry, sent_since, saved) in zip(
            jobs, found, strict=True
        ):
            if state is None:  # no record (a hand-written entry): its deliveries count
                runs = None
            else:  # runs of this entry (a retry or a replay is a new entry)
                runs = int(runs) if runs is not None and run_entry == job._entry else 0
            env, reason = outcomes.reclaimed(
                job.envelope,
                runs=runs,
                deliveries=delivered[job._entry],
                may_have_sent=sent_since is not None,
                options=self.options,
            )
            if reason is not None:
                rejects.append((job._entry, reason, env))
                continue
            job.envelope = env
            job.cancelled = cancel is not None
            job._sent_since_ms = job._mark_ms = None if sent_since is None else int(sent_since)
            if saved is not None:
                job._checkpoints = codec.checkpoints(saved)
            keep.append(job)
        return keep

    async def _records_of(self, jobs: list[Job]) -> list[Any]:
        fields = ("state", "cancel", "runs", "run_entry", "sent_since", "checkpoints")
        async with self.redis.pipeline(transaction=False) as pipe:
            for job in jobs:
                pipe.hmget(self._record_prefix + job.id, *fields)
            found: list[Any] = await pipe.execute()
        return found

    async def _admit(self, lane: int, jobs: list[Job], *, reclaimed: bool) -> list[Job]:
        """Pass the jobs that rate limits or pauses concern through the admission script;
        returns those that may start now (the others left this worker's hands)."""
        gated, free = self.gate.gated(jobs)
        if not gated:
            return free
        # A job too late to run must not take a slot: it ends as expired without admission.
        if self.options.expire_after is not None or any(
            job.envelope.expire_after_ms is not None for job in gated
        ):
            late = [job for job in gated if self._expired(job.envelope)]
            for job in late:
                self._finish(job, outcomes.expired(job))
                self._let_go(job)
            gated = [job for job in gated if not self._expired(job.envelope)]
        started = await self._retrying(
            "admit", lambda: self.gate.admit(lane, gated, reclaimed=reclaimed)
        )
        assert started is not None  # unbounded retries
        kept = {id(job) for job in started}
        for job in gated:
            if id(job) not in kept:  # deferred or parked: no longer this worker's
                self._held[lane].discard(job._entry)
        self.counts.limited += len(gated) - len(started)
        self.metrics.limited(len(gated) - len(started))
        return free + started

    async def _dead_letter(
        self, lane: int, rejects: list[tuple[bytes, str, codec.Envelope | None]]
    ) -> None:
        for entry_id, reason, env in rejects:
            log.warning(
                "dead-lettering %s entry %s: %s",
                self.stream,
                entry_id.decode(),
                reason,
                extra={"stream": self.stream}
                if env is None
                else logs.job(env.id, self.stream, env.attempt),
            )
        filed = [scripts.Reject(entry_id, reason, env) for entry_id, reason, env in rejects]
        await self._retrying(
            "dead-letter",
            lambda: scripts.dead_letter(
                self.redis, self.stream, keys.LANES[lane], filed, retention_ms=self._retention_ms
            ),
        )
        for entry_id, _, _ in rejects:
            self._held[lane].discard(entry_id)
        self.counts.dead_lettered += len(rejects)
        self.metrics.dead_lettered(len(rejects))

    async def _wait_for_room(self) -> None:
        event = self._room_event = anyio.Event()
        with anyio.move_on_after(self.options.block_seconds):
            while not event.is_set():
                # Jobs below the top lane wait in the read-ahead: look above them before the
                # news goes stale, so a freed slot seldom has to wait for a look of its own.
                lowest = max((lane for lane, jobs in enumerate(self._ready) if jobs), default=0)
                if not lowest:
                    await event.wait()
                    break
                if self._higher_lanes_unknown(lowest, LANE_NEWS_SECONDS / 2):
                    await self._look_above(lowest)
                    continue
                with anyio.move_on_after(LANE_NEWS_SECONDS / 2):
                    await event.wait()
        self._room_event = None

    def _wake_consumers(self) -> None:
        event, self._ready_event = self._ready_event, anyio.Event()
        event.set()

    async def _release_ready(self) -> None:
        """Hand back jobs fetched but never started, so a stop does not delay them."""
        for lane, lane_jobs in enumerate(self._ready):
            ids = [job._entry for job in lane_jobs]
            pairs = [(job._entry, job.id) for job in lane_jobs]
            for job in lane_jobs:
                self.gate.not_started(job)
            lane_jobs.clear()
            self._held[lane].difference_update(ids)
            if ids:
                released = await self._retrying(
                    "release",
                    lambda lane=lane, pairs=pairs: scripts.release_jobs(  # type: ignore[misc]
                        self.redis, self.stream, keys.LANES[lane], self.consumer, pairs
                    ),
                    attempts=3,
                )
                self.counts.released += int(released or 0)
        await self.gate.give_back_starts()

    def _news(self) -> None:
        """Recompute _fresh_until after the news of a lane changed."""
        until = math.inf
        for lane, admitting in enumerate(self._admitting_lane):
            self._fresh_until[lane] = until
            if admitting:
                until = -math.inf
            elif not self._blocking:
                until = min(until, self._empty_at[lane] + LANE_NEWS_SECONDS)

    def _higher_lanes_unknown(self, lane: int, within: float = LANE_NEWS_SECONDS) -> bool:
        """Whether a lane above ``lane`` may hold jobs this worker has not read: not seen empty
        within LANE_NEWS_SECONDS, and no blocking read waiting on it; or holds jobs being
        admitted now."""
        if any(self._admitting_lane[:lane]):
            return True
        if self._blocking or self._stopping:
            return False
        since = time.monotonic() - within
        return any(self._empty_at[higher] < since for higher in range(lane))

    async def _look_above(self, lane: int) -> None:
        """Read the lanes above ``lane`` before a job of it starts from the read-ahead: jobs
        read ahead while those lanes were empty must not start before ones that came since.
        One look at a time; consumers that want one meanwhile wait for it. Jobs of those lanes
        already read and being admitted are waited for instead."""
        if any(self._admitting_lane[:lane]):
            await self._admitted.wait()
            return
        if self._looking is not None:
            await self._looking.wait()
            return
        looking = self._looking = anyio.Event()
        try:
            count = max(1, sum(slot.job is None for slot in self._slots))  # free ones
            for higher in range(lane):
                sent = time.monotonic()
                reply: Any = await self.redis.execute_command(  # type: ignore[no-untyped-call]
                    "XREADGROUP", "GROUP", keys.GROUP, self.consumer, "COUNT", count,
                    "STREAMS", self._lanes[higher], ">",
                )  # fmt: skip
                entries = reply[0][1] if reply else []
                if len(entries) < count:
                    self._empty_at[higher] = sent
                    self._news()
                if entries:
                    await self._accept(higher, entries)
        except redis_errors.ResponseError as exc:
            if isinstance(exc, TRANSIENT_ERRORS) or _lane_gone(exc):
                # The fetcher meets the same trouble and deals with it; meanwhile the
                # read-ahead runs rather than every slot waiting for a look it cannot have.
                log.warning("reading %s's higher lanes failed: %s", self.stream, exc)
                self._empty_at[:lane] = [time.monotonic()] * lane
                self._news()
            else:
                raise
        except TRANSIENT_ERRORS as exc:
            log.warning("reading %s's higher lanes failed: %s", self.stream, exc)
            self._empty_at[:lane] = [time.monotonic()] * lane
            self._news()
        finally:
            self._looking = None
            looking.set()

    # -- running --------------------------------------------------------------------------------

    async def _consume(self, slot: _Slot) -> None:
        while True:
            with anyio.CancelScope() as scope:
                slot.scope = scope
                await self._consume_jobs(slot)
                return
            # Only the watchdog cancels this scope: the slot's job ran past its timeout.
            job, slot.job = slot.job, None
            if job is not None:
                timeout = outcomes.timeout_of(job.envelope, self.options)
                self.metrics.durations.append(timeout)
                error = JobTimeout(f"timed out after {timeout:g}s")
                self._finish(job, self._failure(job, error, slot.started))

    async def _consume_jobs(self, slot: _Slot) -> None:
        ready = self._ready
        gate = self.gate
        handler = self.handler
        default_timeout = self.options.job_timeout
        stream_expires = self.options.expire_after is not None
        monotonic = time.monotonic
        fresh_until = self._fresh_until  # changed in place
        durations = self.metrics.durations  # drained in place, once per acknowledged batch
        while True:
            for lane_jobs in ready:
                if lane_jobs:
                    break
            else:
                if self._closing:
                    return
                self._idle += 1
                try:
                    await self._ready_event.wait()
                finally:
                    self._idle -= 1
                continue
            lane = lane_jobs[0]._lane
            if lane and monotonic() > fresh_until[lane] and self._higher_lanes_unknown(lane):
                await self._look_above(lane)
                continue
            job = lane_jobs.popleft()
            env = job.envelope
            if gate.platform_paused_until_ms:
                wait_ms = gate.platform_wait_ms()
                if wait_ms:  # read before the platform asked to hold off: not now
                    self._finish(job, outcomes.held_back(job, self.clock.now_ms(), wait_ms))
                    gate.not_started(job)
                    self._let_go(job)
                    continue
            if gate.pausing_accounts and env.account in gate.pausing_accounts:
                self._finish(job, outcomes.parked(job, gate.pausing_accounts[env.account]))
                self.gate.not_started(job)
                self._let_go(job)
                continue
            if job.cancelled:
                self._finish(job, outcomes.cancelled(job))
                self._let_go(job)
                continue
            if (stream_expires or env.expire_after_ms is not None) and self._expired(env):
                self._finish(job, outcomes.expired(job))
                self._let_go(job)
                continue
            timeout = default_timeout if env.job_timeout_ms is None else env.job_timeout_ms / 1000
            # The run counts (max_deliveries), not the delivery: sent before the handler goes.
            await self.starts.start(job)
            slot.job = job
            began = monotonic()
            if timeout is not None:
                slot.deadline = began + timeout
            started = slot.started = self.clock.now_ms()
            try:
                result = await handler(job)
            except Exception as exc:
                durations.append(monotonic() - began)
                slot.job = None
                self._finish(job, self._failure(job, exc, started))
            else:
                durations.append(monotonic() - began)
                slot.job = None
                # Inlined _finish: this is the path every successful job takes. (The ack loop
                # swaps the list out, so it must be looked up each time.)
                self._finished.append((job, outcomes.done(job, started, result)))
                if self._ack_event is not None:
                    self._ack_event.set()
            finally:
                # slot.job stays set when the handler was cancelled, so that the consumer
                # loop can record a timeout (the watchdog's doing) as a failed attempt.
                slot.deadline = math.inf
                self._let_go(job)

    def _let_go(self, job: Job) -> None:
        """The job no longer occupies this worker: stop refreshing its claim, and let the
        fetcher know there is room (it may be waiting for exactly that)."""
        self._held[job._lane].discard(job._entry)
        if self._room_event is not None:
            self._room_event.set()

    def _expired(self, env: codec.Envelope) -> bool:
        return outcomes.is_expired(env, self.options, self.clock.now_ms())

    def _failure(self, job: Job, exc: BaseException, started: int = 0) -> codec.Outcome:
        """The outcome of a run that raised (see streamq.outcomes), and what it asks of this
        worker: hold the platform, or park the account's jobs already read."""
        now = self.clock.now_ms()
        outcome = outcomes.failure(job, exc, self.options, started_ms=started, now_ms=now)
        if isinstance(outcome, codec.Deferred):
            if outcome.hold == keys.pause_field(None):
                self.gate.hold_platform(now + outcome.delay_ms)
            return outcome
        self.counts.failed += 1
        if isinstance(outcome, codec.Parked):
            self.gate.pause(outcome.account, outcome.reason)
        return outcome

    def _park_pausing(self, jobs: list[Job]) -> list[Job]:
        """Park the just-admitted jobs of accounts a handler is pausing; returns the rest."""
        keep = []
        for job in jobs:
            reason = self.gate.pausing_accounts.get(job.envelope.account or "")
            if reason is None:
                keep.append(job)
            else:
                self._finish(job, outcomes.parked(job, reason))
                self.gate.not_started(job)
                self._let_go(job)
        self._settle_pauses()
        return keep

    def _settle_pauses(self) -> None:
        """Park the jobs already read of accounts whose pause is now in force."""
        for account, reason in self.gate.settle():
            self._park_ready(account, reason)

    def _park_ready(self, account: str, reason: str) -> None:
        for lane_jobs in self._ready:
            mine = [job for job in lane_jobs if job.envelope.account == account]
            for job in mine:
                lane_jobs.remove(job)
                self._finish(job, outcomes.parked(job, reason))
                self.gate.not_started(job)
                self._let_go(job)

    def _finish(self, job: Job, outcome: codec.Outcome) -> None:
        self._finished.append((job, outcome))
        if self._ack_event is not None:
            self._ack_event.set()

    def cancel_local(self, job_id: str) -> None:
        """Flag a job this worker holds as cancelled (a cancellation arrived on the control
        stream): it will not start if it has not, and a running handler sees job.cancelled."""
        for lane_jobs in self._ready:
            for job in lane_jobs:
                if job.id == job_id:
                    job.cancelled = True
        for slot in self._slots:
            if slot.job is not None and slot.job.id == job_id:
                slot.job.cancelled = True

    async def _watchdog(self) -> None:
        while True:
            await anyio.sleep(WATCHDOG_SECONDS)
            self.heartbeat.tick()
            now = time.monotonic()
            for slot in self._slots:
                if slot.job is not None and now > slot.deadline and slot.scope is not None:
                    log.warning(
                        "job %s ran past its timeout: cancelling it",
                        slot.job.id,
                        extra=logs.job(slot.job.id, self.stream, slot.job.attempt),
                    )
                    slot.deadline = math.inf
                    slot.scope.cancel()

    # -- acknowledging --------------------------------------------------------------------------

    async def _ack_loop(self) -> None:
        # Two calls may be in flight, so the worker keeps collecting (and the server keeps
        # working) while one is on the wire; batches are disjoint, so order does not matter.
        in_flight = anyio.Semaphore(ACKS_IN_FLIGHT)
        async with anyio.create_task_group() as calls:
            while True:
                if not self._finished:
                    if self._acks_closed:
                        break
                    event = self._ack_event = anyio.Event()
                    await event.wait()
                    self._ack_event = None
                    continue
                await in_flight.acquire()
                batch, self._finished = self._finished, []
                calls.start_soon(self._record_batch, batch, in_flight)
        self._acks_done.set()

    async def _record_batch(
        self, batch: list[tuple[Job, codec.Outcome]], in_flight: anyio.Semaphore
    ) -> None:
        self._acking.append(batch)
        try:
            await self._retrying("ack", lambda: self._record(batch))
        finally:
            self._acking.remove(batch)
            in_flight.release()
        await self.gate.give_back_starts()
        self._count(self.metrics.finished(batch))
        if self.hooks is not None:
            await call_hooks(self.hooks, batch)
        recurring = False
        for job, _ in batch:
            if job.envelope.cron is not None:
                recurring = True
                break
        if self.gate.pausing_accounts:
            self.gate.recorded([outcome for _, outcome in batch])
        self._settle_pauses()
        if recurring:
            self.promoter.wake()  # the next occurrence can be scheduled now

    def _count(self, tally: dict[str, int]) -> None:
        counts = self.counts
        counts.completed += tally.get(codec.OUTCOME_NAMES[codec.Done], 0)
        counts.dead_lettered += tally.get(codec.OUTCOME_NAMES[codec.Dead], 0)
        counts.deferred += tally.get(codec.OUTCOME_NAMES[codec.Deferred], 0)
        counts.expired += tally.get(codec.OUTCOME_NAMES[codec.Expired], 0)
        counts.cancelled += tally.get(codec.OUTCOME_NAMES[codec.Cancelled], 0)
        counts.parked += tally.get(codec.OUTCOME_NAMES[codec.Parked], 0)

    async def _finish_acks(self) -> None:
        self._acks_closed = True
        if self._ack_event is not None:
            self._ack_event.set()
        # Bounded: with the server gone, unacknowledged jobs stay pending and run again elsewhere.
        with anyio.move_on_after(max(self.options.grace, 5.0)):
            await self._acks_done.wait()

    async def _record(self, batch: list[tuple[Job, codec.Outcome]]) -> None:
        """Acknowledge a batch and record each job's outcome: one script call."""
        ids: list[list[bytes]] = [[] for _ in keys.LANES]
        rows: list[codec.Outcome] = []
        for job, outcome in batch:
            ids[job._lane].append(job._entry)
            rows.append(outcome)
        await scripts.finish_jobs(
            self.redis, self.stream, ids, rows, retention_ms=self._retention_ms
        )

    # -- recovering -----------------------------------------------------------------------------

    async def _reclaim_loop(self) -> None:
        period = min(HEARTBEAT_SECONDS, self.options.visibility_timeout / 4)
        while True:
            try:
                await self._reclaim_once()
            except TRANSIENT_ERRORS as exc:
                log.warning("reclaim failed, will try again: %s", exc)
            except redis_errors.ResponseError as exc:
                if not _lane_gone(exc):
                    raise
            await anyio.sleep(period)

    async def _reclaim_once(self) -> int:
        """Claim entries idle past the visibility timeout; returns how many were taken."""
        if self._stopping:
            return 0
        room = max(0, self.options.concurrency + self._prefetch - self.claimed)
        reply = await scripts.reclaim_jobs(
            self.redis,
            self.stream,
            self.consumer,
            min_idle_ms=int(self.options.visibility_timeout * 1000),
            count=room,
            cursors=self._cursors,
        )
        found = 0
        for lane, claimed in enumerate(reply):
            self._cursors[lane] = claimed.cursor
            if self.stopping and claimed.entries:
                # Stopped while the claim was on the wire: they stay pending, and another
                # worker reclaims them once the visibility timeout passes.
                continue
            if claimed.entries:
                log.info("reclaimed %d idle %s entries", len(claimed.entries), self._lanes[lane])
                found += await self._accept(lane, claimed.entries, claimed.deliveries)
        self.counts.reclaimed += found
        return found

    async def _refresh_loop(self) -> None:
        period = self.options.visibility_timeout / 3
        while True:
            await anyio.sleep(period)
            if not self.claimed:
                continue
            held = [list(ids) for ids in self._held]
            try:
                lost = await scripts.refresh_claims(self.redis, self.stream, self.consumer, held)
            except (*TRANSIENT_ERRORS, redis_errors.ResponseError) as exc:
                log.warning("could not refresh claims, will try again: %s", exc)
                continue
            for entry_id in lost:
                # Someone else runs it now; stop refreshing (its result is still recorded).
                for lane_ids in self._held:
                    lane_ids.discard(entry_id)
            if lost:
                log.warning(
                    "%d entries were taken over by another consumer while running here "
                    "(this worker stalled past the visibility timeout)",
                    len(lost),
                )

    async def _retire(self) -> None:
        try:
            await scripts.retire_consumer(self.redis, self.stream, self.consumer)
        except (*TRANSIENT_ERRORS, redis_errors.ResponseError) as exc:
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
            except TRANSIENT_ERRORS as exc:
                failures += 1
                if attempts is not None and failures >= attempts:
                    log.warning("%s failed %d times, giving up: %s", what, failures, exc)
                    return None
                await self._pause_after_failure(what, exc, failures)

    async def _pause_after_failure(
        self, what: str, exc: BaseException, failures: int, *, until_stop: bool = False
    ) -> None:
        """Back off before the next try; ``until_stop`` ends the pause early when the worker
        stops (a fetch need not be tried again then; an acknowledgement must be)."""
        delay = retry_delay(failures)
        log.warning("%s failed (%s); retrying in %.2fs", what, exc, delay)
        if until_stop:
            with anyio.move_on_after(delay):
                await self._stop_event.wait()
        else:
            await anyio.sleep(delay)


def _lane_gone(exc: redis_errors.ResponseError) -> bool:
    """The lane or its group was deleted under us: Valkey says NOGROUP; Redis 7.0 tells a
    blocked reader UNBLOCKED."""
    return str(exc).startswith(("NOGROUP", "UNBLOCKED"))


def _raw(response: Any, **options: Any) -> Any:
    return response

"""The worker: reads one stream through its consumer group and runs a handler for each job.

    fetcher ──► ready buffer ──► N consumers ──► ack batcher ──► XACK + XDEL (one script call)
       ▲                                              │
       └──────────── room to fetch more ◄─────────────┘
    reclaimer   takes over the entries of workers whose heartbeat lapsed, at once, and entries
                idle past the visibility timeout (crashed consumers)
    refresher   keeps the claims of jobs this worker holds fresh, so nobody takes them over
    promoter    moves due scheduled jobs and retries onto the lanes (streamq.scheduler)
    listener    hears cancellations, platform pauses and wake-ups (streamq.channel)
    watchdog    cancels handlers that run past their job timeout; stamps the heartbeat
    heartbeat   a thread, not a task: says the worker is alive (even while a handler blocks the
                loop), and keeps the claims fresh while one does

This module keeps the loop and the consumers; each part around them is a module of its own:
reading and the read-ahead (streamq.fetcher), what the worker holds per lane
(streamq.buffers), acknowledging in batches (streamq.acks), reclaiming and refreshing claims
(streamq.reclaim), counting runs as handlers start (streamq.starts). What is decided lives
elsewhere, and the worker only acts on it: what a run's result or exception means, a timeout
included (streamq.outcomes), whether a job read may start and platform holds
(streamq.admission), the server's clock (streamq.channel), how each script is called
(streamq.scripts), what a stop signal means (streamq.signals), the hooks (streamq.handler),
its name and card (streamq.workers), the event settings it shares (streamq.events), one
partition's share of the settings (StreamConfig.partition_share). Several workers in one
process, one per partition, are run by ``streamq consume`` (streamq.commands.consume).

Nothing is done per job against Redis: entries arrive in batches (the highest lane read
first), and completions are acknowledged in batches, each ack call carrying every
job that finished while the previous call was in flight, together with its outcome (done,
retry, dead, deferred, expired, cancelled) so acknowledging and rescheduling are one step. An
entry is acknowledged only after its handler returned, so a worker that dies loses nothing: its
entries stay pending and the reclaimer of a live worker runs them once they have been idle for
the visibility timeout.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import anyio
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from streamq import (
    admission,
    channel,
    codec,
    events,
    flows,
    health,
    keys,
    limiter,
    logs,
    metrics,
    outcomes,
    platforms,
    scheduler,
    signals,
    tokens,
    workers,
)
from streamq.acks import AckBatcher, Batch
from streamq.buffers import LaneBuffers
from streamq.config import StreamConfig
from streamq.connection import TRANSIENT_ERRORS, Retrying
from streamq.fetcher import Fetcher, lane_gone
from streamq.handler import Handler, Hooks, call_hooks
from streamq.heartbeat import Heartbeat
from streamq.job import Job
from streamq.metrics import WorkerCounts
from streamq.reclaim import Reclaimer
from streamq.starts import Starts
from streamq.tokenstore import REAUTH_REQUIRED

log = logging.getLogger("streamq.worker")

WATCHDOG_SECONDS: Final = 0.25
"""How often running jobs are checked against their timeout (and so its precision)."""
HEARD_CANCELS_KEPT: Final = 1000
"""Cancellations remembered by job id: they are rare, and a job is on its way to a slot for
milliseconds."""
PARKED: Final = codec.OUTCOME_NAMES[codec.Parked]
"""A batch's tally of parked jobs (their accounts' pauses are checked: _lift_reauth_pauses)."""


class WorkerOptions(StreamConfig, frozen=True, kw_only=True):
    """A stream's configuration, plus how this worker process runs."""

    burst: bool = False
    """Stop once the stream has nothing left for this worker (handy in tests and batch jobs)."""
    block_seconds: float = 5.0
    """Longest wait of one blocking read; a stop request interrupts it at once."""


@dataclass(slots=True, eq=False)
class _Slot:
    """One consumer's current job, so the watchdog can find and cancel an overrunning one."""

    job: Job | None = None
    deadline: float = math.inf
    started: int = 0
    scope: anyio.CancelScope | None = None


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
        # The platform whose token store this stream's accounts use, if a built-in publisher
        # runs it (a pause for a new sign-in is checked against it: _lift_reauth_pauses).
        self._platform = platforms.publisher_for(keys.base_stream(self.stream), self.options)
        self.consumer = consumer or workers.consumer_name()
        self.counts = WorkerCounts()
        self.metrics = metrics.WorkerMetrics(self.stream)
        limits = limiter.limits_for(
            self.stream, self.options.limits, partitions=self.options.partitions
        )
        self._closing = False
        self._stop_event = anyio.Event()
        self._slots = [_Slot() for _ in range(self.options.concurrency)]
        # Cancellations heard lately, by job id: one can arrive while its job is between the
        # read and a slot (decoded, or its start on the wire), where cancel_local finds nothing.
        self._heard_cancels: OrderedDict[str, None] = OrderedDict()
        retention_ms = round(self.options.retention * 1000)
        self._retrying = Retrying(log, self._stop_event)
        self.buffers = LaneBuffers()
        self.clock = channel.ServerClock(clock)
        self._started_ms = 0
        self.gate = admission.Gate(redis, self.stream, self.consumer, limits, self.clock)
        self.acks = AckBatcher(
            redis,
            self.stream,
            consumer=self.consumer,
            retention_ms=retention_ms,
            retrying=self._retrying,
            on_recorded=self._recorded,
            give_way=lambda: self.fetcher.burst_starting(),
        )
        self.fetcher = Fetcher(
            redis,
            self.stream,
            self.consumer,
            self.options,
            buffers=self.buffers,
            gate=self.gate,
            counts=self.counts,
            metrics=self.metrics,
            retrying=self._retrying,
            set_aside=self._set_aside,
            now_ms=self.clock.now_ms,
            free_consumers=lambda: sum(slot.job is None for slot in self._slots),
            stop_event=self._stop_event,
            rate_limited=limits.any,
            live_workers=lambda: self.heartbeat.live_workers,
        )
        self.reclaimer = Reclaimer(self.fetcher)
        self.heartbeat = Heartbeat(
            redis,
            self.stream,
            self.consumer,
            self._held_now,
            self._running_now,
            visibility_timeout=self.options.visibility_timeout,
            give_up_after=self.options.job_timeout,
            liveness_timeout=self.options.liveness_timeout,
        )
        self.starts = Starts(redis, self.stream, self._retrying)
        self.promoter = scheduler.Promoter(
            redis, self.stream, retention_ms=retention_ms, clock=self.clock
        )
        sweep_every = min(5.0, self.options.visibility_timeout / 4)
        self.flow_outbox = flows.OutboxSweeper(redis, self.stream, self.clock.now_ms, sweep_every)
        self.control = channel.ControlListener(
            redis,
            self.stream,
            on_cancel=self.cancel_local,
            on_platform_pause=self.gate.hold_platform,
            on_wake=self.promoter.wake,
        )

    @property
    def stopping(self) -> bool:
        return self._stop_event.is_set()

    @property
    def claimed(self) -> int:
        """Entries this worker holds: running, or fetched and waiting for a free slot."""
        return self.buffers.claimed

    @property
    def prefetch(self) -> int:
        """The current read-ahead (it adapts unless WorkerOptions.prefetch was given)."""
        return self.fetcher.prefetch

    # -- lifecycle ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the worker to stop: no more reads, running jobs get ``grace`` seconds to finish."""
        if not self._stop_event.is_set():
            self._stop_event.set()
            self.buffers.make_room()

    async def run(self, *, handle_signals: bool = False) -> WorkerCounts:
        self._started_ms = self.clock.now_ms()
        await self.ensure_groups()
        await events.publish_settings(self.redis, self.stream, self.options.events)
        await self.control.prepare()
        await self.gate.load_platform_hold()
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
                    background.start_soon(
                        signals.stop_gracefully, [self], background.cancel_scope, log
                    )
                background.start_soon(self.fetcher.unblock_on_stop)
                background.start_soon(self.fetcher.release_when_due)
                background.start_soon(self.acks.run)
                background.start_soon(self.starts.run)
                background.start_soon(self.reclaimer.refresh_loop)
                background.start_soon(self.reclaimer.reclaim_loop)
                background.start_soon(self.reclaimer.lapsed_loop)
                background.start_soon(self.control.run)
                background.start_soon(self.promoter.run)
                background.start_soon(self.flow_outbox.run)
                background.start_soon(self._watchdog)
                background.start_soon(workers.publish_loop, self.redis, self.stream, self.card)
                background.start_soon(
                    health.report_loop,
                    self.redis,
                    self.stream,
                    self.consumer,
                    self.metrics,
                    self.clock.now_ms,
                )
                await self._run_consumers()
                await self.acks.close(within=max(self.options.grace, 5.0))
                background.cancel_scope.cancel()
            self.heartbeat.stop()  # the watchdog stamps no more: that is not a stall
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await self.reclaimer.retire()
        finally:
            self.heartbeat.stop()
            with anyio.CancelScope(shield=True):
                await self.fetcher.close()
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

    def card(self) -> workers.WorkerCard:
        """What ``streamq workers`` shows of this worker now."""
        held = [job.id for lane_jobs in self.buffers.ready for job in lane_jobs]
        return workers.card(
            consumer=self.consumer,
            stream=self.stream,
            concurrency=self.options.concurrency,
            started_at_ms=self._started_ms,
            now_ms=self.clock.now_ms(),
            done=self.counts.completed,
            failed=self.counts.failed,
            holding=self._running_now() + held,
        )

    async def ensure_groups(self) -> None:
        """Create the group on every lane, reading from the start: acknowledged entries are
        deleted, so whatever a lane holds still has to run."""
        for lane in self.fetcher.lanes:
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
                await self.fetcher.release_ready()
                self._closing = True
                self.buffers.wake_consumers()
                # Running handlers now have the grace period; the rest stay pending and are
                # reclaimed by another worker once their visibility timeout passes.
                grace_scope.deadline = anyio.current_time() + self.options.grace
        if grace_scope.cancelled_caught:
            log.warning("grace period over: jobs still running were left pending")

    # -- fetching -------------------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        fetcher = self.fetcher
        failures = 0
        while not self.stopping:
            held_ms = self.gate.platform_wait_ms()
            if held_ms:
                await self._wait_out_platform_pause(held_ms)
                continue
            # Jobs held for their due time take no room, up to fetcher.hold_limit; while a
            # burst promoted ahead (streamq.scheduler) is being read, the rest of that limit
            # is read at once (hold_room), so the burst is here, held, by its due time.
            held = self.claimed - fetcher.waiting_room
            capacity = self.options.concurrency + fetcher.prefetch
            room = max(capacity - held, fetcher.hold_room)
            if room < max(1, capacity // 4) and held:
                await fetcher.wait_for_room(self.options.block_seconds)
                continue
            try:
                found, starved = await fetcher.fetch(room)
                if fetcher.adaptive:
                    fetcher.adapt(starved, full=found >= room)
                if not found and not self.stopping:
                    await self._idle_until_work(room)
                failures = 0
            except TRANSIENT_ERRORS as exc:  # first: CLUSTERDOWN and MOVED are ResponseErrors
                failures += 1
                await self._retrying.pause("fetch", exc, failures, until_stop=True)
                await fetcher.replace_reader()
            except redis_errors.ResponseError as exc:
                if not lane_gone(exc):
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
            await self.fetcher.blocking_fetch(room, self.options.block_seconds)
        elif self.claimed:
            await self.fetcher.wait_for_room(self.options.block_seconds)
        elif await self.reclaimer.reclaim_once() == 0 and not self.claimed:
            self.stop()

    def _held_now(self) -> list[list[bytes]]:
        """The entries this worker answers for, per lane, for the heartbeat thread: held ones,
        and finished ones not yet acknowledged (they would run again elsewhere too). set.copy()
        and list() of a list are one step each under the GIL, so the loop changing them
        meanwhile cannot break the copy."""
        held = [ids.copy() for ids in self.buffers.held]
        for batch in [list(self.acks.finished), *list(self.acks.in_flight)]:
            for job, _ in batch:
                held[job._lane].add(job._entry)
        return [list(ids) for ids in held]

    def _running_now(self) -> list[str]:
        """Ids of the jobs running now (read by the heartbeat thread for its warning)."""
        jobs = [slot.job for slot in self._slots]
        return [job.id for job in jobs if job is not None]

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
                error = outcomes.JobTimeout(f"timed out after {timeout:g}s")
                self.acks.finish(job, self._failure(job, error, slot.started))

    async def _consume_jobs(self, slot: _Slot) -> None:
        buffers = self.buffers
        ready = buffers.ready
        fetcher = self.fetcher
        gate = self.gate
        acks = self.acks
        starts = self.starts
        handler = self.handler
        default_timeout = self.options.job_timeout
        stream_expires = self.options.expire_after is not None
        monotonic = time.monotonic
        fresh_until = fetcher.fresh_until  # changed in place
        durations = self.metrics.durations  # drained in place, once per acknowledged batch
        heard_cancels = self._heard_cancels
        while True:
            for lane_jobs in ready:
                if lane_jobs:
                    break
            else:
                if self._closing:
                    return
                buffers.idle += 1
                try:
                    await buffers.ready_event.wait()
                finally:
                    buffers.idle -= 1
                continue
            lane = lane_jobs[0]._lane
            if lane and monotonic() > fresh_until[lane] and fetcher.higher_lanes_unknown(lane):
                await fetcher.look_above(lane)
                continue
            job = lane_jobs.popleft()
            env = job.envelope
            if gate.platform_paused_until_ms or gate.pausing_accounts:
                held_back = gate.held_back(job)
                if held_back is not None:
                    self._set_aside(job, held_back)
                    continue
            if job.cancelled:
                acks.finish(job, outcomes.cancelled(job))
                buffers.let_go(job)
                continue
            if (stream_expires or env.expire_after_ms is not None) and self._expired(env):
                acks.finish(job, outcomes.expired(job))
                buffers.let_go(job)
                continue
            timeout = default_timeout if env.job_timeout_ms is None else env.job_timeout_ms / 1000
            # The run counts (max_deliveries), not the delivery: sent before the handler goes,
            # or with the next call when one is on the wire (streamq.starts).
            await starts.start(job)
            slot.job = job
            if heard_cancels and job.id in heard_cancels:
                job.cancelled = True  # heard while it was on its way here
            began = monotonic()
            if timeout is not None:
                slot.deadline = began + timeout
            started = slot.started = self.clock.now_ms()
            try:
                result = await handler(job)
            except Exception as exc:
                durations.append(monotonic() - began)
                slot.job = None
                acks.finish(job, self._failure(job, exc, started))
            else:
                durations.append(monotonic() - began)
                slot.job = None
                # Inlined acks.finish: this is the path every successful job takes. (The ack
                # loop swaps the list out, so it must be looked up each time.)
                if job._start_queued:
                    job._start_queued = False
                    job._start_folded = True
                acks.finished.append((job, outcomes.done(job, started, result)))
                if acks.event is not None:
                    acks.event.set()
            finally:
                # slot.job stays set when the handler was cancelled, so that the consumer
                # loop can record a timeout (the watchdog's doing) as a failed attempt.
                slot.deadline = math.inf
                buffers.let_go(job)

    async def _lift_reauth_pauses(self, batch: Batch) -> None:
        """A reauth_required pause just recorded is lifted at once if the account was signed
        in again meanwhile (streamq.tokens.lift_reauth_pauses says how put_tokens can miss
        it). Every parked outcome pauses its account again, including those of jobs already
        read that the worker parks once the first pause is in force, so each batch with one
        is checked."""
        platform = self._platform
        accounts = {
            outcome.account
            for _, outcome in batch
            if isinstance(outcome, codec.Parked) and outcome.reason == REAUTH_REQUIRED
        }
        if platform is not None and accounts:
            await self._retrying(
                "lift reauth pauses",
                lambda: tokens.lift_reauth_pauses(self.redis, self.stream, platform, accounts),
            )

    def _set_aside(self, job: Job, outcome: codec.Outcome) -> None:
        """A job read will not run here (held back, parked, or too late): record why, give
        back its logged start, and let go of it."""
        self.acks.finish(job, outcome)
        self.gate.not_started(job)
        self.buffers.let_go(job)

    def _expired(self, env: codec.Envelope) -> bool:
        return outcomes.is_expired(env, self.options, self.clock.now_ms())

    def _failure(self, job: Job, exc: BaseException, started: int = 0) -> codec.Outcome:
        """The outcome of a run that raised (see streamq.outcomes), heeded by the gate: it may
        hold the platform, or pause the account."""
        now = self.clock.now_ms()
        outcome = outcomes.failure(job, exc, self.options, started_ms=started, now_ms=now)
        self.gate.heed(outcome, now)
        if not isinstance(outcome, codec.Deferred):
            self.counts.failed += 1
        return outcome

    def cancel_local(self, job_id: str) -> None:
        """Flag a job this worker holds as cancelled (a cancellation arrived on the control
        stream): it will not start if it has not, and a running handler sees job.cancelled."""
        self._heard_cancels[job_id] = None
        if len(self._heard_cancels) > HEARD_CANCELS_KEPT:
            self._heard_cancels.popitem(last=False)
        for lane_jobs in self.buffers.ready:
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

    # -- after each acknowledged batch ----------------------------------------------------------

    async def _recorded(self, batch: Batch) -> None:
        await self.gate.give_back_starts()
        tally = self.metrics.finished(batch)
        self.counts.add(tally)
        if self.hooks is not None:
            await call_hooks(self.hooks, batch)
        # One pass over the batch for the two rare kinds of job: flow steps and cron occurrences.
        flow_steps: list[Job] = []
        recurring = False
        for job, _ in batch:
            envelope = job.envelope
            if envelope.flow is not None:
                # Whatever its outcome: finish_jobs may have ended a retried step (cancelled
                # meanwhile), and its record, not the outcome, says so (flows.tell reads it).
                flow_steps.append(job)
            if envelope.cron is not None:
                recurring = True
        if flow_steps:
            await flows.tell_jobs(self.redis, flow_steps)
        if self.gate.pausing_accounts:
            self.gate.recorded([outcome for _, outcome in batch])
        if tally.get(PARKED):  # any parked job may have re-paused an account (see below)
            await self._lift_reauth_pauses(batch)
        self.fetcher.settle_pauses()
        if recurring:
            self.promoter.wake()  # the next occurrence can be scheduled now

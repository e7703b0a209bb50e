"""Reading entries for a worker: new ones a lane at a time from the highest, the read-ahead,
and the news of the lanes above a job read ahead.

    fetch(room)            reads up to ``room`` new entries, highest lane first
    blocking_fetch(room)   waits on every lane at once (all were empty a moment ago)
    adapt(starved, full)   grows the read-ahead while consumers go idle between full reads
    wait_for_room()        until consumers free room, looking above the read-ahead meanwhile
    release_ready()        hands back the jobs read ahead and never started, at a stop
    accept(lane, entries)  read entries (fetched or reclaimed) into jobs on the lane buffers:
                           dead-letters what cannot run, passes gated jobs through admission
    may_start(lane)        whether a job of ``lane`` read ahead may start without a look above
    look_above(lane)       reads the lanes above ``lane``, so jobs that came there since the
                           read-ahead start first
    release_when_due()     holds the jobs read before their due time (the promoter moves jobs
                           onto the lanes a little ahead, streamq.scheduler) and hands them on
                           once check_due, by the server's clock, says they are due

The loop that decides when to read (room, burst mode, failures) is the worker's.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from typing import Any, Final

import anyio
import anyio.lowlevel
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from streamq import admission, codec, connection, keys, logs, outcomes, scripts
from streamq.buffers import LaneBuffers
from streamq.config import StreamConfig
from streamq.connection import TRANSIENT_ERRORS, Retrying
from streamq.job import Job
from streamq.metrics import WorkerCounts, WorkerMetrics

log = logging.getLogger("streamq.worker")  # the worker's logger: this module serves it

MAX_PREFETCH: Final = 1024
LANE_NEWS_SECONDS: Final = 0.02
"""How old the news that a higher lane is empty may be when a job of a lower lane starts from
the read-ahead; older news is checked first (one read of those lanes), so a job read ahead
never starts while a higher lane has held a job for longer than this plus one round trip."""
CHECK_WINDOW_MS: Final = 1000
"""A job read by a blocking read or reclaimed, whose due time is less than this before the
server's time as last read here (or any, when none was read in the last READING_MAX_SECONDS),
waits for check_due: it may have been promoted ahead of its due time, and read before it."""
READING_MAX_SECONDS: Final = 30.0
"""How long a reading of the server's clock (check_due's answer, timed with time.monotonic())
stands in for it: it only plans when to ask, and clocks drift apart by well under a ms in this."""
REFRESH_BEFORE_MS: Final = 10.0
"""A job held for longer than twice this has the server's clock read again this long before it
is due, to plan the last stretch from the closer of two readings."""
TIMER_SLACK_MS: Final = 1.0
"""How much earlier than planned the release timer is set; it yields the rest of the way (an
event loop's timers have ms resolution and fire late, never early)."""
CHECK_FIRST: Final = 32
CHECK_BATCH: Final = 1000
"""Jobs asked about in one check_due call: after a wait, the first CHECK_FIRST in a call of
their own, so they go on soon; the rest in calls twice the size of the one before, up to
CHECK_BATCH, all sent at once, each handed on as its answer comes: the server answers each
call while the jobs of the calls before it start (it spends a few µs a job on a check, the
worker more on a start)."""
CHECK_CALLS: Final = 16
"""check_due calls in flight at most (each holds a connection while it waits)."""
HOLD_BURST: Final = 10_000
"""How many jobs of a burst promoted ahead one worker alone may hold for their due time (a
fleet of n live workers: this over n each, and never less than hold_limit's floor): then a
burst of that size is read, decoded and checked for its due time before it, and what is left
at the due time is the check's answer and the jobs' own cost (docs/timing.md)."""
BURST_STARTING_SECONDS: Final = 0.2
"""How long after a burst's hand-on it counts as starting (Fetcher.burst_starting), while
its jobs wait for consumers: acknowledgements give way meanwhile, the starts go first. However
long bursts follow each other, acks send anyway after streamq.acks.GIVE_WAY_MAX_SECONDS."""


Waiting = tuple[int, int, int, Job, int | None, Any, bytes]
"""A job held for its due time: (due ms, order read, lane, job, deliveries or None, raw
entry, its check_due row packed)."""


@dataclass(eq=False)
class Fetcher:
    redis: Redis
    stream: str
    consumer: str
    options: StreamConfig
    _: KW_ONLY
    buffers: LaneBuffers
    gate: admission.Gate
    counts: WorkerCounts
    metrics: WorkerMetrics
    retrying: Retrying
    set_aside: Callable[[Job, codec.Outcome], None]
    """Records why a job read will not run here and lets go of it (the worker's)."""
    now_ms: Callable[[], int]
    free_consumers: Callable[[], int]
    stop_event: anyio.Event
    rate_limited: bool
    live_workers: Callable[[], int | None] = lambda: None
    """How many workers of the stream are alive (their heartbeats), when known."""

    def __post_init__(self) -> None:
        stream, options = self.stream, self.options
        self.lanes = keys.lanes(stream)
        self.prefetch = options.concurrency if options.prefetch is None else options.prefetch
        """The current read-ahead (it adapts unless StreamConfig.prefetch was given)."""
        self.adaptive = options.prefetch is None
        if self.rate_limited:
            # A rate-limited start is recorded when the job is read: read only what can start
            # at once, so the recorded time is the real one.
            self.prefetch, self.adaptive = 0, False
        self._starved_reads = 0
        # When each lane was last seen empty (time.monotonic() as its read was sent), and
        # whether a blocking read on every lane is waiting now (then any entry comes at once).
        self._empty_at = [-math.inf] * len(keys.LANES)
        self._blocking = False
        # Per lane, until when (time.monotonic()) its jobs may start from the read-ahead
        # without a look above: the news above, cached so a consumer checks it in one step.
        self.fresh_until = [math.inf] + [-math.inf] * (len(keys.LANES) - 1)
        self._looking: anyio.Event | None = None  # a look at the higher lanes in flight
        # Per lane, admission calls in flight: their jobs were read but are not ready yet.
        self._admitting_lane = [0] * len(keys.LANES)
        self._admitted = anyio.Event()  # set (and replaced) as each admission call ends
        self._record_prefix = keys.job(stream, "")
        self._id_prefix = f"{stream}:"
        self._retention_ms = round(options.retention * 1000)
        # One connection of its own for reads: a blocking read holds it, and a stop request
        # interrupts that read by its client id. Replies stay raw (no dict per entry).
        self._own_reader: Redis | None = None
        self._reader_id: int | None = None
        # Jobs read before their due time, sorted, earliest first: (due ms, order read, lane,
        # job, deliveries or None, raw entry, its check_due row packed). Their entries are held
        # (buffers.held) meanwhile. A sorted list, not a heap: jobs come in the order of their
        # due times, almost always (appended), and a burst due at once leaves in one slice
        # (popping 10,000 from a heap took the loop ~10 ms at the due time).
        self._waiting: list[Waiting] = []
        self._burst_until = 0.0  # time.monotonic() until which acks give way to a burst
        self._waited = 0
        self._waiting_changed = anyio.Event()
        self._releasing = 0  # check_due calls and hand-ons in flight
        self._refreshed = 0  # the due time the clock was last read again for
        self._held_all = False  # the last jobs accepted were all held for their due time
        self._reading: tuple[float, float, float] | None = None
        """What check_due's answers tell of the server's clock (_read_clock): at least the
        first (ms) at time.monotonic() the second, at most the spread (the third, ms) later."""

    # -- the reader's connection ----------------------------------------------------------------

    @property
    def _reader(self) -> Redis:
        """Made on first use: a cluster client knows which node holds the lanes only after
        its first command."""
        if self._own_reader is None:
            self._own_reader = connection.reader(self.redis, self.lanes[0])
            self._own_reader.set_response_callback("XREADGROUP", _raw)
        return self._own_reader

    async def replace_reader(self) -> None:
        """After a lost connection: on a cluster the stream's slot may have a new master."""
        self._reader_id = None
        if connection.is_cluster_client(self.redis) and self._own_reader is not None:
            with contextlib.suppress(*TRANSIENT_ERRORS):
                await self._own_reader.aclose()
            self._own_reader = None
            await connection.refresh_topology(self.redis)

    async def unblock_on_stop(self) -> None:
        await self.stop_event.wait()
        reader_id = self._reader_id
        if reader_id is not None:
            # Another connection to the reader's server: on a cluster, self.redis could send
            # CLIENT UNBLOCK to any node.
            unblocker = Redis(connection_pool=self._reader.connection_pool)
            with contextlib.suppress(*TRANSIENT_ERRORS):
                await unblocker.client_unblock(reader_id)

    async def close(self) -> None:
        if self._own_reader is not None:
            await self._own_reader.aclose()

    # -- reading --------------------------------------------------------------------------------

    def adapt(self, starved: bool, *, full: bool) -> None:
        """Grow the read-ahead while consumers go idle between full reads; shrink it when the
        backlog runs out. Slow jobs never leave consumers idle, so they keep a small read-ahead
        and one worker does not hoard entries other workers could run."""
        if starved and full:
            # The first read after a pause always finds consumers idle: wait for a second.
            self._starved_reads += 1
            if self._starved_reads >= 2:
                self.prefetch = min(self.prefetch * 2, MAX_PREFETCH)
            return
        self._starved_reads = 0
        if not full:
            self.prefetch = max(self.options.concurrency, self.prefetch // 2)

    async def fetch(self, count: int) -> tuple[int, bool]:
        """Read up to ``count`` new entries, a lane at a time from the highest.

        Plain XREADGROUP per lane rather than one script: a script would have to copy every
        entry into Lua and back, which costs the server twice as much per entry, and reading
        several lanes in one command could claim lower-lane entries that later higher-lane
        jobs would then wait behind. An empty lane costs one short round trip.
        Returns how many entries came, and whether consumers ran out of work meanwhile.
        """
        found = 0
        starved = False
        buffers = self.buffers
        for lane, key in enumerate(self.lanes):
            if found >= count:
                break
            sent = time.monotonic()
            floor = self._server_floor_ms()
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
                    not any(buffers.ready) and 2 * buffers.idle >= self.options.concurrency
                )
                found += await self.accept(lane, reply[0][1], read_floor=floor)
        return found, starved

    async def blocking_fetch(self, count: int, block_seconds: float) -> None:
        """Wait on every lane at once for the next entries (all were empty a moment ago)."""
        if self._reader_id is None:
            self._reader_id = int(await self._reader.client_id())
            if self.stop_event.is_set():
                return
        self._blocking = True
        self._news()
        try:
            reply = await self._reader.execute_command(  # type: ignore[no-untyped-call]
                "XREADGROUP", "GROUP", keys.GROUP, self.consumer, "COUNT", count,
                "BLOCK", max(1, int(block_seconds * 1000)),
                "STREAMS", *self.lanes, *[">"] * len(self.lanes),
            )  # fmt: skip
        finally:
            self._blocking = False
            self._news()
        # Several lanes may answer at once: take them in priority order.
        by_name = {codec.text(name): entries for name, entries in reply or []}
        answered = time.monotonic()
        for lane, name in enumerate(self.lanes):
            if len(by_name.get(name) or ()) < count:
                self._empty_at[lane] = answered
        self._news()
        for lane, name in enumerate(self.lanes):
            if by_name.get(name):
                await self.accept(lane, by_name[name])

    async def wait_for_room(self, block_seconds: float) -> None:
        buffers = self.buffers
        event = buffers.room_event = anyio.Event()
        with anyio.move_on_after(block_seconds):
            while not event.is_set():
                # Jobs below the top lane wait in the read-ahead: look above them before the
                # news goes stale, so a freed slot seldom has to wait for a look of its own.
                lowest = buffers.lowest_waiting()
                if not lowest:
                    await event.wait()
                    break
                if self.higher_lanes_unknown(lowest, LANE_NEWS_SECONDS / 2):
                    await self.look_above(lowest)
                    continue
                with anyio.move_on_after(LANE_NEWS_SECONDS / 2):
                    await event.wait()
        buffers.room_event = None

    async def release_ready(self) -> None:
        """Hand back jobs fetched but never started, so a stop does not delay them (those held
        for their due time too: they are back on their lane, still promoted ahead)."""
        for lane, waiting in enumerate(self.waiting_jobs()):
            self.buffers.ready[lane].extend(waiting)
        for lane, lane_jobs in enumerate(self.buffers.ready):
            ids = [job._entry for job in lane_jobs]
            pairs = [(job._entry, job.id) for job in lane_jobs]
            for job in lane_jobs:
                self.gate.not_started(job)
            lane_jobs.clear()
            self.buffers.held[lane].difference_update(ids)
            if ids:
                released = await self.retrying(
                    "release",
                    lambda lane=lane, pairs=pairs: scripts.release_jobs(  # type: ignore[misc]
                        self.redis, self.stream, keys.LANES[lane], self.consumer, pairs
                    ),
                    attempts=3,
                )
                self.counts.released += int(released or 0)
        await self.gate.give_back_starts()

    # -- turning entries into jobs --------------------------------------------------------------

    async def accept(
        self,
        lane: int,
        entries: list[Any],
        deliveries: list[int] | None = None,
        *,
        read_floor: float | None = None,
    ) -> int:
        """Turn raw entries into jobs on the ready buffer; dead-letter what cannot run.
        ``deliveries``: how often each was delivered, for entries reclaimed from a consumer
        that died. ``read_floor``: the server's clock, never ahead of it, as the read that
        brought them was sent (_server_floor_ms), when known."""
        priority = keys.LANES[lane]
        held = self.buffers.held[lane]
        stream = self.stream
        jobs: list[Job] = []
        rejects: list[tuple[bytes, str, codec.Envelope | None]] = []
        for entry_id, fields in entries:
            held.add(entry_id)
            try:
                env, raw = codec.decode_entry(fields)
            except codec.UnknownEntry as exc:
                rejects.append((entry_id, str(exc), None))
                continue
            if not env.id.startswith(self._id_prefix):
                # Written by hand or copied from another stream: its record would be filed
                # where no lookup by its id could find it.
                reason = f"job id {env.id[:100]!r} does not belong to stream {stream!r}"
                rejects.append((entry_id, reason, None))
                continue
            jobs.append(Job(stream, priority, env, lane, entry_id, _redis=self.redis, _raw=raw))
        if jobs:
            jobs = self._hold_early(lane, jobs, deliveries, entries, read_floor)
        await self._take(lane, jobs, deliveries, entries, rejects)
        return len(entries)

    async def _take(
        self,
        lane: int,
        jobs: list[Job],
        deliveries: list[int] | None,
        entries: list[Any],
        rejects: list[tuple[bytes, str, codec.Envelope | None]],
    ) -> None:
        """The rest of accept, for jobs that may go on now."""
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
                jobs, parked = self.gate.pausing(jobs)
                for job, reason in parked:
                    self.set_aside(job, outcomes.parked(job, reason))
                self.settle_pauses()
        if jobs:
            self.buffers.add(lane, jobs)

    # -- jobs read before their due time --------------------------------------------------------

    def _read_clock(self, server_us: int, sent: float, seen: float) -> None:
        """Narrow what is known of the server's clock with a reading of it: TIME as read by a
        call sent at ``sent`` and answered by ``seen`` (time.monotonic()). The server's clock
        is at least the reading plus the time since ``seen`` (a lower bound: what waits are
        planned from), and at most the reading plus the time since ``sent``; the spread between
        the two is wide when the answer was seen late (the event loop or the process stalled),
        and release_when_due then reads again rather than wait from it. Kept: the latest lower
        bound and the earliest upper bound of the readings, unless a reading contradicts them
        (the server's clock was set), when it alone counts."""
        now = time.monotonic()
        low = server_us / 1000 + (now - seen) * 1000
        high = server_us / 1000 + (now - sent) * 1000
        known = self._server_floor_ms()
        if known is not None and self._reading is not None:
            known_high = known + self._reading[2]
            if low <= known_high and high >= known:
                low, high = max(low, known), min(high, known_high)
        self._reading = (low, now, high - low)

    def _server_floor_ms(self) -> float | None:
        """The server's clock now, from check_due's last answer: never ahead of it (the answer
        was read before it came back), so a wait planned from it ends at or after the due time;
        None when there is no recent reading."""
        if self._reading is None:
            return None
        server_ms, at, _ = self._reading
        elapsed = time.monotonic() - at
        return None if elapsed > READING_MAX_SECONDS else server_ms + elapsed * 1000

    def _hold_early(
        self,
        lane: int,
        jobs: list[Job],
        deliveries: list[int] | None,
        entries: list[Any],
        read_floor: float | None,
    ) -> list[Job]:
        """Set aside the jobs that may have been read before their due time; returns the others.

        A job goes on at once when the read that brought it was sent once it was due by the
        server's clock (``read_floor``): a cancel or a reschedule before its due time would
        have deleted its entry, unread. Without that knowledge (a blocking read, a reclaim), it
        goes on at once only if it was due CHECK_WINDOW_MS before the server's time now. Every
        other job goes through check_due, the only judge of "due" (and of a cancel or a
        reschedule that landed while it waited).
        """
        if read_floor is not None:
            early = read_floor
        else:
            floor = self._server_floor_ms()
            early = -math.inf if floor is None else floor - CHECK_WINDOW_MS
        go: list[Job] = []
        held: list[tuple[int, Job]] = []
        # While jobs wait (or are being handed on), a due one read now queues behind them, so
        # the jobs of an account due at the same time start in the order of their entries.
        behind = bool(self._waiting) or self._releasing > 0
        for job in jobs:
            due = job.envelope.run_at_ms
            if due is None or (due <= early and not behind):
                go.append(job)
            else:
                held.append((due, job))
        self._held_all = not go
        if not held:  # the common case (a job due now, read now): no lookups built
            return go
        delivered = (
            None
            if deliveries is None
            else {entry[0]: count for entry, count in zip(entries, deliveries, strict=True)}
        )
        raw = {entry[0]: entry for entry in entries}
        priority = keys.LANES[lane]
        for due, job in held:
            self._waited += 1
            count = None if delivered is None else delivered[job._entry]
            # Packed now, before the due time: the call at the due time only joins the rows.
            row = codec.pack_due_check(job.id, due, job._entry, priority)
            self._wait((due, self._waited, lane, job, count, raw[job._entry], row))
        self._waiting_changed.set()
        return go

    async def release_when_due(self) -> None:
        """Hand the jobs read before their due time on as they become due, until cancelled.

        A local timer, planned from check_due's last reading of the server's clock, says when
        to ask; check_due's answer says whether a job may go: nothing starts before it comes
        back, so no job starts before its due time by the server's clock.
        """
        waited = True
        while True:
            changed = self._waiting_changed = anyio.Event()
            if not self._waiting:
                waited = True
                await changed.wait()
                continue
            floor = self._server_floor_ms()
            if floor is not None and self._waiting[0][0] > floor:
                waited = True
                due, wait_ms = self._waiting[0][0], self._waiting[0][0] - floor
                spread = self._reading[2] if self._reading is not None else 0.0
                # A reading with a wide spread may lag the server's clock by as much: a wait
                # planned from it could end that much late. Read again instead, planned from
                # the other end (the earliest the due time may have come), until a reading
                # is close.
                unsure = spread > REFRESH_BEFORE_MS
                if (wait_ms > 2 * REFRESH_BEFORE_MS and self._refreshed != due) or unsure:
                    # Read the clock again shortly before: a second reading is often closer.
                    lead_ms = REFRESH_BEFORE_MS + (spread if unsure else 0.0)
                    with anyio.move_on_after(max(0.0, wait_ms - lead_ms) / 1000) as timer:
                        await changed.wait()
                    if timer.cancelled_caught:
                        self._refreshed = due
                        await self._release_due(None, 1)
                    continue
                # The server's clock is somewhere in [floor, floor + spread]: the due time may
                # come as early as the late end says.
                soonest_ms = wait_ms - spread
                if soonest_ms > TIMER_SLACK_MS:
                    with anyio.move_on_after((soonest_ms - TIMER_SLACK_MS) / 1000):
                        await changed.wait()
                    continue
                if soonest_ms > 0:
                    # The event loop's timers fire up to a ms late: the last stretch is
                    # yields, not a timer.
                    await anyio.lowlevel.checkpoint()
                    continue
                # It may be due now, and surely is within the spread: ask about the first few
                # (check_due judges), rather than wait out the spread for all. Their answer is
                # a closer reading: the rest go on by it, or the wait is planned again from it.
                await self._release_due(None, CHECK_FIRST)
                continue
            await self._release_due(floor, CHECK_FIRST if waited else CHECK_BATCH)
            waited = False

    async def _release_due(self, floor: float | None, first: int) -> None:
        self._releasing += 1
        try:
            await self._check_and_hand_on(floor, first)
        finally:
            self._releasing -= 1

    async def _check_and_hand_on(self, floor: float | None, first: int) -> None:
        """Ask check_due about the held jobs due by ``floor`` (all of them) and hand on those it
        calls due. The first ``first`` are asked in a call of their own, the rest in calls
        growing to CHECK_BATCH, all sent at once (their rows were packed as the jobs were
        held), and each call's jobs go on as its answer comes, in order. (Every job asked is
        due by ``floor``, a lower bound of the server's clock, so the calls cannot answer "not
        due" for one and "due" for a later one.)

        Without ``floor`` (no reading says the due time has surely come), the first ``first``
        are asked alone: their answer is a close reading, and the jobs due by it are asked
        at once, before the first go on."""
        waiting = self._waiting
        if floor is None:
            cut = min(first, len(waiting))
        else:
            cut = bisect.bisect_right(waiting, floor, key=_due_of)
        asked = waiting[:cut]
        del waiting[:cut]
        if not asked:  # handed back meanwhile (a stop: waiting_jobs)
            return
        chunks: list[list[Waiting]] = []
        answers: list[scripts.DueCheck | None] = []
        answered: list[anyio.Event] = []
        calls_free = anyio.Semaphore(CHECK_CALLS)

        async def check(i: int) -> None:
            async with calls_free:
                rows = [waiting_job[6] for waiting_job in chunks[i]]
                sent = time.monotonic()
                answer = await self.retrying(
                    "check due", lambda: scripts.check_due_rows(self.redis, self.stream, rows)
                )
                # The reading is noted as soon as it is seen: noted after the hand-on of the
                # chunk before (or anything else the loop did meanwhile), it would lag by that.
                assert answer is not None  # unbounded retries
                self._read_clock(answer.now_us, sent, time.monotonic())
            answers[i] = answer
            answered[i].set()

        def ask(more: list[Waiting], size: int) -> None:
            start = 0
            while start < len(more):
                size = min(2 * size, CHECK_BATCH)
                chunks.append(more[start : start + size])
                start += size
            while len(answers) < len(chunks):
                answers.append(None)
                answered.append(anyio.Event())
                calls.start_soon(check, len(answers) - 1)

        async with anyio.create_task_group() as calls:
            # Jobs of a lower lane read long ago would each wait for a look at the lanes above
            # (look_above) before they start: take it now, beside the check, not after it.
            lowest = max(waiting_job[2] for waiting_job in asked)
            if lowest and self.higher_lanes_unknown(lowest, LANE_NEWS_SECONDS / 2):
                calls.start_soon(self.look_above, lowest)
            chunks.append(asked[:first])
            answers.append(None)
            answered.append(anyio.Event())
            calls.start_soon(check, 0)
            ask(asked[first:], first)
            i = 0
            while i < len(chunks):
                await answered[i].wait()
                answer = answers[i]
                assert answer is not None  # unbounded retries
                now = self._server_floor_ms() if i == 0 and floor is None else None
                if now is None or not waiting or waiting[0][0] > now:
                    await self._hand_on(chunks[i], answer)
                elif scripts.DUE_WAIT in answer.verdicts:
                    # Some of the first were not due: the rest, due later, wait for the next
                    # reading, so that none of them goes before one due earlier.
                    await self._hand_on(chunks[i], answer)
                else:
                    cut = bisect.bisect_right(waiting, now, key=_due_of)
                    more = waiting[:cut]
                    del waiting[:cut]
                    # The first go on before the rest are asked about: their consumers take
                    # them and start them while the calls for the rest are built and sent.
                    await self._hand_on(chunks[i], answer)
                    ask(more, first)
                i += 1

    async def _hand_on(
        self,
        asked: list[Waiting],
        answer: scripts.DueCheck,
    ) -> None:
        going: list[list[tuple[Job, int | None, Any]]] = [[] for _ in keys.LANES]
        if len(asked) >= CHECK_FIRST:
            # A burst: acknowledgements give way while these jobs start (burst_starting). Jobs
            # due one by one (a steady stream) do not hold them back.
            self._burst_until = time.monotonic() + BURST_STARTING_SECONDS
        for waiting, verdict in zip(asked, answer.verdicts, strict=True):
            _, _, lane, job, count, entry, _ = waiting
            if verdict == scripts.DUE_WAIT:
                self._wait(waiting)
            elif verdict == scripts.DUE_GONE:
                # Moved back by reschedule_job; check_due acknowledged and deleted the entry.
                self.buffers.let_go(job)
            else:
                job.cancelled = verdict == scripts.DUE_CANCELLED
                going[lane].append((job, count, entry))
        for lane, due in enumerate(going):
            if not due:
                continue
            # Read entries and reclaimed ones (with their deliveries) go on apart, as they came.
            read = [(job, entry) for job, count, entry in due if count is None]
            if read:
                await self._take(lane, [j for j, _ in read], None, [e for _, e in read], [])
            taken = [(job, count, entry) for job, count, entry in due if count is not None]
            if taken:
                await self._take(
                    lane,
                    [job for job, _, _ in taken],
                    [count for _, count, _ in taken if count is not None],
                    [entry for _, _, entry in taken],
                    [],
                )
        # Let the consumers take the jobs handed on and start them before anything else is
        # built and sent: one turn to take a job, one through starts.start's yield.
        await anyio.lowlevel.checkpoint()
        await anyio.lowlevel.checkpoint()

    def _wait(self, waiting: Waiting) -> None:
        """Hold a job for its due time, in order (due time, then order read)."""
        held = self._waiting
        if not held or held[-1][:2] <= waiting[:2]:
            held.append(waiting)
        else:
            bisect.insort(held, waiting, key=_order_of)

    @property
    def hold_limit(self) -> int:
        """How many jobs held for their due time take no read-ahead room: as many as the
        read-ahead may grow to (MAX_PREFETCH when it adapts, else the prefetch given), plus a
        job per slot; and when the read-ahead adapts, up to HOLD_BURST shared by the live
        workers (their heartbeats say how many), so one worker alone holds a whole burst of
        that size ahead of its due time while a fleet shares it. Past it they count as read
        ahead, so one worker does not take a whole burst (or the tail of a run's retries) into
        its hands while others sit idle."""
        ceiling = MAX_PREFETCH if self.adaptive else self.prefetch
        floor = self.options.concurrency + ceiling
        live = self.live_workers() if self.adaptive else None
        return floor if live is None else max(floor, HOLD_BURST // max(1, live))

    @property
    def hold_room(self) -> int:
        """How many more jobs may be read at once while a burst promoted ahead is being read
        (the last jobs read were all held): what is left of hold_limit. Then the rest of the
        burst comes in one read, not in read-ahead-sized ones; a read that brings a job due
        now ends it, so due jobs are still read no more than the read-ahead at a time."""
        return max(0, self.hold_limit - len(self._waiting)) if self._held_all else 0

    def burst_starting(self) -> bool:
        """Whether a burst of jobs held for their due time (CHECK_FIRST or more asked about in
        one call) is being checked or was just handed on and waits for a consumer:
        acknowledgements give way to their starts meanwhile, for BURST_STARTING_SECONDS at most
        after the last such hand-on."""
        if time.monotonic() >= self._burst_until:
            return False
        return self._releasing > 0 or any(self.buffers.ready)

    @property
    def waiting_room(self) -> int:
        """Claimed entries that take no read-ahead room: held for their due time."""
        return min(len(self._waiting), self.hold_limit)

    def waiting_jobs(self) -> list[list[Job]]:
        """Take the jobs held for their due time, per lane (the worker hands them back at a
        stop, as it does the read-ahead)."""
        by_lane: list[list[Job]] = [[] for _ in keys.LANES]
        for _, _, lane, job, *_ in self._waiting:
            by_lane[lane].append(job)
        self._waiting.clear()
        return by_lane

    def settle_pauses(self) -> None:
        """Park the jobs already read of accounts whose pause is now in force."""
        for account, reason in self.gate.settle():
            for job in self.buffers.take_account(account):
                self.set_aside(job, outcomes.parked(job, reason))

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
        if deliveries is None:
            # A new job's first entry (first_run, set by the producer): no run of it can have
            # left anything in the record, so most batches read nothing.
            rerun = [job for job in jobs if not job.envelope.first_run]
            if not rerun:
                return jobs
            found = await self.retrying("read records", lambda: self._records_of(rerun))
            assert found is not None  # unbounded retries
            for job, (_, _, _, _, sent_since, saved) in zip(rerun, found, strict=True):
                job._sent_since_ms = job._mark_ms = None if sent_since is None else int(sent_since)
                if saved is not None:
                    job._checkpoints = codec.checkpoints(saved)
            return jobs
        # Retried until it answers: these entries are held here now, and giving up would
        # leave them held (and refreshed) with nobody to run them.
        found = await self.retrying("read records", lambda: self._records_of(jobs))
        assert found is not None  # unbounded retries
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

            def expired(job: Job) -> bool:
                return outcomes.is_expired(job.envelope, self.options, self.now_ms())

            for job in [job for job in gated if expired(job)]:
                self.set_aside(job, outcomes.expired(job))  # not admitted: no start to give back
            gated = [job for job in gated if not expired(job)]
        started = await self.retrying(
            "admit", lambda: self.gate.admit(lane, gated, reclaimed=reclaimed)
        )
        assert started is not None  # unbounded retries
        kept = {id(job) for job in started}
        for job in gated:
            if id(job) not in kept:  # deferred or parked: no longer this worker's
                self.buffers.held[lane].discard(job._entry)
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
        await self.retrying(
            "dead-letter",
            lambda: scripts.dead_letter(
                self.redis, self.stream, keys.LANES[lane], filed, retention_ms=self._retention_ms
            ),
        )
        for entry_id, _, _ in rejects:
            self.buffers.held[lane].discard(entry_id)
        self.counts.dead_lettered += len(rejects)
        self.metrics.dead_lettered(len(rejects))

    # -- the news of the lanes above ------------------------------------------------------------

    def _news(self) -> None:
        """Recompute fresh_until after the news of a lane changed."""
        until = math.inf
        for lane, admitting in enumerate(self._admitting_lane):
            self.fresh_until[lane] = until
            if admitting:
                until = -math.inf
            elif not self._blocking:
                until = min(until, self._empty_at[lane] + LANE_NEWS_SECONDS)

    def higher_lanes_unknown(self, lane: int, within: float = LANE_NEWS_SECONDS) -> bool:
        """Whether a lane above ``lane`` may hold jobs this worker has not read: not seen empty
        within LANE_NEWS_SECONDS, and no blocking read waiting on it; or holds jobs being
        admitted now."""
        if any(self._admitting_lane[:lane]):
            return True
        if self._blocking or self.stop_event.is_set():
            return False
        since = time.monotonic() - within
        return any(self._empty_at[higher] < since for higher in range(lane))

    async def look_above(self, lane: int) -> None:
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
            count = max(1, self.free_consumers())
            for higher in range(lane):
                sent = time.monotonic()
                floor = self._server_floor_ms()
                reply: Any = await self.redis.execute_command(  # type: ignore[no-untyped-call]
                    "XREADGROUP", "GROUP", keys.GROUP, self.consumer, "COUNT", count,
                    "STREAMS", self.lanes[higher], ">",
                )  # fmt: skip
                entries = reply[0][1] if reply else []
                if len(entries) < count:
                    self._empty_at[higher] = sent
                    self._news()
                if entries:
                    await self.accept(higher, entries, read_floor=floor)
        except redis_errors.ResponseError as exc:
            if isinstance(exc, TRANSIENT_ERRORS) or lane_gone(exc):
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


def _due_of(waiting: tuple[Any, ...]) -> int:
    due: int = waiting[0]
    return due


def _order_of(waiting: tuple[Any, ...]) -> tuple[int, int]:
    return waiting[0], waiting[1]


def lane_gone(exc: redis_errors.ResponseError) -> bool:
    """The lane or its group was deleted under us: Valkey says NOGROUP; Redis 7.0 tells a
    blocked reader UNBLOCKED."""
    return str(exc).startswith(("NOGROUP", "UNBLOCKED"))


def _raw(response: Any, **options: Any) -> Any:
    return response

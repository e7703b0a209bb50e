"""Time: when a job is due, how long a retry waits, and when a recurring schedule fires next.

Every due time is absolute milliseconds since the epoch, compared against the *server's* clock
(scripts read TIME), so workers whose own clocks are off still agree on what is due. Local wall
times are turned into instants with zoneinfo: a time that does not exist (the hour skipped when
clocks go forward) is refused, and one that happens twice (the hour repeated when they go back)
means the first of the two, as `fold=0` does.
"""

from __future__ import annotations

import logging
import math
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import anyio
import msgspec
from cronsim import CronSim, CronSimError
from redis.asyncio import Redis

from streamq import channel, codec, keys, scripts
from streamq.config import Backoff, parse_duration
from streamq.connection import TRANSIENT_ERRORS, retry_delay
from streamq.errors import ConfigError, ConnectionFailed, ServerFull

log = logging.getLogger("streamq.scheduler")


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"unknown time zone {name!r} (use an IANA name like Europe/Paris)"
        ) from None


def aware_ms(when: datetime) -> int:
    """Milliseconds since the epoch of an aware datetime; naive ones are refused."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise ConfigError(
            f"run_at {when.isoformat()} has no time zone: pass an aware datetime "
            "(e.g. datetime(..., tzinfo=ZoneInfo('Europe/Paris')))"
        )
    return round(when.timestamp() * 1000)


def aware_time(text: str) -> datetime | None:
    """``text`` as an ISO 8601 time that carries its offset; None when it is not one (a time
    without an offset is not an instant)."""
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def local_to_aware(naive: datetime, tz: ZoneInfo) -> datetime:
    """Attach ``tz`` to a wall time, refusing one that the zone skips."""
    aware = naive.replace(tzinfo=tz, fold=0)
    # A skipped wall time does not survive the round trip through UTC.
    round_trip = aware.astimezone(UTC).astimezone(tz).replace(tzinfo=None)
    if round_trip != naive:
        raise ConfigError(
            f"{naive.isoformat(sep=' ')} does not exist in {tz.key}: clocks skip that time "
            "(daylight saving); pick a time outside the gap"
        )
    return aware


def parse_at(text: str, tz_name: str | None = None) -> datetime:
    """A CLI ``--at``: ISO 8601 with an offset, or a wall time plus ``--tz``."""
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(
            f"--at {text!r} is not a date and time: use 2026-12-01T09:00:00+01:00, "
            "or '2026-12-01 09:00' with --tz Europe/Paris"
        ) from None
    if parsed.tzinfo is not None:
        if tz_name is not None:
            raise ConfigError("--at already has an offset: drop --tz, or the offset")
        return parsed
    if tz_name is None:
        raise ConfigError(
            f"--at {text!r} has no time zone: add an offset (+01:00, Z) or --tz Europe/Paris"
        )
    return local_to_aware(parsed, zone(tz_name))


def due_ms(
    run_at: datetime | None = None,
    delay: timedelta | float | str | None = None,
    *,
    now_ms: int,
) -> int | None:
    """The absolute due time for ``run_at`` or ``delay`` (at most one); None means now."""
    if run_at is not None and delay is not None:
        raise ConfigError("give run_at or delay, not both")
    if run_at is not None:
        return aware_ms(run_at)
    if delay is None:
        return None
    if isinstance(delay, timedelta):
        seconds = delay.total_seconds()
        if seconds < 0:
            raise ConfigError("delay must not be negative")
    else:
        seconds = parse_duration(delay, "delay")
    return now_ms + round(seconds * 1000)


def backoff_seconds(policy: Backoff, attempt: int, rng: random.Random | None = None) -> float:
    """How long to wait before running again after failed attempt number ``attempt`` (1-based)."""
    try:
        grown = policy.base * policy.factor ** max(attempt - 1, 0)
    except OverflowError:  # a float power past ~1e308: far beyond any cap
        grown = math.inf
    delay = min(policy.max, grown)
    if policy.jitter:
        spread = (rng or random).uniform(-policy.jitter, policy.jitter)
        delay *= 1 + spread
    return max(0.0, delay)


def check_cron(expression: str) -> str:
    try:
        CronSim(expression, datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as exc:
        raise ConfigError(f"invalid cron expression {expression!r}: {exc}") from None
    return expression


def next_fire_ms(expression: str, tz_name: str, after_ms: int) -> int:
    """The first time strictly after ``after_ms`` that ``expression`` fires in ``tz_name``.

    cronsim follows cron on daylight-saving changes: a time inside a skipped hour fires once,
    at the moment the clocks jump; a time inside a repeated hour fires once, the first time.
    """
    tz = zone(tz_name)
    start = datetime.fromtimestamp(after_ms / 1000, tz=UTC).astimezone(tz)
    return aware_ms(next(CronSim(expression, start)))


# -- promotion ----------------------------------------------------------------------------------

PROMOTE_BATCH = 500
MAX_SLEEP_SECONDS = 5.0
"""A promoter re-checks at least this often, whatever it was told."""
PROMOTE_AHEAD_MS = 100
"""Jobs are promoted this long before they are due: the promotion's work (and the worker's
read) is done by the due time, and the worker that reads such a job holds it until check_due
says, by the server's clock, that it is due (streamq.fetcher; docs/timing.md). Long enough to
promote a thousand jobs due at one instant; short, because a worker holds the jobs it read
meanwhile. A larger burst is promoted earlier still (PROMOTE_MS_PER_JOB)."""
PROMOTE_MS_PER_JOB = 0.05
"""What promoting one job and reading it ahead cost, about (30 µs: promote_due.lua on the
shared 2-core machine of bench/RESULTS.md, with other work on it; 10–20 µs more: the worker
reads it, decodes it and packs its check_due row, which trails the promotion): a burst of n
jobs due within PROMOTE_AHEAD_MS of the next one starts being promoted n times this ahead, so
it is promoted and held by its due time."""
MAX_PROMOTE_AHEAD_MS = 1000
"""The most ahead a burst is promoted, however large."""


class Promoter:
    """Moves due jobs onto their lanes, sleeping until PROMOTE_AHEAD_MS before the next one.

    Every worker runs one: there is no scheduler process to lose, and the promotion script
    makes sure each job moves once however many promoters race. Sleeps are local timers (a
    server-side BLOCK timeout can fire up to 100 ms late), re-planned on ``wake()``: the
    worker's control listener calls it when a producer schedules a job ahead of all others.
    """

    def __init__(
        self,
        redis: Redis,
        stream: str,
        *,
        retention_ms: int,
        clock: channel.ServerClock | None = None,
    ) -> None:
        self.redis = redis
        self.stream = stream
        self.retention_ms = retention_ms
        self.clock = clock or channel.ServerClock()
        self.promoted = 0
        self.expired = 0
        self._wake = anyio.Event()
        self._delayed = keys.delayed(stream)
        self.ahead_ms = PROMOTE_AHEAD_MS
        """How far ahead the next burst is promoted (see lead_for)."""
        self._unsure_ms = 0.0
        """How long the last promote_due call took: the clock's offset was taken as its answer
        was seen, so the server's clock may be up to this much later than ``clock`` says."""

    def wake(self) -> None:
        """Re-plan now (e.g. a recurring job finished and its next occurrence can be added)."""
        self._wake.set()

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                if failures or not self.clock.synced:
                    await self.clock.sync(self.redis)
                next_due = await self.promote_due()
                await reconcile_recurring(self.redis, self.stream, self.clock.now_ms())
            except (*TRANSIENT_ERRORS, ConnectionFailed, ServerFull) as exc:
                # (The last two: a recurring occurrence the producer could not add.)
                # Nothing is lost meanwhile: due jobs wait in the delayed set, and
                # another worker's promoter (or this one, later) moves them.
                failures += 1
                delay = retry_delay(failures)
                log.warning("promotion failed (%s); retrying in %.2fs", exc, delay)
                await anyio.sleep(delay)
                continue
            failures = 0
            wait = MAX_SLEEP_SECONDS
            if next_due is not None:
                try:
                    self.ahead_ms = await self.lead_for(next_due)
                except TRANSIENT_ERRORS:
                    self.ahead_ms = PROMOTE_AHEAD_MS
                # Planned from the latest the server's clock may be: a wake a little early
                # promotes a little more ahead; a late one would make the burst late.
                ahead = next_due - self.ahead_ms - self._unsure_ms
                wait = min(wait, max(0.0, (ahead - self.clock.now_ms()) / 1000))
            with anyio.move_on_after(wait):
                await self._wake.wait()
            self._wake = anyio.Event()

    async def lead_for(self, next_due: int) -> int:
        """How far ahead of ``next_due`` to start promoting: PROMOTE_AHEAD_MS, or more for a
        burst (the jobs due within PROMOTE_AHEAD_MS of it), up to MAX_PROMOTE_AHEAD_MS."""
        burst = int(await self.redis.zcount(self._delayed, "-inf", next_due + PROMOTE_AHEAD_MS))
        longer = min(MAX_PROMOTE_AHEAD_MS, round(burst * PROMOTE_MS_PER_JOB))
        return max(PROMOTE_AHEAD_MS, longer)

    async def promote_due(self) -> int | None:
        """Promote everything due within ``ahead_ms``; returns when the next waiting job is
        due (server ms)."""
        ahead_ms = max(self.ahead_ms, PROMOTE_AHEAD_MS)
        floor = 0
        while True:
            # The script decides by TIME; this only picks. The local estimate of the server's
            # clock runs behind by a slow reply's latency (``saw`` sets it when the answer
            # arrives), so once the script has named a head that is due, pick up to it.
            horizon = max(self.clock.now_ms() + ahead_ms + 1000, floor)
            candidates: Any = await self.redis.zrangebyscore(
                self._delayed, "-inf", horizon, start=0, num=PROMOTE_BATCH
            )
            ids = [c.decode() for c in candidates]
            sent = time.monotonic()
            done = await scripts.promote_due(
                self.redis,
                self.stream,
                ids,
                retention_ms=self.retention_ms,
                ahead_ms=ahead_ms,
            )
            self.clock.saw(done.now_ms)
            self._unsure_ms = (time.monotonic() - sent) * 1000
            self.promoted += done.promoted
            self.expired += done.expired
            head = done.next_due_ms
            if head is None:
                return None
            if head > done.now_ms + ahead_ms or (not ids and horizon >= head):
                return head
            floor = head


# -- recurring jobs -----------------------------------------------------------------------------


class Recurring(msgspec.Struct, frozen=True, kw_only=True):
    """A recurring schedule, stored under its name in ``streamq:{S}:cron``."""

    name: str
    stream: str
    cron: str
    tz: str = "UTC"
    payload: Any = None
    priority: str = "normal"
    created_ms: int = 0
    last_ms: int = 0
    """When the last occurrence was due (read from ``streamq:{S}:cron:last``)."""


def recurring_key(name: str) -> str:
    """The dedup key its occurrences share: one occurrence of a schedule is live at a time."""
    return f"cron:{name}"


async def add_recurring(redis: Redis, schedule: Recurring) -> None:
    check_cron(schedule.cron)
    zone(schedule.tz)
    now = await channel.server_ms(redis)
    stored = msgspec.structs.replace(schedule, created_ms=now, last_ms=0)
    await redis.hset(keys.cron(schedule.stream), schedule.name, msgspec.json.encode(stored))
    await redis.sadd(keys.STREAM_REGISTRY, schedule.stream)
    await reconcile_recurring(redis, schedule.stream, now)


async def list_recurring(redis: Redis, stream: str) -> list[Recurring]:
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.cron(stream))
        pipe.hgetall(keys.cron_fired(stream))
        raw, fired = await pipe.execute()
    decoder = msgspec.json.Decoder(Recurring)
    schedules = []
    for name, value in raw.items():
        schedule = decoder.decode(value)
        last = fired.get(name)
        if last is not None:
            schedule = msgspec.structs.replace(schedule, last_ms=int(last))
        schedules.append(schedule)
    return sorted(schedules, key=lambda r: r.name)


async def reconcile_recurring(redis: Redis, stream: str, now_ms: int) -> int:
    """Make sure every schedule of ``stream`` has its next occurrence waiting.

    An occurrence carries the dedup key ``cron:<name>``, so while one is scheduled, queued or
    running no other is added; and enqueue_jobs adds an occurrence only if it is due later than
    the last one added, so reconcilers racing with stale views cannot add one twice. The next
    occurrence is the first fire time after the last: none is skipped, and cronsim fires a time
    in a skipped or repeated daylight-saving hour exactly once. Occurrences missed while no
    worker ran collapse into one that runs at once. Returns how many were added.
    """
    from streamq.producer import JobOptions, Producer  # producer imports this module

    added = 0
    producer = Producer(redis)
    for schedule in await list_recurring(redis, stream):
        after = schedule.last_ms or schedule.created_ms or now_ms
        fire_ms = next_fire_ms(schedule.cron, schedule.tz, after)
        if fire_ms < now_ms:
            fire_ms = now_ms  # missed while down: once, now
        job_id = await producer.enqueue(
            stream,
            schedule.payload,
            key=recurring_key(schedule.name),
            priority=schedule.priority,
            options=JobOptions(run_at=datetime.fromtimestamp(fire_ms / 1000, tz=UTC)),
            cron=schedule.name,
        )
        if job_id and await _due_ms(redis, stream, job_id) == fire_ms:
            added += 1
    return added


async def _due_ms(redis: Redis, stream: str, job_id: str) -> int | None:
    """When a just-added occurrence is due: its record's run_at (a record written before
    enqueue_jobs stopped repeating it, or a due time in the past), else its waiting envelope's;
    None when it waits in no record (then this call did not add it)."""
    read: Any = await redis.hmget(keys.job(stream, job_id), ["run_at", "env", "key", "account"])
    run_at, envelope, key, account = read
    if run_at is not None:
        return int(run_at)
    if envelope is None:
        return None
    return codec.record_envelope(envelope, job_id, key, account).run_at_ms


async def remove_recurring(redis: Redis, stream: str, name: str) -> str | None:
    """Forget a schedule; returns the id of its waiting occurrence (for the caller to cancel)."""
    removed = await redis.hdel(keys.cron(stream), name)
    await redis.hdel(keys.cron_fired(stream), name)
    if not removed:
        return None
    holder: Any = await redis.hget(keys.dedup(stream), recurring_key(name))
    return holder.decode() if holder else ""

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
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import anyio
import msgspec
from cronsim import CronSim, CronSimError
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from streamq import keys, scripts
from streamq.config import Backoff, parse_duration
from streamq.errors import ConfigError

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


class Promoter:
    """Moves due jobs onto their lanes, sleeping until the next one is due.

    Every worker runs one: there is no scheduler process to lose, and the promotion script
    makes sure each job moves once however many promoters race. Sleeps are local timers (a
    server-side BLOCK timeout can fire up to 100 ms late), re-planned whenever a wake-up arrives
    on the control stream: a producer appends one when it schedules a job ahead of all others.
    The control stream also carries cancellations, handed to ``on_cancel``, and platform
    pauses, handed to ``on_platform_pause``.
    """

    def __init__(
        self,
        redis: Redis,
        stream: str,
        *,
        retention_ms: int,
        on_cancel: Callable[[str], None] = lambda job_id: None,
        on_platform_pause: Callable[[int], None] = lambda until_ms: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.stream = stream
        self.retention_ms = retention_ms
        self.on_cancel = on_cancel
        self.on_platform_pause = on_platform_pause
        self.clock = clock
        self.offset_ms = 0
        """Server clock minus this process's clock, as of the last promotion."""
        self.promoted = 0
        self.expired = 0
        self._wake = anyio.Event()
        self._last_id: bytes | None = None
        self._delayed = keys.delayed(stream)
        self._fixed_keys = [self._delayed, *keys.lanes(stream), keys.dedup(stream)]
        self._fixed_keys += [keys.counts(stream), keys.events(stream), keys.meta(stream)]
        self._script_prefix = keys.script_prefix(stream)

    def wake(self) -> None:
        """Re-plan now (e.g. a recurring job finished and its next occurrence can be added)."""
        self._wake.set()

    def server_now_ms(self) -> int:
        return round(self.clock() * 1000) + self.offset_ms

    async def prepare(self) -> None:
        """Note where the control stream stands, before the worker takes any job: a
        cancellation sent from then on reaches this worker."""
        self._last_id = await self._last_control_id(self.redis)

    async def run(self) -> None:
        listener = self.redis.client()  # blocking XREADs hold a connection of their own
        try:
            if self._last_id is None:
                await self.prepare()
            last_id = self._last_id or b"0-0"
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._listen, listener, last_id)
                await self._sync_clock()
                while True:
                    wait = MAX_SLEEP_SECONDS
                    try:
                        next_due = await self.promote_due()
                        await reconcile_recurring(self.redis, self.stream, self.server_now_ms())
                    except (
                        redis_errors.ConnectionError,
                        redis_errors.TimeoutError,
                        OSError,
                    ) as exc:
                        # Promotion is one script per batch: whatever did not move is still due.
                        log.warning("promotion failed, retrying in 1s: %s", exc)
                        next_due, wait = None, 1.0
                    if next_due is not None:
                        wait = min(wait, max(0.0, (next_due - self.server_now_ms()) / 1000))
                    with anyio.move_on_after(wait):
                        await self._wake.wait()
                    self._wake = anyio.Event()
        finally:
            with anyio.CancelScope(shield=True):
                await listener.aclose()

    async def promote_due(self) -> int | None:
        """Promote everything due now; returns when the next waiting job is due (server ms)."""
        while True:
            horizon = self.server_now_ms() + 1000  # the script decides by TIME; this only picks
            candidates: Any = await self.redis.zrangebyscore(
                self._delayed, "-inf", horizon, start=0, num=PROMOTE_BATCH
            )
            ids = [c.decode() for c in candidates]
            record_keys = [keys.job(self.stream, job_id) for job_id in ids]
            promoted, expired, server_now, head = await scripts.promote_due(
                self.redis,
                [*self._fixed_keys, *record_keys],
                [self.retention_ms, self._script_prefix, *ids],
            )
            self.offset_ms = int(server_now) - round(self.clock() * 1000)
            self.promoted += int(promoted)
            self.expired += int(expired)
            head = int(head)
            if head < 0:
                return None
            if head > int(server_now) or not ids:
                return head

    async def _sync_clock(self) -> None:
        seconds, micros = await self.redis.time()
        self.offset_ms = int(seconds) * 1000 + int(micros) // 1000 - round(self.clock() * 1000)

    async def _last_control_id(self, listener: Redis) -> bytes:
        newest: Any = await listener.xrevrange(keys.control(self.stream), count=1)
        return newest[0][0] if newest else b"0-0"

    async def _listen(self, listener: Redis, last_id: bytes) -> None:
        control = keys.control(self.stream)
        while True:
            try:
                reply: Any = await listener.xread({control: last_id}, count=100, block=5000)
            except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
                log.warning("control stream read failed, retrying: %s", exc)
                await anyio.sleep(1)
                continue
            for _, messages in reply or []:
                for message_id, fields in messages:
                    last_id = message_id
                    if b"c" in fields:
                        self.on_cancel(fields[b"c"].decode())
                    if b"p" in fields:
                        self.on_platform_pause(int(fields[b"p"]))
                    if b"w" in fields:
                        self._wake.set()


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


async def _server_ms(redis: Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def add_recurring(redis: Redis, schedule: Recurring) -> None:
    check_cron(schedule.cron)
    zone(schedule.tz)
    now = await _server_ms(redis)
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
        if job_id and await redis.hget(keys.job(stream, job_id), "run_at") == str(fire_ms).encode():
            added += 1
    return added


async def remove_recurring(redis: Redis, stream: str, name: str) -> str | None:
    """Forget a schedule; returns the id of its waiting occurrence (for the caller to cancel)."""
    removed = await redis.hdel(keys.cron(stream), name)
    await redis.hdel(keys.cron_fired(stream), name)
    if not removed:
        return None
    holder: Any = await redis.hget(keys.dedup(stream), recurring_key(name))
    return holder.decode() if holder else ""

"""Scheduling: due times, DST, promotion by the server's clock, wake-ups, skew, bursts."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio import Redis

from streamq import channel, keys, scheduler
from streamq.config import Backoff
from streamq.control import job_info
from streamq.errors import ConfigError
from streamq.job import Job
from streamq.producer import JobOptions, Producer
from streamq.worker import Worker, WorkerOptions
from tests.test_worker import FAST, poll

PARIS = ZoneInfo("Europe/Paris")

pytestmark = pytest.mark.cluster


def options(**changes: Any) -> WorkerOptions:
    return msgspec.structs.replace(FAST, burst=False, **changes)


# -- time arithmetic ------------------------------------------------------------------------------


def test_wall_time_with_zone_and_iso_offsets() -> None:
    assert scheduler.parse_at("2026-12-01 09:00", "Europe/Paris").isoformat() == (
        "2026-12-01T09:00:00+01:00"
    )
    assert scheduler.parse_at("2026-12-01T09:00:00+01:00").utcoffset() == timedelta(hours=1)
    assert scheduler.parse_at("2026-06-01T07:00:00Z").tzinfo is not None


def test_a_time_from_text_must_carry_its_offset() -> None:
    assert scheduler.aware_time("2026-12-01T09:00:00Z") == datetime(2026, 12, 1, 9, tzinfo=UTC)
    plus_one = scheduler.aware_time("2026-12-01T09:00:00+01:00")
    assert plus_one is not None
    assert plus_one.utcoffset() == timedelta(hours=1)
    assert scheduler.aware_time("2026-12-01T09:00:00") is None  # a wall time, not an instant
    assert scheduler.aware_time("tomorrow") is None


def test_a_time_in_the_spring_gap_is_refused() -> None:
    with pytest.raises(ConfigError, match="does not exist in Europe/Paris"):
        scheduler.parse_at("2026-03-29 02:30", "Europe/Paris")


def test_a_time_in_the_autumn_fold_means_the_first_one() -> None:
    first = scheduler.parse_at("2026-10-25 02:30", "Europe/Paris")
    assert first.utcoffset() == timedelta(hours=2)  # summer time, the earlier of the two


@pytest.mark.parametrize(
    ("text", "tz", "message"),
    [
        ("2026-12-01 09:00", None, "has no time zone"),
        ("tomorrow", "Europe/Paris", "is not a date and time"),
        ("2026-12-01T09:00:00+01:00", "Europe/Paris", "already has an offset"),
        ("2026-12-01 09:00", "Mars/Olympus", "unknown time zone"),
    ],
)
def test_bad_times_are_refused(text: str, tz: str | None, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        scheduler.parse_at(text, tz)


def test_naive_datetimes_are_refused_by_the_api() -> None:
    with pytest.raises(ConfigError, match="has no time zone"):
        scheduler.due_ms(datetime(2026, 12, 1, 9, 0), now_ms=0)
    with pytest.raises(ConfigError, match="not both"):
        scheduler.due_ms(datetime.now(UTC), timedelta(seconds=1), now_ms=0)


def test_cron_fires_once_in_skipped_and_repeated_hours() -> None:
    def fires(expr: str, start: datetime, n: int) -> list[str]:
        out, after = [], scheduler.aware_ms(start)
        for _ in range(n):
            after = scheduler.next_fire_ms(expr, "Europe/Paris", after)
            out.append(datetime.fromtimestamp(after / 1000, tz=PARIS).isoformat())
        return out

    # 02:30 does not exist on 29 March: it fires once, when the clocks jump to 03:00.
    assert fires("30 2 * * *", datetime(2026, 3, 28, 12, tzinfo=PARIS), 3) == [
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00",
    ]
    # 02:30 happens twice on 25 October: it fires once, the first time.
    assert fires("30 2 * * *", datetime(2026, 10, 24, 12, tzinfo=PARIS), 3) == [
        "2026-10-25T02:30:00+02:00",
        "2026-10-26T02:30:00+01:00",
        "2026-10-27T02:30:00+01:00",
    ]


@given(attempt=st.integers(1, 200), base=st.floats(0, 60), factor=st.floats(1, 4))
def test_backoff_grows_and_stays_within_the_cap_and_jitter(
    attempt: int, base: float, factor: float
) -> None:
    policy = Backoff(base=base, factor=factor, max=600, jitter=0.2)
    delay = scheduler.backoff_seconds(policy, attempt)
    exact = min(600, base * factor ** (attempt - 1))
    assert exact * 0.8 - 1e-9 <= delay <= exact * 1.2 + 1e-9
    assert scheduler.backoff_seconds(msgspec.structs.replace(policy, jitter=0), attempt) == exact


# -- promotion ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_scheduled_job_waits_and_runs_after_its_time(redis: Redis, stream: str) -> None:
    due = datetime.now(UTC) + timedelta(seconds=0.5)
    job_id = await Producer(redis).enqueue(stream, "later", options=JobOptions(run_at=due))
    assert await redis.zscore(keys.delayed(stream), job_id) is not None
    assert await redis.xlen(keys.lane(stream, "normal")) == 0
    started: list[int] = []

    async def handler(job: Job) -> None:
        started.append(await channel.server_ms(redis))

    worker = Worker(redis, stream, handler, options())
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        await poll(lambda: started)
        worker.stop()
    assert started[0] >= scheduler.aware_ms(due)
    record = await redis.hgetall(keys.job(stream, job_id))
    assert record[b"state"] == b"done"
    # The due time is held once, in the envelope the record keeps (issue 28).
    assert (await job_info(redis, job_id)).run_at_ms == scheduler.aware_ms(due)


@pytest.mark.anyio
async def test_a_sooner_job_wakes_a_sleeping_promoter(redis: Redis, stream: str) -> None:
    producer = Producer(redis)
    await producer.enqueue(stream, "far", options=JobOptions(delay=3600))
    ran: list[float] = []

    async def handler(job: Job) -> None:
        ran.append(time.monotonic())

    worker = Worker(redis, stream, handler, options())
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        await anyio.sleep(0.3)  # the promoter is now asleep until the far job (or 5 s)
        scheduled_at = time.monotonic()
        await producer.enqueue(stream, "soon", options=JobOptions(delay=0.2))
        await poll(lambda: ran, within=4)
        worker.stop()
    # Without the wake-up it would have slept up to scheduler.MAX_SLEEP_SECONDS (5 s).
    assert ran[0] - scheduled_at < 2.0


@pytest.mark.anyio
async def test_workers_with_skewed_clocks_run_jobs_by_the_server_clock(
    redis: Redis, stream: str
) -> None:
    """One worker's clock is 5 minutes fast, the other's 5 minutes slow: neither runs a job
    early, and both promote on time."""
    now = datetime.now(UTC)
    dues = [now + timedelta(seconds=0.4 + 0.1 * i) for i in range(6)]
    producer = Producer(redis)
    for due in dues:
        await producer.enqueue(stream, scheduler.aware_ms(due), options=JobOptions(run_at=due))
    starts: list[tuple[int, int]] = []

    async def handler(job: Job) -> None:
        starts.append((job.payload, await channel.server_ms(redis)))

    fast = Worker(redis, stream, handler, options(), clock=lambda: time.time() + 300)
    slow = Worker(redis, stream, handler, options(), clock=lambda: time.time() - 300)
    async with anyio.create_task_group() as tg:
        tg.start_soon(fast.run)
        tg.start_soon(slow.run)
        await poll(lambda: len(starts) == 6, within=10)
        fast.stop()
        slow.stop()
    for due_ms, started_ms in starts:
        assert started_ms >= due_ms
        assert started_ms - due_ms < 2000
    assert fast.promoter.promoted + slow.promoter.promoted == 6


@pytest.mark.anyio
async def test_concurrent_promoters_move_each_job_once(redis: Redis, stream: str) -> None:
    producer = Producer(redis)
    ids = set()
    for _ in range(4):
        ids |= set(
            await producer.enqueue_many(stream, list(range(500)), options=JobOptions(delay=0.05))
        )
    latest: Any = await redis.zrange(keys.delayed(stream), -1, -1, withscores=True)
    last_due = float(latest[0][1])
    with anyio.fail_after(10):  # until all 2,000 are due by the server's clock
        while await channel.server_ms(redis) <= last_due:  # noqa: ASYNC110 - the server's clock moves
            await anyio.sleep(0.01)
    # Four promoters race for them.
    promoters = [scheduler.Promoter(redis, stream, retention_ms=60_000) for _ in range(4)]
    async with anyio.create_task_group() as tg:
        for promoter in promoters:
            tg.start_soon(promoter.promote_due)
    assert sum(p.promoted for p in promoters) == 2_000
    assert await redis.xlen(keys.lane(stream, "normal")) == 2_000
    assert await redis.zcard(keys.delayed(stream)) == 0


@pytest.mark.anyio
async def test_ten_thousand_jobs_due_in_the_same_second(redis: Redis, stream: str) -> None:
    due = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    ids = await Producer(redis).enqueue_many(
        stream, list(range(10_000)), options=JobOptions(run_at=due)
    )
    runs: dict[str, int] = {}
    earliest: list[int] = []

    async def handler(job: Job) -> None:
        runs[job.id] = runs.get(job.id, 0) + 1
        if not earliest:
            earliest.append(await channel.server_ms(redis))

    workers = [Worker(redis, stream, handler, options()) for _ in range(2)]
    async with anyio.create_task_group() as tg:
        for worker in workers:
            tg.start_soon(worker.run)
        await poll(lambda: len(runs) == 10_000, within=60)
        for worker in workers:
            worker.stop()
    assert set(runs) == set(ids)
    assert set(runs.values()) == {1}
    assert earliest[0] >= scheduler.aware_ms(due)

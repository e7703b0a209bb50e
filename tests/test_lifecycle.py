"""The job lifecycle: outcomes chosen by handlers, timeouts, expiry, and control by job id."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import msgspec
import pytest
from redis.asyncio import Redis

import streamq
from streamq import codec, keys
from streamq.config import Backoff
from streamq.errors import (
    ConfigError,
    Fail,
    InvalidJobState,
    JobNotFound,
    RateLimited,
    RecordChanged,
    Retry,
)
from streamq.job import Job
from streamq.worker import Worker, WorkerOptions
from tests.conftest import entries, finish_late
from tests.test_worker import FAST, poll

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]

QUICK = Backoff(base=0.05, factor=1, max=0.05, jitter=0)


def options(**changes: Any) -> WorkerOptions:
    return msgspec.structs.replace(FAST, burst=False, backoff=QUICK, **changes)


class Running:
    """A worker running in the background of a test."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def __aenter__(self) -> Worker:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self.worker.run)
        return self.worker

    async def __aexit__(self, *exc: object) -> None:
        self.worker.stop()
        await self._tg.__aexit__(None, None, None)


async def state(q: streamq.Queue, job_id: str) -> str:
    return (await q.job(job_id)).state


async def test_retry_after_fail_and_result(redis_url: str, redis: Redis, stream: str) -> None:
    async with streamq.connect(redis_url) as q:
        retried = await q.enqueue(stream, "retry-once")
        failed = await q.enqueue(stream, "fail")
        done = await q.enqueue(stream, "ok")
        seen: list[tuple[str, int]] = []

        async def handler(job: Job) -> Any:
            seen.append((job.payload, job.attempt))
            if job.payload == "retry-once" and job.attempt == 1:
                raise Retry(after=0.1)
            if job.payload == "fail":
                raise Fail("token revoked")
            return {"post_id": "p-1"}

        async with Running(Worker(redis, stream, handler, options())):
            await poll(lambda: len(seen) == 4)
            await poll(lambda: _is(q, retried, "done"))
        assert ("retry-once", 2) in seen
        assert (await q.job(done)).result == {"post_id": "p-1"}
        info = await q.job(failed)
        assert (info.state, info.error) == ("dead", "token revoked")
        [letter] = await q.dead(stream)
        assert (letter.job_id, letter.reason, letter.payload) == (failed, "token revoked", "fail")


async def _is(q: streamq.Queue, job_id: str, expected: str) -> bool:
    return (await q.job(job_id)).state == expected


async def test_rate_limited_defers_without_using_an_attempt(
    redis_url: str, redis: Redis, stream: str
) -> None:
    async with streamq.connect(redis_url) as q:
        job_id = await q.enqueue(stream, "busy", max_attempts=1)
        attempts: list[int] = []

        async def handler(job: Job) -> None:
            attempts.append(job.attempt)
            if len(attempts) < 3:
                raise RateLimited(retry_after=0.1)

        async with Running(Worker(redis, stream, handler, options())):
            await poll(lambda: _is(q, job_id, "done"))
        # max_attempts=1, yet it ran three times: deferrals are not attempts.
        assert attempts == [1, 1, 1]


async def test_a_job_running_past_its_timeout_is_cancelled_and_retried(
    redis_url: str, redis: Redis, stream: str
) -> None:
    async with streamq.connect(redis_url) as q:
        job_id = await q.enqueue(stream, "hang", job_timeout=0.3)
        attempts: list[int] = []

        async def handler(job: Job) -> None:
            attempts.append(job.attempt)
            if job.attempt == 1:
                await anyio.sleep_forever()

        async with Running(Worker(redis, stream, handler, options())) as worker:
            await poll(lambda: _is(q, job_id, "done"))
        assert attempts == [1, 2]
        assert worker.counts.failed == 1


async def test_a_job_too_late_expires_instead_of_running(
    redis_url: str, redis: Redis, stream: str
) -> None:
    async with streamq.connect(redis_url) as q:
        ran: list[str] = []
        # Queued now but already due an hour ago (the fleet "was down"): it must not run.
        past = datetime.now(UTC) - timedelta(hours=1)
        stale = await q.enqueue(stream, "stale", run_at=past, expire_after="10m")
        # Scheduled, promoted late: expired at promotion.
        late = await q.enqueue(stream, "late", delay=0.2, expire_after=0.05)
        fresh = await q.enqueue(stream, "fresh", expire_after="10m")

        async def handler(job: Job) -> None:
            ran.append(job.payload)

        await anyio.sleep(0.5)  # "late" comes due while no worker runs
        async with Running(Worker(redis, stream, handler, options())):
            await poll(lambda: _is(q, fresh, "done"))
            await poll(lambda: _is(q, stale, "expired"))
            await poll(lambda: _is(q, late, "expired"))
        assert ran == ["fresh"]
        [s] = (await q.stats([stream])).streams
        assert s.expired == 2


async def test_cancel_a_scheduled_and_a_queued_job_before_they_start(
    redis_url: str, redis: Redis, stream: str
) -> None:
    async with streamq.connect(redis_url) as q:
        scheduled = await q.enqueue(stream, "scheduled", delay=0.3, key="k1")
        queued = await q.enqueue(stream, "queued")
        kept = await q.enqueue(stream, "kept")
        assert await q.cancel(scheduled) == "cancelled"
        assert await q.cancel(queued) == "cancelled"
        with pytest.raises(InvalidJobState, match="already cancelled"):
            await q.cancel(queued)
        ran: list[str] = []

        async def handler(job: Job) -> None:
            ran.append(job.payload)

        async with Running(Worker(redis, stream, handler, options())):
            await poll(lambda: _is(q, kept, "done"))
            await anyio.sleep(0.5)  # the scheduled one would be due by now
        assert ran == ["kept"]
        assert await state(q, scheduled) == "cancelled"
        # Its key is free again.
        assert await q.enqueue(stream, "again", key="k1") != scheduled


async def test_cancel_a_running_job_flags_it_and_it_is_not_retried(
    redis_url: str, redis: Redis, stream: str
) -> None:
    async with streamq.connect(redis_url) as q:
        job_id = await q.enqueue(stream, "long")
        started = anyio.Event()
        saw_cancel: list[bool] = []

        async def handler(job: Job) -> None:
            started.set()
            with anyio.move_on_after(10):
                while not job.cancelled:  # noqa: ASYNC110 - polling the flag is the API
                    await anyio.sleep(0.01)
            saw_cancel.append(job.cancelled)
            raise RuntimeError("stopped early")  # would normally be retried

        async with Running(Worker(redis, stream, handler, options())):
            await started.wait()
            assert await state(q, job_id) == "active"
            assert await q.cancel(job_id) == "cancelling"
            await poll(lambda: _is(q, job_id, "cancelled"))
        assert saw_cancel == [True]


async def test_a_cancellation_heard_before_its_job_reaches_a_slot_still_reaches_the_handler(
    redis_url: str, redis: Redis, stream: str
) -> None:
    # The control stream can tell a worker about a job it has read but not yet put anywhere
    # cancel_local looks (decoded, or its start on the wire): the worker must remember it.
    async with streamq.connect(redis_url) as q:
        job_id = await q.enqueue(stream, "long")
        saw_cancel: list[bool] = []

        async def handler(job: Job) -> None:
            saw_cancel.append(job.cancelled)
            raise RuntimeError("stopped early")  # would normally be retried

        worker = Worker(redis, stream, handler, options())
        worker.cancel_local(job_id)  # heard while the job was nowhere in this worker
        async with Running(worker):
            await poll(lambda: _is(q, job_id, "cancelled"))
        assert saw_cancel == [True]


async def test_reschedule_and_replace_a_scheduled_post(
    redis_url: str, redis: Redis, stream: str
) -> None:
    async with streamq.connect(redis_url) as q:
        job_id = await q.enqueue(stream, {"text": "draft"}, key="post-7", delay="1h")
        same = await q.enqueue(
            stream, {"text": "edited"}, key="post-7", delay="2h", on_conflict="replace"
        )
        assert same == job_id
        info = await q.job(job_id)
        assert info.payload == {"text": "edited"}
        kept = await q.enqueue(stream, {"text": "ignored"}, key="post-7")
        assert kept == job_id
        assert (await q.job(job_id)).payload == {"text": "edited"}
        ran: list[Any] = []

        async def handler(job: Job) -> None:
            ran.append(job.payload)

        due = await q.reschedule(job_id, delay=0.2)
        assert abs(due - (await q.job(job_id)).run_at_ms) == 0  # type: ignore[operator]
        async with Running(Worker(redis, stream, handler, options())):
            await poll(lambda: _is(q, job_id, "done"))
        assert ran == [{"text": "edited"}]
        with pytest.raises(InvalidJobState, match="only scheduled jobs move"):
            await q.reschedule(job_id, delay=1)


async def test_retry_replay_and_purge_dead_letters(
    redis_url: str, redis: Redis, stream: str
) -> None:
    async with streamq.connect(redis_url) as q:
        first = await q.enqueue(stream, "a")
        second = await q.enqueue(stream, "b")
        await redis.xadd(keys.lane(stream, "normal"), {"foreign": "entry"})
        healthy = False
        runs: list[tuple[str, int]] = []

        async def handler(job: Job) -> None:
            runs.append((job.payload, job.attempt))
            if not healthy:
                raise Fail("platform down")

        async with Running(Worker(redis, stream, handler, options())):
            await poll(lambda: _is(q, second, "dead"))
            await poll(lambda: _is(q, first, "dead"))
            await poll(lambda: _len(q.dead(stream), 3))
            healthy = True
            await q.retry(first)
            await poll(lambda: _is(q, first, "done"))
            replayed, skipped = await streamq.control.replay(q.redis, stream)
            assert (replayed, skipped) == (1, 1)  # the foreign entry cannot be replayed
            await poll(lambda: _is(q, second, "done"))
        assert sorted(runs[-2:]) == [("a", 1), ("b", 1)]
        [foreign] = await q.dead(stream)
        assert foreign.job_id is None
        assert foreign.fields == {"foreign": "entry"}
        assert await q.purge_dead(stream) == 1
        assert await q.dead(stream) == []
        with pytest.raises(InvalidJobState, match="only dead, cancelled or expired"):
            await q.retry(first)
        with pytest.raises(JobNotFound):
            await q.job(f"{stream}:nope")


async def _len(awaitable: Any, expected: int) -> bool:
    return len(await awaitable) == expected


async def test_recurring_job_fires_once_per_occurrence_with_two_workers(
    redis_url: str, redis: Redis, stream: str
) -> None:
    async with streamq.connect(redis_url) as q:
        await q.schedule_recurring("tick", stream, cron="* * * * * *", tz="Europe/Paris", payload=1)
        fired: list[int] = []

        async def handler(job: Job) -> None:
            assert job.run_at is not None
            fired.append(round(job.run_at.timestamp()))

        workers = [Worker(redis, stream, handler, options()) for _ in range(2)]
        async with Running(workers[0]), Running(workers[1]):
            await poll(lambda: len(fired) >= 3, within=15)
        # Every second at most once; consecutive seconds, none skipped.
        assert len(fired) == len(set(fired))
        assert sorted(fired)[:3] == list(range(min(fired), min(fired) + 3))
        [schedule] = await q.recurring(stream)
        assert schedule.name == "tick"
        assert await q.remove_recurring(stream, "tick")
        assert await q.recurring(stream) == []
        assert not await q.remove_recurring(stream, "tick")


async def test_a_per_job_backoff_overrides_the_streams(
    redis_url: str, redis: Redis, stream: str
) -> None:
    async with streamq.connect(redis_url) as q:
        job_id = await q.enqueue(
            stream, "x", max_attempts=2, backoff=Backoff(base=1.5, factor=1, max=1.5, jitter=0)
        )
        starts: list[float] = []

        async def handler(job: Job) -> None:
            starts.append(anyio.current_time())
            raise RuntimeError("again")

        async with Running(Worker(redis, stream, handler, options())):
            await poll(lambda: _is(q, job_id, "dead"))
        # The stream's backoff here is 0.05 s; the job's own 1.5 s applied.
        assert starts[1] - starts[0] >= 1.4


async def test_a_job_released_at_stop_can_still_be_cancelled(
    redis_url: str, redis: Redis, stream: str
) -> None:
    async with streamq.connect(redis_url) as q:
        ids = await q.enqueue_many(stream, ["a", "b", "c"])
        started = anyio.Event()
        release = anyio.Event()

        async def blocking(job: Job) -> None:
            started.set()
            await release.wait()

        worker = Worker(redis, stream, blocking, options(concurrency=1, prefetch=2))
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            await started.wait()
            worker.stop()  # "b" and "c" were fetched but not started: they go back
            await poll(lambda: worker.counts.released == 2)
            release.set()
        assert await q.cancel(ids[2]) == "cancelled"
        ran: list[str] = []

        async def handler(job: Job) -> None:
            ran.append(job.payload)

        await Worker(redis, stream, handler, msgspec.structs.replace(FAST, backoff=QUICK)).run()
        assert ran == ["b"]
        assert await state(q, ids[2]) == "cancelled"


async def test_a_replayed_job_is_due_from_its_replay_not_its_enqueue(
    redis_url: str, redis: Redis, stream: str
) -> None:
    async with streamq.connect(redis_url) as q:
        # 3 s: a run later than that after its replay would expire it rightly (a loaded
        # cluster in CI once took over 1 s from the replay to the run).
        job_id = await q.enqueue(stream, "x", expire_after=3.0)
        healthy = False

        async def handler(job: Job) -> None:
            if not healthy:
                raise Fail("down")

        async with Running(Worker(redis, stream, handler, options())):
            await poll(lambda: _is(q, job_id, "dead"))
            await anyio.sleep(3.2)  # its enqueue longer ago than expire_after
            healthy = True
            assert await q.replay(stream) == 1
            await poll(lambda: _is(q, job_id, "done"))


async def test_a_reclaimed_job_cancelled_meanwhile_does_not_run(
    redis_url: str, redis: Redis, stream: str
) -> None:
    async with streamq.connect(redis_url) as q:
        job_id = await q.enqueue(stream, "x")
        lane = keys.lane(stream, "normal")
        await redis.xgroup_create(lane, keys.GROUP, id="0", mkstream=True)
        await redis.xreadgroup(keys.GROUP, "crashed", {lane: ">"})  # delivered, then it died
        assert await q.cancel(job_id) == "cancelling"
        ran: list[str] = []

        async def handler(job: Job) -> None:
            ran.append(job.id)

        async with Running(Worker(redis, stream, handler, options())):
            await poll(lambda: _is(q, job_id, "cancelled"))
        assert ran == []


async def test_a_stale_retry_cannot_reopen_a_finished_job(
    redis_url: str, redis: Redis, stream: str
) -> None:
    """A stalled worker's late 'retry' for an entry another worker already finished."""
    async with streamq.connect(redis_url) as q:
        job_id = await q.enqueue(stream, "x")
        lane = keys.lane(stream, "normal")
        [(entry_id, _)] = await entries(redis, lane)

        async def handler(job: Job) -> None:
            return None

        await Worker(redis, stream, handler, msgspec.structs.replace(FAST, backoff=QUICK)).run()
        assert await state(q, job_id) == "done"
        stale = codec.Retried(job_id, "", 2, 0, '{"id":"x"}', 50, "late", "", 2, entry_id.decode())
        await finish_late(redis, stream, job_id, entry_id, stale)
        assert await state(q, job_id) == "done"
        assert await redis.zcard(keys.delayed(stream)) == 0


async def test_a_retry_for_an_entry_the_server_forgot_delivering_keeps_the_job(
    redis_url: str, redis: Redis, stream: str
) -> None:
    """A server restarted from an AOF that lacks a delivery (everysec lost its last writes)
    holds the entry undelivered; the worker that ran it sends its 'retry' after the restart.
    The outcome is stale, and the entry must stay for its next reader, not be deleted."""
    async with streamq.connect(redis_url) as q:
        job_id = await q.enqueue(stream, "x")
        lane = keys.lane(stream, "normal")
        [(entry_id, _)] = await entries(redis, lane)
        await redis.xgroup_create(lane, keys.GROUP, id="0", mkstream=True)
        await redis.xreadgroup(keys.GROUP, "before-restart", {lane: ">"})
        # What the restarted server holds: the entry, neither pending nor delivered.
        await redis.xack(lane, keys.GROUP, entry_id)
        await redis.xgroup_setid(lane, keys.GROUP, "0")
        late = codec.Retried(job_id, "", 2, 0, '{"id":"x"}', 50, "failed", "", 2, entry_id.decode())
        await finish_late(redis, stream, job_id, entry_id, late)
        assert [e for e, _ in await entries(redis, lane)] == [entry_id]
        ran: list[str] = []

        async def handler(job: Job) -> None:
            ran.append(job.id)

        await Worker(redis, stream, handler, msgspec.structs.replace(FAST, backoff=QUICK)).run()
        assert ran == [job_id]
        assert await state(q, job_id) == "done"


async def test_replace_refuses_a_job_that_is_no_longer_scheduled(
    redis_url: str, stream: str
) -> None:
    async with streamq.connect(redis_url) as q:
        job_id = await q.enqueue(stream, {"text": "now"}, key="post-9")
        with pytest.raises(InvalidJobState, match="no longer scheduled"):
            await q.enqueue(stream, {"text": "edit"}, key="post-9", on_conflict="replace")
        assert (await q.job(job_id)).payload == {"text": "now"}


async def test_reschedule_never_writes_back_an_envelope_that_changed_meanwhile(
    redis_url: str, redis: Redis, stream: str
) -> None:
    async with streamq.connect(redis_url) as q:
        job_id = await q.enqueue(stream, {"text": "v1"}, key="k", delay="1h")
        record = keys.job(stream, job_id)
        read_before = await redis.hget(record, "env")
        assert read_before is not None
        await q.enqueue(stream, {"text": "v2"}, key="k", delay="1h", on_conflict="replace")
        # Writing the envelope read before the replace would bring back v1: refused.
        with pytest.raises(RecordChanged):
            await streamq.scripts.reschedule_job(
                redis, job_id, due_ms=1, envelope=b"stale", read=read_before
            )
        assert (await q.job(job_id)).payload == {"text": "v2"}
        await q.reschedule(job_id, delay="2h")  # the real call reads again and succeeds
        assert (await q.job(job_id)).payload == {"text": "v2"}


async def test_purge_finished_deletes_finished_records_and_keeps_live_and_dead_ones(
    redis_url: str, redis: Redis, stream: str
) -> None:
    async with streamq.connect(redis_url) as q:
        done = await q.enqueue(stream, "ok")
        dead = await q.enqueue(stream, "fail")
        cancelled = await q.enqueue(stream, "later", delay=3600)
        assert await q.cancel(cancelled) == "cancelled"

        async def handler(job: Job) -> None:
            if job.payload == "fail":
                raise Fail("platform down")

        await Worker(redis, stream, handler, FAST).run()
        scheduled = await q.enqueue(stream, "still to run", delay=3600)
        assert [await state(q, j) for j in (done, dead)] == ["done", "dead"]

        assert await streamq.control.purge_finished(redis, stream, older_than=3600) == 0
        await redis.script_flush()  # the script is loaded again on NOSCRIPT
        assert await streamq.control.purge_finished(redis, stream) == 2
        for gone in (done, cancelled):
            with pytest.raises(JobNotFound):
                await q.job(gone)
        assert await state(q, dead) == "dead"  # job retry ID still works on dead jobs
        assert await state(q, scheduled) == "scheduled"
        assert await streamq.control.purge_finished(redis, stream, states=("dead",)) == 1
        assert await state(q, scheduled) == "scheduled"
        with pytest.raises(ConfigError, match="cannot purge jobs in state"):
            await streamq.control.purge_finished(redis, stream, states=("scheduled",))


async def test_dead_letters_come_in_pages(redis: Redis, stream: str) -> None:
    for n in range(5):
        await redis.xadd(keys.dead(stream), {"n": str(n), "_reason": "foreign"})
    first = await streamq.control.dead_letters(redis, stream, count=2)
    second = await streamq.control.dead_letters(redis, stream, 2, after=first[-1].entry_id)
    rest = await streamq.control.dead_letters(redis, stream, 2, after=second[-1].entry_id)
    assert [d.fields["n"] for d in first + second + rest] == ["0", "1", "2", "3", "4"]

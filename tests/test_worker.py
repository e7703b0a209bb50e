from __future__ import annotations

import inspect
import itertools
import logging
from typing import Any

import anyio
import msgspec
import pytest
from redis.asyncio import Redis

from streamq import keys, scripts, stats
from streamq.config import Backoff
from streamq.connection import Retrying, retry_delay
from streamq.job import Job
from streamq.producer import Producer
from streamq.worker import Worker, WorkerOptions
from tests.conftest import entries

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]

FAST = WorkerOptions(burst=True, visibility_timeout=1.0, block_seconds=0.2, grace=5.0)


def options(**changes: Any) -> WorkerOptions:
    return msgspec.structs.replace(FAST, **changes)


async def poll(condition: Any, within: float = 10.0, every: float = 0.02) -> None:
    """Wait until ``condition()`` (or its awaited result) is true; fail after ``within`` s."""
    with anyio.fail_after(within):
        while True:
            result = condition()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            await anyio.sleep(every)


async def test_burst_worker_runs_every_job_once_and_leaves_streams_empty(
    redis: Redis, stream: str
) -> None:
    ids = await Producer(redis).enqueue_many(stream, [{"n": i} for i in range(500)])
    seen: list[Job] = []

    async def handler(job: Job) -> None:
        seen.append(job)

    counts = await Worker(redis, stream, handler, FAST).run()
    assert counts.completed == 500
    assert sorted(j.id for j in seen) == sorted(ids)
    job = next(j for j in seen if j.payload == {"n": 7})
    assert (job.stream, job.attempt, job.priority) == (stream, 1, "normal")
    assert job.enqueued_at.year >= 2024
    for lane in keys.lanes(stream):
        assert await redis.xlen(lane) == 0
        assert (await redis.xpending(lane, keys.GROUP))["pending"] == 0


async def test_keys_left_behind_after_a_workload(redis: Redis, stream: str) -> None:
    producer = Producer(redis)
    await producer.enqueue_many(stream, [1, 2, 3], keys=["a", "b", None])

    async def handler(job: Job) -> None:
        return None

    ids = await producer.enqueue_many(stream, [4])
    await Worker(redis, stream, handler, options(retention=3600.0)).run()
    left = {k.decode() async for k in redis.scan_iter(match=f"*{{{stream}}}*")}
    records = {k for k in left if ":job:" in k}
    # Empty lanes keep their consumer group, dedup keys are freed, finished records expire
    # after the retention period, and the counters, the settings and the capped events stay,
    # and so does the liveness hash with only the server's epoch in it (a worker that stops
    # cleanly removes its own fields).
    # The health signals expire by themselves: the counts samples within the hour, the
    # lateness summaries in 10 minutes.
    stays = {keys.counts(stream), keys.meta(stream), keys.events(stream), keys.liveness(stream)}
    signals = {keys.samples(stream), keys.lateness(stream)}
    # The dashboard's series: a key per minute a worker reported in, gone after 25 h (this
    # short run reports at most once or twice: it may stop before, or straddle a minute's end).
    minutes = {k for k in left if k.startswith(keys.stream_prefix(stream) + ":series:")}
    assert len(minutes) <= 2
    for minute in minutes:
        assert 24 * 3600 < await redis.ttl(minute) <= 25 * 3600
    # The listing's index of done jobs lives as long as the records it points to.
    finished = keys.finished(stream, "done")
    assert left - records - minutes == {*keys.lanes(stream), *stays, *signals, finished}
    assert 3000 < await redis.ttl(finished) <= 3600
    assert await redis.xlen(keys.events(stream)) == 4 * 2  # queued, done (with its started_at)
    assert 0 < await redis.ttl(keys.samples(stream)) <= 3600
    assert 0 < await redis.ttl(keys.lateness(stream)) <= 600
    assert len(records) == 4
    assert keys.job(stream, ids[0]) in records
    for key in records:
        assert 3000 < await redis.ttl(key) <= 3600
    for lane in keys.lanes(stream):
        assert await redis.ttl(lane) == -1
    assert await redis.hget(keys.counts(stream), "done") == b"4"
    liveness: Any = await redis.hkeys(keys.liveness(stream))
    assert sorted(liveness) == [b"epoch:beat", b"epoch:run", b"epoch:since"]
    # A finished job's key is free again.
    assert await producer.enqueue(stream, 9, key="a") not in {None, ""}
    assert await redis.xlen(keys.lane(stream, "normal")) == 1


async def test_higher_lanes_are_served_first(redis: Redis, stream: str) -> None:
    producer = Producer(redis)
    await producer.enqueue_many(stream, [f"low{i}" for i in range(5)], priority="low")
    await producer.enqueue_many(stream, [f"normal{i}" for i in range(5)])
    await producer.enqueue_many(stream, [f"high{i}" for i in range(5)], priority="high")
    order: list[str] = []

    async def handler(job: Job) -> None:
        order.append(job.payload)

    await Worker(redis, stream, handler, options(concurrency=1, prefetch=0)).run()
    assert order == [f"{lane}{i}" for lane in ("high", "normal", "low") for i in range(5)]


async def test_a_lower_lane_runs_while_higher_lanes_are_empty(redis: Redis, stream: str) -> None:
    await Producer(redis).enqueue_many(stream, ["a", "b"], priority="low")
    ran: list[str] = []

    async def handler(job: Job) -> None:
        ran.append(job.payload)

    await Worker(redis, stream, handler, FAST).run()
    assert sorted(ran) == ["a", "b"]


async def test_a_batch_mixes_lanes_in_priority_order(redis: Redis, stream: str) -> None:
    producer = Producer(redis)
    await producer.enqueue_many(stream, ["l1", "l2"], priority="low")
    await producer.enqueue_many(stream, ["h1"], priority="high")
    order: list[str] = []

    async def handler(job: Job) -> None:
        order.append(job.payload)

    await Worker(redis, stream, handler, options(concurrency=1, prefetch=10)).run()
    assert order == ["h1", "l1", "l2"]


async def test_foreign_and_undecodable_entries_go_to_dead_letters(
    redis: Redis, stream: str
) -> None:
    lane = keys.lane(stream, "normal")
    await redis.xadd(lane, {"text": "from another app"})
    await redis.xadd(lane, {"j": b"\xff\xfe not json"})
    await Producer(redis).enqueue(stream, {"ok": True})
    ran: list[Any] = []

    async def handler(job: Job) -> None:
        ran.append(job.payload)

    counts = await Worker(redis, stream, handler, FAST).run()
    assert ran == [{"ok": True}]
    assert counts.dead_lettered == 2
    dead = await entries(redis, keys.dead(stream))
    assert dead[0][1][b"text"] == b"from another app"
    assert b"foreign entry" in dead[0][1][b"_reason"]
    assert dead[1][1][b"j"] == b"\xff\xfe not json"  # bytes kept exactly
    assert b"undecodable" in dead[1][1][b"_reason"]
    assert dead[1][1][b"_source"] == lane.encode()
    assert await redis.xlen(lane) == 0


async def test_entries_of_a_crashed_consumer_are_reclaimed(redis: Redis, stream: str) -> None:
    ids = await Producer(redis).enqueue_many(stream, list(range(10)))
    lane = keys.lane(stream, "normal")
    await redis.xgroup_create(lane, keys.GROUP, id="0", mkstream=True)
    # A consumer takes every entry and dies without acknowledging.
    await redis.xreadgroup(keys.GROUP, "ghost", {lane: ">"}, count=100)
    seen: list[str] = []

    async def handler(job: Job) -> None:
        seen.append(job.id)

    worker = Worker(redis, stream, handler, options(burst=False))
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        await poll(lambda: len(seen) == 10)
        worker.stop()
    assert sorted(seen) == sorted(ids)
    assert worker.counts.reclaimed == 10
    assert await redis.xlen(lane) == 0


async def test_crash_loops_end_in_dead_letters_after_max_deliveries(
    redis: Redis, stream: str
) -> None:
    job_id = await Producer(redis).enqueue(stream, "poison", key="k1")
    lane = keys.lane(stream, "normal")
    await redis.xgroup_create(lane, keys.GROUP, id="0", mkstream=True)
    [(entry_id, _)] = await entries(redis, lane)
    await redis.xreadgroup(keys.GROUP, "ghost", {lane: ">"})
    await scripts.start_jobs(redis, stream, [job_id], [entry_id])
    for _ in range(2):  # two more runs in crashing consumers: three so far
        await redis.xclaim(lane, keys.GROUP, "ghost", 0, [entry_id])
        await scripts.start_jobs(redis, stream, [job_id], [entry_id])
    ran: list[str] = []

    async def handler(job: Job) -> None:
        ran.append(job.id)

    worker = Worker(redis, stream, handler, options(burst=False, max_deliveries=3))
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        await poll(lambda: worker.counts.dead_lettered == 1)
        worker.stop()
    assert ran == []
    [(_, fields)] = await entries(redis, keys.dead(stream))
    assert b"ran 3 times without finishing" in fields[b"_reason"]
    assert job_id.encode() in fields[b"j"]
    assert await redis.hget(keys.dedup(stream), "k1") is None


async def test_a_failing_handler_is_retried_with_backoff_then_dead_lettered(
    redis: Redis, stream: str
) -> None:
    job_id = await Producer(redis).enqueue(stream, "always fails", key="k")
    attempts: list[int] = []

    async def handler(job: Job) -> None:
        attempts.append(job.attempt)
        raise RuntimeError("platform said no")

    policy = options(max_attempts=3, backoff=Backoff(base=0.05, factor=2, max=1, jitter=0))
    worker = Worker(redis, stream, handler, msgspec.structs.replace(policy, burst=False))
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        await poll(lambda: worker.counts.dead_lettered == 1, within=15)
        worker.stop()
    assert attempts == [1, 2, 3]
    assert worker.counts.failed == 3
    [(_, fields)] = await entries(redis, keys.dead(stream))
    assert fields[b"_reason"] == b"gave up after 3 attempts: RuntimeError: platform said no"
    record = await redis.hgetall(keys.job(stream, job_id))
    assert record[b"state"] == b"dead"
    assert await redis.hget(keys.dedup(stream), "k") is None


async def test_a_long_job_keeps_its_claim(redis: Redis, stream: str) -> None:
    await Producer(redis).enqueue(stream, "long")
    runs: list[str] = []
    release = anyio.Event()

    async def slow(job: Job) -> None:
        runs.append("slow")
        await release.wait()

    async def other(job: Job) -> None:
        runs.append("other")

    first = Worker(redis, stream, slow, options(burst=False, visibility_timeout=1.0))
    second = Worker(redis, stream, other, options(burst=False, visibility_timeout=1.0))
    async with anyio.create_task_group() as tg:
        tg.start_soon(first.run)
        await poll(lambda: runs == ["slow"])
        tg.start_soon(second.run)
        # Three visibility timeouts pass while the job runs; the second worker reclaims every
        # 0.25 s and would take the entry if the first worker did not keep its claim fresh.
        await anyio.sleep(3.0)
        release.set()
        await poll(lambda: first.counts.completed == 1)
        first.stop()
        second.stop()
    assert runs == ["slow"]
    assert second.counts.reclaimed == 0


async def test_stop_finishes_running_jobs_and_releases_unstarted_ones(
    redis: Redis, stream: str
) -> None:
    await Producer(redis).enqueue_many(stream, list(range(6)))
    started: list[int] = []
    release = anyio.Event()

    async def handler(job: Job) -> None:
        started.append(job.payload)
        await release.wait()

    worker = Worker(redis, stream, handler, options(burst=False, concurrency=2, prefetch=4))
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        await poll(lambda: len(started) == 2)
        worker.stop()
        await anyio.sleep(0.1)
        release.set()
    assert worker.counts.completed == 2
    assert worker.counts.released == 4
    lane = keys.lane(stream, "normal")
    assert await redis.xlen(lane) == 4
    assert (await redis.xpending(lane, keys.GROUP))["pending"] == 0  # all free for others


async def test_jobs_still_running_after_grace_stay_pending(redis: Redis, stream: str) -> None:
    await Producer(redis).enqueue(stream, "stuck")
    started = anyio.Event()

    async def handler(job: Job) -> None:
        started.set()
        await anyio.sleep_forever()

    worker = Worker(redis, stream, handler, options(burst=False, grace=0.3))
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        await started.wait()
        worker.stop()
    lane = keys.lane(stream, "normal")
    pending = await redis.xpending(lane, keys.GROUP)
    assert pending["pending"] == 1
    assert pending["consumers"][0]["name"] == worker.consumer.encode()


async def test_stats_count_depth_pending_waiting_and_consumers(redis: Redis, stream: str) -> None:
    producer = Producer(redis)
    await producer.enqueue_many(stream, list(range(10)))
    await producer.enqueue_many(stream, list(range(3)), priority="high")
    started = anyio.Event()
    hold = anyio.Event()

    async def handler(job: Job) -> None:
        started.set()
        await hold.wait()

    worker = Worker(redis, stream, handler, options(burst=False, concurrency=2, prefetch=0))
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        await started.wait()
        await poll(lambda: worker.claimed == 2)
        snap = await stats.snapshot(redis, [stream])
        [s] = snap.streams
        assert (s.depth, s.pending, s.waiting, s.lag, s.length) == (13, 2, 11, 11, 13)
        assert s.consumers == 1
        assert s.oldest_pending_age_s is not None
        assert s.oldest_pending_age_s >= 0
        assert [lane.pending for lane in s.lanes] == [2, 0, 0]
        assert s.keys["dead"] == keys.dead(stream)
        hold.set()
        await poll(lambda: _depth(redis, stream, 0))
        worker.stop()
    # Acknowledged entries were deleted, and the figures stay right after a trim.
    await producer.enqueue_many(stream, list(range(4)))
    await redis.xtrim(keys.lane(stream, "normal"), maxlen=1, approximate=False)
    [s] = (await stats.snapshot(redis, [stream])).streams
    assert (s.depth, s.pending, s.waiting, s.consumers) == (1, 0, 1, 0)
    data = stats.to_json(await stats.snapshot(redis, [stream]))
    assert b'"depth":1' in data
    assert b'"format":1' in data


async def _depth(redis: Redis, stream: str, expected: int) -> bool:
    [s] = (await stats.snapshot(redis, [stream])).streams
    return s.depth == expected


async def test_read_ahead_grows_for_fast_jobs_and_stays_small_for_slow_ones(
    redis: Redis, stream: str
) -> None:
    producer = Producer(redis)
    await producer.enqueue_many(stream, list(range(5_000)))

    async def fast(job: Job) -> None:
        return None

    fast_worker = Worker(redis, stream, fast, options(concurrency=4))
    await fast_worker.run()
    assert fast_worker.prefetch > 4  # consumers starved between full reads: it grew

    await producer.enqueue_many(stream, list(range(40)))
    most_held = 0

    async def slow(job: Job) -> None:
        nonlocal most_held
        most_held = max(most_held, slow_worker.claimed)
        await anyio.sleep(0.02)

    slow_worker = Worker(redis, stream, slow, options(concurrency=4))
    await slow_worker.run()
    assert most_held <= 8  # concurrency + a read-ahead of concurrency: no hoarding
    assert slow_worker.counts.completed == 40


async def test_a_high_job_fetched_later_overtakes_buffered_normal_ones(
    redis: Redis, stream: str
) -> None:
    producer = Producer(redis)
    await producer.enqueue_many(stream, [f"n{i}" for i in range(5)])
    order: list[str] = []

    async def handler(job: Job) -> None:
        order.append(job.payload)
        if job.payload == "n0":
            await producer.enqueue(stream, "h", priority="high")
            await poll(lambda: worker.claimed == 6)  # the fetcher has picked it up

    worker = Worker(redis, stream, handler, options(concurrency=1, prefetch=10))
    await worker.run()
    assert order == ["n0", "h", "n1", "n2", "n3", "n4"]


async def test_a_worker_survives_its_lanes_being_deleted(redis: Redis, stream: str) -> None:
    ran: list[Any] = []

    async def handler(job: Job) -> None:
        ran.append(job.payload)

    worker = Worker(redis, stream, handler, options(burst=False, block_seconds=1.0))
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        await Producer(redis).enqueue(stream, "before")
        await poll(lambda: ran == ["before"])
        await redis.delete(*keys.lanes(stream))  # groups gone, a blocked read interrupted
        await anyio.sleep(0.2)
        await Producer(redis).enqueue(stream, "after")
        await poll(lambda: ran == ["before", "after"])
        worker.stop()


async def test_a_failing_call_the_worker_must_finish_backs_off_between_tries() -> None:
    """An acknowledgement is retried until the server answers, but never in a busy loop.
    (No server: the call never reaches one, so the test runs once per event loop only.)"""
    retrying = Retrying(logging.getLogger("streamq.worker"), anyio.Event())
    tried: list[float] = []

    async def unreachable() -> None:
        tried.append(anyio.current_time())
        raise ConnectionError("server restarting")

    await retrying("ack", unreachable, attempts=4)
    gaps = [later - earlier for earlier, later in itertools.pairwise(tried)]
    assert len(tried) == 4
    assert all(gap >= retry_delay(n) * 0.9 for n, gap in enumerate(gaps, 1)), gaps


async def test_a_start_still_queued_at_its_outcome_goes_with_the_outcome(
    redis: Redis, stream: str
) -> None:
    """streamq.starts: a job that finishes while its start is still queued (a call was on the
    wire) has the start folded into its outcome's finish_jobs call, and start_jobs is not sent
    for it; a start sent first counts the run as before."""
    from streamq import acks, codec, outcomes, starts

    await Producer(redis).enqueue_many(stream, [{"n": 1}, {"n": 2}])
    for lane in keys.lanes(stream):
        await redis.xgroup_create(lane, keys.GROUP, id="0", mkstream=True)
    reply: Any = await redis.xreadgroup(keys.GROUP, "c1", {keys.lane(stream, "normal"): ">"})
    folded, sent = (
        Job(stream, "normal", *codec.decode_entry(fields)[:1], 1, entry, _raw=fields[b"j"])
        for entry, fields in reply[0][1]
    )

    async def retrying(what: str, call: Any) -> Any:
        return await call()

    async def recorded(batch: Any) -> None:
        pass

    queue = starts.Starts(redis, stream, retrying)
    await queue.start(folded)
    await queue.start(sent)
    calls: list[str] = []

    async def on_command(what: str, call: Any) -> Any:
        calls.append(what)
        return await call()

    queue._retrying = on_command
    batcher = acks.AckBatcher(
        redis, stream, consumer="c1", retention_ms=60_000,
        retrying=Retrying(logging.getLogger("test"), anyio.Event()), on_recorded=recorded,
    )  # fmt: skip
    # The start of `sent` goes on the wire before its outcome; `folded`'s outcome goes first.
    sent._start_queued = False
    await scripts.start_jobs(redis, stream, [sent.id], [sent._entry])
    assert await redis.hget(keys.job(stream, sent.id), "runs") == b"1"
    for job in (folded, sent):
        batcher.finish(job, outcomes.done(job, 5, None))
    batch, batcher.finished = batcher.finished, []
    await batcher._record_batch(batch, anyio.Semaphore(0))
    await queue.flush()
    assert calls == []  # nothing left to send: the one start queued went with its outcome
    assert not folded._start_queued
    for job in (folded, sent):
        record: Any = await redis.hgetall(keys.job(stream, job.id))
        assert record[b"state"] == b"done"
        assert codec.record_envelope(record[b"env"], job.id) == job.envelope
        # A done record has no use for the run count: the folded start wrote none, and the
        # one counted before is dropped (finish_jobs), so every done record has one shape.
        assert b"runs" not in record
        assert b"run_entry" not in record


async def test_an_entry_with_a_field_of_bytes_not_utf8_it_does_not_know_runs_and_is_recorded(
    redis: Redis, stream: str
) -> None:
    """Unknown fields are skipped, not validated (codec.Envelope), so an entry whose unknown
    field holds bytes that are not UTF-8 (another writer's) runs; its outcome must still be
    recorded. The worker sends a done job's envelope as text (codec.stored_envelope): one it
    cannot send so is left to finish_jobs to read from the entry, as before that change."""
    from streamq import codec
    from streamq.control import job_info

    job_id = codec.new_job_id(stream)
    raw = b'{"id":"%s","t":%d,"payload":{"n":1},"zz":"\xff"}' % (
        job_id.encode(),
        codec.now_ms(),
    )
    entry = await redis.xadd(keys.lane(stream, "normal"), {"j": raw})
    await redis.hset(keys.job(stream, job_id), mapping={"state": "queued", "entry": entry})
    ran: list[Any] = []

    async def handler(job: Job) -> None:
        ran.append(job.payload)

    counts = await Worker(redis, stream, handler, FAST).run()
    assert ran == [{"n": 1}]
    assert counts.completed == 1
    assert await redis.xlen(keys.lane(stream, "normal")) == 0
    info = await job_info(redis, job_id)
    assert (info.state, info.payload) == ("done", {"n": 1})


async def test_a_result_json_cannot_hold_ends_done_with_a_note_and_the_worker_goes_on(
    redis: Redis, stream: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The handler ran (a post may be out), so its job is done, never run again; the result
    it returned, which JSON cannot hold (a list holding itself), is recorded as a note, and
    the worker goes on to the next job."""
    from streamq.control import job_info

    first, second = await Producer(redis).enqueue_many(stream, [1, 2])
    ran: list[Any] = []

    async def handler(job: Job) -> Any:
        ran.append(job.payload)
        if job.payload == 1:
            loop: list[Any] = []
            loop.append(loop)
            return loop
        return "fine"

    counts = await Worker(redis, stream, handler, FAST).run()
    assert sorted(ran) == [1, 2]
    assert counts.completed == 2
    info = await job_info(redis, first)
    assert info.state == "done"
    assert info.result == {"unrecorded": "the handler's result is not JSON: RecursionError"}
    assert (await job_info(redis, second)).result == "fine"
    assert "result is not JSON" in caplog.text

"""Publish once, the engine's part (issue 29): checkpoints and the "may have been sent" mark in
the job's record, the verify run before a job whose post may exist is recorded dead, and a
delivery budget that counts runs, not holdings. Handlers here stand in for publishers: the
"platform" is a list of the posts they made."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import msgspec
import pytest
from redis.asyncio import Redis

from streamq import codec, control, keys, scripts
from streamq.config import Backoff
from streamq.errors import Fail, NotPublished, RateLimited
from streamq.job import Job
from streamq.outcomes import VERIFY_RUNS
from streamq.producer import JobOptions, Producer
from streamq.worker import Worker, WorkerOptions
from tests.conftest import entries
from tests.test_worker import poll

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]

FAST = WorkerOptions(
    burst=True,
    visibility_timeout=1.0,
    block_seconds=0.2,
    grace=5.0,
    backoff=Backoff(base=0.05, factor=1, max=0.05, jitter=0),
)


def options(**changes: Any) -> WorkerOptions:
    return msgspec.structs.replace(FAST, **changes)


async def run_until(worker: Worker, condition: Any, within: float = 15.0) -> None:
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(worker.run)
        await poll(condition, within)
        worker.stop()


async def record(redis: Redis, stream: str, job_id: str) -> dict[str, str]:
    raw: Any = await redis.hgetall(keys.job(stream, job_id))
    return {k.decode(): v.decode() for k, v in raw.items()}


async def test_checkpoints_and_the_mark_survive_a_retry(redis: Redis, stream: str) -> None:
    job_id = await Producer(redis).enqueue(stream, {"text": "two steps"})
    seen: list[tuple[int, dict[str, str], int | None]] = []

    async def handler(job: Job) -> str:
        seen.append((job.attempt, dict(job.checkpoints), job.sent_since_ms))
        if "container" not in job.checkpoints:
            await job.checkpoint("container", "c-1")
            assert job.checkpoints == {"container": "c-1"}
            await job.may_send()
            raise RuntimeError("the publish step timed out")
        return job.checkpoints["container"]

    worker = Worker(redis, stream, handler, options(burst=False, max_attempts=3))
    await run_until(worker, lambda: worker.counts.completed == 1)
    assert [(attempt, saved) for attempt, saved, _ in seen] == [(1, {}), (2, {"container": "c-1"})]
    assert seen[0][2] is None
    assert seen[1][2] is not None
    assert seen[1][2] > 0
    kept = await record(redis, stream, job_id)
    assert kept["state"] == "done"
    assert msgspec.json.decode(kept["checkpoints"]) == {"container": "c-1"}
    assert int(kept["sent_since"]) == seen[1][2]


class Platform:
    """A stand-in for a platform without idempotency markers, and its publisher: a send posts
    (and may time out after the post was taken); a lookup lists the posts since a time."""

    def __init__(self, *, lookups_fail: int = 0, answer_lost: bool = True) -> None:
        self.posts: list[str] = []
        self.lookups: list[bool] = []
        """One per lookup: whether it ran on a verify run."""
        self.lookups_fail = lookups_fail
        self.answer_lost = answer_lost

    async def publish(self, job: Job) -> dict[str, Any]:
        if job.sent_since_ms is not None:  # an earlier run may have posted: look first
            self.lookups.append(job.verify_only)
            if self.lookups_fail:
                self.lookups_fail -= 1
                raise RuntimeError("listing unavailable")
            if job.id in self.posts:
                return {"post_id": f"p{self.posts.index(job.id)}", "found": True}
            if job.verify_only:
                raise NotPublished()
        assert not job.verify_only, "a verify run must not send"
        await job.may_send()
        self.posts.append(job.id)
        if self.answer_lost:
            self.answer_lost = False
            raise RuntimeError("timed out after the post was taken")
        return {"post_id": f"p{len(self.posts) - 1}"}


@pytest.mark.parametrize("revive", ["dead replay", "job retry"])
async def test_replaying_a_dead_job_whose_post_may_exist_does_not_post_again(
    redis: Redis, stream: str, revive: str
) -> None:
    # The replay hole: max_attempts = 1, the request timed out after the post was taken, and
    # the verify runs' lookups failed too: the job is dead, saying its post may exist. A replay
    # resets the attempts, but not the mark: the replayed run looks first, and finds it.
    platform = Platform(lookups_fail=VERIFY_RUNS)
    job_id = await Producer(redis).enqueue(stream, {"text": "hello"})
    worker = Worker(redis, stream, platform.publish, options(burst=False, max_attempts=1))
    await run_until(worker, lambda: worker.counts.dead_lettered == 1)
    dead = await record(redis, stream, job_id)
    assert dead["state"] == "dead"
    assert dead["error"] == (
        "gave up after 1 attempts: RuntimeError: timed out after the post was taken; a post "
        "may exist: its lookup failed (RuntimeError: listing unavailable)"
    )
    assert platform.lookups == [True] * VERIFY_RUNS
    if revive == "dead replay":
        assert await control.replay(redis, stream) == (1, 0)
    else:
        await control.retry(redis, job_id)
    worker = Worker(redis, stream, platform.publish, options(max_attempts=1))
    await worker.run()
    assert platform.posts == [job_id]
    assert platform.lookups == [True] * VERIFY_RUNS + [False]
    done = await record(redis, stream, job_id)
    assert (done["state"], done["attempt"]) == ("done", "1")
    assert msgspec.json.decode(done["result"]) == {"post_id": "p0", "found": True}


async def test_a_verify_run_that_finds_the_post_records_the_job_done_not_dead(
    redis: Redis, stream: str
) -> None:
    platform = Platform()
    job_id = await Producer(redis).enqueue(stream, {"text": "hello"})
    worker = Worker(redis, stream, platform.publish, options(burst=False, max_attempts=1))
    await run_until(worker, lambda: worker.counts.completed == 1)
    assert worker.counts.dead_lettered == 0
    assert platform.posts == [job_id]
    assert platform.lookups == [True]
    done = await record(redis, stream, job_id)
    assert done["state"] == "done"
    assert msgspec.json.decode(done["result"]) == {
        "post_id": "p0",
        "found": True,
        "recovered": True,
    }
    assert await redis.xlen(keys.dead(stream)) == 0


@pytest.mark.parametrize("fails", [1, VERIFY_RUNS - 1])
async def test_a_verify_run_whose_lookup_fails_looks_again_not_dead_beside_its_post(
    redis: Redis, stream: str, fails: int
) -> None:
    # max_attempts = 1 and the answer lost after the post was taken: a verify run. Its lookup
    # fails without an answer (a 5xx, a timeout of the status or listing request): that says
    # nothing of the post, so the job looks again rather than end dead beside its post.
    platform = Platform(lookups_fail=fails)
    job_id = await Producer(redis).enqueue(stream, {"text": "hello"})
    worker = Worker(redis, stream, platform.publish, options(burst=False, max_attempts=1))
    await run_until(worker, lambda: worker.counts.completed + worker.counts.dead_lettered == 1)
    assert worker.counts.dead_lettered == 0
    assert platform.posts == [job_id]
    assert platform.lookups == [True] * (fails + 1)
    done = await record(redis, stream, job_id)
    assert done["state"] == "done"
    assert msgspec.json.decode(done["result"])["recovered"] is True


async def ghost_runs(
    redis: Redis, stream: str, job_id: str, deliveries: int, *, runs: int, may_send: bool
) -> None:
    """Deliver the job's entry ``deliveries`` times to consumers that die, the first ``runs``
    of them after its handler started (the first of those marking "may have been sent"), then
    leave it idle long enough for any worker to reclaim it."""
    lane = keys.lane(stream, "normal")
    for name in keys.lanes(stream):
        await redis.xgroup_create(name, keys.GROUP, id="0", mkstream=True)
    await redis.xreadgroup(keys.GROUP, "ghost-0", {lane: ">"})
    [(entry_id, _)] = await entries(redis, lane)
    for delivery in range(deliveries):
        if delivery:
            await redis.xclaim(lane, keys.GROUP, f"ghost-{delivery}", 0, [entry_id])
        if delivery < runs:
            await scripts.start_jobs(redis, stream, [job_id], [entry_id])
            if may_send and delivery == 0:
                await scripts.mark_sent(redis, job_id, sent=True)
    # Idle for a minute, without counting another delivery (JUSTID).
    await redis.xclaim(lane, keys.GROUP, "ghost", 0, [entry_id], idle=60_000, justid=True)


@pytest.mark.parametrize("landed", [True, False])
async def test_a_job_whose_workers_died_after_it_may_have_posted_is_looked_up_not_dead(
    redis: Redis, stream: str, landed: bool
) -> None:
    # Its first run marked "may have been sent" (and posted, or not), then it and two more
    # runs died with their workers: the delivery budget (3) is spent. It is not recorded dead
    # without a lookup: one verify run decides.
    platform = Platform()
    job_id = await Producer(redis).enqueue(stream, {"text": "hello"})
    await ghost_runs(redis, stream, job_id, 3, runs=3, may_send=True)
    if landed:
        platform.posts.append(job_id)
    worker = Worker(redis, stream, platform.publish, options(burst=False, max_deliveries=3))
    await run_until(worker, lambda: worker.counts.completed + worker.counts.dead_lettered == 1)
    assert platform.lookups == [True]
    final = await record(redis, stream, job_id)
    if landed:
        assert final["state"] == "done"
        assert msgspec.json.decode(final["result"])["recovered"] is True
        assert platform.posts == [job_id]
    else:
        assert final["state"] == "dead"
        assert final["error"] == "ran 3 times without finishing (max_deliveries=3)"
        assert platform.posts == []
        assert final["sent_since"]  # kept: a replay looks first


async def test_jobs_held_by_workers_killed_before_they_started_do_not_use_up_the_budget(
    redis: Redis, stream: str
) -> None:
    # Five workers fetched it into their read-ahead and were killed from outside before it
    # started (one run did start and die): with max_deliveries = 3 it still runs, as attempt 2.
    job_id = await Producer(redis).enqueue(stream, {"text": "hello"})
    await ghost_runs(redis, stream, job_id, 6, runs=1, may_send=False)
    attempts: list[int] = []

    async def handler(job: Job) -> None:
        attempts.append(job.attempt)

    worker = Worker(redis, stream, handler, options(burst=False, max_deliveries=3))
    await run_until(worker, lambda: worker.counts.completed == 1)
    assert attempts == [2]
    assert worker.counts.dead_lettered == 0
    assert (await record(redis, stream, job_id))["state"] == "done"


async def test_checkpoints_survive_a_dead_letter_and_its_replay(redis: Redis, stream: str) -> None:
    job_id = await Producer(redis).enqueue(stream, {"text": "video"})
    seen: list[dict[str, str]] = []

    async def handler(job: Job) -> str:
        seen.append(dict(job.checkpoints))
        if not job.checkpoints:
            await job.checkpoint("upload", "https://upload.example/session/1")
            await job.checkpoint("step", "uploaded")
            raise Fail("the platform refused the metadata")
        return job.checkpoints["upload"]

    worker = Worker(redis, stream, handler, options(burst=False))
    await run_until(worker, lambda: worker.counts.dead_lettered == 1)
    assert await control.replay(redis, stream) == (1, 0)
    await Worker(redis, stream, handler, options()).run()
    saved = {"upload": "https://upload.example/session/1", "step": "uploaded"}
    assert seen == [{}, saved]
    assert (await record(redis, stream, job_id))["state"] == "done"


# -- a first run skips the record; every later run reads it -----------------------------------


async def test_a_new_jobs_entry_is_a_first_run_and_what_follows_a_delivery_is_not(
    redis: Redis, stream: str
) -> None:
    # The worker reads no record for a first run (codec.Envelope.first_run): only the
    # producer's new entries may say so, never an entry written after a delivery.
    job_id = await Producer(redis).enqueue(stream, {"text": "hello"})
    [(_, fields)] = await entries(redis, keys.lane(stream, "normal"))
    assert codec.decode_fields(fields).first_run

    async def fail(job: Job) -> None:
        await job.checkpoint("container", "c-1")
        raise RuntimeError("the publish step timed out")

    worker = Worker(
        redis,
        stream,
        fail,
        options(burst=False, backoff=Backoff(base=60, factor=1, max=60, jitter=0)),
    )
    await run_until(worker, lambda: worker.counts.failed == 1)
    retry = await record(redis, stream, job_id)
    assert retry["state"] == "retrying"
    assert not codec.decode(retry["env"].encode()).first_run


async def test_checkpoints_and_the_mark_survive_a_deferral_after_a_start(
    redis: Redis, stream: str
) -> None:
    # The first run (its entry a first run's) saved a step, marked "may have been sent" and
    # was told to slow down: the deferred run resumes from the step and looks first.
    job_id = await Producer(redis).enqueue(stream, {"text": "two steps"})
    seen: list[tuple[dict[str, str], bool]] = []

    async def handler(job: Job) -> None:
        seen.append((dict(job.checkpoints), job.sent_since_ms is not None))
        if not job.checkpoints:
            await job.checkpoint("container", "c-1")
            await job.may_send()
            raise RateLimited(0.05)

    worker = Worker(redis, stream, handler, options(burst=False))
    await run_until(worker, lambda: worker.counts.completed == 1)
    assert seen == [({}, False), ({"container": "c-1"}, True)]
    assert (await record(redis, stream, job_id))["state"] == "done"


async def test_a_crashed_runs_checkpoints_survive_a_release_of_its_entry(
    redis: Redis, stream: str
) -> None:
    # Its first run saved a step, marked "may have been sent" and died with its worker. A
    # worker took the entry over and stopped before running it, handing it back as a new
    # entry: that copy is not a first run, so the run after it resumes and looks first.
    job_id = await Producer(redis).enqueue(stream, {"text": "reel"})
    await ghost_runs(redis, stream, job_id, 1, runs=1, may_send=True)
    await scripts.save_checkpoint(redis, job_id, "container", "c-7")
    seen: list[tuple[dict[str, str], bool]] = []

    async def handler(job: Job) -> None:
        seen.append((dict(job.checkpoints), job.sent_since_ms is not None))

    taker = Worker(redis, stream, handler, options())
    assert await taker.reclaimer.reclaim_once() == 1
    await taker.fetcher.release_ready()
    assert taker.counts.released == 1
    [(_, fields)] = await entries(redis, keys.lane(stream, "normal"))
    assert not codec.decode_fields(fields).first_run
    await Worker(redis, stream, handler, options()).run()
    assert seen == [({"container": "c-7"}, True)]


@pytest.mark.parametrize("end", ["cancelled", "expired"])
async def test_the_mark_outlives_a_cancel_or_an_expiry_and_a_retry_looks_first(
    redis: Redis, stream: str, end: str
) -> None:
    # Its first run may have posted (the answer was lost) and it waits to retry; then it is
    # cancelled, or its retry comes too late and expires. The mark stays in the record: a
    # later `job retry` (which resets the attempts) looks before it sends, and finds the post.
    platform = Platform()
    producer = Producer(redis)
    job_id = await producer.enqueue(stream, {"text": "hello"}, options=JobOptions(expire_after=1))
    later = options(burst=False, backoff=Backoff(base=60, factor=1, max=60, jitter=0))
    worker = Worker(redis, stream, platform.publish, later)
    await run_until(worker, lambda: worker.counts.failed == 1)
    assert (await record(redis, stream, job_id))["state"] == "retrying"
    if end == "cancelled":
        assert await control.cancel(redis, job_id) == "cancelled"
    else:  # due a minute ago: too late by the time it is promoted
        await control.reschedule(redis, job_id, run_at=datetime.now(UTC) - timedelta(minutes=1))
        worker = Worker(redis, stream, platform.publish, options(burst=False))

        async def expired() -> bool:
            return (await record(redis, stream, job_id))["state"] == "expired"

        await run_until(worker, expired)
    ended = await record(redis, stream, job_id)
    assert ended["state"] == end
    assert ended["sent_since"]
    assert platform.posts == [job_id]
    await control.retry(redis, job_id)
    await Worker(redis, stream, platform.publish, options()).run()
    assert platform.posts == [job_id]
    assert platform.lookups == [False]
    done = await record(redis, stream, job_id)
    assert done["state"] == "done"
    assert msgspec.json.decode(done["result"]) == {"post_id": "p0", "found": True}

"""Publish once, the engine's part (issue 29): checkpoints and the "may have been sent" mark in
the job's record, the verify run before a job whose post may exist is recorded dead, and a
delivery budget that counts runs, not holdings. Handlers here stand in for publishers: the
"platform" is a list of the posts they made."""

from __future__ import annotations

import inspect
from typing import Any

import anyio
import msgspec
import pytest
from redis.asyncio import Redis

from streamq import keys
from streamq.config import Backoff
from streamq.job import Job
from streamq.producer import Producer
from streamq.worker import Worker, WorkerOptions

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

"""Awaiting a job's outcome: ``q.wait``, ``q.result`` and ``streamq job wait``, against a real
server and a real worker. Waiters share one events reader per stream; a job finished before
the call is answered from its record; events off falls back to one shared poll."""

from __future__ import annotations

from typing import Any

import anyio
import msgspec
import pytest
from redis.asyncio import Redis

import streamq
from streamq import waiting
from streamq.config import Config, EventsConfig, StreamConfig
from streamq.errors import Fail, JobCancelled, JobFailed, JobNotFound
from streamq.job import Job
from streamq.worker import Worker
from tests.conftest import run_cli
from tests.test_events import options
from tests.test_lifecycle import Running
from tests.test_worker import poll

pytestmark = [pytest.mark.anyio]


async def handler(job: Job) -> Any:
    if job.payload == "bad":
        raise Fail("the platform refused it")
    return {"posted": job.payload}


@pytest.mark.cluster
async def test_a_job_finished_before_the_call_returns_at_once(
    redis_url: str, redis: Redis, stream: str
) -> None:
    async with streamq.connect(redis_url) as q:
        job_id = await q.enqueue(stream, "hello")
        await Worker(redis, stream, handler, options()).run()
        # No worker runs now and no event will come: only the record can answer.
        with anyio.fail_after(2):
            info = await q.wait(job_id, timeout=60)
        assert (info.state, info.result, info.attempt) == ("done", {"posted": "hello"}, 1)
        assert await q.result(job_id, timeout=60) == {"posted": "hello"}


@pytest.mark.cluster
async def test_wait_returns_when_the_job_finishes_and_result_raises_for_failures(
    redis_url: str, redis: Redis, stream: str
) -> None:
    async with streamq.connect(redis_url) as q:
        good = await q.enqueue(stream, "good")
        bad = await q.enqueue(stream, "bad")
        later = await q.enqueue(stream, "later", delay="1h")
        outcomes: dict[str, Any] = {}

        async def wait_for(job_id: str) -> None:
            try:
                outcomes[job_id] = await q.result(job_id, timeout=30)
            except (JobFailed, JobCancelled) as exc:
                outcomes[job_id] = exc

        async with anyio.create_task_group() as tg:
            for job_id in (good, bad, later):
                tg.start_soon(wait_for, job_id)
            await anyio.wait_all_tasks_blocked()
            assert q.waiters.readers == 1
            await q.cancel(later)
            async with Running(Worker(redis, stream, handler, options(burst=False))):
                await poll(lambda: len(outcomes) == 3, within=20)
    assert outcomes[good] == {"posted": "good"}
    failed = outcomes[bad]
    assert isinstance(failed, JobFailed)
    assert failed.reason == "the platform refused it"
    assert isinstance(outcomes[later], JobCancelled)


async def test_timeout_raises_and_unknown_ids_are_not_found(redis_url: str, stream: str) -> None:
    async with streamq.connect(redis_url) as q:
        job_id = await q.enqueue(stream, "never run")
        with pytest.raises(TimeoutError, match=r"did not finish within 0\.2s \(it is queued\)"):
            await q.wait(job_id, timeout=0.2)
        with pytest.raises(JobNotFound):
            await q.wait(f"{stream}:nosuchjob", timeout=5)
        with pytest.raises(JobNotFound):
            await q.wait("not-an-id", timeout=5)


async def _clients_reading(redis: Redis, command: str) -> int:
    clients: Any = await redis.client_list()
    return sum(1 for c in clients if c["cmd"] == command)


async def test_200_waiters_share_one_reader_and_few_connections(
    redis_url: str, redis: Redis, stream: str
) -> None:
    async with streamq.connect(redis_url) as q:
        ids = await q.enqueue_many(stream, list(range(200)))
        before: Any = await redis.client_list()
        infos: list[Any] = []

        async def wait_for(job_id: str) -> None:
            infos.append(await q.wait(job_id, timeout=60))

        async with anyio.create_task_group() as tg:
            for job_id in ids:
                tg.start_soon(wait_for, job_id)
            await poll(lambda: _clients_reading(redis, "xread"))
            await anyio.sleep(0.1)  # let any other reader a waiter might start show itself
            during: Any = await redis.client_list()
            assert await _clients_reading(redis, "xread") == 1
            assert q.waiters.readers == 1
            # 200 waiters, and the Queue holds a handful of connections, not one per waiter.
            assert len(during) - len(before) <= 4
            await Worker(redis, stream, handler, options()).run()
    assert sorted(info.result["posted"] for info in infos) == list(range(200))
    assert await _clients_reading(redis, "xread") == 0


async def test_with_events_off_waiters_share_one_poll(
    redis_url: str, redis: Redis, stream: str
) -> None:
    config = Config(streams={stream: StreamConfig(events=EventsConfig(enabled=False))})
    async with streamq.connect(redis_url, config=config) as q:
        ids = await q.enqueue_many(stream, ["a", "b"])
        results: list[Any] = []

        async def wait_for(job_id: str) -> None:
            results.append(await q.result(job_id, timeout=30))

        async with anyio.create_task_group() as tg:
            for job_id in ids:
                tg.start_soon(wait_for, job_id)
            await anyio.sleep(waiting.POLL_SECONDS)
            assert q.waiters.readers == 1
            quiet = options(events=EventsConfig(enabled=False))
            await Worker(redis, stream, handler, quiet).run()
    assert sorted(r["posted"] for r in results) == ["a", "b"]


async def test_cli_job_wait_exit_codes(redis_url: str, redis: Redis, stream: str) -> None:
    async with streamq.connect(redis_url) as q:
        good, bad = await q.enqueue_many(stream, ["good", "bad"])
        pending = await q.enqueue(stream, "pending", delay="1h")
        await Worker(redis, stream, handler, options()).run()
    base = ("job", "wait", "--redis-url", redis_url)
    done = run_cli(*base, good, "--timeout", "30s", "--json")
    assert done.returncode == 0, done.stderr
    assert msgspec.json.decode(done.stdout)["result"] == {"posted": "good"}
    failed = run_cli(*base, bad, "--timeout", "30s")
    assert (failed.returncode, failed.stdout.strip()) == (1, "dead: the platform refused it")
    timed_out = run_cli(*base, pending, "--timeout", "1s")
    assert timed_out.returncode == 3
    assert "did not finish within 1s (it is scheduled)" in timed_out.stderr
    missing = run_cli(*base, f"{stream}:nosuch", "--timeout", "1s")
    assert missing.returncode == 1
    assert "no job" in missing.stderr

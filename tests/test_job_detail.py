"""A job's detail explains itself: every run (worker, times, outcome, error and where it was
raised), the payload after it finished, ISO times with the zone; the history stays bounded."""

from __future__ import annotations

from functools import partial

import anyio
import httpx
import pytest
from redis.asyncio import Redis

import streamq
from streamq import scripts
from streamq.job import Job
from streamq.worker import Worker
from tests.conftest import ADMIN_TOKEN, AdminServer, run_cli
from tests.test_events import options
from tests.test_lifecycle import Running

pytestmark = [pytest.mark.anyio]


def post_to_platform(job: Job) -> None:
    raise RuntimeError(f"platform said no to attempt {job.attempt}")


async def flaky(job: Job) -> dict[str, int]:
    if job.attempt < 3:
        post_to_platform(job)
    return {"post_id": 42}


@pytest.mark.cluster
async def test_the_detail_of_a_job_that_failed_twice_then_succeeded(
    redis_url: str, redis: Redis, stream: str
) -> None:
    async with streamq.connect(redis_url) as q:
        job_id = await q.enqueue(stream, {"text": "hello"}, account="acme")
        worker = Worker(redis, stream, flaky, options(burst=False))
        async with Running(worker):
            info = await q.wait(job_id, timeout=20)
    assert (info.state, info.result, info.payload) == ("done", {"post_id": 42}, {"text": "hello"})
    runs = [(run.n, run.outcome, run.worker) for run in info.attempts]
    assert runs == [(1, "retried", worker.consumer), (2, "retried", worker.consumer),
                    (3, "done", worker.consumer)]  # fmt: skip
    first = info.attempts[0]
    assert first.error == "RuntimeError: platform said no to attempt 1"
    assert first.trace is not None
    assert "in post_to_platform" in first.trace.splitlines()[-1]
    assert "test_job_detail.py" in first.trace
    assert info.attempts[2].error is None
    for run in info.attempts:
        assert run.started_at_ms is not None
        assert run.finished_at_ms is not None
        assert run.started_at_ms <= run.finished_at_ms
        assert run.started_at is not None
        assert run.started_at.endswith("+00:00")
    assert info.finished_at is not None
    assert info.finished_at.endswith("+00:00")
    assert info.enqueued_at is not None


async def test_the_history_keeps_the_latest_runs_only(
    redis_url: str, redis: Redis, stream: str
) -> None:
    async def stubborn(job: Job) -> str:
        if job.attempt <= 15:
            raise RuntimeError(f"try {job.attempt}")
        return "finally"

    async with streamq.connect(redis_url) as q:
        job_id = await q.enqueue(stream, "stubborn", max_attempts=20)
        async with Running(Worker(redis, stream, stubborn, options(burst=False))):
            info = await q.wait(job_id, timeout=30)
    assert info.state == "done"
    kept = scripts.ATTEMPTS_KEPT
    assert [run.n for run in info.attempts] == [*range(16 - kept, 16), 16]
    assert info.attempts[-2].error == "RuntimeError: try 15"


async def test_job_show_and_the_api_give_the_history(
    redis_url: str, redis: Redis, stream: str, admin_server: AdminServer
) -> None:
    async with streamq.connect(redis_url) as q:
        job_id = await q.enqueue(stream, {"text": "hello"})
        async with Running(Worker(redis, stream, flaky, options(burst=False))):
            await q.wait(job_id, timeout=20)
    shown = await anyio.to_thread.run_sync(
        partial(run_cli, "job", "show", job_id, "--redis-url", redis_url)
    )
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert any(line.startswith("payload\t") and '"hello"' in line for line in lines)
    finished = next(line for line in lines if line.startswith("finished\t"))
    assert finished.endswith((" ago)", "(now)"))
    assert "+00:00" in finished
    header = lines.index("#\tworker\tstarted\ttook\toutcome\terror")
    outcomes = [line.split("\t")[4] for line in lines[header + 1 :] if "\t" in line]
    assert outcomes == ["retried", "retried", "done"]
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx.AsyncClient(base_url=admin_server.url, headers=auth, timeout=10) as http:
        body = (await http.get(f"/api/jobs/{job_id}")).json()
    assert [run["outcome"] for run in body["attempts"]] == ["retried", "retried", "done"]
    assert body["payload"] == {"text": "hello"}
    assert body["finished_at"].endswith("+00:00")

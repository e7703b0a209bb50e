"""Prometheus metrics, scraped over HTTP after workloads whose outcomes are known."""

from __future__ import annotations

import json
import signal
import time
from datetime import UTC, datetime, timedelta

import anyio
import pytest
from redis.asyncio import Redis

from streamq import control, keys, metrics
from streamq.config import Limit
from streamq.errors import RateLimited
from streamq.job import Job
from streamq.metrics import BatchedHistogram
from streamq.producer import JobOptions, Producer
from streamq.worker import Worker, WorkerOptions
from tests import handlers
from tests.conftest import spawn_worker
from tests.observing import Lines, scrape, value

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]

OK, FAILING = 20, 3


async def wait_until_counted(redis: Redis, stream: str, expected: dict[str, int]) -> None:
    with anyio.fail_after(20):
        while True:
            raw: dict[bytes, bytes] = await redis.hgetall(keys.counts(stream))  # type: ignore[assignment]
            counts = {k.decode(): int(v) for k, v in raw.items()}
            if all(counts.get(name, 0) >= n for name, n in expected.items()):
                return
            await anyio.sleep(0.02)


async def test_a_known_workload_is_counted_exactly(redis: Redis, stream: str) -> None:
    producer = Producer(redis)
    await producer.enqueue_many(stream, [{"n": i} for i in range(OK)])
    await producer.enqueue_many(
        stream, [{"then": "retry"}] * FAILING, options=JobOptions(max_attempts=2)
    )
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    await producer.enqueue(stream, {}, options=JobOptions(run_at=an_hour_ago, expire_after=1))
    waiting = await producer.enqueue(stream, {"then": "wait_cancel"})

    worker = Worker(redis, stream, handlers.outcome, WorkerOptions(block_seconds=0.1))
    exposition = metrics.serve(0)
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(metrics.refresh_stream_figures, redis, [stream], 0.05)
            async with anyio.create_task_group() as work:
                work.start_soon(worker.run)
                with anyio.fail_after(20):
                    # The job's record lives in Redis: poll it until its run is counted, i.e.
                    # its handler started ('active' alone is also a job read and not yet
                    # started, which a cancel stops before it runs: never counted as started).
                    while await redis.hget(keys.job(stream, waiting), "runs") is None:  # noqa: ASYNC110
                        await anyio.sleep(0.01)
                await control.cancel(redis, waiting)
                expected = {"done": OK, "retried": FAILING, "dead": FAILING, "expired": 1}
                await wait_until_counted(redis, stream, {**expected, "cancelled": 1})
                worker.stop()
            # The worker is gone, so its counters are final; the figures from Redis follow
            # within a refresh.
            with anyio.fail_after(10):
                while True:
                    samples = await anyio.to_thread.run_sync(scrape, exposition.url)
                    # Both read in one refresh, which may have begun before the retirement.
                    dead = value(samples, "streamq_stream_dead", stream=stream)
                    consumers = value(samples, "streamq_stream_consumers", stream=stream)
                    if (dead, consumers) == (FAILING, 0):
                        break
                    await anyio.sleep(0.02)
            tasks.cancel_scope.cancel()
    finally:
        exposition.close()

    def got(name: str, **labels: str) -> float | None:
        return value(samples, name, stream=stream, **labels)

    runs = OK + 2 * FAILING + 1  # the failing ones ran twice; the cancelled one ran once
    assert got("streamq_jobs_enqueued_total", priority="normal") == OK + FAILING + 2
    assert got("streamq_jobs_started_total", priority="normal") == runs
    assert got("streamq_jobs_started_total", priority="high") == 0
    for outcome, count in {"done": OK, "retried": FAILING, "dead": FAILING}.items():
        assert got("streamq_jobs_completed_total", outcome=outcome) == count
    assert got("streamq_jobs_completed_total", outcome="expired") == 1
    assert got("streamq_jobs_completed_total", outcome="cancelled") == 1
    assert got("streamq_jobs_deferred_total", outcome="limited") == 0
    assert got("streamq_job_duration_seconds_count") == runs
    assert got("streamq_job_duration_seconds_bucket", le="+Inf") == runs
    assert got("streamq_job_lateness_seconds_count", priority="normal") == runs
    # The expired job never ran, so its hour of lateness is in no bucket.
    assert got("streamq_job_lateness_seconds_bucket", priority="normal", le="60.0") == runs
    # Figures read from Redis: the dead letters are there, nothing is left to run.
    assert got("streamq_stream_consumers") == 0  # it retired
    assert got("streamq_stream_length") == 0
    assert got("streamq_stream_lag") == 0
    assert got("streamq_stream_delayed") == 0
    # Bounded labels: no job id or account anywhere in the label values.
    assert all(not label[1].startswith(f"{stream}:") for _, labels in samples for label in labels)


def test_consume_serves_metrics_on_the_port_it_logs(redis_url: str, stream: str) -> None:
    worker = spawn_worker(
        "--redis-url", redis_url, "--stream", stream, "--handler", "tests.handlers:noop",
        "--metrics-port", "0", "--log-format", "json",
    )  # fmt: skip
    try:
        lines = Lines(worker)
        url = json.loads(lines.wait_for("serving metrics"))["metrics_url"]
        assert url.startswith("http://127.0.0.1:")
        producer_env = {"STREAMQ_REDIS_URL": redis_url}
        from tests.conftest import run_cli

        assert run_cli("enqueue", "--stream", stream, "--payload", "1", env=producer_env).stdout
        assert run_cli("enqueue", "--stream", stream, "--payload", "2", env=producer_env).stdout
        deadline = time.monotonic() + 15
        while True:
            samples = scrape(url)
            done = value(samples, "streamq_jobs_completed_total", stream=stream, outcome="done")
            if done == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert done == 2
        assert value(samples, "streamq_stream_length", stream=stream) is not None
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(20) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


@pytest.mark.any_engine
def test_a_taken_metrics_port_is_one_clear_error(redis_url: str, stream: str) -> None:
    taken = metrics.serve(0)
    try:
        from tests.conftest import run_cli

        result = run_cli(
            "consume", "--redis-url", redis_url, "--stream", stream,
            "--handler", "tests.handlers:noop", "--metrics-port", str(taken.port),
        )  # fmt: skip
    finally:
        taken.close()
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(f"streamq: error: cannot serve metrics on 127.0.0.1:{taken.port}")
    ), result.stderr


def test_batched_histogram_matches_prometheus_semantics() -> None:
    histogram = BatchedHistogram("t_seconds", "test", ("stream",), (0.1, 1.0), registry=None)
    histogram.labels("s").observe_many([0.05, 0.1, 0.5, 1.0, 7.0])
    [family] = histogram.collect()
    by_bound = {s.labels["le"]: s.value for s in family.samples if s.name.endswith("_bucket")}
    # le is inclusive: 0.1 falls in le="0.1", 1.0 in le="1.0".
    assert by_bound == {"0.1": 2, "1.0": 4, "+Inf": 5}
    total = next(s.value for s in family.samples if s.name.endswith("_sum"))
    assert total == pytest.approx(8.65)


async def test_deferrals_are_counted_by_kind(redis: Redis, stream: str) -> None:
    producer = Producer(redis)
    await producer.enqueue_many(stream, [{"n": i} for i in range(5)])
    throttled: set[str] = set()

    async def handler(job: Job) -> None:
        if job.payload["n"] == 0 and job.id not in throttled:
            throttled.add(job.id)
            raise RateLimited(60)  # the platform said "slow down" (no attempt used)

    # Two starts an hour: of five jobs, two start (one of them is throttled), three wait.
    limits = (Limit(scope="platform", max=2, per=3600.0),)
    await Worker(redis, stream, handler, WorkerOptions(burst=True, limits=limits)).run()
    exposition = metrics.serve(0)
    try:
        samples = await anyio.to_thread.run_sync(scrape, exposition.url)
    finally:
        exposition.close()
    deferred = {
        outcome: value(samples, "streamq_jobs_deferred_total", stream=stream, outcome=outcome)
        for outcome in ("limited", "throttled", "parked")
    }
    assert deferred == {"limited": 3, "throttled": 1, "parked": 0}
    assert value(samples, "streamq_jobs_started_total", stream=stream, priority="normal") == 2
    assert value(samples, "streamq_jobs_completed_total", stream=stream, outcome="done") == 1

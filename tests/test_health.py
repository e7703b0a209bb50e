"""``streamq health``: exit codes 0/1/2 in the situations a probe meets, and the JSON shape."""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from redis.asyncio import Redis

from streamq import channel, connection, health, keys, scripts
from streamq.config import Config, parse_config
from streamq.producer import JobOptions, Producer
from streamq.server import LocalServer
from streamq.worker import Worker, WorkerOptions
from tests import handlers
from tests.conftest import run_cli

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]


def nothing_listening() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


def test_down_when_nothing_listens() -> None:
    url = nothing_listening()
    result = run_cli("health", "--redis-url", url, "--timeout", "2s")
    assert result.returncode == 2, result.stderr
    [line] = result.stdout.splitlines()
    assert line.startswith("down: server: cannot reach Redis at redis://127.0.0.1:"), line
    report = json.loads(run_cli("health", "--redis-url", url, "--json").stdout)
    assert report["status"] == "down"
    assert report["code"] == 2
    assert report["server"]["reachable"] is False
    assert report["streams"] == []


def test_down_when_the_embedded_server_is_not_running(tmp_path: Path) -> None:
    # Health never starts the embedded server, unlike every other command.
    result = run_cli("health", env={"STREAMQ_HOME": str(tmp_path), "STREAMQ_REDIS_URL": ""})
    assert result.returncode == 2, result.stderr
    assert result.stdout.startswith("down: server: the embedded server is not running")
    assert not (tmp_path / "valkey.sock").exists()


def test_healthy_and_the_json_shape(redis_url: str, stream: str) -> None:
    for n in range(3):
        run_cli("enqueue", "--redis-url", redis_url, "--stream", stream, "--payload", str(n))
    result = run_cli("health", "--redis-url", redis_url, "--stream", stream)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "healthy: 1 stream(s) checked\n"
    shown = run_cli("health", "--redis-url", redis_url, "--stream", stream, "--json")
    assert shown.returncode == 0
    report = json.loads(shown.stdout)
    assert set(report) == {"format", "status", "code", "server", "streams", "problems"}
    assert (report["format"], report["status"], report["code"]) == (1, "healthy", 0)
    assert report["server"]["reachable"] is True
    assert report["server"]["maxmemory_policy"] == "noeviction"
    [figures] = report["streams"]
    assert set(figures) == {
        "stream", "status", "consumers", "expected_workers", "depth", "oldest_pending_age_s",
        "error_rate", "error_window_s", "lateness_p95_s", "problems",
    }  # fmt: skip
    assert (figures["stream"], figures["depth"], figures["problems"]) == (stream, 3, [])


def test_degraded_when_depth_is_over_the_configured_threshold(
    redis_url: str, stream: str, tmp_path: Path
) -> None:
    config = tmp_path / "streamq.toml"
    config.write_text(f"[streams.{stream}.health]\nmax_depth = 2\n")
    for n in range(3):
        run_cli("enqueue", "--redis-url", redis_url, "--stream", stream, "--payload", str(n))
    args = ("health", "--redis-url", redis_url, "--stream", stream, "--config", str(config))
    result = run_cli(*args)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout == f"degraded: {stream}: depth 3 over 2\n"
    report = json.loads(run_cli(*args, "--json").stdout)
    assert (report["status"], report["code"]) == ("degraded", 1)
    assert report["streams"][0]["problems"] == ["depth 3 over 2"]


def test_a_probe_with_fail_on_down_passes_degraded_and_fails_down(
    redis_url: str, stream: str
) -> None:
    run_cli("enqueue", "--redis-url", redis_url, "--stream", stream, "--payload", "1")
    probe = ("health", "--stream", stream, "--expected-workers", "2", "--fail-on", "down")
    degraded = run_cli(*probe, "--redis-url", redis_url)
    assert degraded.returncode == 0, degraded.stdout + degraded.stderr
    assert degraded.stdout.startswith("degraded: ")  # still says so
    down = run_cli(*probe, "--redis-url", nothing_listening(), "--timeout", "2s")
    assert down.returncode == 2


def test_degraded_when_fewer_workers_than_expected_are_alive(redis_url: str, stream: str) -> None:
    run_cli("enqueue", "--redis-url", redis_url, "--stream", stream, "--payload", "1")
    result = run_cli(
        "health", "--redis-url", redis_url, "--stream", stream, "--expected-workers", "2"
    )
    assert result.returncode == 1
    assert "0 of 2 expected workers alive (below 80%)" in result.stdout


def test_degraded_for_a_stream_nobody_used(redis_url: str, stream: str) -> None:
    result = run_cli("health", "--redis-url", redis_url, "--stream", stream)
    assert result.returncode == 1
    assert result.stdout == f"degraded: {stream}: no worker or producer has used this stream yet\n"


@pytest.mark.any_engine
def test_a_bad_threshold_is_one_clear_error(redis_url: str, tmp_path: Path) -> None:
    config = tmp_path / "streamq.toml"
    config.write_text("[streams.x.health]\nmax_error_rate = 2\n")
    result = run_cli("health", "--redis-url", redis_url, "--config", str(config))
    assert result.returncode == 2  # a usage error: the config file
    assert result.stderr.strip() == (
        f"streamq: error: {config}: [streams.x] health.max_error_rate is a fraction between 0 and 1"
    )


async def test_error_rate_over_the_window(redis: Redis, redis_url: str, stream: str) -> None:
    producer = Producer(redis)
    await producer.enqueue_many(stream, [{"n": 1}] * 6)
    # The sample a worker takes at its start, taken here so the window surely begins before
    # the first job finishes.
    await scripts.sample_counts(redis, stream, every_ms=10_000, keep_ms=60_000)
    await producer.enqueue_many(stream, [{"then": "fail"}] * 2)
    await Worker(redis, stream, handlers.outcome, WorkerOptions(burst=True)).run()
    report = await health.check(redis_url, Config(), [stream])
    [figures] = report.streams
    assert figures.error_rate == 0.25  # 2 dead of 8 runs
    assert report.code == health.DEGRADED
    assert report.problems == [f"{stream}: error rate 25.0% over 5% (2 of 8 runs in 0s)"]


async def test_lateness_reported_by_workers(redis: Redis, redis_url: str, stream: str) -> None:
    five_seconds_ago = datetime.now(UTC) - timedelta(seconds=5)
    await Producer(redis).enqueue_many(
        stream, [1, 2, 3], options=JobOptions(run_at=five_seconds_ago)
    )
    worker = Worker(redis, stream, handlers.noop, WorkerOptions(burst=True))
    await worker.run()
    # What the worker's reporter sends every 5 s, sent now rather than waited for.
    now = await channel.server_ms(redis)
    await health.report(redis, stream, worker.consumer, worker.metrics.lateness_counts(), now)
    strict = parse_config({"streams": {stream: {"health": {"max_lateness": "1s"}}}})
    report = await health.check(redis_url, strict, [stream])
    assert report.streams[0].lateness_p95_s == 10.0  # the bucket holding ~5 s: le=10
    assert report.problems == [f"{stream}: p95 lateness 10s over 1s"]
    assert (await health.check(redis_url, Config(), [stream])).code == health.HEALTHY


async def test_a_partitioned_streams_error_rate_and_lateness_cover_its_partitions(
    redis: Redis, redis_url: str, stream: str
) -> None:
    config = parse_config(
        {"streams": {stream: {"partitions": 2, "health": {"max_lateness": "1s"}}}}
    )
    parts = keys.partitions(stream, 2)
    for part in parts:
        await scripts.sample_counts(redis, part, every_ms=10_000, keep_ms=60_000)
    five_seconds_ago = datetime.now(UTC) - timedelta(seconds=5)
    await Producer(redis, config).enqueue_many(
        stream, [{"n": 1}] * 6 + [{"then": "fail"}] * 2, options=JobOptions(run_at=five_seconds_ago)
    )
    now = await channel.server_ms(redis)
    for part in parts:
        worker = Worker(redis, part, handlers.outcome, WorkerOptions(burst=True))
        await worker.run()
        await health.report(redis, part, worker.consumer, worker.metrics.lateness_counts(), now)
    report = await health.check(redis_url, config, [stream])
    [figures] = report.streams
    assert (figures.error_rate, figures.lateness_p95_s) == (0.25, 10.0)
    assert report.problems == [
        f"{stream}: error rate 25.0% over 5% (2 of 8 runs in 0s)",
        f"{stream}: p95 lateness 10s over 1s",
    ]


@pytest.mark.any_engine
async def test_an_evicting_memory_policy_is_degraded() -> None:
    with LocalServer() as own:  # a server of its own: the policy is server-wide
        client = connection.client(own.url)
        try:
            await client.config_set("maxmemory-policy", "allkeys-lru")
            report = await health.check(own.url, Config())  # no streams there: only the server
        finally:
            await client.aclose()
    assert report.code == health.DEGRADED
    assert report.server.maxmemory_policy == "allkeys-lru"
    assert report.problems == [
        "server: maxmemory-policy is allkeys-lru: it can evict jobs (use noeviction)"
    ]


def test_quantile_bound_is_the_bucket_edge() -> None:
    bounds = (0.1, 1.0)
    assert health.quantile_bound([0, 0, 0], 0.95, bounds) is None
    assert health.quantile_bound([95, 5, 0], 0.95, bounds) == 0.1
    assert health.quantile_bound([94, 6, 0], 0.95, bounds) == 1.0
    assert health.quantile_bound([0, 0, 3], 0.95, bounds) == 1.0  # +Inf: at least the last edge

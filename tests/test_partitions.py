"""Partitioned streams (``partitions = N``): jobs spread over S:0..S:N-1 by account, key or turn;
workers read every partition; stats, job lookup, limits and the autoscaler see one stream."""

from __future__ import annotations

import collections
import json
import os
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

import streamq
from autoscaler.observe import StreamWatch
from streamq import codec, keys, limiter, stats
from streamq.config import Config, Limit, StreamConfig, load_config
from streamq.errors import ConfigError
from streamq.server import LocalCluster, LocalServer
from streamq.worker import WorkerOptions
from tests.conftest import run_cli, spawn_worker, sync_client
from tests.test_limits import over_limit, stop_all, wait_for, wait_until_consuming

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]

PARTITIONS = 4


def split(stream: str, partitions: int = PARTITIONS, **options: object) -> Config:
    return Config(streams={stream: StreamConfig(partitions=partitions, **options)})  # type: ignore[arg-type]


def config_file(tmp_path: Path, stream: str, body: str = "") -> Path:
    path = tmp_path / f"{stream}.toml"
    path.write_text(f"[streams.{stream}]\npartitions = {PARTITIONS}\n{body}")
    return path


def burst(redis_url: str, stream: str, config: Path) -> None:
    """One ``streamq consume --burst`` of the stream, recording its runs under ``stream``."""
    env = {"STREAMQ_TEST_RECORD_URL": redis_url, "STREAMQ_TEST_RECORD": stream}
    done = run_cli(
        "consume", "--redis-url", redis_url, "--stream", stream, "--config", str(config),
        "--handler", "tests.handlers:record", "--burst", env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def partition_of(job_id: str) -> str:
    return keys.stream_of_job(job_id)


async def test_an_accounts_jobs_share_one_partition_and_keep_their_order(
    redis_url: str, stream: str
) -> None:
    accounts = [f"acct-{i}" for i in range(12)]
    async with streamq.connect(redis_url, config=split(stream)) as q:
        ids = await q.enqueue_many(
            stream,
            [{"n": n} for n in range(240)],
            accounts=[accounts[n % len(accounts)] for n in range(240)],
        )
        placed: dict[str, set[str]] = collections.defaultdict(set)
        for n, job_id in enumerate(ids):
            placed[accounts[n % len(accounts)]].add(partition_of(job_id))
        assert all(len(parts) == 1 for parts in placed.values()), placed
        used = {part for parts in placed.values() for part in parts}
        assert len(used) > 1, "twelve accounts all hashed to one partition"
        assert used <= set(keys.partitions(stream, PARTITIONS))
        # In the partition's lane, one account's jobs stand in the order they were enqueued.
        for account in accounts[:3]:
            [part] = placed[account]
            entries: Any = await q.redis.xrange(keys.lane(part, "normal"))
            mine = [
                job_id
                for _, fields in entries
                for job_id in [codec.decode(fields[b"j"]).id]
                if job_id in ids[accounts.index(account) :: len(accounts)]
            ]
            assert mine == ids[accounts.index(account) :: len(accounts)]


async def test_jobs_without_an_account_go_round_robin_and_a_key_stays_unique(
    redis_url: str, stream: str
) -> None:
    async with streamq.connect(redis_url, config=split(stream)) as q:
        ids = await q.enqueue_many(stream, [{"n": n} for n in range(100)])
        spread = collections.Counter(partition_of(job_id) for job_id in ids)
        assert sorted(spread.values()) == [25, 25, 25, 25], spread
        first = await q.enqueue(stream, {"v": 1}, key="post-42")
        again = await q.enqueue(stream, {"v": 2}, key="post-42")
        assert again == first, "the same key landed on another partition"


async def test_one_worker_drains_every_partition_and_stats_add_up(
    redis_url: str, redis: Redis, stream: str, tmp_path: Path
) -> None:
    config = config_file(tmp_path, stream)
    async with streamq.connect(redis_url, config=load_config(config)) as q:
        ids = await q.enqueue_many(stream, [{"n": n} for n in range(400)])
        ids += await q.enqueue_many(stream, [{"s": n} for n in range(20)], delay=0.3)
        snap = await q.stats([stream])
        [figures] = snap.streams
        assert figures.stream == stream
        assert (figures.depth, figures.delayed) == (400, 20)
        assert figures.keys["partitions"] == ",".join(keys.partitions(stream, PARTITIONS))
        burst(redis_url, stream, config)
        # A burst worker stops once nothing is due; the delayed jobs come due after 0.3 s.
        deadline = time.monotonic() + 20
        while len(await redis.hkeys(f"{stream}:succeeded")) < len(ids):
            assert time.monotonic() < deadline, "some partitions were never read"
            burst(redis_url, stream, config)
        runs: Any = await redis.hgetall(f"{stream}:runs")
        assert sorted(k.decode() for k in runs) == sorted(ids)
        assert set(runs.values()) == {b"1"}
        # Job lookup by id finds a job whichever partition holds it.
        for job_id in ids[:: len(ids) // 8]:
            assert (await q.job(job_id)).state == "done"
        [after] = (await q.stats([stream])).streams
        assert (after.depth, after.delayed) == (0, 0)
        outcomes = await stats.outcomes(q.redis, [stream])
        assert outcomes.streams[0].done == len(ids)


async def test_the_autoscaler_sees_the_partitions_as_one_backlog(
    redis_url: str, redis: Redis, stream: str
) -> None:
    async with streamq.connect(redis_url, config=split(stream)) as q:
        await q.enqueue_many(stream, [{"n": n} for n in range(90)])
        await q.enqueue_many(stream, [{"n": n} for n in range(10)], delay=1.0)
    watch = StreamWatch(redis, stream, limiter.limits_for(stream, ()), lead_seconds=5)
    seen = await watch.observe(workers=1)
    assert (seen.backlog, seen.due_soon) == (90, 10)


def test_platform_limits_are_shared_out_and_account_limits_kept_whole() -> None:
    limits = (Limit(scope="platform", max=10, per=60), Limit(scope="account", max=3, per=60))
    shares = [limiter.limits_for(f"x:{i}", limits, partitions=3) for i in range(3)]
    assert [s.platform for s in shares] == [[(4, 60_000)], [(3, 60_000)], [(3, 60_000)]]
    assert all(s.account == [(3, 60_000)] for s in shares)
    assert limiter.limits_for("x", limits, partitions=3).platform == [(10, 60_000)]
    with pytest.raises(ConfigError, match="cannot be shared by 12 partitions"):
        limiter.limits_for("x:0", limits, partitions=12)
    with pytest.raises(ConfigError, match="partitions must be between 1 and 1024"):
        StreamConfig(partitions=0)


def test_each_partition_worker_gets_an_equal_share_of_concurrency_and_read_ahead() -> None:
    options = WorkerOptions(concurrency=10, prefetch=7, burst=True)
    assert options.partition_share(1) is options
    share = options.partition_share(4)
    assert (share.concurrency, share.prefetch, share.burst) == (3, 2, True)
    assert isinstance(share, WorkerOptions)
    assert WorkerOptions(concurrency=2).partition_share(8).concurrency == 1  # at least one
    assert WorkerOptions(concurrency=8).partition_share(8).prefetch is None  # adaptive stays


def test_partition_names_are_streams_and_job_ids_name_their_partition() -> None:
    assert keys.partitions("instagram", 3) == ["instagram:0", "instagram:1", "instagram:2"]
    assert keys.partitions("instagram", 1) == ["instagram"]
    assert keys.lane("instagram:7", "high") == "streamq:{instagram:7}:lane:high"
    assert keys.base_stream("instagram:7") == "instagram"
    assert keys.partition_index("instagram") is None
    job_id = codec.new_job_id("instagram:7")
    assert keys.stream_of_job(job_id) == "instagram:7"
    assert Config(streams={"instagram": StreamConfig(concurrency=3)}).stream("instagram:7") == (
        StreamConfig(concurrency=3)
    )
    for bad in ("instagram:", "instagram:x", ":3", "instagram:3:4"):
        with pytest.raises(ValueError, match="invalid stream name"):
            keys.check_stream_name(bad)


def test_a_worker_also_drains_partitions_left_from_an_earlier_count(
    redis_url: str, stream: str, tmp_path: Path
) -> None:
    async def enqueue() -> list[str]:
        async with streamq.connect(redis_url, config=split(stream, 4)) as q:
            return await q.enqueue_many(stream, [{"n": n} for n in range(40)])

    ids = anyio.run(enqueue)
    assert len({partition_of(i) for i in ids}) == 4
    fewer = tmp_path / "two.toml"
    fewer.write_text(f"[streams.{stream}]\npartitions = 2\n")
    burst(redis_url, stream, fewer)
    client = sync_client(redis_url)
    succeeded: Any = client.hkeys(f"{stream}:succeeded")
    assert sorted(k.decode() for k in succeeded) == sorted(ids)


@pytest.mark.slow
@settings(
    max_examples=int(os.environ.get("STREAMQ_LIMIT_EXAMPLES", "3")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    account=st.sampled_from([(2, 600), (3, 900), (1, 400)]),
    platform=st.sampled_from([(), (8, 800), (12, 1000)]),
    arrivals=st.lists(st.sampled_from(["a", "b", "c", "d", "e", None]), min_size=6, max_size=18),
)
def test_account_limits_hold_exactly_across_partitions_and_workers(
    server: LocalServer | LocalCluster,
    tmp_path: Path,
    account: tuple[int, int],
    platform: tuple[int, int] | tuple[()],
    arrivals: list[str | None],
) -> None:
    stream = f"p{os.urandom(6).hex()}"
    body = f'[[streams.{stream}.limits]]\nscope = "account"\nmax = {account[0]}\n'
    body += f'per = "{account[1]}ms"\n'
    if platform:
        body += f'[[streams.{stream}.limits]]\nscope = "platform"\nmax = {platform[0]}\n'
        body += f'per = "{platform[1]}ms"\n'
    config = config_file(tmp_path, stream, body)
    client = sync_client(server.url)
    env = {"STREAMQ_TEST_RECORD_URL": server.url, "STREAMQ_TEST_RECORD": stream}
    args = ["--redis-url", server.url, "--stream", stream, "--config", str(config)]
    workers = [spawn_worker(*args, "--handler", "tests.handlers:stamp", env=env) for _ in range(2)]
    try:
        for worker in workers:
            wait_until_consuming(worker)

        async def enqueue() -> None:
            async with streamq.connect(server.url, config=load_config(config)) as q:
                await q.enqueue_many(stream, [{}] * len(arrivals), accounts=arrivals)

        anyio.run(enqueue)
        wait_for(lambda: client.llen(f"{stream}:starts") >= len(arrivals), workers, "never ran")
        time.sleep(0.3)  # anything beyond the expected count would be an extra run
        runs = [json.loads(line) for line in client.lrange(f"{stream}:starts", 0, -1)]
    finally:
        stop_all(workers)
    assert len(runs) == len(arrivals) == len({run["id"] for run in runs})
    # The limiter's admissions, by the server's clock, hold the limits exactly; and no handler
    # starts before its admission (this machine's clock is the server's; 1 ms for the
    # rounding of the server's time to ms). A handler's start after it is its process's
    # scheduling delay, which on two shared cores under load spreads by more than a window's
    # slack, so the limits are judged on the admissions.
    for who in {run["account"] for run in runs if run["account"]}:
        mine = [run["admitted"] for run in runs if run["account"] == who]
        assert not over_limit(mine, *account, 1), (who, account, sorted(mine))
    if platform:
        every = sorted(run["admitted"] for run in runs)
        assert not over_limit(every, *platform, 1), every
    early = [run for run in runs if run["t"] < run["admitted"] - 0.001]
    assert not early, early

"""Faults a fleet meets, each ending with its figures: jobs lost (must be 0) and jobs run twice.

Short by default; ``STREAMQ_FAULTS_LONG=1`` runs the long versions. A server killed with
SIGKILL loses nothing with either ``appendfsync`` setting: its AOF writes are in the kernel
already; ``everysec`` can lose up to a second of writes only when the machine itself fails,
which no test here can do. Figures print at the end
of each test (``pytest -s`` shows them) and are recorded in the README's Reliability section.
Runs are recorded in the shared test server, never in the server the test kills.
"""

from __future__ import annotations

import random
import time

import pytest
import redis as sync_redis

from streamq.server import LocalServer
from tests.faults.fleet import LONG, enqueue, figures, finish, states, wait_until_done, worker


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_fifty_worker_kills_lose_nothing(redis_url: str, stream: str) -> None:
    kills, jobs = (200, 30_000) if LONG else (50, 6_000)
    record = sync_redis.Redis.from_url(redis_url)
    ids = enqueue(redis_url, stream, jobs)
    pool = [worker(redis_url, redis_url, stream) for _ in range(3)]
    rng = random.Random(7)
    killed = 0
    try:
        while killed < kills and record.hlen(f"{stream}:succeeded") < jobs:
            time.sleep(0.15)
            victim = pool.pop(rng.randrange(len(pool)))
            victim.kill()
            victim.wait()
            if victim.stdout is not None:
                victim.stdout.close()
            killed += 1
            pool.append(worker(redis_url, redis_url, stream))
        wait_until_done(record, stream, jobs, within=180)
        end_states = states(record, stream, ids)
    finally:
        finish(pool)
    lost, twice = figures(record, stream, ids)
    print(f"\nfaults: {killed} worker SIGKILLs over {jobs} jobs: lost {lost}, ran twice {twice}")
    assert killed >= min(kills, 10)
    assert lost == 0
    assert end_states == {b"done"}


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("fsync", ["always", "everysec"])
def test_a_server_killed_and_restarted_mid_run_loses_no_job(
    redis_url: str, stream: str, fsync: str
) -> None:
    jobs = 20_000 if LONG else 3_000
    record = sync_redis.Redis.from_url(redis_url)
    with LocalServer(persistence=True, extra_args=["--appendfsync", fsync]) as srv:
        ids = enqueue(srv.url, stream, jobs)
        time.sleep(1.1)  # past everysec's window: the enqueue itself is on disk
        pool = [worker(srv.url, redis_url, stream) for _ in range(2)]
        try:
            deadline = time.monotonic() + 60
            while record.hlen(f"{stream}:succeeded") < jobs // 3:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            srv.kill()  # SIGKILL: no shutdown save, only what the AOF holds
            at_kill = record.hlen(f"{stream}:succeeded")
            srv.restart()
            wait_until_done(record, stream, jobs, within=180)
            end_states = states(sync_redis.Redis.from_url(srv.url), stream, ids)
        finally:
            finish(pool)
        lost, twice = figures(record, stream, ids)
    print(
        f"\nfaults: server SIGKILL at {at_kill}/{jobs} done, appendfsync {fsync}, "
        f"restarted: lost {lost}, ran twice {twice}"
    )
    assert lost == 0
    assert end_states == {b"done"}

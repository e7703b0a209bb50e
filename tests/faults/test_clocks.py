"""Clock skew: workers and producers whose wall clocks are minutes off.

Every due time is compared with the server's clock (the scripts read TIME), and a worker turns
its own clock into the server's with an offset it measures, so skew must change nothing: no
job starts before it is due by the server's clock, a retry waits its delay, nothing expires
early and nothing is reclaimed from a live worker. Handlers stamp starts with the server's
TIME. A jump of the *server's* clock cannot be made here (it is the machine's clock, shared by
every test); docs/reliability.md says what one would do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
import redis as sync_redis

from tests.conftest import ROOT, members
from tests.faults.fleet import LONG, assert_alive, figures, finish, states, wait_until_done

SKEW_S = 300.0


def skewed(*args: str) -> list[str]:
    return [sys.executable, "-m", "tests.faults.skewed", *args]


def run_skewed(skew_s: float, *args: str, input: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        skewed(*args), input=input, capture_output=True, text=True, timeout=120,
        cwd=ROOT, env={**os.environ, "STREAMQ_TEST_CLOCK_SKEW_S": str(skew_s)},
    )  # fmt: skip


def skewed_worker(skew_s: float, url: str, stream: str) -> subprocess.Popen[str]:
    env = {**os.environ, "STREAMQ_TEST_CLOCK_SKEW_S": str(skew_s),
           "STREAMQ_TEST_RECORD_URL": url, "STREAMQ_TEST_RECORD": stream}  # fmt: skip
    return subprocess.Popen(
        skewed(
            "consume", "--redis-url", url, "--stream", stream,
            "--handler", "tests.handlers:server_stamp", "--concurrency", "8",
            "--visibility-timeout", "2s", "--log-level", "ERROR",
        ),
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def enqueue_skewed(skew_s: float, url: str, stream: str, jobs: int, delay: str) -> set[str]:
    lines = "".join(json.dumps({"n": i, "fail_first": i % 5 == 0}) + "\n" for i in range(jobs))
    added = run_skewed(
        skew_s, "enqueue", "--redis-url", url, "--stream", stream, "--payload", "-",
        "--delay", delay, "--expire-after", "2m", input=lines,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    return set(added.stdout.split())


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_workers_minutes_apart_run_nothing_early_and_lose_nothing(
    redis_url: str, stream: str
) -> None:
    jobs = 5_000 if LONG else 600
    record = sync_redis.Redis.from_url(redis_url)
    pool = [skewed_worker(SKEW_S, redis_url, stream), skewed_worker(-SKEW_S, redis_url, stream)]
    try:
        # Producers are skewed too, one each way; due times are by the server's clock.
        ids = enqueue_skewed(SKEW_S, redis_url, stream, jobs, "3s")
        ids |= enqueue_skewed(-SKEW_S, redis_url, stream, jobs, "5s")
        wait_until_done(record, stream, len(ids), within=120)
        assert_alive(pool)
        ran = [members(record, f"{stream}:by:{p.pid}") for p in pool]
        end_states = states(record, stream, ids)
    finally:
        finish(pool)
    raw: Any = record.lrange(f"{stream}:starts", 0, -1)
    starts = [json.loads(line) for line in raw]
    early = [s for s in starts if s["start"] < s["due"]]
    first = {s["id"]: s["start"] for s in starts if s["a"] == 1}
    retries = [s for s in starts if s["a"] == 2]
    hasty = [s for s in retries if s["start"] - first[s["id"]] < 1500]  # asked: 2 s later
    lost, twice = figures(record, stream, ids)
    print(
        f"\nfaults: workers and producers skewed +{SKEW_S:g}s and -{SKEW_S:g}s, {len(ids)} "
        f"scheduled jobs, {len(retries)} retries: started early {len(early)}, retried early "
        f"{len(hasty)}, lost {lost}, ran twice {twice}"
    )
    assert all(ran), "both skewed workers ran jobs"
    assert early == []
    assert len(retries) == len(ids) // 5
    assert hasty == []
    assert lost == 0
    assert twice == 0  # no fault here: a run twice would be a wrong reclaim
    assert end_states == {b"done"}  # none expired

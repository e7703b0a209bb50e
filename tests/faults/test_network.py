"""Connections cut, stalled and slowed between workers (or producers) and the server.

Every client here talks to the server through ``FaultProxy`` (tests/faults/proxy.py); the
handlers record their runs, and the tests read the outcome, directly from the server. A black
hole lasts longer than the socket timeout (10 s), so the clients' timeout path runs: a worker
gives up the silent connection and makes a new one, instead of hanging on it.
"""

from __future__ import annotations

import subprocess
import time
from typing import Any

import anyio
import pytest
import redis as sync_redis
from redis.asyncio import Redis

import streamq
from streamq import codec, keys
from streamq.config import Config
from streamq.connection import SOCKET_TIMEOUT_SECONDS
from streamq.server import LocalServer
from tests.conftest import entries, run_cli
from tests.faults.fleet import (
    LONG,
    assert_alive,
    enqueue,
    figures,
    finish,
    states,
    wait_until_done,
    worker,
)
from tests.faults.proxy import FaultProxy

BLACK_HOLE_SECONDS = SOCKET_TIMEOUT_SECONDS + (20 if LONG else 2)


def succeeded(record: sync_redis.Redis, stream: str) -> int:
    return int(record.hlen(f"{stream}:succeeded"))


def wait_for_progress(record: sync_redis.Redis, stream: str, at_least: int) -> None:
    deadline = time.monotonic() + 60
    while succeeded(record, stream) < at_least:
        assert time.monotonic() < deadline, f"{succeeded(record, stream)} of {at_least} done"
        time.sleep(0.02)


def wait_until_reading(
    record: sync_redis.Redis, stream: str, pool: list[subprocess.Popen[str]]
) -> None:
    """Every worker of ``pool`` reads its stream again: its consumer touched the group within
    the last 3 s (a worker stuck on a dead connection never would)."""
    deadline = time.monotonic() + 3 * SOCKET_TIMEOUT_SECONDS
    pids = {process.pid for process in pool}
    while True:
        consumers: Any = record.xinfo_consumers(keys.lane(stream, "normal"), keys.GROUP)
        fresh = {
            pid
            for pid in pids
            for c in consumers
            if f"-{pid}-" in c["name"].decode() and int(c["idle"]) < 3000
        }
        if fresh == pids:
            return
        assert time.monotonic() < deadline, f"workers {pids - fresh} stopped reading"
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_workers_ride_out_cuts_black_holes_and_slow_links(
    server: LocalServer, redis_url: str, stream: str
) -> None:
    jobs, cuts = (20_000, 60) if LONG else (3_000, 12)
    record = sync_redis.Redis.from_url(redis_url)
    ids = enqueue(redis_url, stream, jobs)
    with FaultProxy("127.0.0.1", server.port) as proxy:
        # Jobs of 0.1 s: the run lasts through every fault, with jobs in flight at each.
        slow_jobs = {"STREAMQ_TEST_JOB_SECONDS": "0.1"}
        pool = [worker(proxy.url, redis_url, stream, env=slow_jobs) for _ in range(3)]
        try:
            wait_for_progress(record, stream, jobs // 10)
            for _ in range(cuts):  # the schedule of the fault, not a wait for anything
                proxy.cut()
                time.sleep(0.2)
                proxy.passthrough()
                time.sleep(0.3)
            assert_alive(pool)
            before = proxy.connections
            at_black_hole = succeeded(record, stream)
            assert at_black_hole < jobs, "the run ended before the black hole"
            proxy.black_hole()
            time.sleep(BLACK_HOLE_SECONDS)
            proxy.passthrough()
            # The black-holed connections stay dead: reading again means new ones were made.
            wait_until_reading(record, stream, pool)
            assert proxy.connections > before
            proxy.slow(0.02)
            time.sleep(3)
            proxy.passthrough()
            wait_until_done(record, stream, jobs, within=240)
            end_states = states(record, stream, ids)
            assert_alive(pool)
            wait_until_reading(record, stream, pool)
        finally:
            finish(pool)
    lost, twice = figures(record, stream, ids)
    print(
        f"\nfaults: {cuts} cuts, a {BLACK_HOLE_SECONDS:g}s black hole, 3s at 20ms a chunk, "
        f"{jobs} jobs ({at_black_hole} done before the black hole), 3 workers: lost {lost}, "
        f"ran twice {twice}"
    )
    assert lost == 0
    assert end_states == {b"done"}


async def lane_job_ids(redis: Redis, stream: str) -> list[str]:
    return [codec.decode_fields(f).id for _, f in await entries(redis, keys.lane(stream, "normal"))]


@pytest.mark.anyio
async def test_an_enqueue_whose_answer_is_lost_is_sent_again_and_adds_nothing_twice(
    server: LocalServer, redis: Redis, stream: str
) -> None:
    with FaultProxy("127.0.0.1", server.port) as proxy:
        async with streamq.Queue(proxy.url, config=Config()) as q:
            first = await q.enqueue(stream, {"n": -1})
            keyed = await q.enqueue(stream, {"n": -2}, key="post-1")
            proxy.lose_next_reply()  # the server runs the next call; its answer never comes
            ids = await q.enqueue_many(
                stream, [{"n": i} for i in range(1200)], keys=["post-1"] + [None] * 1199
            )
        assert proxy.connections == 2  # the call went again, on a new connection
    assert ids[0] == keyed  # the key was held by a live job: its id, as without the fault
    assert len(set(ids[1:])) == 1199
    in_lane = await lane_job_ids(redis, stream)
    twice = len(in_lane) - len(set(in_lane))
    print(f"\nfaults: a lost enqueue answer, 1,200 jobs sent again: added twice {twice}")
    assert sorted(in_lane) == sorted([first, keyed, *ids[1:]])  # each once


@pytest.mark.anyio
async def test_an_enqueue_into_a_black_hole_fails_in_one_line_within_its_timeout(
    server: LocalServer, redis: Redis, stream: str
) -> None:
    timeout = 6.0
    with FaultProxy("127.0.0.1", server.port) as proxy:
        async with streamq.Queue(proxy.url, config=Config(socket_timeout=timeout)) as q:
            first = await q.enqueue(stream, {"n": 0})
            proxy.black_hole()
            began = time.monotonic()
            with anyio.fail_after(2 * timeout + 5), pytest.raises(streamq.ConnectionFailed) as err:
                await q.enqueue(stream, {"n": 1})
            waited = time.monotonic() - began
            proxy.passthrough()
            assert await q.enqueue(stream, {"n": 2})  # the same Queue works again
    message = str(err.value)
    assert "\n" not in message
    assert f"no answer from Redis within {timeout:g}s" in message
    assert waited >= timeout  # it waited out the timeout, no less
    # The request was swallowed on its way: it never reached the server.
    assert len(await lane_job_ids(redis, stream)) == 2
    assert first in await lane_job_ids(redis, stream)


@pytest.mark.parametrize(("fault", "exit_code"), [("cut", 1), ("black_hole", 3)])
def test_the_cli_enqueue_through_a_dead_link_fails_in_one_line(
    server: LocalServer, stream: str, tmp_path: Any, fault: str, exit_code: int
) -> None:
    """A refused connection is a runtime failure (1); a server that never answers, a timeout
    (3), as the exit codes say (docs/command-line.md)."""
    config = tmp_path / "streamq.toml"
    config.write_text('socket_timeout = "6s"\n')
    with FaultProxy("127.0.0.1", server.port) as proxy:
        getattr(proxy, fault)()
        done = run_cli(
            "enqueue", "--config", str(config), "--redis-url", proxy.url, "--stream", stream,
            "--payload", '{"n": 1}', timeout=30,
        )  # fmt: skip
    assert done.returncode == exit_code
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"streamq: error: cannot reach Redis at {proxy.url}")

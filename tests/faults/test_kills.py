"""Faults a fleet meets, each ending with its figures: jobs lost (must be 0) and jobs run twice.

Short by default; ``STREAMQ_FAULTS_LONG=1`` runs the long versions. A server killed with
SIGKILL under ``appendfsync always`` restarts with every write it acknowledged. Under
``everysec`` it can restart without its last writes, up to EVERYSEC_WINDOW seconds of them,
when the disk was slow: lost deliveries and acknowledgements make jobs run again, and jobs
enqueued in that window are lost; the tests measure both. Figures print at the end
of each test (``pytest -s`` shows them) and are recorded in docs/reliability.md.
Runs are recorded in the shared test server, never in the server the test kills.
"""

from __future__ import annotations

import random
import time

import anyio
import pytest
import redis as sync_redis

import streamq
from streamq import keys
from streamq.server import LocalServer
from tests.faults.fleet import LONG, enqueue, figures, finish, states, wait_until_done, worker

EVERYSEC_WINDOW = 2.5
"""Seconds of acknowledged writes a killed server can lack with ``appendfsync everysec``: it
writes its AOF buffer to the file once a second, and while the disk is still busy with the
last fsync it holds the write back for up to 2 s more (the replies have gone out meanwhile)."""


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
        wait_until_done(record, stream, jobs, within=180, ids=ids)
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
    server: LocalServer, redis_url: str, stream: str, fsync: str
) -> None:
    jobs = 20_000 if LONG else 3_000
    record = sync_redis.Redis.from_url(redis_url)
    args = ["--appendfsync", fsync]
    with LocalServer(server.binary, persistence=True, extra_args=args) as srv:
        ids = enqueue(srv.url, stream, jobs)
        time.sleep(EVERYSEC_WINDOW)  # the enqueue itself is in the AOF file
        pool = [worker(srv.url, redis_url, stream) for _ in range(2)]
        try:
            deadline = time.monotonic() + 60
            while record.hlen(f"{stream}:succeeded") < jobs // 3:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            srv.kill()  # SIGKILL: no shutdown save, only what the AOF holds
            at_kill = record.hlen(f"{stream}:succeeded")
            srv.restart()
            restarted = sync_redis.Redis.from_url(srv.url)
            wait_until_done(record, stream, jobs, within=180, ids=ids, server=restarted)
            end_states = states(restarted, stream, ids)
        finally:
            finish(pool)
        lost, twice = figures(record, stream, ids)
    print(
        f"\nfaults: server SIGKILL at {at_kill}/{jobs} done, appendfsync {fsync}, "
        f"restarted: lost {lost}, ran twice {twice}"
    )
    assert lost == 0
    assert end_states == {b"done"}


@pytest.mark.slow
@pytest.mark.anyio
@pytest.mark.timeout(120)
@pytest.mark.parametrize("fsync", ["always", "everysec"])
async def test_enqueues_acknowledged_before_a_server_kill_survive_it(
    server: LocalServer, stream: str, fsync: str
) -> None:
    """The window itself: a producer enqueues without pause while the server is SIGKILLed and
    restarted. With `always` every acknowledged job survives; with `everysec` only those
    acknowledged in the last EVERYSEC_WINDOW seconds before the kill may be missing."""
    acknowledged: list[tuple[float, list[str]]] = []
    args = ["--appendfsync", fsync]
    with LocalServer(server.binary, persistence=True, extra_args=args) as srv:
        async with streamq.connect(srv.url) as q:
            stop = anyio.Event()

            async def produce() -> None:
                n = 0
                while not stop.is_set():
                    # A call cut by the kill is sent again after the restart, same ids.
                    ids = await q.enqueue_many(stream, [{"n": n + i} for i in range(50)])
                    acknowledged.append((time.monotonic(), ids))
                    n += 50

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(produce)
                await anyio.sleep(1.5)
                killed_at = time.monotonic()
                await anyio.to_thread.run_sync(srv.kill)
                await anyio.to_thread.run_sync(srv.restart)
                await anyio.sleep(0.5)
                stop.set()
        check = sync_redis.Redis.from_url(srv.url)
        with check.pipeline(transaction=False) as pipe:
            for _, ids in acknowledged:
                for job_id in ids:
                    pipe.exists(keys.job(stream, job_id))
            found = iter(pipe.execute())
        queued = sum(check.xlen(lane) for lane in keys.lanes(stream))
    lost = [(at, job_id) for at, ids in acknowledged for job_id in ids if not next(found)]
    before = sum(len(ids) for at, ids in acknowledged if at < killed_at)
    added_twice = queued - (sum(len(ids) for _, ids in acknowledged) - len(lost))
    oldest = max((killed_at - at for at, _ in lost), default=0.0)
    print(
        f"\nfaults: appendfsync {fsync}, server SIGKILL while enqueuing: {before} jobs "
        f"acknowledged before the kill, lost {len(lost)} (the oldest {oldest * 1000:.0f} ms "
        f"before the kill), added twice {added_twice}"
    )
    assert before > 0
    assert added_twice == 0
    if fsync == "always":
        assert lost == []
    else:
        assert oldest < EVERYSEC_WINDOW

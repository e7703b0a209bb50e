"""Recovery by heartbeat (docs/recovery.md): a worker whose heartbeat lapses loses its jobs to a
live worker at once, not after the visibility timeout; a worker that only blocks its event loop
keeps beating and keeps its jobs; a frozen worker that comes back is fenced, so only the new
owner's outcome is recorded; a server restart starts a new epoch instead of looking like every
worker died.

The visibility timeout is set far beyond each test's deadline (or, for the restart, shorter
than the downtime), so a test can pass only through the mechanism it is about. Deadlines are
how long a test waits before failing, never the figure under test: the time recovery takes is
measured by the bench (``python -m bench recovery``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
import redis as sync_redis

from streamq import keys
from streamq.server import LocalServer
from tests.conftest import run_cli
from tests.faults.fleet import finish, poll, worker

LONG_VISIBILITY = "600s"
"""Far beyond every deadline here: a job taken over within one was taken by its heartbeat."""


def enqueue(url: str, stream: str, jobs: int) -> list[str]:
    lines = "".join(json.dumps({"n": i}) + "\n" for i in range(jobs))
    added = run_cli("enqueue", "--redis-url", url, "--stream", stream, "--payload", "-",
                    input=lines)  # fmt: skip
    assert added.returncode == 0, added.stderr
    return added.stdout.split()


def spawn(
    url: str,
    record_url: str,
    stream: str,
    visibility: str,
    concurrency: int,
    job_seconds: str = "0.002",
    *,
    failing: bool = False,
) -> subprocess.Popen[str]:
    env = {"STREAMQ_TEST_JOB_SECONDS": job_seconds, "STREAMQ_TEST_RAISE": "1" if failing else ""}
    return worker(
        url, record_url, stream,
        "--visibility-timeout", visibility, "--concurrency", str(concurrency), "--prefetch", "0",
        env=env,
    )  # fmt: skip


def consumer_of(client: sync_redis.Redis, stream: str, pid: int) -> str | None:
    """The consumer name of process ``pid`` (host-pid-random), as its heartbeat wrote it."""
    fields: Any = client.hkeys(keys.liveness(stream))
    for field in fields:
        name: str = field.decode().removeprefix("alive:")
        if field.startswith(b"alive:") and name.rsplit("-", 2)[1] == str(pid):
            return name
    return None


def reclaims(client: sync_redis.Redis, stream: str) -> list[dict[bytes, bytes]]:
    gone: Any = client.xrange(keys.workers_gone(stream))
    return [fields for _, fields in gone if fields[b"kind"] == b"reclaimed"]


def ran(record: sync_redis.Redis, stream: str) -> dict[bytes, int]:
    runs: Any = record.hgetall(f"{stream}:runs")
    return {job: int(n) for job, n in runs.items()}


def succeeded(record: sync_redis.Redis, stream: str) -> int:
    return int(record.hlen(f"{stream}:succeeded"))


@pytest.mark.slow
def test_a_killed_workers_jobs_are_taken_over_long_before_the_visibility_timeout(
    redis_url: str, stream: str
) -> None:
    client = sync_redis.Redis.from_url(redis_url)
    ids = enqueue(redis_url, stream, 8)
    victim = spawn(redis_url, redis_url, stream, LONG_VISIBILITY, 8, "3600")
    survivor: subprocess.Popen[str] | None = None
    try:
        poll("the victim running every job", lambda: len(ran(client, stream)) == 8)
        survivor = spawn(redis_url, redis_url, stream, LONG_VISIBILITY, 8)
        poll("the survivor beating", lambda: consumer_of(client, stream, survivor.pid) is not None)
        victim_name = consumer_of(client, stream, victim.pid)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        # Well under the visibility timeout: only the lapsed heartbeat can have moved them.
        poll("the victim's jobs done by the survivor", lambda: succeeded(client, stream) == 8, 120)
    finally:
        finish([victim, *([survivor] if survivor else [])])
    [taken] = reclaims(client, stream)
    assert taken[b"from"].decode() == victim_name
    assert taken[b"why"] == b"heartbeat lapsed"
    assert sorted(taken[b"jobs"].decode().split()) == sorted(ids)
    assert all(n == 2 for n in ran(client, stream).values())  # the victim's run, the survivor's


@pytest.mark.slow
def test_a_worker_whose_handler_blocks_its_loop_keeps_its_jobs_while_it_beats(
    redis_url: str, stream: str
) -> None:
    """Alive but slow: the handler blocks the event loop (time.sleep) five liveness timeouts
    long; the heartbeat thread beats on, so a live worker with room takes nothing."""
    client = sync_redis.Redis.from_url(redis_url)
    env = {"STREAMQ_TEST_RECORD_URL": redis_url, "STREAMQ_TEST_RECORD": stream}
    args = ["--redis-url", redis_url, "--stream", stream, "--concurrency", "1",
            "--visibility-timeout", LONG_VISIBILITY, "--log-level", "ERROR"]  # fmt: skip
    added = run_cli("enqueue", *args[:4], "--payload", json.dumps({"block": 10}))
    assert added.returncode == 0, added.stderr
    slow = subprocess.Popen(
        [sys.executable, "-m", "streamq", "consume", *args,
         "--handler", "tests.handlers:misbehave"],
        env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    other: subprocess.Popen[str] | None = None
    try:
        poll("the slow handler blocking its loop", lambda: len(ran(client, stream)) == 1)
        other = spawn(redis_url, redis_url, stream, LONG_VISIBILITY, 8)
        poll("the other worker beating", lambda: consumer_of(client, stream, other.pid) is not None)
        # The other worker was beating, with room, while the slow handler still blocked.
        assert succeeded(client, stream) == 0, "the block ended before the other worker beat"
        poll("the slow handler's job done", lambda: succeeded(client, stream) == 1)
    finally:
        finish([slow, *([other] if other else [])])
    assert list(ran(client, stream).values()) == [1]
    assert reclaims(client, stream) == []


@pytest.mark.slow
def test_a_frozen_worker_that_comes_back_records_nothing_for_the_jobs_taken_from_it(
    redis_url: str, stream: str
) -> None:
    """The fence. A worker frozen with SIGSTOP (its heartbeat thread too) loses its jobs; once
    thawed its handlers end at once, failing, before the new owner's slower runs succeed.
    Unfenced, its retries would be recorded (the entries are still pending, with the new owner)
    and the jobs would run a third time; fenced, only the new owner's outcome is recorded."""
    client = sync_redis.Redis.from_url(redis_url)
    ids = enqueue(redis_url, stream, 4)
    frozen = spawn(redis_url, redis_url, stream, LONG_VISIBILITY, 4, "3", failing=True)
    new_owner: subprocess.Popen[str] | None = None
    try:
        poll("the first worker running every job", lambda: len(ran(client, stream)) == 4)
        frozen.send_signal(signal.SIGSTOP)
        frozen_name = consumer_of(client, stream, frozen.pid)
        new_owner = spawn(redis_url, redis_url, stream, LONG_VISIBILITY, 4, "6")
        poll("the jobs taken over", lambda: len(reclaims(client, stream)) == 1)
        frozen.send_signal(signal.SIGCONT)
        poll("the new owner's runs done", lambda: succeeded(client, stream) == 4)
        owner_name = consumer_of(client, stream, new_owner.pid)
        # The thawed worker's failed runs had ended well before: their outcomes were sent.
        poll(
            "the thawed worker beating again", lambda: _deadline_ahead(client, stream, frozen_name)
        )
    finally:
        finish([frozen, *([new_owner] if new_owner else [])])
    assert client.hexists(keys.liveness(stream), f"fenced:{frozen_name}")
    assert all(n == 2 for n in ran(client, stream).values())  # never a third run
    for job in ids:
        record: Any = client.hgetall(keys.job(stream, job))
        assert record[b"state"] == b"done"
        assert record[b"worker"].decode() == owner_name
        assert b"attempts" not in record  # no failed run on record: the thawed one was dropped
    events: Any = client.xrange(keys.events(stream))
    kinds = [fields[b"type"] for _, fields in events]
    assert kinds.count(b"done") == 4
    assert b"retried" not in kinds


def _deadline_ahead(client: sync_redis.Redis, stream: str, consumer: str | None) -> bool:
    raw = client.hget(keys.liveness(stream), f"alive:{consumer}")
    return raw is not None and int(raw) > _server_ms(client)


def _server_ms(client: sync_redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_server_restart_takes_no_live_workers_jobs(
    server: LocalServer, redis_url: str, stream: str
) -> None:
    """The server is down longer than both the visibility timeout and the liveness timeout,
    under appendfsync always: every pending entry comes back idle for the downtime and every
    heartbeat deadline comes back passed. The new epoch counts neither, so the jobs running at
    the kill are not taken from the live worker running them: each runs once."""
    record = sync_redis.Redis.from_url(redis_url)
    args = ["--appendfsync", "always"]
    with LocalServer(server.binary, persistence=True, extra_args=args) as srv:
        enqueue(srv.url, stream, 4)
        served = sync_redis.Redis.from_url(srv.url)
        holder = spawn(srv.url, redis_url, stream, "3s", 4, "12")
        idle: subprocess.Popen[str] | None = None
        try:
            poll("the holder running every job", lambda: len(ran(record, stream)) == 4)
            idle = spawn(srv.url, redis_url, stream, "3s", 4)
            poll(
                "the idle worker beating", lambda: consumer_of(served, stream, idle.pid) is not None
            )
            epoch_before = served.hget(keys.liveness(stream), "epoch:since")
            srv.kill()
            time.sleep(4)  # the downtime is the fault: longer than both timeouts
            srv.restart()
            poll("the holder's jobs done", lambda: succeeded(record, stream) == 4, 120)
            epoch_after = served.hget(keys.liveness(stream), "epoch:since")
            taken = reclaims(served, stream)
        finally:
            finish([holder, *([idle] if idle else [])])
    assert epoch_after is not None
    assert epoch_after != epoch_before
    assert taken == []
    assert list(ran(record, stream).values()) == [1, 1, 1, 1]

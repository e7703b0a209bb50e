"""What the fault tests share: a workload, worker processes that record their runs, figures.

Jobs are enqueued with the CLI; workers are ``streamq consume`` processes running
``tests.handlers:record``, which notes every run in the shared test server (never through the
fault under test), so the figures count what handlers did, not what a worker reports.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from typing import Any

import redis as sync_redis

from streamq import keys
from tests.conftest import run_cli, spawn_worker

LONG = os.environ.get("STREAMQ_FAULTS_LONG") == "1"


def poll(what: str, check: Callable[[], bool], within: float = 60.0) -> None:
    """Wait until ``check()`` holds, failing with ``what`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {within:.0f}s"
        time.sleep(0.02)


def enqueue(url: str, stream: str, jobs: int) -> set[str]:
    lines = "".join(json.dumps({"n": i, "fail_first": i % 5 == 0}) + "\n" for i in range(jobs))
    added = run_cli("enqueue", "--redis-url", url, "--stream", stream, "--payload", "-",
                    input=lines, timeout=120)  # fmt: skip
    assert added.returncode == 0, added.stderr
    return set(added.stdout.split())


def worker(
    url: str, record_url: str, stream: str, *extra: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    env = {"STREAMQ_TEST_RECORD_URL": record_url, "STREAMQ_TEST_RECORD": stream,
           "STREAMQ_TEST_JOB_SECONDS": "0.002", **(env or {})}  # fmt: skip
    return spawn_worker(
        "--redis-url", url, "--stream", stream, "--handler", "tests.handlers:record",
        "--concurrency", "8", "--prefetch", "8", "--visibility-timeout", "1s",
        "--log-level", "ERROR", *extra, env=env,
    )  # fmt: skip


def assert_alive(processes: list[subprocess.Popen[str]]) -> None:
    for process in processes:
        if process.poll() is not None:
            output = process.stdout.read() if process.stdout is not None else ""
            raise AssertionError(f"worker {process.pid} exited {process.returncode}:\n{output}")


def finish(processes: list[subprocess.Popen[str]]) -> None:
    for process in processes:
        process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


def wait_until_done(
    record: sync_redis.Redis,
    stream: str,
    jobs: int,
    within: float,
    *,
    ids: set[str] | None = None,
    server: sync_redis.Redis | None = None,
) -> None:
    """Waits until the handler has recorded `jobs` successes; on a timeout the error says
    where the missing ones are (given their ids and the server that holds them)."""
    deadline = time.monotonic() + within
    while record.hlen(f"{stream}:succeeded") < jobs:
        if time.monotonic() > deadline:
            done = record.hlen(f"{stream}:succeeded")
            where = whereabouts(record, server, stream, ids) if ids is not None else ""
            raise AssertionError(f"{done} of {jobs} succeeded{where}")
        time.sleep(0.05)


def whereabouts(
    record: sync_redis.Redis, server: sync_redis.Redis | None, stream: str, ids: set[str]
) -> str:
    """A line per job that has not succeeded: its record, its runs, its dead letter."""
    server = server or record
    names: Any = record.hkeys(f"{stream}:succeeded")
    succeeded = {name.decode() for name in names}
    dead: dict[str, bytes] = {}
    letters: Any = server.xrange(keys.dead(stream))
    for _, fields in letters:
        values = b" ".join(fields.values())
        for job_id in ids - succeeded:
            if job_id.encode() in values:
                dead[job_id] = fields.get(b"_reason", b"?")
    lines = []
    for job_id in sorted(ids - succeeded)[:20]:
        state: Any = server.hgetall(keys.job(stream, job_id))
        runs = record.hget(f"{stream}:runs", job_id)
        line = f"{job_id}: runs={runs!r} dead={dead.get(job_id)!r} record={state!r}"
        entry = state.get(b"entry")
        for lane in keys.lanes(stream) if entry else []:
            if server.xrange(lane, entry, entry):
                pending = server.xpending_range(lane, keys.GROUP, entry, entry, 1)
                line += f" in {lane}, pending={pending!r}"
        lines.append(line)
    consumers = [
        server.xinfo_consumers(lane, keys.GROUP)
        for lane in keys.lanes(stream)
        if server.exists(lane)
    ]
    lines.append(f"consumers: {consumers!r}")
    return "".join("\n  " + line for line in lines)


def states(redis: sync_redis.Redis, stream: str, ids: set[str]) -> set[bytes | None]:
    """The set of states the jobs' records end in ({b"done"} when every job ran).

    Called while the workers still run: a job can have run while its acknowledgement was lost
    (a cut, a killed server), and then it is still pending until a worker reclaims it after
    the visibility timeout and runs it again. Polls until every record says done, or 60 s.
    """
    deadline = time.monotonic() + 60
    while True:
        with redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(keys.job(stream, job_id), "state")
            found = set(pipe.execute())
        if found == {b"done"} or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def figures(record: sync_redis.Redis, stream: str, ids: set[str]) -> tuple[int, int]:
    """(lost, succeeded more than once) from the handler's own record of its runs."""
    raw: Any = record.hgetall(f"{stream}:succeeded")
    succeeded = {k.decode(): int(v) for k, v in raw.items()}
    return len(ids - set(succeeded)), sum(1 for n in succeeded.values() if n > 1)

"""Handlers that misbehave, in real worker processes, each ending with its figures: jobs lost
(must be 0) and jobs run twice. A handler that hangs, one that blocks the event loop, one that
crashes the process; ``pytest -s tests/faults`` prints the figures, recorded in docs/reliability.md.

Every job but the misbehaving one is an ordinary job that must finish exactly as usual.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis

from streamq import keys
from tests.conftest import run_cli, spawn_worker, sync_client
from tests.faults.fleet import poll
from tests.observing import Lines

GOOD_JOBS = 300

pytestmark = pytest.mark.cluster


def enqueue(url: str, stream: str, payloads: list[Any], *options: str) -> list[str]:
    lines = "".join(json.dumps(payload) + "\n" for payload in payloads)
    added = run_cli("enqueue", "--redis-url", url, "--stream", stream, "--payload", "-",
                    *options, input=lines)  # fmt: skip
    assert added.returncode == 0, added.stderr
    return added.stdout.split()


class Workers:
    """``streamq consume`` processes running tests.handlers:misbehave, with their output."""

    def __init__(self, url: str, stream: str, config: Path, *flags: str) -> None:
        self.url, self.stream, self.config, self.flags = url, stream, config, flags
        self.running: list[tuple[subprocess.Popen[str], Lines]] = []
        self.exited: list[tuple[subprocess.Popen[str], Lines]] = []

    def start(self) -> Lines:
        env = {"STREAMQ_TEST_RECORD_URL": self.url, "STREAMQ_TEST_RECORD": self.stream}
        process = spawn_worker(
            "--redis-url", self.url, "--stream", self.stream, "--config", str(self.config),
            "--handler", "tests.handlers:misbehave", *self.flags, env=env,
        )  # fmt: skip
        lines = Lines(process)
        lines.wait_for(" consuming ")
        self.running.append((process, lines))
        return lines

    def restart_exited(self) -> int:
        """Like a supervisor: start a new worker for each one that exited; returns how many."""
        gone = [pair for pair in self.running if pair[0].poll() is not None]
        for pair in gone:
            self.running.remove(pair)
            self.exited.append(pair)
            self.start()
        return len(gone)

    def stop(self) -> None:
        for process, _ in self.running:
            process.terminate()
        for process, lines in self.running:
            process.wait(30)
            lines.rest()


@pytest.fixture
def config(tmp_path: Path, stream: str) -> Path:
    path = tmp_path / "streamq.toml"
    path.write_text(
        f'[streams.{stream}]\nmax_attempts = 3\ngrace = "5s"\n'
        'backoff = { base = "50ms", factor = 1, max = "50ms", jitter = 0 }\n'
    )
    return path


@pytest.fixture
def record(redis_url: str) -> Iterator[sync_redis.Redis]:
    client = sync_client(redis_url)
    yield client
    client.close()


def counts(record: sync_redis.Redis, stream: str, what: str) -> dict[str, int]:
    raw: Any = record.hgetall(f"{stream}:{what}")
    return {k.decode(): int(v) for k, v in raw.items()}


def figures(record: sync_redis.Redis, stream: str, good: list[str]) -> tuple[int, int]:
    """(good jobs lost, good jobs that succeeded more than once)."""
    succeeded = counts(record, stream, "succeeded")
    return len(set(good) - set(succeeded)), sum(1 for job in good if succeeded.get(job, 0) > 1)


def state_of(record: sync_redis.Redis, stream: str, job_id: str) -> tuple[str, str]:
    reply: Any = record.hmget(keys.job(stream, job_id), ["state", "error"])
    return tuple((value or b"").decode() for value in reply)  # type: ignore[return-value]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_handler_that_hangs_is_timed_out_retried_then_dead_and_others_keep_flowing(
    redis_url: str, stream: str, config: Path, record: sync_redis.Redis
) -> None:
    [hanging] = enqueue(redis_url, stream, [{"hang": True}])
    good = enqueue(redis_url, stream, [{"n": i} for i in range(GOOD_JOBS)])
    workers = Workers(redis_url, stream, config, "--job-timeout", "1s", "--concurrency", "4")
    lines = workers.start()
    try:
        poll("never dead", lambda: state_of(record, stream, hanging)[0] == "dead", 60)
        poll("stuck", lambda: len(counts(record, stream, "succeeded")) == GOOD_JOBS, 60)
    finally:
        workers.stop()
    lost, twice = figures(record, stream, good)
    runs = counts(record, stream, "runs")[hanging]
    print(f"\nfaults: a handler that hangs, --job-timeout 1s, max_attempts 3, with "
          f"{GOOD_JOBS} other jobs: lost {lost}, ran twice {twice}, hanging job ran {runs} "
          "times then dead")  # fmt: skip
    assert (lost, twice) == (0, 0)
    assert runs == 3
    assert state_of(record, stream, hanging) == ("dead", "gave up after 3 attempts: "
                                                 "JobTimeout: timed out after 1s")  # fmt: skip
    assert lines.wait_for("ran past its timeout: cancelling it")
    assert workers.running[0][0].returncode == 0


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_handler_blocking_the_event_loop_keeps_its_claim_and_the_stall_is_reported(
    redis_url: str, stream: str, config: Path, record: sync_redis.Redis
) -> None:
    # Blocks for three visibility timeouts: without the heartbeat thread, the second worker
    # (reclaiming every 0.5 s) would take the job over and run it again.
    workers = Workers(redis_url, stream, config, "--visibility-timeout", "2s")
    first = workers.start()
    [blocking] = enqueue(redis_url, stream, [{"block": 6.0}])
    poll("never started", lambda: blocking in counts(record, stream, "runs"), 20)
    second = workers.start()
    good = enqueue(redis_url, stream, [{"n": i} for i in range(GOOD_JOBS)])
    try:
        stall = first.wait_for("event loop stalled for", timeout=10)
        poll("never done", lambda: blocking in counts(record, stream, "succeeded"), 30)
        first.wait_for("event loop ran again after a stall of", timeout=10)
        poll("stuck", lambda: len(counts(record, stream, "succeeded")) == GOOD_JOBS + 1, 60)
    finally:
        workers.stop()
    lost, twice = figures(record, stream, [*good, blocking])
    runs = counts(record, stream, "runs")
    print(f"\nfaults: a handler blocking the event loop for 6 s (3 visibility timeouts), a "
          f"second worker reclaiming, {GOOD_JOBS} other jobs: lost {lost}, ran twice {twice}, "
          f"blocking job ran {runs[blocking]} time(s)")  # fmt: skip
    assert blocking in stall
    assert (lost, twice) == (0, 0)
    assert runs[blocking] == 1
    assert not [line for line in second.seen if "reclaimed" in line]
    assert state_of(record, stream, blocking)[0] == "done"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_handler_that_crashes_its_process_ends_dead_after_max_attempts(
    redis_url: str, stream: str, config: Path, record: sync_redis.Redis
) -> None:
    good = enqueue(redis_url, stream, [{"n": i} for i in range(GOOD_JOBS)])
    [poison] = enqueue(redis_url, stream, [{"crash": True}])
    good += enqueue(redis_url, stream, [{"n": i} for i in range(GOOD_JOBS, 2 * GOOD_JOBS)])
    # Crashed runs count as attempts: with max_attempts 3 (and max_deliveries 5) the poison
    # job must crash three workers, no more, then go to the dead letters. One job at a time
    # per worker: jobs running beside a crashing one die with it, and count an attempt too.
    workers = Workers(redis_url, stream, config, "--visibility-timeout", "1s",
                      "--concurrency", "1", "--prefetch", "0")  # fmt: skip
    workers.start()
    workers.start()
    crashes = 0
    try:
        deadline = time.monotonic() + 120
        while not (
            state_of(record, stream, poison)[0] == "dead"
            and len(counts(record, stream, "succeeded")) == len(good)
        ):
            assert time.monotonic() < deadline, f"{crashes} crashes; stuck"
            crashes += workers.restart_exited()
            time.sleep(0.05)
        crashes += workers.restart_exited()
    finally:
        workers.stop()
    lost, twice = figures(record, stream, good)
    runs = counts(record, stream, "runs")[poison]
    print(f"\nfaults: a handler that kills its process (os._exit) among {len(good)} jobs, "
          f"2 workers restarted as they die: {crashes} crashes, lost {lost}, ran twice "
          f"{twice}, poison job ran {runs} times then dead")  # fmt: skip
    assert lost == 0
    assert crashes == runs == 3
    state, error = state_of(record, stream, poison)
    assert state == "dead"
    assert error.startswith("gave up after 3 attempts: the worker running it stopped")
    letters: Any = record.xrange(keys.dead(stream))
    [(_, letter)] = letters
    assert poison.encode() in letter[b"j"]

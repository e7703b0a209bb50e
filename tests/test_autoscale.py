"""`streamq autoscale --target local` on a real server: it grows a pool for a burst, shrinks it
after the drain, loses nothing, and grows ahead of jobs scheduled to come due."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta

import anyio
import pytest
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from autoscaler import controller, targets
from autoscaler.policy import Policy
from streamq import keys
from streamq.config import Config
from tests.conftest import ROOT, free_port, run_cli, sync_client

SCALED = re.compile(r"(\S+): (\d+) -> (\d+) workers")

pytestmark = pytest.mark.cluster


def start_autoscaler(redis_url: str, stream: str, *flags: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "STREAMQ_TEST_RECORD_URL": redis_url,
        "STREAMQ_TEST_RECORD": stream,
        "STREAMQ_TEST_JOB_SECONDS": "0.02",
    }
    args = ["--redis-url", redis_url, "--stream", stream, "--handler", "tests.handlers:record"]
    args += ["--concurrency", "4", "--interval", "0.5", "--log-level", "INFO", *flags]
    return subprocess.Popen(
        [sys.executable, "-m", "streamq", "autoscale", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def read_scalings(
    process: subprocess.Popen[str], until: int | None, deadline_s: float
) -> list[tuple[float, int, int]]:
    """(time, from, to) of the decisions logged, until a later one scales to ``until`` (None:
    the first one only)."""
    assert process.stdout is not None
    seen: list[tuple[float, int, int]] = []
    deadline = time.monotonic() + deadline_s
    for line in process.stdout:
        match = SCALED.search(line)
        if match:
            seen.append((time.time(), int(match[2]), int(match[3])))
            if until is None or (int(match[3]) == until and len(seen) > 1):
                return seen
        assert time.monotonic() < deadline, seen
    raise AssertionError(f"autoscaler exited: {seen}")


def stop(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stdout is not None:
        process.stdout.close()


@pytest.mark.slow
def test_a_burst_scales_the_pool_from_one_to_several_and_back_without_losing_a_job(
    redis_url: str, stream: str
) -> None:
    client = sync_client(redis_url)
    scaler = start_autoscaler(
        redis_url, stream, "--min", "1", "--max", "4", "--target-drain", "5s",
        "--scale-down-window", "2s", "--idle-after", "2s",
    )  # fmt: skip
    try:
        [(_, before, after)] = read_scalings(scaler, until=None, deadline_s=30)
        assert (before, after) == (0, 1)  # the floor, with nothing to do yet
        lines = "".join(json.dumps({"n": i}) + "\n" for i in range(5000))
        added = run_cli("enqueue", "--redis-url", redis_url, "--stream", stream,
                        "--payload", "-", input=lines)  # fmt: skip
        assert added.returncode == 0, added.stderr
        scalings = read_scalings(scaler, until=1, deadline_s=120)
        deadline = time.monotonic() + 60
        while client.hlen(f"{stream}:succeeded") < 5000:  # the last worker finishes the drain
            assert time.monotonic() < deadline, client.hlen(f"{stream}:succeeded")
            time.sleep(0.05)
    finally:
        stop(scaler)
    assert scalings[0][1] == 1  # up from the one worker
    assert max(to for _, _, to in scalings) >= 3
    assert scalings[-1][2] == 1  # and back down after the drain
    assert client.hlen(f"{stream}:succeeded") == 5000
    assert sum(int(v) for v in client.hvals(f"{stream}:runs")) == 5000  # none ran twice
    depth = sum(client.xlen(lane) for lane in keys.lanes(stream))
    assert depth == 0  # nothing left pending


@pytest.mark.slow
def test_jobs_scheduled_a_minute_ahead_scale_the_pool_before_they_come_due(
    redis_url: str, stream: str
) -> None:
    due = datetime.now(UTC) + timedelta(seconds=60)
    lines = "".join(json.dumps({"n": i}) + "\n" for i in range(3000))
    added = run_cli("enqueue", "--redis-url", redis_url, "--stream", stream, "--payload", "-",
                    "--at", due.isoformat(), input=lines)  # fmt: skip
    assert added.returncode == 0, added.stderr
    scaler = start_autoscaler(redis_url, stream, "--max", "4", "--lead", "90s")  # local target
    try:
        [(when, before, after)] = read_scalings(scaler, until=None, deadline_s=30)
        assert scaler.stdout is not None
        started = 0
        for line in scaler.stdout:  # the workers log to the autoscaler's output as they start
            started += f"consuming {stream}" in line
            if started == 4:
                break
        ready = time.time()
    finally:
        stop(scaler)
    assert (before, after) == (0, 4)
    assert started == 4
    assert when < ready < due.timestamp() - 30  # up and running well before the jobs are due
    client = sync_client(redis_url)
    assert client.zcard(keys.delayed(stream)) == 3000  # none was due yet


@pytest.mark.anyio
async def test_only_one_controller_leads_and_a_new_leader_gets_a_higher_fence(
    redis: Redis, stream: str
) -> None:
    first = controller.RedisLeadership(redis, [stream], ttl_seconds=0.3)
    second = controller.RedisLeadership(redis, [stream], ttl_seconds=0.3)
    elsewhere = controller.RedisLeadership(redis, [stream + "-other"], ttl_seconds=0.3)
    assert await first.hold()
    assert not await second.hold()
    assert await elsewhere.hold()  # other streams, another lock
    assert await first.hold()  # renewed
    fence = first.fence
    assert fence is not None
    with anyio.fail_after(5):
        while not await second.hold():  # noqa: ASYNC110 - the lock lapses on the server
            await anyio.sleep(0.05)
    assert second.fence is not None
    assert second.fence > fence
    assert not await first.hold()  # it learns it lost


def test_decisions_are_exported_as_prometheus_metrics(redis_url: str, stream: str) -> None:
    lines = "".join(json.dumps({"n": i}) + "\n" for i in range(500))
    added = run_cli("enqueue", "--redis-url", redis_url, "--stream", stream, "--payload", "-",
                    input=lines)  # fmt: skip
    assert added.returncode == 0, added.stderr
    port = free_port()
    scaler = start_autoscaler(
        redis_url, stream, "--max", "3", "--dry-run", "--metrics-port", str(port)
    )
    wanted = f'streamq_autoscaler_desired_workers{{stream="{stream}"}} 3.0'
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    text = r.read().decode()
                if wanted in text:
                    break
            except OSError:
                pass  # not listening yet
            assert time.monotonic() < deadline, "no decision exported"
            time.sleep(0.1)
    finally:
        stop(scaler)
    assert f'streamq_autoscaler_backlog_jobs{{stream="{stream}"}} 500.0' in text
    assert f'streamq_autoscaler_scalings_total{{direction="up",stream="{stream}"}} 1.0' in text
    assert "streamq_autoscaler_leader 0.0" in text  # a dry run takes no lock: it leads nothing


@pytest.mark.anyio
async def test_the_local_target_replaces_a_crashed_worker(redis_url: str, stream: str) -> None:
    consume = ["--redis-url", redis_url, "--stream", stream, "--handler", "tests.handlers:record"]
    target = targets.LocalTarget({stream: consume}, grace_seconds=10)
    try:
        await target.scale(stream, 2)
        before = target.pids(stream)
        os.kill(before[0], signal.SIGKILL)
        with anyio.fail_after(20):
            while target.pids(stream)[0] == before[0]:
                assert await target.workers(stream) == 2
                await anyio.sleep(0.05)
        after = target.pids(stream)
        assert len(after) == 2
        assert before[1] in after
        assert before[0] not in after
    finally:
        await target.close()
    assert target.pids(stream) == []


class Blinking:
    """A leadership whose server fails once, then answers."""

    fence: int | None = None

    def __init__(self) -> None:
        self.calls = 0

    async def hold(self) -> bool:
        self.calls += 1
        if self.calls == 1:
            raise redis_errors.ConnectionError("the server went away")
        self.fence = 7
        return True

    async def still_leading(self) -> bool:
        return self.fence is not None

    async def release(self) -> None:
        self.fence = None


@pytest.mark.anyio
async def test_a_redis_blip_skips_a_tick_instead_of_stopping_the_autoscaler(
    redis: Redis, stream: str
) -> None:
    await redis.xadd(keys.lane(stream, "normal"), {"j": b"{}"})
    target = targets.DryRun()
    leadership = Blinking()
    await controller.run(
        redis, [stream], {stream: Policy(max_workers=3)}, target, Config(),
        leadership=leadership, interval=0.01, ticks=2,
    )  # fmt: skip
    assert leadership.calls == 2
    assert await target.workers(stream) == 1  # the second tick decided and acted

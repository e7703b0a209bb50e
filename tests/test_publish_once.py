"""Publish once across a crash: a worker process SIGKILLed after the platform accepted a post
but before the job was acknowledged. The job runs again elsewhere, finds the post at the
platform, and the simulator ends with exactly one post."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as sync_redis

from streamq import keys
from streamq.platforms.credentials import EnvCredentials
from streamq.server import LocalServer
from streamq.simulator import Fault, SimOptions, ThreadedSimulator
from tests.conftest import run_cli, spawn_worker
from tests.platform_helpers import PLATFORMS, USER_IDS, new_token, post_for

# One Valkey of the module's own below: the engine ids would run the same thing twice.
pytestmark = pytest.mark.any_engine


@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    with LocalServer() as srv:
        yield srv


def _wait(condition: object, what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.parametrize("platform", PLATFORMS)
def test_sigkill_between_acceptance_and_ack_publishes_once(
    redis_url: str, stream: str, platform: str, tmp_path: Path
) -> None:
    config = tmp_path / "streamq.toml"
    config.write_text(f'[streams.{stream}]\npublisher = "{platform}"\n')
    env = {
        EnvCredentials.variable(platform, "acme"): new_token(platform),
        "STREAMQ_CONFIG": str(config),
    }
    if platform in USER_IDS:
        env[EnvCredentials.variable(platform, "acme", "USER_ID")] = USER_IDS[platform]
    client = sync_redis.Redis.from_url(redis_url)
    with ThreadedSimulator(SimOptions(processing=0.05)) as sim:
        env["STREAMQ_PLATFORM_URL"] = sim.url
        # The platform takes the post, then holds its answer long past the kill.
        sim.add_fault(Fault(kind="hang", platform=platform, seconds=60))
        payload = json.dumps(post_for(platform, sim.url, "survives a crash"))
        enqueued = run_cli(
            "enqueue", "--redis-url", redis_url, "--stream", stream, "--payload", payload,
            "--account", "acme", env=env,
        )  # fmt: skip
        assert enqueued.returncode == 0, enqueued.stderr
        job_id = enqueued.stdout.strip()
        args = [
            "--redis-url", redis_url, "--stream", stream, "--publisher", platform,
            "--visibility-timeout", "1s", "--log-level", "WARNING",
        ]  # fmt: skip
        victim = spawn_worker(*args, env=env)
        survivor: subprocess.Popen[str] | None = None
        try:
            _wait(lambda: sim.posts_for(job_id) or victim.poll() is not None, "the post")
            assert victim.poll() is None, victim.communicate()[0]
            assert client.hget(keys.job(stream, job_id), "state") == b"queued"  # not acked
            victim.kill()
            victim.wait()
            survivor = spawn_worker(*args, env=env)
            state = keys.job(stream, job_id)
            _wait(lambda: client.hget(state, "state") == b"done", "the job to finish")
        finally:
            for process in (victim, survivor):
                if process is not None:
                    process.kill()
                    output = process.communicate()[0]
        [post] = sim.posts_for(job_id)  # exactly one post
        record = client.hgetall(keys.job(stream, job_id))
        assert record[b"attempt"] == b"2", output
        assert json.loads(record[b"result"]) == {
            "platform": platform,
            "post_id": post.id,
            "recovered": True,
        }

"""Secrets stay out of command lines, messages and records: the Redis password can come from
the environment or a file, and the autoscaler hands its workers the URL by environment."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import redis as sync_redis

from autoscaler import targets
from streamq import keys
from streamq.server import LocalServer
from tests.conftest import run_cli
from tests.test_cli import one_line_error

SECRET = "s3cret-in-a-file"


@pytest.fixture(scope="module")
def guarded() -> Iterator[LocalServer]:
    with LocalServer(extra_args=["--requirepass", SECRET]) as srv:
        yield srv


def test_the_password_can_come_from_the_environment_or_a_file(
    guarded: LocalServer, tmp_path: Path
) -> None:
    url = f"redis://127.0.0.1:{guarded.port}/0"  # no password in it
    one_line_error(run_cli("stats", "--redis-url", url), "refused the credentials")
    by_env = run_cli("stats", "--redis-url", url, env={"STREAMQ_REDIS_PASSWORD": SECRET})
    assert by_env.returncode == 0, by_env.stderr
    secret_file = tmp_path / "redis-password"
    secret_file.write_text(SECRET + "\n")
    by_file = run_cli(
        "stats", "--redis-url", url, env={"STREAMQ_REDIS_PASSWORD_FILE": str(secret_file)}
    )
    assert by_file.returncode == 0, by_file.stderr
    missing = run_cli(
        "stats", "--redis-url", url, env={"STREAMQ_REDIS_PASSWORD_FILE": str(tmp_path / "no")}
    )
    one_line_error(missing, "cannot read STREAMQ_REDIS_PASSWORD_FILE")
    wrong = run_cli("stats", "--redis-url", url, env={"STREAMQ_REDIS_PASSWORD": "guess"})
    one_line_error(wrong, "refused the credentials")
    assert "guess" not in wrong.stderr


@pytest.mark.anyio
async def test_local_workers_get_the_url_by_environment_not_on_their_command_line(
    guarded: LocalServer, stream: str
) -> None:
    url = f"redis://:{SECRET}@127.0.0.1:{guarded.port}/0"
    consume = ["--stream", stream, "--handler", "tests.handlers:record"]
    target = targets.LocalTarget({stream: consume}, 10, env={"STREAMQ_REDIS_URL": url})
    check = sync_redis.Redis.from_url(url)
    try:
        await target.scale(stream, 1)
        [pid] = target.pids(stream)
        command_line = await anyio.Path(f"/proc/{pid}/cmdline").read_bytes()
        assert b"consume" in command_line
        assert SECRET.encode() not in command_line
        with anyio.fail_after(20):  # it reached the server with the URL it was given
            while not check.exists(keys.lane(stream, "normal")):
                assert await target.workers(stream) == 1
                await anyio.sleep(0.05)
    finally:
        await target.close()
        check.close()

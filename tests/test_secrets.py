"""Secrets stay out of command lines, messages, logs, metrics and records: the Redis password
can come from the environment or a file, the autoscaler hands its workers the URL by
environment, and the admin token comes from the environment or a file. (Platform tokens:
tests/test_platforms.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import redis as sync_redis

from autoscaler import targets
from streamq import keys
from streamq.server import LocalServer
from tests.conftest import ROOT, run_cli, spawn_worker
from tests.observing import Lines
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


@pytest.mark.any_engine
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


def test_a_worker_given_the_password_by_file_shows_it_nowhere(
    guarded: LocalServer, tmp_path: Path, stream: str
) -> None:
    """Not in the worker's command line, its JSON logs (DEBUG), its /metrics, the job records,
    events and dead letters; and its heartbeat thread reaches the server with it too."""
    url = f"redis://127.0.0.1:{guarded.port}/0"
    secret_file = tmp_path / "redis-password"
    secret_file.write_text(SECRET + "\n")
    env = {"STREAMQ_REDIS_PASSWORD_FILE": str(secret_file)}
    lines = "".join(json.dumps({"n": i}) + "\n" for i in range(20)) + '{"block": 1.5}\n'
    added = run_cli("enqueue", "--redis-url", url, "--stream", stream, "--payload", "-",
                    input=lines, env=env)  # fmt: skip
    assert added.returncode == 0, added.stderr
    ids = added.stdout.split()
    record_url = f"redis://:{SECRET}@127.0.0.1:{guarded.port}/0"
    check = sync_redis.Redis.from_url(record_url)
    worker = spawn_worker(
        "--redis-url", url, "--stream", stream, "--handler", "tests.handlers:misbehave",
        "--visibility-timeout", "1s", "--metrics-port", "0", "--log-format", "json",
        "--log-level", "DEBUG",
        env={**env, "STREAMQ_TEST_RECORD_URL": record_url, "STREAMQ_TEST_RECORD": stream},
    )  # fmt: skip
    output = Lines(worker)
    try:
        metrics_url = json.loads(output.wait_for('"metrics_url"'))["metrics_url"]
        command_line = Path(f"/proc/{worker.pid}/cmdline").read_bytes()
        assert b"consume" in command_line
        assert SECRET.encode() not in command_line
        output.wait_for("event loop stalled for")  # the blocking job: the thread takes over
        deadline = time.monotonic() + 30
        while check.hlen(f"{stream}:succeeded") < len(ids):
            assert time.monotonic() < deadline, "jobs did not finish"
            time.sleep(0.05)
        exposition = httpx.get(metrics_url, timeout=10).text
        assert "streamq_jobs_completed_total" in exposition
        assert SECRET not in exposition
    finally:
        worker.terminate()
        worker.wait(30)
    seen = "\n".join(output.rest())
    assert "heartbeat could not refresh" not in seen
    assert SECRET not in seen
    stored: list[Any] = [check.hgetall(keys.job(stream, job_id)) for job_id in ids]
    stored += [check.xrange(keys.events(stream)), check.xrange(keys.dead(stream))]
    assert SECRET.encode() not in repr(stored).encode()
    check.close()


def test_a_wrong_password_stops_a_worker_in_one_line_without_echoing_it(
    guarded: LocalServer, stream: str
) -> None:
    url = f"redis://127.0.0.1:{guarded.port}/0"
    wrong = run_cli("consume", "--redis-url", url, "--stream", stream,
                    "--handler", "tests.handlers:noop",
                    env={"STREAMQ_REDIS_PASSWORD": "not-the-s3cret"})  # fmt: skip
    one_line_error(wrong, "refused the credentials")
    assert "not-the-s3cret" not in wrong.stderr + wrong.stdout


def test_the_admin_token_and_redis_password_stay_out_of_its_command_line_and_logs(
    guarded: LocalServer, tmp_path: Path
) -> None:
    token = f"admin-{uuid.uuid4().hex}"
    secret_file = tmp_path / "redis-password"
    secret_file.write_text(SECRET)
    process = subprocess.Popen(
        [sys.executable, "-m", "streamq", "admin", "--port", "0", "--log-level", "DEBUG",
         "--redis-url", f"redis://127.0.0.1:{guarded.port}/0"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "STREAMQ_ADMIN_TOKEN": token,
             "STREAMQ_REDIS_PASSWORD_FILE": str(secret_file)},
    )  # fmt: skip
    output = Lines(process)
    try:
        url = output.wait_for("streamq admin: serving").split()[-1]
        command_line = Path(f"/proc/{process.pid}/cmdline").read_bytes()
        assert token.encode() not in command_line
        assert SECRET.encode() not in command_line
        with httpx.Client(base_url=url, timeout=10) as client:
            near_miss = token[:-1] + ("0" if token[-1] != "0" else "1")
            for headers in ({}, {"Authorization": f"Bearer {near_miss}"},
                            {"Authorization": f"Basic {token}"}):  # fmt: skip
                refused = client.get("/api/stats", headers=headers)
                assert refused.status_code == 401
                assert token not in refused.text
            ok = client.get("/api/stats", headers={"Authorization": f"Bearer {token}"})
            assert ok.status_code == 200
            assert token not in ok.text
            assert SECRET not in ok.text
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(15)
    seen = "\n".join(output.rest())
    assert token not in seen
    assert SECRET not in seen


def test_oauth_tokens_client_secrets_and_the_store_key_show_nowhere(
    tmp_path: Path, stream: str
) -> None:
    """A worker on the token store refreshes tokens (2 s life, its OAuth client from
    STREAMQ_OAUTH_CLIENTS_FILE) and meets a refused refresh:
    no access token, refresh token, client secret or encryption key in its command line,
    its DEBUG JSON logs, its /metrics, the job records, events, dead letters, pause reasons
    or the token records (sealed)."""
    from streamq.simulator import SimOptions, ThreadedSimulator
    from streamq.tokenstore import Keyring, TokenSet, TokenStore

    key = Keyring.generate("k1")
    client_secret = f"client-secret-{uuid.uuid4().hex}"
    config = tmp_path / "tokens.toml"
    config.write_text(f'[streams.{stream}]\npublisher = "x"\nlimits = []\n')
    clients = tmp_path / "clients.json"
    clients.write_text(json.dumps({"x": {"client_id": "app", "client_secret": client_secret}}))
    with LocalServer() as srv, ThreadedSimulator(SimOptions(access_ttl=2.0)) as sim:
        url = srv.url

        async def setup() -> list[str]:
            import streamq
            from streamq.config import load_config

            async with streamq.connect(url, config=load_config(str(config))) as q:
                store = TokenStore(q.redis, Keyring.parse(key))
                for account in ("good", "revoked"):
                    answer = sim.oauth.sign_in("x", f"x-{account}")
                    await store.put("x", account, TokenSet.from_answer(answer))
                sim.oauth.revoke("x", "x-revoked")
                await q.redis.hset(keys.token_record("x", "revoked"), "expires_at_ms", 1)
                return [
                    await q.enqueue(stream, {"text": f"post {n}"}, account=account, delay=n * 0.2)
                    for n in range(15)
                    for account in ("good", "revoked")
                ]

        ids = anyio.run(setup)
        env = {
            "STREAMQ_CONFIG": str(config),
            "STREAMQ_CREDENTIALS": "store",
            "STREAMQ_TOKEN_KEYS": key,
            "STREAMQ_PLATFORM_URL": sim.url,
            # The client from a file (STREAMQ_X_CLIENT_SECRET is covered by the load test).
            "STREAMQ_OAUTH_CLIENTS_FILE": str(clients),
        }
        worker = spawn_worker(
            "--redis-url", url, "--stream", stream, "--metrics-port", "0",
            "--log-format", "json", "--log-level", "DEBUG", env=env,
        )  # fmt: skip
        output = Lines(worker)
        check = sync_redis.Redis.from_url(url)
        try:
            metrics_url = json.loads(output.wait_for('"metrics_url"'))["metrics_url"]
            command_line = Path(f"/proc/{worker.pid}/cmdline").read_bytes()
            deadline = time.monotonic() + 60
            while {check.hget(keys.job(stream, i), "state") for i in ids} != {b"done", b"paused"}:
                assert time.monotonic() < deadline, "jobs did not finish"
                time.sleep(0.05)
            exposition = httpx.get(metrics_url, timeout=10).text
        finally:
            worker.terminate()
            worker.wait(30)
        seen = "\n".join(output.rest())
        stored: list[Any] = [check.hgetall(keys.job(stream, job_id)) for job_id in ids]
        stored += [check.xrange(keys.events(stream)), check.xrange(keys.dead(stream))]
        stored += [check.hgetall(keys.pause_reasons(stream))]
        stored += [check.hgetall(keys.token_record("x", a)) for a in ("good", "revoked")]
        check.close()
        secrets = [*sim.oauth.issued, *sim.oauth.grants, client_secret, key.split(":")[1]]
    assert sim.summary()["refreshes"] >= 1
    assert "account.reauth_required" in repr(stored)
    everything = repr(stored) + seen + exposition + command_line.decode(errors="replace")
    assert [s for s in secrets if s in everything] == []

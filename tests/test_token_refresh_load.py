"""Token refresh across worker processes: the load guarantee and the hard case of a worker
killed in the middle of a refresh. Real ``streamq consume`` processes, a real server, the
simulator's token endpoints over loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest

import streamq
from streamq import keys
from streamq.config import load_config
from streamq.server import LocalServer
from streamq.simulator import SimOptions, Simulator, ThreadedSimulator
from streamq.tokenstore import Keyring, TokenSet, TokenStore
from tests.conftest import run_cli, spawn_worker, sync_client

KEY = Keyring.generate("k1")
CLIENT_SECRET = "client-secret-load-0123456789abcdef"


# Load tests of processes and sockets: run on Valkey only, to keep the suite short (the store's
# scripts run on both engines and the cluster in test_tokens.py).
pytestmark = pytest.mark.any_engine


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest) -> Iterator[LocalServer]:
    """A server of this module's own, of the engine the test is parametrized with."""
    binary = None if request.param == "valkey" else shutil.which("redis-server")
    with LocalServer(binary) as srv:
        yield srv


class Output:
    """A worker's log, drained by a thread so that the pipe never fills."""

    def __init__(self, worker: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self.consuming = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(worker,), daemon=True)
        self._thread.start()

    def _read(self, worker: subprocess.Popen[str]) -> None:
        assert worker.stdout is not None
        for line in worker.stdout:
            self.lines.append(line)
            if " consuming " in line:
                self.consuming.set()


def start(
    args: list[str], env: dict[str, str], count: int = 1
) -> list[tuple[subprocess.Popen[str], Output]]:
    """``count`` worker processes, started together; returns once each is consuming."""
    started = []
    for _ in range(count):
        worker = spawn_worker(*args, env=env)
        started.append((worker, Output(worker)))
    for _, output in started:
        if not output.consuming.wait(30):
            stop([w for w, _ in started])
            raise AssertionError("worker did not start: " + "".join(output.lines))
    return started


def stop(workers: list[subprocess.Popen[str]]) -> None:
    for worker in workers:
        if worker.poll() is None:
            worker.terminate()
    for worker in workers:
        try:
            worker.wait(15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def wait(condition: Callable[[], bool], what: str, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def wait_for_progress(count: Callable[[], int], target: int, what: str, stall: float = 15) -> None:
    """Until ``count()`` reaches ``target``, failing only when it stops growing for ``stall``
    seconds: how fast posts go out is the machine's business (bench/, not a timed test), and a
    loaded machine must not fail a run that is still making progress."""
    seen, moved = count(), time.monotonic()
    while seen < target:
        assert time.monotonic() - moved < stall, f"{what}: {seen} of {target}, stalled"
        time.sleep(0.05)
        now = count()
        if now != seen:
            seen, moved = now, time.monotonic()


def worker_env(sim: Simulator, config: Path) -> dict[str, str]:
    return {
        "STREAMQ_CONFIG": str(config),
        "STREAMQ_CREDENTIALS": "store",
        "STREAMQ_TOKEN_KEYS": KEY,
        "STREAMQ_PLATFORM_URL": sim.url,
        "STREAMQ_X_CLIENT_ID": "load-client",
        "STREAMQ_X_CLIENT_SECRET": CLIENT_SECRET,
    }


def sign_in(redis_url: str, sim: Simulator, accounts: list[str]) -> list[str]:
    """Each account signs in at the simulator; its tokens go into the store. Returns every
    token and refresh token handed out (to look for in logs)."""
    given: list[str] = []

    async def put() -> None:
        async with streamq.connect(redis_url) as q:
            store = TokenStore(q.redis, Keyring.parse(KEY))
            for account in accounts:
                answer = sim.oauth.sign_in("x", f"x-{account}")
                given.extend([answer["access_token"], answer["refresh_token"]])
                await store.put("x", account, TokenSet.from_answer(answer))

    anyio.run(put)
    return given


@pytest.mark.slow
def test_tokens_expiring_every_two_seconds_cost_no_post_and_one_refresh_per_expiry(
    server: LocalServer, tmp_path: Path
) -> None:
    """8 workers (4 partitions x 2 processes), 2,000 posts of 50 accounts spread over 4 s,
    access tokens that live 2 s: every post once, none failed, exactly one refresh per
    account per expiry (counted by the simulator, kept by the store)."""
    stream = f"xl{os.urandom(5).hex()}"
    config = tmp_path / "load.toml"
    config.write_text(
        f'[streams.{stream}]\npublisher = "x"\npartitions = 4\nlimits = []\nconcurrency = 16\n'
    )
    accounts = [f"a{i:02d}" for i in range(50)]
    posts, spread = 2000, 4.0
    with ThreadedSimulator(SimOptions(access_ttl=2.0, processing=0.0)) as sim:
        given = sign_in(server.url, sim, accounts)
        env = worker_env(sim, config)
        args = ["--redis-url", server.url, "--stream", stream]
        started = start(args, env, count=2)
        workers = [worker for worker, _ in started]
        try:
            began = time.monotonic()

            async def enqueue() -> list[str]:
                ids: list[str] = []
                async with streamq.connect(server.url, config=load_config(str(config))) as q:
                    batches = 20
                    for batch in range(batches):
                        size = posts // batches
                        numbers = range(batch * size, (batch + 1) * size)
                        ids += await q.enqueue_many(
                            stream,
                            [{"text": f"post {n}"} for n in numbers],
                            accounts=[accounts[n % len(accounts)] for n in numbers],
                            delay=batch * spread / batches,
                        )
                return ids

            job_ids = anyio.run(enqueue)
            try:
                wait_for_progress(lambda: len(sim.posts), posts, "posts")
            except AssertionError:
                tail = "".join(
                    line for _, out in started for line in out.lines if "INFO" not in line
                )[-6000:]
                raise AssertionError(f"{len(sim.posts)} posts, {sim.summary()}\n{tail}") from None
            elapsed = time.monotonic() - began
            time.sleep(0.3)  # anything beyond would be a duplicate
        finally:
            stop(workers)
        summary = sim.summary()
        client = sync_client(server.url)
        records = [
            client.hmget(keys.job(keys.stream_of_job(j), j), "state", "attempt") for j in job_ids
        ]
        dead = sum(client.xlen(keys.dead(part)) for part in keys.partitions(stream, 4))
        kept: dict[str, int] = {
            f"x/x-{a}": int(client.hget(keys.token_record("x", a), "refreshes") or 0)
            for a in accounts
        }
    by_key = {post.key for post in sim.posts}
    lost = sum(1 for job_id in job_ids if job_id not in by_key)
    refreshes = summary["refreshes_by_account"]
    figures = {
        "posts": len(sim.posts),
        "lost": lost,
        "duplicates": summary["duplicates"],
        "dead": dead,
        "refreshes": summary["refreshes"],
        "refreshes_per_account": (min(refreshes.values()), max(refreshes.values())),
        "early_refreshes": summary["early_refreshes"],
        "youngest_refreshed_life": summary["youngest_refreshed_life"],
        "refreshes_kept_differ": {a: (n, kept[a]) for a, n in refreshes.items() if kept[a] != n},
        "revoked_presented": summary["revoked_refresh_presented"],
        "token_errors": summary["token_errors"],
        "second_attempts": sum(1 for _, attempt in records if attempt not in (None, b"1")),
        "seconds": round(elapsed, 1),
    }
    print("token refresh load:", json.dumps(figures))
    warnings = "".join(line for _, out in started for line in out.lines if "INFO" not in line)
    figures["warnings"] = warnings[-4000:]
    assert (lost, summary["duplicates"], dead) == (0, 0, 0), figures
    # Every post done. (On a loaded machine a few may need a second attempt for reasons of
    # their own, a visibility timeout or a slow server: figures["second_attempts"].)
    assert {state for state, _ in records} == {b"done"}, figures
    # Exactly one refresh per account per expiry, counted by the simulator:
    # - every account's token expired during the run, and was refreshed;
    # - no refresh came before the token it replaced was in the last 10 % of its life (the
    #   keeper's refresh_before), so none was a second refresh for an expiry already refreshed,
    #   nor one without an expiry (1 ms of the store's clock rounding aside);
    # - no refresh token was presented twice (X rotates: a second use is refused, counted);
    # - each account's record counts exactly the refreshes the simulator answered for it:
    #   every answer was stored, none lost with a worker and none discarded.
    assert set(refreshes) == {f"x/x-{a}" for a in accounts}, figures
    assert summary["youngest_refreshed_life"] >= 0.9 - 0.001, figures
    assert summary["revoked_refresh_presented"] == 0, figures
    assert kept == refreshes, figures
    logs = "".join(line for _, out in started for line in out.lines)
    assert not [token for token in given if token in logs]
    assert CLIENT_SECRET not in logs
    assert KEY.split(":")[1] not in logs


@pytest.mark.slow
def test_a_worker_killed_mid_refresh_leaves_the_account_waiting_for_a_sign_in(
    server: LocalServer, tmp_path: Path
) -> None:
    """The platform rotated the refresh token and the worker died before storing the answer:
    the new refresh token is lost with it. The next refresh presents the old one, the platform
    answers invalid_grant, and the account pauses with reauth_required, its posts kept; a
    fresh sign-in (``streamq tokens put``) sends them."""
    stream = f"xk{os.urandom(5).hex()}"
    config = tmp_path / "kill.toml"
    config.write_text(
        f'[tokens]\nlease = 1.0\nwait = 1.0\n[streams.{stream}]\npublisher = "x"\n'
        'limits = []\nvisibility_timeout = "2s"\n'
    )
    with ThreadedSimulator(SimOptions(access_ttl=3600.0, processing=0.0)) as sim:
        sign_in(server.url, sim, ["acme"])
        client = sync_client(server.url)
        record = keys.token_record("x", "acme")
        client.hset(record, "expires_at_ms", int(time.time() * 1000) - 1)  # due now
        env = worker_env(sim, config)
        args = ["--redis-url", server.url, "--stream", stream]
        sim.oauth.hold = 60.0  # the answer waits after the rotation: a window to kill in

        async def enqueue() -> list[str]:
            async with streamq.connect(server.url, config=load_config(str(config))) as q:
                return [
                    await q.enqueue(stream, {"text": f"kept {n}"}, account="acme") for n in range(3)
                ]

        job_ids = anyio.run(enqueue)
        [(victim, _)] = start(args, env)
        survivor = None
        try:
            wait(lambda: sim.oauth.refreshes["x/x-acme"] == 1, "the rotation")
            victim.kill()  # SIGKILL: the rotated refresh token dies with the process
            victim.wait()
            sim.oauth.hold = 0.0
            [(survivor, _)] = start(args, env)

            def states() -> set[object]:
                return {client.hget(keys.job(stream, j), "state") for j in job_ids}

            wait(lambda: states() == {b"paused"}, f"the posts to wait: {states()}")
            assert client.hget(record, "state") == b"reauth_required"
            why = client.hget(keys.pause_reasons(stream), keys.pause_field("acme"))
            assert why == b"reauth_required"
            assert sim.posts == []
            assert sim.summary()["revoked_refresh_presented"] == 1
            # The killed worker's runs count as attempts (a crash, as for any job); waiting for
            # the sign-in uses none.
            attempts = {client.hget(keys.job(stream, j), "attempt") for j in job_ids}
            assert attempts <= {b"1", b"2"}
            # The app has the user sign in again and puts the new tokens.
            answer = sim.oauth.sign_in("x", "x-acme")
            put = run_cli(
                "tokens", "put", "x", "acme", "--redis-url", server.url, "--config", str(config),
                input=json.dumps(answer), env=env,
            )  # fmt: skip
            assert put.returncode == 0, put.stderr
            assert "3 waiting jobs released" in put.stdout
            wait(lambda: states() == {b"done"}, f"the posts to go: {states()}")
        finally:
            stop([w for w in (victim, survivor) if w is not None])
    assert sorted(str(p.key) for p in sim.posts) == sorted(job_ids)

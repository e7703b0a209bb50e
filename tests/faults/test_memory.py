"""A server at ``maxmemory`` with ``noeviction``: producers are refused in one line, workers
carry on, and every job queued before the refusal runs once memory is freed.

Each engine gets a server of its own (a full shared server would fail every other test); the
handlers record their runs in the shared test server.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis as sync_redis

from streamq import keys
from streamq.server import LocalServer
from tests.conftest import run_cli
from tests.faults.fleet import LONG, assert_alive, figures, finish, states, wait_until_done, worker

HEADROOM = (8 if LONG else 2) * 1024 * 1024
"""How much past the server's memory at the start it may grow: a few thousand jobs."""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_full_server_refuses_new_jobs_in_one_line_and_keeps_every_queued_one(
    server: LocalServer, redis_url: str, stream: str
) -> None:
    record = sync_redis.Redis.from_url(redis_url)
    engine = server.binary.name.removesuffix("-server")
    with LocalServer(server.binary) as srv:  # the shared server's engine, a server of its own
        full = sync_redis.Redis.from_url(srv.url)
        used: Any = full.info("memory")["used_memory"]
        full.config_set("maxmemory-policy", "noeviction")
        full.config_set("maxmemory", int(used) + HEADROOM)
        # A slow worker is running when memory runs out, so a backlog builds and the worker
        # meets the full server too.
        pool = [worker(srv.url, redis_url, stream, env={"STREAMQ_TEST_JOB_SECONDS": "0.1"})]
        try:
            queued: set[str] = set()
            batch = "".join(
                json.dumps({"n": i, "fail_first": i % 5 == 0, "pad": "x" * 200}) + "\n"
                for i in range(200)
            )
            while True:
                added = run_cli("enqueue", "--redis-url", srv.url, "--stream", stream,
                                "--payload", "-", input=batch)  # fmt: skip
                queued |= set(added.stdout.split())  # the ids of slices that went in
                if added.returncode != 0:
                    break
                assert len(queued) < 1_000_000, "never refused"
            assert added.returncode == 1
            refusal = added.stderr.strip().splitlines()
            assert len(refusal) == 1, added.stderr
            assert refusal[0].startswith("streamq: error: Redis refused to queue jobs on")
            assert "out of memory (maxmemory reached, policy noeviction)" in refusal[0]
            at_refusal = record.hlen(f"{stream}:succeeded")
            waiting = full.xlen(keys.lane(stream, "normal"))
            assert waiting > 0, "a backlog was queued when the server filled"
            # The worker meets the full server (health samples, retries' records are refused)
            # and carries on; once memory is freed, everything queued runs.
            time.sleep(2)  # the duration of the fault, not a wait for anything
            assert_alive(pool)
            full.config_set("maxmemory", 0)
            pool += [worker(srv.url, redis_url, stream) for _ in range(2)]  # drain it quickly
            wait_until_done(record, stream, len(queued), within=240)
            assert_alive(pool)
            end_states = states(full, stream, queued)
        finally:
            finish(pool)
    lost, twice = figures(record, stream, queued)
    print(
        f"\nfaults: {engine} at maxmemory (+{HEADROOM // 1024 // 1024} MB), noeviction: "
        f"{len(queued)} jobs queued before the refusal ({waiting} waiting, {at_refusal} done "
        f"then): lost {lost}, ran twice {twice}"
    )
    assert lost == 0
    assert end_states == {b"done"}

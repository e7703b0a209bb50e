"""The server's clock jumps two minutes forward, then back, in the middle of a run.

The server runs under libfaketime (Debian's ``faketime`` package; ``.ci/run`` installs it, and
the test is skipped where it is missing), whose offset is read from a file at every clock call,
so the jump happens while workers and producers are connected. Due times, claims' idle times
and stream ids all come from the server's clock: a jump forward makes jobs due within it run at
once and every claim look idle (its jobs are taken over and may run twice); a jump back holds
due jobs back by the jump. Nothing may be lost either way.
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

import streamq
from streamq.server import LocalServer
from tests.conftest import sync_client
from tests.faults.fleet import assert_alive, figures, finish, worker

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")
JUMP_SECONDS = 120


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(not LIBFAKETIME.exists(), reason="no libfaketime: apt-get install faketime")
def test_a_server_clock_jump_forward_and_back_loses_nothing(stream: str, tmp_path: Path) -> None:
    offset = tmp_path / "offset"
    offset.write_text("+0\n")
    env = {
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME_TIMESTAMP_FILE": str(offset),
        "FAKETIME_NO_CACHE": "1",
    }
    # Runs are recorded in a server of their own, whose clock stays put.
    with LocalServer() as records, LocalServer(env=env) as srv:
        redis_url = records.url
        record = sync_client(redis_url)
        server = sync_client(srv.url)

        async def enqueue(count: int, delay: float | None) -> list[str]:
            async with streamq.connect(srv.url) as q:
                payloads = [{"n": n, "fail_first": n % 5 == 0} for n in range(count)]
                return await q.enqueue_many(stream, payloads, delay=delay)

        def server_now() -> float:
            seconds, micros = server.time()
            return seconds + micros / 1e6

        ids = set(anyio.run(enqueue, 600, None)) | set(anyio.run(enqueue, 300, 60.0))
        pool = [worker(srv.url, redis_url, stream, env={"STREAMQ_TEST_JOB_SECONDS": "0.005"})]
        pool.append(worker(srv.url, redis_url, stream, env={"STREAMQ_TEST_JOB_SECONDS": "0.005"}))
        try:
            while record.hlen(f"{stream}:succeeded") < 200:
                assert_alive(pool)
                time.sleep(0.01)
            before = server_now()
            offset.write_text(f"+{JUMP_SECONDS}\n")  # forward: the delayed 300 are due now
            assert server_now() - before > JUMP_SECONDS - 5
            deadline = time.monotonic() + 60
            while record.hlen(f"{stream}:succeeded") < len(ids):
                assert time.monotonic() < deadline, "jobs due after the jump forward never ran"
                assert_alive(pool)
                time.sleep(0.02)
            offset.write_text("+0\n")  # back by two minutes: due times are the server's again
            later = set(anyio.run(enqueue, 300, 2.0)) | set(anyio.run(enqueue, 300, None))
            ids |= later
            deadline = time.monotonic() + 60
            while record.hlen(f"{stream}:succeeded") < len(ids):
                assert time.monotonic() < deadline, "jobs enqueued after the jump back never ran"
                assert_alive(pool)
                time.sleep(0.02)
            lost, twice = figures(record, stream, ids)
        finally:
            finish(pool)
    print(
        f"\nfaults: server clock +{JUMP_SECONDS}s then back: {len(ids)} jobs ({len(later)} "
        "after the "
        f"jump back); lost {lost}, ran twice {twice}"
    )
    assert lost == 0

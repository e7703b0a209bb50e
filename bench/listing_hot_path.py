"""What keeping the listing indexes costs the hot path: run by ``python -m bench listing`` as a
script, once per side, so the same measurement runs against this tree and against a copy of
an older commit (``PYTHONPATH`` picks which streamq it imports).

Self-contained on purpose (the standard library, redis-py and streamq's public API as it was
before the listings: ``connect``, ``enqueue_many(accounts=, delay=)``, ``keys.counts`` and
``streamq consume``), because the older tree has no ``bench`` module of this one.

    python bench/listing_hot_path.py URL STREAM JOBS ACCOUNTS PROCESSES HANDLER_DIR

Enqueues JOBS jobs scheduled two seconds ahead, each for one of ACCOUNTS accounts (what writes
the per-account due index), then starts PROCESSES ``streamq consume`` workers with a no-op
handler (found in HANDLER_DIR), which promote them (out of the index) and finish them (into
the finished index). Prints one JSON line: enqueue jobs/s, and drain jobs/s from the last
poll that saw no job done to the last job done (the workers' start-up is not counted); and the
server's time per job in each phase (INFO commandstats, every command's usec summed: less
swayed by a busy machine than the rates, though a server that loses its core mid-command
counts that too).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

import redis

import streamq
from streamq import keys

DELAY_S = 2.0
BATCH = 1000


async def enqueue(url: str, stream: str, jobs: int, accounts: int) -> float:
    async with streamq.connect(url) as q:
        started = time.perf_counter()
        for first in range(0, jobs, BATCH):
            n = min(BATCH, jobs - first)
            await q.enqueue_many(
                stream,
                [{"n": first + i} for i in range(n)],
                accounts=[f"acct{(first + i) % accounts}" for i in range(n)],
                delay=DELAY_S,
            )
        return jobs / (time.perf_counter() - started)


def drain(url: str, stream: str, jobs: int, processes: int, handler_dir: str) -> float:
    client = redis.Redis.from_url(url)
    time.sleep(DELAY_S)  # every job due before the workers start: they drain, not wait
    path = os.pathsep.join(filter(None, [handler_dir, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    command = [
        sys.executable, "-m", "streamq", "consume", "--redis-url", url, "--stream", stream,
        "--handler", "listing_noop:noop", "--log-level", "WARNING",
    ]  # fmt: skip
    workers = [
        subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(processes)
    ]
    try:
        first = last = None
        polled = time.perf_counter()
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            done = int(client.hget(keys.counts(stream), "done") or 0)
            now = time.perf_counter()
            if done and first is None:
                # From the poll before, which saw none done: a small run can be all done
                # between two polls.
                first = (polled, 0)
            polled = now
            if done >= jobs:
                last = now
                break
            time.sleep(0.01)
        if first is None or last is None:
            raise SystemExit(f"drain: only {done} of {jobs} jobs done")
        return (jobs - first[1]) / max(last - first[0], 1e-6)
    finally:
        for worker in workers:  # every job is done (or the run failed): nothing left to finish
            worker.kill()
            worker.wait()


def server_usec(url: str) -> int:
    stats: Any = redis.Redis.from_url(url).info("commandstats")
    return sum(int(row["usec"]) for row in stats.values())


def main() -> None:
    url, stream, jobs, accounts, processes, handler_dir = sys.argv[1:7]
    before = server_usec(url)
    enqueue_rate = asyncio.run(enqueue(url, stream, int(jobs), int(accounts)))
    enqueued = server_usec(url)
    drain_rate = drain(url, stream, int(jobs), int(processes), handler_dir)
    drained = server_usec(url)
    print(
        json.dumps({
            "streamq": os.path.dirname(os.path.dirname(os.path.abspath(streamq.__file__))),
            "enqueue jobs/s": round(enqueue_rate),
            "drain jobs/s": round(drain_rate),
            "enqueue server us/job": round((enqueued - before) / int(jobs), 1),
            "drain server us/job": round((drained - enqueued) / int(jobs), 1),
        })
    )  # fmt: skip


if __name__ == "__main__":
    main()

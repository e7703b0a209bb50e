"""BullMQ's side of ``python -m bench backlog`` (run by bench/.peers/bullmq/bin/python): the
same backlog through BullMQ's Python client, so both are measured on one machine in one run.

    python -m bench.peers.drivers.bullmq_backlog URL JOBS CHECKPOINTS DRAIN_JOBS

On a server of its own, it adds JOBS delayed jobs (an hour ahead) with the payload streamq's
probe uses, through ``Queue.addBulk`` in batches of 10,000 (BullMQ's fastest way in), reads
``used_memory`` at each of CHECKPOINTS and at the end; then adds DRAIN_JOBS jobs to run now
and runs them with a no-op ``Worker`` (BullMQ's default keeps every completed job's hash):
bytes per finished job. Prints one JSON line with the keys streamq's probe uses.

Standard library, redis-py and bullmq only: it runs in the peer's own virtualenv.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import redis as sync_redis
from bullmq import Queue, Worker

BATCH = 10_000
PAYLOAD_TEXT = "a post"
DELAY_MS = 3_600_000


def used_memory(client: sync_redis.Redis) -> int:
    info: Any = client.info("memory")
    return int(info["used_memory"])


def settle(client: sync_redis.Redis) -> None:
    """Let lazy frees finish before a reading."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        info: Any = client.info("memory")
        if int(info.get("lazyfree_pending_objects", 0)) == 0:
            return
        time.sleep(0.05)


async def fill(
    url: str, client: sync_redis.Redis, jobs: int, checkpoints: list[int]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    queue = Queue("backlog", {"connection": url})
    before = used_memory(client)
    spent = 0.0
    done = 0
    while done < jobs:
        size = min(BATCH, jobs - done)
        batch = [
            {
                "name": "post",
                "data": {"n": done + i, "text": PAYLOAD_TEXT},
                "opts": {"delay": DELAY_MS},
            }
            for i in range(size)
        ]
        started = time.perf_counter()
        await queue.addBulk(batch)
        spent += time.perf_counter() - started
        done += size
        if done in checkpoints:
            settle(client)
            out[f"bytes/job at {done}"] = (used_memory(client) - before) / done
    settle(client)
    out["bytes/job"] = (used_memory(client) - before) / jobs
    out["enqueue jobs/s"] = jobs / spent
    await queue.close()
    return out


async def drain(url: str, client: sync_redis.Redis, jobs: int) -> dict[str, Any]:
    queue = Queue("drained", {"connection": url})
    for at in range(0, jobs, BATCH):
        size = min(BATCH, jobs - at)
        await queue.addBulk(
            [{"name": "post", "data": {"n": at + i, "text": PAYLOAD_TEXT}} for i in range(size)]
        )
    settle(client)
    before = used_memory(client)
    finished = asyncio.Event()
    count = 0

    async def noop(job: Any, token: Any) -> None:
        nonlocal count
        count += 1
        if count >= jobs:
            finished.set()

    started = time.perf_counter()
    worker = Worker("drained", noop, {"connection": url, "concurrency": 100})
    await asyncio.wait_for(finished.wait(), 600)
    elapsed = time.perf_counter() - started
    await worker.close()
    # The last completions are written after the handler returns: wait for the counts.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # a count in Redis: no event to wait on
        if await queue.getJobCountByTypes("completed") >= jobs:
            break
        await asyncio.sleep(0.05)
    settle(client)
    key = next(iter(client.scan_iter("bull:drained:[0-9]*", count=1000)))
    out = {
        "drain jobs/s": jobs / elapsed,
        "finished record B": int(client.memory_usage(key, samples=0) or 0),
        "finished B/job all-in": (used_memory(client) - before) / jobs,
    }
    await queue.close()
    return out


async def main(argv: list[str]) -> None:
    url, jobs, marks, drain_jobs = argv
    client = sync_redis.Redis.from_url(url)
    checkpoints = [int(m) for m in marks.split(",") if m]
    out = await fill(url, client, int(jobs), checkpoints)
    out.update(await drain(url, client, int(drain_jobs)))
    client.close()
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))

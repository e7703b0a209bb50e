"""What a backlog of scheduled jobs costs: run by ``python -m bench backlog`` as a script, once
per side, so the same measurement runs against this tree and against a copy of an older
commit (``PYTHONPATH`` picks which streamq it imports).

Self-contained on purpose (the standard library, redis-py and streamq's public API as it was
before issue 28: ``connect``, ``enqueue_many(delay=)``, ``job``, ``jobs``, ``reschedule``,
``cancel``, ``Worker``), because the older tree has no ``bench`` module of this one.

    python bench/backlog_probe.py URL JOBS CHECKPOINTS HORIZON_S DUE_JOBS DRAIN_JOBS [OWNED]

On a server of its own (the caller starts one per run), it enqueues JOBS jobs with the tiny
payload of issue 28, in batches of 10,000, each batch due one step further into HORIZON_S
seconds (0: all an hour ahead, as the issue measured); reads ``used_memory`` at each of
CHECKPOINTS (comma-separated job counts) and at the end; times a lookup, a page of the
scheduled listing, a reschedule and a cancel of jobs among them; runs DUE_JOBS jobs due at one
instant two seconds ahead with the backlog in place (promotion lateness, server clock); then
drains DRAIN_JOBS jobs enqueued now on a second stream, whose records are kept (retention one
hour): bytes per finished record. With OWNED ("owned"), every scheduled job has a dedup key
(``post-<n>``) and an account (``account-<n // 100>``: 100 posts an account), as a scheduling
app's posts do. Prints one JSON line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import sys
import time
from typing import Any

import redis as sync_redis

import streamq
from streamq import connection, keys
from streamq.worker import Worker, WorkerOptions

BATCH = 10_000
PAYLOAD_TEXT = "a post"


def used_memory(client: sync_redis.Redis) -> int:
    info: Any = client.info("memory")
    return int(info["used_memory"])


def usage(client: sync_redis.Redis, key: str) -> int:
    return int(client.memory_usage(key, samples=0) or 0)


def server_usec(client: sync_redis.Redis) -> int:
    """Every command's server time since the last CONFIG RESETSTAT, µs (INFO commandstats):
    less swayed by a busy machine than the rates."""
    stats: Any = client.info("commandstats")
    return sum(int(row["usec"]) for row in stats.values())


def settle(client: sync_redis.Redis) -> None:
    """Let lazy frees finish before a reading."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        info: Any = client.info("memory")
        if int(info.get("lazyfree_pending_objects", 0)) == 0:
            return
        time.sleep(0.05)


async def fill(
    q: Any, client: sync_redis.Redis, stream: str, jobs: int, checkpoints: list[int],
    horizon_s: float, out: dict[str, Any], owned: bool = False,
) -> list[str]:  # fmt: skip
    """The backlog; returns some of its ids (every 1,000th)."""
    before = used_memory(client)
    client.config_resetstat()
    sample: list[str] = []
    batches = max(1, -(-jobs // BATCH))
    spent = 0.0
    done = 0
    for index in range(batches):
        size = min(BATCH, jobs - done)
        delay = 3600.0 if horizon_s <= 0 else 600.0 + horizon_s * index / batches
        payloads = [{"n": done + i, "text": PAYLOAD_TEXT} for i in range(size)]
        started = time.perf_counter()
        if owned:
            numbers = range(done, done + size)
            ids = await q.enqueue_many(
                stream, payloads, delay=delay, keys=[f"post-{n}" for n in numbers],
                accounts=[f"account-{n // 100}" for n in numbers],
            )  # fmt: skip
        else:
            ids = await q.enqueue_many(stream, payloads, delay=delay)
        spent += time.perf_counter() - started
        sample += ids[::1000]
        done += size
        if done in checkpoints:
            settle(client)
            out[f"bytes/job at {done}"] = (used_memory(client) - before) / done
    out["enqueue server us/job"] = server_usec(client) / jobs
    settle(client)
    used = used_memory(client) - before
    events = usage(client, keys.events(stream))
    out["bytes/job"] = used / jobs
    out["bytes/job without events"] = (used - events) / jobs
    out["events MB"] = events / 1e6
    out["enqueue jobs/s"] = jobs / spent
    out["used MB"] = used / 1e6
    return sample


async def by_id(q: Any, ids: list[str], out: dict[str, Any]) -> None:
    """Lookup, reschedule and cancel of jobs in the middle of the backlog, and the first page
    of the scheduled listing: median ms of 5."""
    picks = ids[len(ids) // 2 : len(ids) // 2 + 5]
    times: dict[str, list[float]] = {"lookup": [], "page": [], "reschedule": [], "cancel": []}
    stream = keys.stream_of_job(picks[0])
    for job_id in picks:
        for name in times:
            started = time.perf_counter()
            if name == "lookup":
                await q.job(job_id)
            elif name == "page":
                await q.jobs(stream, "scheduled", limit=100)
            elif name == "reschedule":
                await q.reschedule(job_id, delay=7200)
            else:
                await q.cancel(job_id)
            times[name].append((time.perf_counter() - started) * 1000)
    for name, values in times.items():
        out[f"{name} ms"] = statistics.median(values)


async def due_at_once(url: str, q: Any, stream: str, jobs: int, out: dict[str, Any]) -> None:
    """``jobs`` jobs due at one instant with the backlog waiting: start minus due, server ms."""
    redis = connection.client(url)
    late: list[float] = []
    all_started = asyncio.Event()

    async def handler(job: Any) -> None:
        seconds, micros = await redis.time()
        late.append(seconds * 1000 + micros / 1000 - job.run_at.timestamp() * 1000)
        if len(late) >= jobs:
            all_started.set()

    await q.enqueue_many(stream, [{"n": i} for i in range(jobs)], delay=2.0)
    worker = Worker(redis, stream, handler, WorkerOptions(concurrency=100))
    task = asyncio.create_task(worker.run())
    # What started is reported; the rest (if any) is not counted.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_started.wait(), 120)
    worker.stop()
    await task
    await redis.aclose()
    late.sort()
    out["first late ms"] = late[0] if late else None
    out["p50 late ms"] = late[len(late) // 2] if late else None
    out["p99 late ms"] = late[int(len(late) * 0.99) - 1] if late else None


async def drain(
    url: str, q: Any, client: sync_redis.Redis, stream: str, jobs: int, out: dict[str, Any]
) -> None:
    """Enqueue ``jobs`` now, drain them with one worker, keep their records: rates and bytes."""
    payloads = [{"n": i, "text": PAYLOAD_TEXT} for i in range(jobs)]
    started = time.perf_counter()
    ids: list[str] = []
    for at in range(0, jobs, BATCH):
        ids += await q.enqueue_many(stream, payloads[at : at + BATCH])
    out["enqueue now jobs/s"] = jobs / (time.perf_counter() - started)
    settle(client)
    before = used_memory(client)
    client.config_resetstat()
    redis = connection.client(url)

    async def noop(job: Any) -> None:
        return None

    started = time.perf_counter()
    await Worker(redis, stream, noop, WorkerOptions(burst=True, retention=3600)).run()
    out["drain jobs/s"] = jobs / (time.perf_counter() - started)
    out["drain server us/job"] = server_usec(client) / jobs
    await redis.aclose()
    settle(client)
    record = keys.job(stream, ids[len(ids) // 2])
    out["finished record B"] = usage(client, record)
    fields: Any = client.hkeys(record)
    out["finished fields"] = sorted(k.decode() for k in fields)
    out["finished B/job all-in"] = (used_memory(client) - before) / jobs


async def main(argv: list[str]) -> None:
    url, jobs, marks, horizon, due_jobs, drain_jobs = argv[:6]
    owned = argv[6:] == ["owned"]
    client = sync_redis.Redis.from_url(url)
    out: dict[str, Any] = {"streamq": streamq.__file__.rsplit("/streamq/", 1)[0]}
    checkpoints = [int(m) for m in marks.split(",") if m]
    async with streamq.connect(url) as q:
        ids = await fill(q, client, "backlog", int(jobs), checkpoints, float(horizon), out, owned)
        await by_id(q, ids, out)
        await due_at_once(url, q, "backlog", int(due_jobs), out)
        await drain(url, q, client, "drained", int(drain_jobs), out)
    client.close()
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))

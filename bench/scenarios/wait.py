"""wait: 1,000 waiters in one process (``q.wait`` on 1,000 jobs at once) while a worker process
finishes the jobs spread over a few seconds. Figure: how long after a job's final state (its
record's finished_at, by the server's clock, on the same machine) its ``wait`` returned,
p50/p99/max, beside the raw loop: one bare XREAD BLOCK of the same events stream, stamping each
final event as it arrives (the floor any reader of the events has)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from typing import Any

import anyio

import streamq
from bench.common import (
    ROOT,
    UVLOOP,
    BenchError,
    Section,
    engine_label,
    percentile,
    servers,
    stop_process,
)
from bench.report import UI
from streamq import connection, keys

COLUMNS = ["engine", "waiters", "reader", "p50 ms", "p99 ms", "max ms", "target p99 ms", "answered"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--waiters", type=int, default=1000, help="jobs waited for at once")
    parser.add_argument(
        "--spread", type=float, default=5.0, help="the jobs finish over about this many seconds"
    )


async def measure(url: str, stream: str, n: int, spread: float) -> dict[str, list[float]]:
    returned: dict[str, float] = {}
    raw: dict[str, float] = {}
    async with streamq.connect(url) as q:
        ids = await q.enqueue_many(stream, list(range(n)))
        wanted = set(ids)
        events_key = keys.events(stream)
        last: Any = await q.redis.xrevrange(events_key, count=1)
        cursor = last[0][0].decode() if last else "0-0"

        async def wait_for(job_id: str) -> None:
            await q.wait(job_id, timeout=spread + 60)
            returned[job_id] = time.time() * 1000

        async def raw_loop() -> None:
            nonlocal cursor
            reader = connection.reader(q.redis, events_key)
            try:
                while len(raw) < n:
                    reply: Any = await reader.xread({events_key: cursor}, count=1000, block=1000)
                    now = time.time() * 1000
                    for _, entries in reply or []:
                        for entry_id, fields in entries:
                            cursor = entry_id.decode()
                            job = fields[b"job"].decode()
                            if fields[b"type"] == b"done" and job in wanted:
                                raw[job] = now
            finally:
                await reader.aclose()

        command = [
            sys.executable, "-m", "streamq", "consume", "--redis-url", url, "--stream", stream,
            "--handler", "bench.handlers:pause", "--concurrency", str(max(1, n // 5)),
            "--log-level", "WARNING",
        ]  # fmt: skip
        async with anyio.create_task_group() as tg:
            for job_id in ids:
                tg.start_soon(wait_for, job_id)
            tg.start_soon(raw_loop)
            await anyio.wait_all_tasks_blocked()
            env = {"BENCH_SLEEP_S": str(spread * max(1, n // 5) / n)}
            # Started once every waiter is blocked; the short spawn blocks nothing measured.
            worker = subprocess.Popen(  # noqa: ASYNC220
                command, cwd=ROOT, env={**os.environ, **env},
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            try:
                with anyio.fail_after(spread + 90):
                    while len(returned) < n or len(raw) < n:  # noqa: ASYNC110 (a progress poll)
                        await anyio.sleep(0.1)
            except TimeoutError:
                raise BenchError(f"wait: only {len(returned)} of {n} waits returned") from None
            finally:
                stop_process(worker)
        finished: dict[str, float] = {}
        async with q.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(keys.job(stream, job_id), "finished_at")
            for job_id, value in zip(ids, await pipe.execute(), strict=True):
                finished[job_id] = float(value)
    return {
        "q.wait": [returned[j] - finished[j] for j in ids],
        "raw XREAD": [raw[j] - finished[j] for j in ids],
    }


def run(args: argparse.Namespace, ui: UI) -> list[Section]:
    n = 200 if args.quick else args.waiters
    section = Section("wait", f"wait: {n} concurrent waiters in one process", COLUMNS)
    with servers(args.engines) as started:
        for engine, srv in started:
            label = engine_label(engine, srv)
            stream = f"wait-{uuid.uuid4().hex[:10]}"
            with ui.step(f"{label}: {n} waiters", n):
                found = anyio.run(measure, srv.url, stream, n, args.spread, backend_options=UVLOOP)
            for reader, values in found.items():
                section.rows.append({
                    "engine": label, "waiters": n, "reader": reader,
                    "p50 ms": round(percentile(values, 0.5), 1),
                    "p99 ms": round(percentile(values, 0.99), 1),
                    "max ms": round(max(values), 1), "target p99 ms": 50,
                    "answered": len(values),
                })  # fmt: skip
    section.notes.append(
        "latency: the waiter's return (this process's clock) minus the record's finished_at "
        "(the server's clock, same machine); the raw XREAD row is the floor for any events reader"
    )
    return [section]

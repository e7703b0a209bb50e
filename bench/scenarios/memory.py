"""memory: Redis used_memory before, while and after 1,000,000 jobs (quick: 100,000) pass
through a stream with a short retention, so finished jobs' records expire. Memory should rise
to a plateau (jobs finished within one retention, times a record's size), stay flat there, and
fall back once the last records expire: stream entries are deleted as jobs finish, and the
counters do not grow with the number of jobs."""

from __future__ import annotations

import argparse
import time
import uuid
from typing import Any

import anyio
import redis as sync_redis

from bench.common import UVLOOP, Section, engine_label, servers
from bench.report import UI
from streamq import connection
from streamq.job import Job
from streamq.producer import Producer
from streamq.worker import Worker, WorkerOptions

COLUMNS = [
    "engine",
    "jobs",
    "retention s",
    "records at plateau",
    "before MB",
    "plateau MB",
    "after MB",
    "bytes/job live",
    "bytes/job left",
    "keys left",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--memory-jobs", type=int, help="jobs (1,000,000; quick 100,000)")
    parser.add_argument("--retention", type=float, help="record retention, s (5; quick 1)")


async def noop(job: Job) -> None:
    return None


def used_memory(client: sync_redis.Redis) -> int:
    info: Any = client.info("memory")
    return int(info["used_memory"])


async def pass_through(
    url: str, stream: str, jobs: int, retention: float, batch: int, sample: Any, advance: Any
) -> None:
    redis = connection.client(url)
    try:
        producer = Producer(redis)
        options = WorkerOptions(burst=True, retention=retention)
        passed = 0
        while passed < jobs:
            size = min(batch, jobs - passed)
            await producer.enqueue_many(stream, [{"n": i, "text": "a post"} for i in range(size)])
            counts = await Worker(redis, stream, noop, options).run()
            passed += counts.completed
            sample(passed)
            advance(passed)
    finally:
        await redis.aclose()


def one_run(
    url: str, args: argparse.Namespace, ui: UI, label: str, section: Section
) -> dict[str, Any]:
    jobs = args.memory_jobs or (100_000 if args.quick else 1_000_000)
    retention = args.retention or (1.0 if args.quick else 5.0)
    client = sync_redis.Redis.from_url(url)
    stream = f"memory-{uuid.uuid4().hex[:8]}"
    keys_before = int(client.dbsize())
    before = used_memory(client)
    started = time.monotonic()
    series: list[tuple[float, float]] = [(0.0, before / 1e6)]
    records: list[tuple[int, int]] = []
    """(used_memory, keys) at each sample: bytes per live job from the fullest one."""

    def sample(passed: int) -> None:
        used, held = used_memory(client), int(client.dbsize()) - keys_before
        series.append((time.monotonic() - started, used / 1e6))
        records.append((used, held))

    with ui.step(f"{label}: {jobs:,} jobs through, retention {retention:g} s", jobs) as advance:
        anyio.run(
            pass_through,
            url,
            stream,
            jobs,
            retention,
            10_000,
            sample,
            advance,
            backend_options=UVLOOP,
        )
    plateau = max(mb for _, mb in series) * 1e6
    through_s = time.monotonic() - started
    # Expiry: Redis removes expired keys in the background; give it the retention and a margin.
    deadline = time.monotonic() + retention + 60
    while time.monotonic() < deadline and int(client.dbsize()) > keys_before + 20:
        time.sleep(0.5)
        sample(0)
    after = used_memory(client)
    series.append((time.monotonic() - started, after / 1e6))
    section.series[f"{label}"] = series
    peak_used, peak_keys = max(records) if records else (before, 1)
    return {
        "jobs": jobs,
        "retention s": retention,
        "before MB": before / 1e6,
        "plateau MB": plateau / 1e6,
        "after MB": after / 1e6,
        "bytes/job live": (peak_used - before) / max(peak_keys, 1),
        "records at plateau": peak_keys,
        "bytes/job left": (after - before) / jobs,
        "keys left": int(client.dbsize()) - keys_before,
        "jobs/s through": jobs / through_s,
    }


def run(args: argparse.Namespace, ui: UI) -> list[Section]:
    section = Section("memory", "memory: Redis used_memory as jobs pass through", COLUMNS)
    with servers(args.engines) as started:
        for engine, srv in started:
            label = engine_label(engine, srv)
            section.rows.append({"engine": label, **one_run(srv.url, args, ui, label, section)})
    section.notes.append(
        "bytes/job live: memory above the start over the keys (one record per finished job) "
        "at the fullest sample; "
        "bytes/job left: what stays per job after the last records expired (should be ~0)"
    )
    return [section]

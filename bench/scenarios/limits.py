"""limits: what rate-limit admission costs (no-op jobs of 1,000 accounts under limits that never
bind), and one hot account's burst over its limit while other accounts' posts keep flowing."""

from __future__ import annotations

import argparse
import time
from typing import Any

import anyio

from bench.common import UVLOOP, Section, engine_label, servers, spread
from bench.report import UI
from streamq import connection
from streamq.config import Limit
from streamq.job import Job
from streamq.producer import Producer
from streamq.worker import Worker, WorkerOptions

COLUMNS = [
    "engine",
    "jobs/s",
    "burst deferred in s",
    "others waited p50 ms",
    "others waited max ms",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, help="no-op jobs under limits (50,000; quick 10,000)")
    parser.add_argument("--burst", type=int, help="posts of the hot account (10,000; quick 2,000)")


def payloads(n: int) -> list[dict[str, Any]]:
    return [{"text": f"post number {i}"} for i in range(n)]


async def noop(job: Job) -> None:
    return None


async def limited_drain(url: str, stream: str, n: int, accounts: int) -> float:
    redis = connection.client(url)
    try:
        names = [f"acct-{i % accounts}" for i in range(n)]
        await Producer(redis).enqueue_many(stream, payloads(n), accounts=names)
        generous = (
            Limit(scope="account", max=1_000_000, per=3600.0),
            Limit(scope="platform", max=10_000_000, per=3600.0),
        )
        worker = Worker(redis, stream, noop, WorkerOptions(burst=True, limits=generous))
        started = time.perf_counter()
        counts = await worker.run()
        if counts.completed != n:
            raise RuntimeError(f"ran {counts.completed} of {n}")
        return n / (time.perf_counter() - started)
    finally:
        await redis.aclose()


async def hot_account(url: str, stream: str, burst: int, others: int) -> tuple[float, list[float]]:
    """Seconds until ``burst`` posts of one account over its 25-a-day limit are all deferred,
    and how long (ms) one post each of ``others`` accounts enqueued then waited."""
    redis = connection.client(url)
    waited: list[float] = []
    try:
        producer = Producer(redis)
        await producer.enqueue_many(stream, payloads(burst), accounts=["hot"] * burst)
        limits = (Limit(scope="account", max=25, per=86_400.0),)

        async def handler(job: Job) -> None:
            if job.account != "hot":
                waited.append(time.time() * 1000 - job.envelope.enqueued_at_ms)

        worker = Worker(redis, stream, handler, WorkerOptions(limits=limits))
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            with anyio.fail_after(120):
                while worker.counts.limited < burst - 25:  # noqa: ASYNC110 - a bench's poll
                    await anyio.sleep(0.01)
                deferred_in = time.perf_counter() - started
                names = [f"other-{i}" for i in range(others)]
                await producer.enqueue_many(stream, payloads(others), accounts=names)
                while len(waited) < others:  # noqa: ASYNC110 - a bench's poll
                    await anyio.sleep(0.01)
            worker.stop()
        return deferred_in, waited
    finally:
        await redis.aclose()


def run(args: argparse.Namespace, ui: UI) -> list[Section]:
    jobs = args.jobs or (10_000 if args.quick else 50_000)
    burst = args.burst or (2_000 if args.quick else 10_000)
    section = Section(
        "limits",
        f"limits: {jobs:,} no-op jobs of 1,000 accounts under limits that never bind (one worker "
        f"in-process); {burst:,} posts of one account (25 / 24h), then 100 other accounts' posts",
        COLUMNS,
    )
    with servers(args.engines) as started:
        for engine, srv in started:
            label = engine_label(engine, srv)
            with ui.step(f"{label}: limits", 2) as advance:
                rate = anyio.run(
                    limited_drain, srv.url, f"lim-a-{engine}", jobs, 1000, backend_options=UVLOOP
                )
                advance(1)
                deferred_in, waited = anyio.run(
                    hot_account, srv.url, f"lim-h-{engine}", burst, 100, backend_options=UVLOOP
                )
            figures = spread(waited)
            section.rows.append(
                {
                    "engine": label,
                    "jobs/s": rate,
                    "burst deferred in s": deferred_in,
                    "others waited p50 ms": figures["p50"],
                    "others waited max ms": figures["max"],
                }
            )
    return [section]

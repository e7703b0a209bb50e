"""streamq itself, through the same driver protocol as its peers (run by the bench's own python)."""

from __future__ import annotations

import os
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import anyio

from bench import probe
from bench.peers.drivers import _cli
from streamq import connection
from streamq.job import Job
from streamq.producer import JobOptions, Producer

if os.environ.get("BENCH_PROBE_RUN") and os.environ.get("BENCH_PROBE_TIMES") == "1":
    # Made as the worker loads its handler, not by the first job: making it takes seven TIME
    # round trips, which a lateness run would otherwise count in the first job's start.
    probe.probe()


async def handle(job: Job) -> None:
    kind, tag = job.payload
    if kind == "nap":
        await anyio.sleep(_cli.NAP_SECONDS)
    probe.hit(tag)


async def produce(args: Any) -> None:
    redis = connection.client(args.url)
    try:
        producer = Producer(redis)
        tags = _cli.tags(args)
        started = time.perf_counter()
        if not _cli.scheduled(args):
            await producer.enqueue_many(args.queue, [[args.kind, t] for t in tags])
        else:
            by_due: dict[int, list[Any]] = defaultdict(list)
            for tag in tags:
                by_due[tag].append([args.kind, tag])
            limit = anyio.Semaphore(32)

            async def send(due: int, payloads: list[Any]) -> None:
                async with limit:
                    when = datetime.fromtimestamp(due / 1000, tz=UTC)
                    await producer.enqueue_many(
                        args.queue, payloads, options=JobOptions(run_at=when)
                    )

            async with anyio.create_task_group() as tg:
                for due, payloads in by_due.items():
                    tg.start_soon(send, due, payloads)
        _cli.report(started)
    finally:
        await redis.aclose()


def main() -> None:
    args = _cli.parse()
    if args.command == "produce":
        anyio.run(produce, args, backend_options={"use_uvloop": True})
        return
    command = [
        sys.executable, "-m", "streamq", "consume", "--redis-url", args.url,
        "--stream", args.queue, "--handler", "bench.peers.drivers.streamq_peer:handle",
        "--log-level", "WARNING",
    ]  # fmt: skip
    if args.concurrency:
        command += ["--concurrency", str(args.concurrency)]
    os.execv(sys.executable, command)


if __name__ == "__main__":
    main()

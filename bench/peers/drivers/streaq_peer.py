"""streaq (run by bench/.peers/streaq/bin/python): Worker defaults but for the queue name."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Any

import anyio
from streaq import Worker

from bench import probe
from bench.peers.drivers import _cli

CHUNK = 1000

worker = Worker(
    redis_url=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379"),
    queue_name=os.environ.get("BENCH_QUEUE", "default"),
    concurrency=int(os.environ.get("BENCH_CONCURRENCY", "0")) or 16,
)


@worker.task
async def hit(tag: int) -> None:
    probe.hit(tag)


@worker.task
async def nap(tag: int) -> None:
    await anyio.sleep(_cli.NAP_SECONDS)
    probe.hit(tag)


async def produce(args: Any) -> None:
    task = hit if args.kind == "hit" else nap
    tags = _cli.tags(args)
    started = time.perf_counter()
    async with worker:
        for start in range(0, len(tags), CHUNK):
            batch = []
            for tag in tags[start : start + CHUNK]:
                queued = task.enqueue(tag)
                if _cli.scheduled(args):
                    queued = queued.start(schedule=datetime.fromtimestamp(tag / 1000, tz=UTC))
                batch.append(queued)
            await worker.enqueue_many(batch)
    _cli.report(started)


def main() -> None:
    args = _cli.parse()
    if args.command == "produce":
        anyio.run(produce, args)
    else:
        worker.run_sync()


if __name__ == "__main__":
    main()

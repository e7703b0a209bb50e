"""taskiq with taskiq-redis's RedisStreamBroker (run by bench/.peers/taskiq/bin/python).

The worker is taskiq's own CLI, `taskiq worker --workers 1`; the broker reads its URL and stream
from the environment the bench sets (BENCH_BROKER_URL, BENCH_QUEUE). consumer_id "0" makes the
group start at the stream's beginning, so jobs enqueued before the worker starts are read
(the default, "$", would skip them)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

from taskiq_redis import RedisStreamBroker

from bench import probe
from bench.peers.drivers import _cli

CHUNK = 500

broker = RedisStreamBroker(
    url=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379"),
    queue_name=os.environ.get("BENCH_QUEUE", "taskiq"),
    consumer_id="0",
)


@broker.task(task_name="hit")
async def hit(tag: int) -> None:
    probe.hit(tag)


@broker.task(task_name="nap")
async def nap(tag: int) -> None:
    await asyncio.sleep(_cli.NAP_SECONDS)
    probe.hit(tag)


async def produce(args: Any) -> None:
    if _cli.scheduled(args):
        sys.exit("taskiq's stream broker has no delayed delivery")
    await broker.startup()
    task = hit if args.kind == "hit" else nap
    tags = _cli.tags(args)
    started = time.perf_counter()
    for start in range(0, len(tags), CHUNK):
        await asyncio.gather(*(task.kiq(tag) for tag in tags[start : start + CHUNK]))
    _cli.report(started)
    await broker.shutdown()


def main() -> None:
    args = _cli.parse()
    if args.command == "produce":
        asyncio.run(produce(args))
        return
    module = "bench.peers.drivers.taskiq_peer"
    command = [sys.executable, "-m", "taskiq", "worker", f"{module}:broker", "--workers", "1"]
    # taskiq logs every task at INFO by default, which would cost it more than the task.
    command += ["--log-level", "WARNING"]
    if args.concurrency:
        command += ["--max-async-tasks", str(args.concurrency)]
    os.execv(sys.executable, command)


if __name__ == "__main__":
    main()

"""saq (run by bench/.peers/saq/bin/python): Worker defaults but for the queue name."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from saq import Queue, Worker

from bench import probe
from bench.peers.drivers import _cli

CHUNK = 500


async def hit(ctx: dict[str, Any], *, tag: int) -> None:
    probe.hit(tag)


async def nap(ctx: dict[str, Any], *, tag: int) -> None:
    await asyncio.sleep(_cli.NAP_SECONDS)
    probe.hit(tag)


async def produce(args: Any) -> None:
    queue = Queue.from_url(args.url, name=args.queue)
    await queue.connect()
    tags = _cli.tags(args)
    started = time.perf_counter()
    for start in range(0, len(tags), CHUNK):
        await asyncio.gather(
            *(
                queue.enqueue(
                    args.kind, tag=tag, scheduled=tag / 1000 if _cli.scheduled(args) else 0
                )
                for tag in tags[start : start + CHUNK]
            )
        )
    _cli.report(started)
    await queue.disconnect()


async def work(args: Any) -> None:
    queue = Queue.from_url(args.url, name=args.queue)
    await queue.connect()
    options: dict[str, Any] = {"concurrency": args.concurrency} if args.concurrency else {}
    await Worker(queue, functions=[hit, nap], **options).start()


def main() -> None:
    args = _cli.parse()
    asyncio.run(produce(args) if args.command == "produce" else work(args))


if __name__ == "__main__":
    main()

"""arq (run by bench/.peers/arq/bin/python): Worker defaults but for the queue name."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from arq import Worker, create_pool
from arq.connections import RedisSettings

from bench import probe
from bench.peers.drivers import _cli

CHUNK = 500


async def hit(ctx: dict[str, Any], tag: int) -> None:
    probe.hit(tag)


async def nap(ctx: dict[str, Any], tag: int) -> None:
    await asyncio.sleep(_cli.NAP_SECONDS)
    probe.hit(tag)


async def produce(args: Any) -> None:
    pool = await create_pool(RedisSettings.from_dsn(args.url), default_queue_name=args.queue)
    tags = _cli.tags(args)
    started = time.perf_counter()
    for start in range(0, len(tags), CHUNK):
        await asyncio.gather(
            *(
                pool.enqueue_job(
                    args.kind,
                    tag,
                    _defer_until=(
                        datetime.fromtimestamp(tag / 1000, tz=UTC) if _cli.scheduled(args) else None
                    ),
                )
                for tag in tags[start : start + CHUNK]
            )
        )
    _cli.report(started)
    await pool.aclose()


def main() -> None:
    args = _cli.parse()
    if args.command == "produce":
        asyncio.run(produce(args))
        return
    options: dict[str, Any] = {"max_jobs": args.concurrency} if args.concurrency else {}
    worker = Worker(
        functions=[hit, nap],
        redis_settings=RedisSettings.from_dsn(args.url),
        queue_name=args.queue,
        **options,
    )
    worker.run()


if __name__ == "__main__":
    main()

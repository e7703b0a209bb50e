"""``streamq top``: a live view of every stream."""

from __future__ import annotations

import argparse
from typing import Any

from streamq.client import Queue
from streamq.commands.common import command, duration, known
from streamq.config import Config


def register(commands: Any) -> None:
    top = command(commands, "top", "live view of every stream (piped: one snapshot)", run)
    top.add_argument("--stream", action="append", help="only this stream (repeatable)")
    top.add_argument("--once", action="store_true", help="print one snapshot and exit")
    top.add_argument("--interval", type=duration, default=1.0, help="between refreshes (1s)")


async def run(args: argparse.Namespace, config: Config) -> int:
    from rich.console import Console

    from streamq import top

    async with Queue(args.redis_url, config=config) as q:
        streams = await known(q, args.stream or [])
        await top.run(q.redis, Console(), streams or None, interval=args.interval, once=args.once)
    return 0

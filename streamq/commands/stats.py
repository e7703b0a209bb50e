"""``streamq stats``: figures per stream."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from streamq import stats
from streamq.client import Queue
from streamq.commands.common import command, known, nothing, table
from streamq.config import Config

COLUMNS = (
    "stream", "depth", "waiting", "pending", "oldest pending", "consumers", "dead", "delayed",
    "limited",
)  # fmt: skip


def register(commands: Any) -> None:
    figures = command(commands, "stats", "figures per stream: depth, pending, delayed, dead", run)
    figures.add_argument(
        "--stream", action="append", help="only this stream (repeatable; it must exist)"
    )
    figures.add_argument("--json", action="store_true", help="print the stable JSON shape")


async def run(args: argparse.Namespace, config: Config) -> int:
    async with Queue(args.redis_url, config=config) as q:
        if args.stream:
            await known(q, args.stream)
        snap = await q.stats(args.stream)
    if args.json:
        sys.stdout.write(stats.to_json(snap).decode() + "\n")
        return 0
    if not snap.streams:
        nothing("no streams yet: enqueue a job first")
        return 0
    rows = []
    for s in snap.streams:
        age = "-" if s.oldest_pending_age_s is None else f"{s.oldest_pending_age_s:.1f}s"
        figures = (s.depth, s.waiting, s.pending, age, s.consumers, s.dead, s.delayed, s.limited)
        rows.append((s.stream, *(str(value) for value in figures)))
    table(COLUMNS, rows, title="streamq streams", right=COLUMNS[1:])
    return 0

"""``streamq workers [--stream S]``: the live workers, and those that died lately."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import msgspec

from streamq import channel, workers
from streamq.client import Queue
from streamq.commands.common import command, nothing, span_text, table, when_text
from streamq.config import Config


def register(commands: Any) -> None:
    shown = command(
        commands,
        "workers",
        "live workers (host, pid, jobs held) and those that died lately, with what was "
        "reclaimed from them",
        run,
    )
    shown.add_argument("--stream", action="append", help="only this stream's (repeatable)")
    shown.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per live worker per line (with --gone: per worker gone)",
    )
    shown.add_argument("--gone", action="store_true", help="with --json: the gone, not the live")


async def run(args: argparse.Namespace, config: Config) -> int:
    async with Queue(args.redis_url, config=config) as q:
        found = await workers.of_streams(q.redis, q.config, args.stream)
        now = await channel.server_ms(q.redis)
    if args.json:
        rows: list[Any] = found.gone if args.gone else found.live
        sys.stdout.write("".join(msgspec.json.encode(row).decode() + "\n" for row in rows))
        return 0
    if not found.live:
        nothing("no live workers")
    else:
        table(
            ("consumer", "streams", "host", "pid", "conc", "started", "heartbeat", "done",
             "failed", "holding"),
            [
                (c.consumer, ",".join(c.streams), c.host, str(c.pid), str(c.concurrency),
                 _ago(now, c.started_at_ms), _ago(now, c.heartbeat_at_ms), str(c.done),
                 str(c.failed), _ids(c.holding))
                for c in found.live
            ],
            title="live workers",
            right=("pid", "conc", "done", "failed"),
        )  # fmt: skip
    if found.gone:
        table(
            ("consumer", "stream", "last heartbeat", "dropped", "reclaimed"),
            [
                (
                    g.consumer,
                    g.stream,
                    _ago(now, g.card.heartbeat_at_ms) if g.card else "-",
                    _ago(now, g.dropped_at_ms) if g.dropped_at_ms else "not yet",
                    _ids([job for r in g.reclaimed for job in r.jobs]),
                )
                for g in found.gone
            ],
            title="workers gone lately",
        )
    return 0


def _ago(now_ms: int, ms: int) -> str:
    return f"{span_text(max(0, now_ms - ms) / 1000)} ago ({when_text(ms)})"


def _ids(ids: list[str], shown: int = 5) -> str:
    if not ids:
        return "-"
    more = len(ids) - shown
    return " ".join(ids[:shown]) + (f" (+{more})" if more > 0 else "")

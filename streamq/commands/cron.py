"""``streamq cron add|list|remove``: recurring jobs of a stream."""

from __future__ import annotations

import argparse
from typing import Any

from streamq import scheduler
from streamq.client import Queue
from streamq.commands.common import (
    NotFound,
    command,
    group,
    known,
    nothing,
    print_json,
    table,
    when_text,
)
from streamq.commands.enqueue import read_payload
from streamq.config import Config
from streamq.producer import check_priority, check_stream

STREAM_HELP = "the stream the schedule's jobs go to"


def register(commands: Any) -> None:
    actions = group(commands, "cron", "recurring jobs")
    add = command(actions, "add", "add or replace a schedule", add_schedule)
    add.add_argument("name", help="the schedule's name, unique on its stream")
    add.add_argument("--stream", required=True, help=STREAM_HELP)
    add.add_argument("--cron", required=True, help='cron expression, e.g. "30 2 * * *"')
    add.add_argument("--tz", default="UTC", help="IANA time zone, e.g. Europe/Paris (UTC)")
    add.add_argument("--payload", default="null", help="JSON text or @file.json (null)")
    add.add_argument("--priority", default="normal", help="high, normal (default) or low")
    listing = command(actions, "list", "schedules of a stream, with their next run", list_cron)
    listing.add_argument("--stream", required=True, help=STREAM_HELP)
    listing.add_argument(
        "--json", action="store_true", help="print them as a JSON array ([] when none)"
    )
    remove = command(actions, "remove", "forget a schedule", remove_schedule)
    remove.add_argument("name", help="the schedule's name")
    remove.add_argument("--stream", required=True, help=STREAM_HELP)


async def add_schedule(args: argparse.Namespace, config: Config) -> int:
    check_stream(args.stream)
    check_priority(args.priority)
    scheduler.check_cron(args.cron)
    payload = read_payload(args.payload)
    async with Queue(args.redis_url, config=config) as q:
        await q.schedule_recurring(
            args.name,
            args.stream,
            cron=args.cron,
            tz=args.tz,
            payload=payload,
            priority=args.priority,
        )
    print(f"scheduled {args.name}")
    return 0


async def list_cron(args: argparse.Namespace, config: Config) -> int:
    async with Queue(args.redis_url, config=config) as q:
        await known(q, [args.stream])
        schedules = await q.recurring(args.stream)
    if args.json:
        print_json(schedules)
    elif not schedules:
        nothing(f"no schedules on {args.stream}")
    else:
        rows = [(s.name, s.cron, s.tz, when_text(s.last_ms or None)) for s in schedules]
        table(("name", "cron", "tz", "next run"), rows, title=f"schedules on {args.stream}")
    return 0


async def remove_schedule(args: argparse.Namespace, config: Config) -> int:
    check_stream(args.stream)
    async with Queue(args.redis_url, config=config) as q:
        if not await q.remove_recurring(args.stream, args.name):
            raise NotFound(f"no schedule {args.name!r} on stream {args.stream!r}")
    print(f"removed {args.name}")
    return 0

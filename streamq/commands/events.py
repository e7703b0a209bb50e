"""``streamq events``: jobs' lifecycle events, kept or followed."""

from __future__ import annotations

import argparse
from typing import Any

import msgspec

from streamq.client import Queue
from streamq.commands.common import command, named_or_all, nothing, when_text
from streamq.config import Config


def register(commands: Any) -> None:
    events = command(commands, "events", "jobs' lifecycle events", run)
    events.add_argument("--stream", action="append", help="this stream (repeatable; all)")
    events.add_argument("--follow", action="store_true", help="keep printing new events")
    events.add_argument(
        "--since", help="an event id, a time (ISO 8601), a duration ago ('10m') or 'now'"
    )
    events.add_argument("--type", action="append", help="only events of this type (repeatable)")
    events.add_argument("--group", help="share the events with other readers of this group")
    events.add_argument("--consumer", help="this reader's name in --group")
    events.add_argument("--json", action="store_true", help="one JSON object per line")


async def run(args: argparse.Namespace, config: Config) -> int:
    printed = 0
    async with Queue(args.redis_url, config=config) as q:
        streams = await named_or_all(q, args.stream)
        since = args.since or ("now" if args.follow and not args.group else None)
        reader = q.events(
            streams,
            since=since,
            wait=args.follow,
            group=args.group,
            consumer=args.consumer,
            types=args.type,
        )
        async for event in reader:
            printed += 1
            if args.json:
                print(msgspec.json.encode(event).decode(), flush=True)
            else:
                print(event_line(event), flush=True)
    if not printed and not args.json:
        nothing("no events")
    return 0


def event_line(event: Any) -> str:
    if event.type == "admin":  # an operator's action: who did what to what
        parts = [when_text(event.at_ms), event.stream, "admin", f"{event.by}: {event.action}"]
        parts.append(event.target or "-")
        if event.detail:
            parts.append(f"({event.detail})")
        return "  ".join(parts)
    parts = [
        when_text(event.at_ms),
        event.stream,
        event.type,
        event.job,
        f"attempt {event.attempt}",
    ]
    if event.account:
        parts.append(f"account {event.account}")
    if event.run_at_ms is not None:
        parts.append(f"due {when_text(event.run_at_ms)}")
    if event.error:
        parts.append(f"error: {event.error}")
    return "  ".join(parts)

"""``streamq jobs --stream S --state STATE``: a stream's jobs in one state, a page at a time."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from streamq import listing, scheduler
from streamq.client import Queue
from streamq.commands.common import (
    UsageError,
    command,
    duration,
    known,
    nothing,
    table,
    when_text,
)
from streamq.config import Config
from streamq.control import JobInfo


def register(commands: Any) -> None:
    jobs = command(
        commands, "jobs", "list a stream's jobs in one state, a page at a time", list_jobs
    )
    jobs.add_argument("--stream", required=True, help="the stream (all its partitions)")
    jobs.add_argument(
        "--state",
        required=True,
        choices=listing.STATES,
        help="scheduled (by due time), queued, running, retrying, paused, held, dead, done, "
        "cancelled or expired",
    )
    jobs.add_argument("--account", help="only this account's jobs")
    jobs.add_argument("--key", help="only the job holding (or that held) this dedup key")
    jobs.add_argument(
        "--since",
        metavar="T",
        help="from this time on (due, queued, parked or finished time): ISO 8601 with an "
        "offset, 'now', or a duration from now such as -1h or +30m",
    )
    jobs.add_argument("--until", metavar="T", help="up to this time (as --since)")
    jobs.add_argument(
        "--limit",
        type=_whole,
        default=100,
        help=f"jobs per page (100, at most {listing.MAX_LIMIT})",
    )
    jobs.add_argument("--cursor", help="the page after the one that printed this cursor")
    jobs.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per line (the next page's cursor goes to stderr)",
    )


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None


def parse_time(text: str, option: str) -> datetime:
    """``now``, a signed duration from now (``-1h``, ``+30m``), or ISO 8601 with an offset."""
    now = datetime.now(UTC)
    if text == "now":
        return now
    if text[:1] in "+-" and len(text) > 1:
        try:
            seconds = duration(text[1:])
        except argparse.ArgumentTypeError as exc:
            raise UsageError(f"{option} {text!r}: {exc}") from None
        return now + timedelta(seconds=seconds if text[0] == "+" else -seconds)
    parsed = scheduler.aware_time(text)
    if parsed is None:
        raise UsageError(
            f"{option} {text!r} is not a time: use 2026-12-01T09:00:00+01:00, 'now', "
            "or a duration from now such as -1h or +30m"
        )
    return parsed


def row(info: JobInfo) -> dict[str, Any]:
    """A job as ``--json`` prints it: the JobInfo fields, plus ``run_at`` in ISO 8601."""
    fields: dict[str, Any] = msgspec.to_builtins(info)
    fields["run_at"] = None if info.run_at_ms is None else when_text(info.run_at_ms)
    return fields


async def list_jobs(args: argparse.Namespace, config: Config) -> int:
    since = None if args.since is None else parse_time(args.since, "--since")
    until = None if args.until is None else parse_time(args.until, "--until")
    async with Queue(args.redis_url, config=config) as q:
        await known(q, [args.stream])
        page = await q.jobs(
            args.stream,
            args.state,
            account=args.account,
            key=args.key,
            since=since,
            until=until,
            limit=args.limit,
            cursor=args.cursor,
        )
    if args.json:
        sys.stdout.write("".join(msgspec.json.encode(row(i)).decode() + "\n" for i in page.jobs))
        if page.cursor is not None:
            print(f"next page: --cursor {page.cursor}", file=sys.stderr)
        return 0
    if not page.jobs:
        nothing(f"no {args.state} jobs on {args.stream}")
    else:
        table(
            ("id", "account", "due", "attempt", "worker" if args.state == "running" else "error"),
            [
                (
                    info.id,
                    info.account or "-",
                    when_text(info.run_at_ms),
                    str(info.attempt),
                    (info.consumer if args.state == "running" else info.error) or "-",
                )
                for info in page.jobs
            ],
            title=f"{args.state} jobs on {args.stream}",
            right=("attempt",),
        )
    if page.cursor is not None:
        print(f"more: --cursor {page.cursor}")
    return 0

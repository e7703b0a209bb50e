"""``streamq limits show``: rate limits, their use and remaining capacity."""

from __future__ import annotations

import argparse
from typing import Any

from streamq import limiter, stats
from streamq.client import Queue
from streamq.commands.common import command, group, nothing, print_json, when_text
from streamq.config import Config
from streamq.producer import check_stream

UNITS = (("s", 1), ("min", 60), ("h", 3600), ("day", 86400))


def register(commands: Any) -> None:
    actions = group(commands, "limits", "rate limits and their use")
    show = command(actions, "show", "usage and remaining capacity", show_limits)
    show.add_argument(
        "--stream", action="append", help="only this stream (repeatable; default: all)"
    )
    show.add_argument("--account", help="also this account's windows, pause and backlog")
    show.add_argument(
        "--json", action="store_true", help="print the reports as a JSON array ([] when none)"
    )


def rate_text(per_second: float) -> str:
    """A rate in the unit that makes it a whole number, if one does: 10000/day, not
    416.667/h; else per hour to one decimal."""
    for unit, seconds in UNITS:
        count = per_second * seconds
        if count >= 1 and abs(count - round(count)) < 1e-6:
            return f"{round(count)}/{unit}"
    return f"{per_second * 3600:.1f}/h"


WINDOWS = (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1))


def per_text(seconds: float) -> str:
    """A window's length: per day, per 15 minutes, per 2.5s."""
    for unit, size in WINDOWS:
        if seconds >= size and abs(seconds / size - round(seconds / size)) < 1e-9:
            count = round(seconds / size)
            return f"per {unit}" if count == 1 else f"per {count} {unit}s"
    return f"per {seconds:g}s"


async def show_limits(args: argparse.Namespace, config: Config) -> int:
    if args.account is not None:
        limiter.check_account(args.account)
    async with Queue(args.redis_url, config=config) as q:
        # A stream's limits come from its config: they can be shown before its first job.
        if args.stream:
            streams = [check_stream(stream) for stream in args.stream]
        else:
            streams = await stats.known_streams(q.redis)
        if args.account is None:  # a partitioned stream's platform windows are per partition
            streams = [part for stream in streams for part in await q.partitions(stream)]
        reports = [await q.limits(stream, args.account) for stream in streams]
    if args.json:
        print_json(reports)
        return 0
    if not reports:
        nothing("no streams yet")
    for report in reports:
        rate = report.platform_rate_per_second
        ceiling = "no platform limit" if rate is None else f"platform allows {rate_text(rate)}"
        print(f"{report.stream}  ({ceiling}, {report.waiting_platform} waiting on the platform)")
        if not report.limits:
            print("  no limits")
        if report.account is None:
            for spec in report.limits:
                if spec.scope == "account":
                    print(
                        f"  account  {spec.max} {per_text(spec.per_seconds)} each "
                        "(--account A shows one's use)"
                    )
        for window in report.windows:
            frees = f", next in {window.frees_in_seconds:.1f}s" if window.remaining == 0 else ""
            print(
                f"  {window.scope:<8} {window.used}/{window.max} {per_text(window.per_seconds)}"
                f"  ({window.remaining} left{frees})"
            )
        for pause in report.pauses:
            until = "until resumed"
            if pause.until_ms is not None:
                until = f"until {when_text(pause.until_ms)}"
            print(f"  paused   {pause.scope} {until}: {pause.reason}")
        if report.account is not None:
            print(
                f"  account  {report.account}: {report.waiting_account} waiting, "
                f"{report.parked} parked"
            )
    return 0

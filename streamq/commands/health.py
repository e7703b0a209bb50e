"""``streamq health``: a probe; exits 0 healthy, 1 degraded, 2 down."""

from __future__ import annotations

import argparse
from typing import Any

from streamq.commands.common import command, duration, positive_int
from streamq.config import Config
from streamq.producer import check_stream


def register(commands: Any) -> None:
    probe = command(commands, "health", "a probe: exit 0 healthy, 1 degraded, 2 down", run)
    probe.add_argument("--stream", action="append", help="only this stream (repeatable)")
    probe.add_argument("--json", action="store_true", help="print the report as JSON")
    probe.add_argument(
        "--expected-workers", type=positive_int, help="workers that should be alive, per stream"
    )
    probe.add_argument("--timeout", type=duration, default=3.0, help="down after (3s)")
    probe.add_argument(
        "--fail-on",
        choices=["degraded", "down"],
        default="degraded",
        help="exit non-zero from this state on; 'down' suits liveness probes (a deep backlog "
        "must not restart workers)",
    )


async def run(args: argparse.Namespace, config: Config) -> int:
    from streamq import health

    streams = [check_stream(stream) for stream in args.stream or []]
    report = await health.check(
        args.redis_url,
        config,
        streams or None,
        expected_workers=args.expected_workers,
        within=args.timeout,
    )
    print(health.to_json(report).decode() if args.json else report.summary())
    if args.fail_on == "down" and report.code == 1:
        return 0  # degraded, reported, but not a failure of this probe
    return report.code

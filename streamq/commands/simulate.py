"""``streamq simulate`` and ``streamq demo``: the platforms imitated on loopback, and the
whole system in one command. Neither uses a Redis URL or a config file."""

from __future__ import annotations

import argparse
from typing import Any

from streamq import platforms
from streamq.commands.common import (
    UsageError,
    add_simulator_options,
    command,
    duration,
    share,
)
from streamq.config import Config


def register(commands: Any) -> None:
    sim = command(
        commands,
        "simulate",
        "imitate the platforms' endpoints on loopback",
        simulate,
        connects=False,
    )
    sim.add_argument("--port", type=int, default=8787, help="loopback port (8787; 0: any free)")
    add_simulator_options(sim, latency=0.0, error_rate=0.0, lost_answer_rate=0.0)
    sim.add_argument(
        "--drop-rate", type=share, default=0.0, help="share of posts taken, then no answer"
    )
    sim.add_argument(
        "--slow-rate", type=share, default=0.0, help="share of posts taken, answered late"
    )
    sim.add_argument(
        "--slow", type=duration, default=5.0, help="how late --slow-rate answers come (5s)"
    )
    sim.add_argument("--rate-limit", help="posts per token per window, e.g. 10/1s (then 429)")
    sim.add_argument("--token-ttl", type=duration, help="tokens expire this long after first use")
    sim.add_argument(
        "--access-ttl", type=duration, help="life of the tokens its token endpoints issue"
    )
    sim.add_argument("--processing", type=duration, default=0.2, help="media processing (200ms)")

    demo = command(
        commands,
        "demo",
        "the whole system in one command (about a minute)",
        run_demo,
        connects=False,
    )
    demo.add_argument("--duration", type=duration, default=60.0, help="the compressed day (60s)")
    add_simulator_options(
        demo, latency=0.08, error_rate=0.02, lost_answer_rate=0.01, what="the simulator's "
    )
    demo.add_argument("--json", action="store_true", help="no live view: the summary as JSON")


async def simulate(args: argparse.Namespace, config: Config) -> int:
    from streamq import simulator

    def ready(url: str) -> None:
        print(f"simulating {', '.join(platforms.PLATFORMS)} at {url}", flush=True)
        print(f"export STREAMQ_PLATFORM_URL={url}", flush=True)

    options = simulator.SimOptions(
        latency=args.latency,
        error_rate=args.error_rate,
        lost_answer_rate=args.lost_answer_rate,
        drop_rate=args.drop_rate,
        slow_rate=args.slow_rate,
        slow_seconds=args.slow,
        rate_limit=None if args.rate_limit is None else simulator.parse_rate(args.rate_limit),
        token_ttl=args.token_ttl,
        access_ttl=args.access_ttl,
        processing=args.processing,
        seed=args.seed,
    )
    await simulator.run_command(args.port, options, ready)
    return 0


async def run_demo(args: argparse.Namespace, config: Config) -> int:
    from rich.console import Console

    from streamq import demo

    if args.duration < 2:
        raise UsageError("the demo needs a --duration of at least 2s")
    options = demo.DemoOptions(
        duration=args.duration,
        latency=args.latency,
        error_rate=args.error_rate,
        lost_answer_rate=args.lost_answer_rate,
        seed=args.seed,
        json=args.json,
    )
    return await demo.run(options, Console())

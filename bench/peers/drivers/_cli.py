"""The command line every driver shares, and the jobs it enqueues.

Every job carries one integer tag: its due time in ms (server clock) when scheduled, else its
index. ``hit`` jobs call the probe at once; ``nap`` jobs sleep 50 ms first (an HTTP call).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

NAP_SECONDS = 0.05


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    work = sub.add_parser("work")
    work.add_argument("--url", required=True)
    work.add_argument("--queue", required=True)
    work.add_argument("--concurrency", type=int, default=0, help="0: the library's default")
    produce = sub.add_parser("produce")
    produce.add_argument("--url", required=True)
    produce.add_argument("--queue", required=True)
    produce.add_argument("--kind", choices=["hit", "nap"], default="hit")
    produce.add_argument("--jobs", type=int, required=True)
    produce.add_argument("--due-start-ms", type=int, default=0, help="0: run at once")
    produce.add_argument("--due-step-ms", type=float, default=0.0)
    return parser.parse_args(argv)


def tags(args: argparse.Namespace) -> list[int]:
    if args.due_start_ms:
        return [args.due_start_ms + int(i * args.due_step_ms) for i in range(args.jobs)]
    return list(range(args.jobs))


def scheduled(args: argparse.Namespace) -> bool:
    return bool(args.due_start_ms)


def report(started: float) -> None:
    json.dump({"seconds": time.perf_counter() - started}, sys.stdout)
    sys.stdout.write("\n")

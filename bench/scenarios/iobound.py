"""io-bound: 5,000 jobs that each wait 50 ms (as an HTTP call would) at concurrency 200, one
worker process; wall time against the ideal N x 50 ms / concurrency."""

from __future__ import annotations

import argparse

from bench.common import Section, engine_label, servers
from bench.report import UI
from bench.runner import Case, run_case
from bench.systems import STREAMQ

COLUMNS = ["engine", "system", "jobs", "wall s", "ideal s", "wall / ideal", "lost"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, help="jobs (5,000)")
    parser.add_argument("--concurrency", type=int, default=200)


def run(args: argparse.Namespace, ui: UI) -> list[Section]:
    jobs = args.jobs or 5_000
    section = Section(
        "io-bound", f"io-bound: {jobs:,} jobs of 50 ms at concurrency {args.concurrency}", COLUMNS
    )
    with servers(args.engines) as started:
        for engine, srv in started:
            label = engine_label(engine, srv)
            case = Case("io-bound", jobs, concurrency=args.concurrency)
            row = run_case(STREAMQ, srv.url, case, ui, f"{label}: streamq io-bound")
            section.rows.append({"engine": label, "system": "streamq", **row})
    return [section]

"""lateness: 10,000 jobs due at the same instant, 10,000 due within one second (evenly), and
10,000 spread over a minute (quick: over 10 s); p50/p99/max of start minus due time, both on
the server's clock ("first ms": the earliest start, i.e. how late the first job was). Jobs due
at one instant can only start as fast as the workers run them, so that case measures throughput
as much as timing. ``--at-once`` runs that case alone (``--jobs 1000`` for issue 22's target).
"""

from __future__ import annotations

import argparse
from typing import Any

from bench.common import Section, engine_label, servers, spread
from bench.report import UI
from bench.runner import Case, Driver, run_case
from bench.systems import STREAMQ

COLUMNS = [
    "engine", "system", "case", "jobs", "first ms", "p50 ms", "p99 ms", "max ms", "early", "lost",
]  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, help="jobs per case (10,000)")
    parser.add_argument("--spread", type=float, help="seconds the second case spans (60; quick 10)")
    parser.add_argument(
        "--at-once", action="store_true", help="only the case of every job due at one instant"
    )
    parser.add_argument(
        "--lead-ms",
        type=int,
        default=3000,
        help="the first job is due this long after the producer starts (3000; more on a loaded "
        "machine, where the worker processes take longer to start)",
    )


def cases(jobs: int, spread_s: float, lead_ms: int = 3000) -> list[tuple[str, Case]]:
    return [
        (f"{jobs:,} due at the same instant", Case("lateness", jobs, lead_ms=lead_ms)),
        (
            f"{jobs:,} due within one second",
            Case("lateness", jobs, lead_ms=lead_ms, step_ms=1000 / jobs),
        ),
        (
            f"{jobs:,} spread over {spread_s:g} s",
            Case("lateness", jobs, lead_ms=lead_ms, step_ms=spread_s * 1000 / jobs),
        ),
    ]


def lateness_row(
    driver: Driver, url: str, name: str, case: Case, ui: UI, label: str, section: Section
) -> dict[str, Any]:
    row = run_case(driver, url, case, ui, f"{label}: {driver.name} {name}")
    late: list[float] = row.pop("lateness_ms")
    section.samples[f"{label} {driver.name}: {name}"] = late
    figures = spread(late)
    return {
        **row,
        "case": name,
        "first ms": min(late, default=0.0),
        "p50 ms": figures["p50"],
        "p99 ms": figures["p99"],
        "max ms": figures["max"],
        "early": sum(1 for x in late if x < 0),
    }


def run(args: argparse.Namespace, ui: UI) -> list[Section]:
    section = Section("lateness", "lateness: start minus due time, server clock", COLUMNS)
    with servers(args.engines) as started:
        for engine, srv in started:
            label = engine_label(engine, srv)
            chosen = cases(
                args.jobs or 10_000, args.spread or (10 if args.quick else 60), args.lead_ms
            )
            for name, case in chosen[:1] if args.at_once else chosen:
                row = lateness_row(STREAMQ, srv.url, name, case, ui, label, section)
                section.rows.append({"engine": label, "system": "streamq", **row})
    section.notes.append("target: p99 under 20 ms for 10,000 jobs due in the same second")
    return [section]

"""throughput: N no-op jobs enqueued in bulk, then drained by one worker process and by two;
end-to-end jobs/s (first to last handler call) and the enqueue rate. The raw redis-py loop on
the same server is the ceiling."""

from __future__ import annotations

import argparse

from bench.common import Section, engine_label, servers
from bench.report import UI
from bench.runner import Case, run_case
from bench.systems import RAW, STREAMQ

COLUMNS = [
    "engine",
    "system",
    "processes",
    "enqueue jobs/s",
    "jobs/s",
    "server us/job",
    "worker cpu us/job",
    "lost",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, help="jobs per run (200,000; quick 20,000)")


def run(args: argparse.Namespace, ui: UI) -> list[Section]:
    jobs = args.jobs or (20_000 if args.quick else 200_000)
    section = Section(
        "throughput", f"throughput: {jobs:,} no-op jobs, bulk enqueue then drain", COLUMNS
    )
    with servers(args.engines) as started:
        for engine, srv in started:
            label = engine_label(engine, srv)
            for processes in (1, 2):
                case = Case("throughput", jobs, processes=processes)
                row = run_case(STREAMQ, srv.url, case, ui, f"{label}: streamq x{processes}")
                section.rows.append(
                    {"engine": label, "system": "streamq", "processes": processes, **row}
                )
            row = run_case(RAW, srv.url, Case("throughput", jobs), ui, f"{label}: raw loop")
            section.rows.append({"engine": label, "system": RAW.name, "processes": 1, **row})
            one = next(r for r in section.rows if r["engine"] == label and r["processes"] == 1)
            if one.get("jobs/s") and row.get("jobs/s"):
                section.notes.append(
                    f"{label}: one streamq worker process moves {one['jobs/s'] / row['jobs/s']:.0%}"
                    " of the raw loop's rate (target: at least 50 %)"
                )
    return [section]

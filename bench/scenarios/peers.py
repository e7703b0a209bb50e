"""peers: the throughput, io-bound and lateness scenarios for arq, saq, taskiq (Redis stream
broker), Celery (Redis broker) and streaq, next to streamq and the raw redis-py loop, all on
the same server in the same run, each library with the settings its docs recommend (see
bench/systems.py). Each peer runs from its own virtualenv under bench/.peers/."""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from bench.common import BenchError, Section, engine_label, servers
from bench.report import UI
from bench.runner import Case, Driver, run_case
from bench.scenarios.lateness import cases as lateness_cases
from bench.scenarios.lateness import lateness_row
from bench.systems import PEERS, RAW, STREAMQ, ensure_venv, peer_driver

THROUGHPUT = [
    "system",
    "enqueue jobs/s",
    "jobs/s",
    "server us/job",
    "worker cpu us/job",
    "lost",
    "status",
]
IO_BOUND = ["system", "wall s", "ideal s", "wall / ideal", "lost", "status"]
LATENESS = ["system", "case", "p50 ms", "p99 ms", "max ms", "early", "lost", "status"]
SETTINGS = ["system", "versions", "settings"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--peers", nargs="+", help="only these peers (arq saq taskiq celery streaq)"
    )
    parser.add_argument(
        "--peer-late-jobs", type=int, help="lateness jobs per case (5,000; quick 2,000)"
    )
    parser.add_argument("--peer-jobs", type=int, help="throughput jobs (20,000; quick 2,000)")


def run(args: argparse.Namespace, ui: UI) -> list[Section]:
    chosen = [p for p in PEERS if not args.peers or p.name in args.peers]
    jobs = args.peer_jobs or (2_000 if args.quick else 20_000)
    # 5,000 rather than 10,000 a case: arq and saq start a few hundred jobs a second, so a
    # burst of 10,000 alone would take them a minute or more per case.
    late_jobs = args.peer_late_jobs or (2_000 if args.quick else 5_000)
    engine = args.engines[0]
    with servers([engine]) as started:
        _, srv = started[0]
        label = engine_label(engine, srv)
        throughput = Section(
            "peers-throughput",
            f"peers, {label}: throughput, {jobs:,} no-op jobs, one worker process",
            THROUGHPUT,
        )
        io_bound = Section(
            "peers-io-bound",
            f"peers, {label}: io-bound, 5,000 jobs of 50 ms at concurrency 200",
            IO_BOUND,
        )
        lateness = Section("peers-lateness", f"peers, {label}: lateness, server clock", LATENESS)
        settings = Section("peers-settings", "peers: versions and settings", SETTINGS)
        settings.rows.append(
            {
                "system": "streamq",
                "versions": "this tree",
                "settings": "defaults: concurrency 32, adaptive prefetch",
            }
        )
        systems: list[tuple[Driver, tuple[str, ...], str]] = [
            (RAW, ("throughput",), ""),
            (STREAMQ, ("throughput", "io-bound", "lateness"), ""),
        ]
        for peer in chosen:
            try:
                versions = ensure_venv(peer, ui)
            except BenchError as exc:
                for section in (throughput, io_bound, lateness):
                    section.rows.append({"system": peer.name, "status": f"not run: {exc}"})
                continue
            settings.rows.append(
                {
                    "system": peer.name,
                    "versions": ", ".join(f"{k} {v}" for k, v in versions.items()),
                    "settings": peer.settings,
                }
            )
            systems.append((peer_driver(peer), peer.scenarios, peer.missing))
        for driver, scenarios, missing in systems:
            concurrency = 100 if driver.name == "celery" else 0
            drain = Case("throughput", jobs, concurrency=concurrency)
            late = [
                (name, replace(case, concurrency=concurrency))
                for name, case in lateness_cases(
                    late_jobs,
                    5 if args.quick else 60,
                    lead_ms=3_000 if args.quick else 5_000,
                )
            ]
            attempts: list[tuple[str, Section, list[tuple[str, Case]]]] = [
                ("throughput", throughput, [("", drain)]),
                ("io-bound", io_bound, [("", Case("io-bound", 5_000, concurrency=200))]),
                ("lateness", lateness, late),
            ]
            for kind, section, runs in attempts:
                if driver is RAW and kind != "throughput":
                    continue
                if kind not in scenarios:
                    section.rows.append({"system": driver.name, "status": missing})
                    continue
                for name, case in runs:
                    row: dict[str, Any]
                    try:
                        if kind == "lateness":
                            row = lateness_row(driver, srv.url, name, case, ui, label, section)
                        else:
                            row = run_case(
                                driver, srv.url, case, ui, f"{label}: {driver.name} {kind}"
                            )
                    except BenchError as exc:
                        row = {"case": name, "status": f"failed: {exc}"}
                    section.rows.append({"system": driver.name, **row})
    for section in (throughput, io_bound, lateness):
        section.notes.append(
            "lost: jobs whose handler had not run when the case's deadline passed "
            "(120 s + 5 ms a job after the last was due)"
        )
    return [throughput, io_bound, lateness, settings]

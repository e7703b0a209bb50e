"""backlog: what a backlog of scheduled posts costs (issue 28), this tree against an earlier
commit in the same run. Each side is its own copy (git archive) run by bench/backlog_probe.py
on a fresh server of its own, the sides alternated round by round: bytes per scheduled job at
each checkpoint (used_memory, events included, and without the events stream), enqueue
jobs/s, a lookup, a page of the scheduled listing, a reschedule and a cancel among them, the
lateness of 1,000 jobs due at one instant with the backlog waiting, and a drain of jobs
enqueued now with their records kept (bytes per finished record, drain jobs/s).

``--jobs 10000000 --horizon 30d`` is issue 28's 10M posts over 30 days; the default is the
largest this machine's run takes in minutes (1,000,000; quick 100,000)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import ROOT, BenchError, Section, engine_label, servers
from bench.report import UI
from bench.scenarios.listing import commit_tree
from bench.systems import BULLMQ, PEERS_DIR, ensure_venv
from streamq.config import parse_duration

COLUMNS = [
    "engine",
    "side",
    "round",
    "jobs",
    "B/job at 100k",
    "B/job",
    "B/job no events",
    "enqueue jobs/s",
    "enqueue server us/job",
    "lookup ms",
    "page ms",
    "reschedule ms",
    "cancel ms",
    "first late ms",
    "p99 late ms",
    "enqueue now jobs/s",
    "drain jobs/s",
    "drain server us/job",
    "finished record B",
]
FIGURES = COLUMNS[4:]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, help="scheduled jobs (1,000,000; quick 100,000)")
    parser.add_argument(
        "--horizon", default="0", help="spread them over this (e.g. 30d); 0: all due in 1 h"
    )
    parser.add_argument("--due-jobs", type=int, default=1000, help="jobs due at one instant")
    parser.add_argument("--drain-jobs", type=int, help="jobs drained (100,000; quick 20,000)")
    parser.add_argument(
        "--before",
        default="ec2c9a1",
        help="commit to run beside this tree (default: the branch point of issue 28)",
    )
    parser.add_argument("--pairs", type=int, default=1, help="alternated rounds of the sides")
    parser.add_argument(
        "--owned",
        action="store_true",
        help="every scheduled job with a dedup key and an account (100 jobs an account)",
    )
    parser.add_argument(
        "--no-bullmq", action="store_true", help="leave out BullMQ's side (its own virtualenv)"
    )


def on_fresh_server(
    engine_binary: str | None, command: list[str], tree: Path, who: str
) -> dict[str, Any]:
    """Run ``command`` followed by a fresh server's URL (``{url}`` in it), with ``tree`` as
    its working directory and import path; returns the JSON line it prints last."""
    from streamq.server import LocalServer

    srv = LocalServer(engine_binary).start()
    try:
        done = subprocess.run(
            [srv.url if part == "{url}" else part for part in command],
            cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)},
            capture_output=True, text=True, timeout=7200,
        )  # fmt: skip
    finally:
        srv.stop()
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"backlog: {who}'s run failed: {last}")
    found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def sizes(args: argparse.Namespace, jobs: int) -> tuple[str, str]:
    """The checkpoints (comma-separated job counts) and the number of jobs drained."""
    marks = ",".join(str(n) for n in (100_000, 1_000_000) if n <= jobs)
    return marks, str(args.drain_jobs or (20_000 if args.quick else 100_000))


def probe(
    tree: Path, engine_binary: str | None, args: argparse.Namespace, jobs: int
) -> dict[str, Any]:
    marks, drain = sizes(args, jobs)
    horizon = parse_duration(args.horizon) if args.horizon != "0" else 0.0
    command = [
        sys.executable, str(ROOT / "bench" / "backlog_probe.py"), "{url}", str(jobs), marks,
        str(horizon), str(args.due_jobs), drain, *(["owned"] if args.owned else []),
    ]  # fmt: skip
    found = on_fresh_server(engine_binary, command, tree, str(tree))
    if Path(found["streamq"]).resolve() != tree.resolve():
        raise BenchError(f"backlog: the run meant for {tree} imported {found['streamq']}")
    return found


def probe_bullmq(engine_binary: str | None, args: argparse.Namespace, jobs: int) -> dict[str, Any]:
    """The same backlog through BullMQ's Python client, on a fresh server of its own."""
    marks, drain = sizes(args, jobs)
    python = PEERS_DIR / BULLMQ.name / "bin" / "python"
    command = [str(python), "-m", "bench.peers.drivers.bullmq_backlog", "{url}", str(jobs), marks]
    return on_fresh_server(engine_binary, [*command, drain], ROOT, "BullMQ")


def run(args: argparse.Namespace, ui: UI) -> list[Section]:
    jobs = args.jobs or (100_000 if args.quick else 1_000_000)
    owned = ", each with a key and an account" if args.owned else ""
    section = Section(
        "backlog",
        f"backlog: {jobs:,} scheduled jobs{owned}, this tree against {args.before}",
        COLUMNS,
    )
    with tempfile.TemporaryDirectory() as scratch:
        short, before = commit_tree(args.before, Path(scratch))
        sides = [(f"before ({short})", before), ("this tree", ROOT)]
        bullmq = None
        if not args.no_bullmq:
            versions = ensure_venv(BULLMQ, ui)
            bullmq = f"BullMQ {versions['bullmq']}"
        with servers(args.engines) as started:
            # The servers only name the engines; each run gets a fresh one of its own.
            engines = [(engine, engine_label(engine, srv), srv.binary) for engine, srv in started]
        for engine, label, binary in engines:
            per_round = 2 if bullmq is None else 3
            with ui.step(
                f"{label}: {args.pairs} alternated rounds", args.pairs * per_round
            ) as advance:
                for round_ in range(args.pairs):
                    order = sides if round_ % 2 == 0 else sides[::-1]
                    for side, tree in order:
                        found = probe(tree, None if engine == "valkey" else str(binary), args, jobs)
                        section.rows.append({
                            "engine": label, "side": side, "round": round_ + 1, "jobs": jobs,
                            "B/job at 100k": found.get("bytes/job at 100000"),
                            "B/job": found["bytes/job"],
                            "B/job no events": found["bytes/job without events"],
                            **{c: found[c] for c in FIGURES[3:]},
                            "finished B/job all-in": found["finished B/job all-in"],
                            "finished fields": found["finished fields"],
                        })  # fmt: skip
                        advance(len(section.rows))
                    if bullmq is not None:
                        found = probe_bullmq(
                            None if engine == "valkey" else str(binary), args, jobs
                        )
                        section.rows.append({
                            "engine": label, "side": bullmq, "round": round_ + 1, "jobs": jobs,
                            "B/job at 100k": found.get("bytes/job at 100000"),
                            "B/job": found["bytes/job"], "B/job no events": found["bytes/job"],
                            **{c: found.get(c) for c in FIGURES[3:]},
                        })  # fmt: skip
            if args.pairs > 1:
                for side in [s for s, _ in sides] + ([bullmq] if bullmq else []):
                    mine = [r for r in section.rows if r["engine"] == label and r["side"] == side]
                    section.rows.append({
                        "engine": label, "side": side, "round": "median", "jobs": jobs,
                        **{c: statistics.median(r[c] for r in mine if r[c] is not None)
                           for c in FIGURES if any(r[c] is not None for r in mine)},
                    })  # fmt: skip
    section.notes.append(
        "B/job: used_memory added per scheduled job (payload {'n': i, 'text': 'a post'}, no key "
        "or account), events stream included (capped at 100,000 events by default); no "
        "events: without it. server us/job: INFO commandstats, every command's time summed "
        "over the phase. ms: median of 5, as this process sees them. late: start minus "
        "due of 1,000 jobs due at one instant, server clock. finished record: MEMORY USAGE "
        "of one done record, retention 1 h. BullMQ: the same payload through Queue.addBulk "
        "(delay an hour), its default options (completed jobs kept); it has no events "
        "stream, and the columns it has no counterpart for are empty"
    )
    return [section]

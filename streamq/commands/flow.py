"""``streamq flow add|show|cancel|reschedule``: flows of steps across streams (streamq.flows)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

from streamq import channel, codec
from streamq.client import Queue
from streamq.commands.common import (
    UsageError,
    add_when,
    command,
    group,
    json_text,
    pairs,
    print_json,
    table,
    when,
    when_text,
)
from streamq.config import Config
from streamq.errors import InvalidJobState
from streamq.flows import Step

ENDED = frozenset({"done", "failed", "partially_done"})
"""A flow's end states that a cancel cannot change (a cancelled flow cancelled again is)."""
ID_HELP = "the flow's id, as flow add printed it (flow:...)"


class FlowFile(msgspec.Struct, forbid_unknown_fields=True):
    """What ``flow add --file`` reads: the steps, and optionally the on_complete step and a
    dedup key. A bare JSON array is the steps alone."""

    steps: list[Step]
    on_complete: Step | None = None
    key: str | None = None


def register(commands: Any) -> None:
    actions = group(commands, "flow", "add, show or steer a flow of steps across streams")
    add = command(
        actions,
        "add",
        "add a flow from a JSON file; prints its id, then each step's job id",
        add_flow,
    )
    add.add_argument(
        "--file",
        required=True,
        help='JSON: {"steps": [{"name", "stream", "payload", "after": [...], "on_failure", '
        '"account", "priority"}, ...], "on_complete": {...}, "key": "..."}; - for stdin',
    )
    add.add_argument("--key", help="dedup key: a flow still running under it is returned")
    add.add_argument(
        "--json", action="store_true", help='print {"id": ..., "jobs": {step: job id}}'
    )
    add_when(add)
    show = command(actions, "show", "a flow's state and each step's", show_flow)
    show.add_argument("id", help=ID_HELP)
    show.add_argument("--json", action="store_true", help="print the flow as JSON")
    cancel = command(actions, "cancel", "cancel every step not yet started", cancel_flow)
    cancel.add_argument("id", help=ID_HELP)
    move = command(actions, "reschedule", "move every step still scheduled", reschedule_flow)
    move.add_argument("id", help=ID_HELP)
    add_when(move)


def read_flow(path: str) -> FlowFile:
    import sys

    try:
        text: str | bytes = sys.stdin.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    parsed = codec.parse_json(text, what=f"flow file {path}")
    try:
        if isinstance(parsed, list):
            return FlowFile(steps=msgspec.convert(parsed, list[Step]))
        return msgspec.convert(parsed, FlowFile)
    except msgspec.ValidationError as exc:
        raise UsageError(f"flow file {path}: {exc}") from None


async def _due(args: argparse.Namespace, q: Queue) -> datetime | None:
    run_at, delay = when(args)
    if delay is not None and delay > 0:
        now_ms = await channel.server_ms(q.redis)
        return datetime.fromtimestamp(now_ms / 1000, tz=UTC) + timedelta(seconds=delay)
    return run_at


async def add_flow(args: argparse.Namespace, config: Config) -> int:
    spec = read_flow(args.file)
    async with Queue(args.redis_url, config=config) as q:
        flow = await q.enqueue_flow(
            spec.steps, await _due(args, q), spec.on_complete, key=args.key or spec.key
        )
    if args.json:
        print_json(flow)
        return 0
    print(flow.id)
    for name, job_id in flow.jobs.items():
        print(f"{name}\t{job_id}")
    return 0


async def show_flow(args: argparse.Namespace, config: Config) -> int:
    async with Queue(args.redis_url, config=config) as q:
        info = await q.flow(args.id)
    if args.json:
        print_json(info)
        return 0
    pairs([
        ("id", info.id), ("state", info.state), ("key", info.key or "-"),
        ("created", when_text(info.created_at_ms)),
        ("finished", when_text(info.finished_at_ms) if info.finished_at_ms else "-"),
        ("on_complete", info.on_complete or "-"),
    ])  # fmt: skip
    table(
        ("step", "state", "after", "job", "result / error"),
        [
            (
                step.name,
                step.state,
                ",".join(step.after) or "-",
                step.job,
                step.error or (json_text(step.result) if step.result is not None else "-"),
            )
            for step in info.steps.values()
        ],
        title="steps",
    )
    return 0


async def cancel_flow(args: argparse.Namespace, config: Config) -> int:
    async with Queue(args.redis_url, config=config) as q:
        before = (await q.flow(args.id)).state
        if before in ENDED:  # as job cancel refuses a finished job: exit 1, not "done"
            raise InvalidJobState(f"flow {args.id} already ended {before}: nothing to cancel")
        print(await q.cancel_flow(args.id))
    return 0


async def reschedule_flow(args: argparse.Namespace, config: Config) -> int:
    async with Queue(args.redis_url, config=config) as q:
        run_at = await _due(args, q)
        if run_at is None:
            raise UsageError("reschedule needs --at or --delay")
        moved = await q.reschedule_flow(args.id, run_at)
    print(f"{moved} step(s) moved to {run_at.isoformat()}")
    return 0

"""``streamq enqueue``: add one job, or many from JSON Lines on stdin."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from streamq import codec
from streamq.client import Queue
from streamq.commands.common import (
    UsageError,
    add_when,
    command,
    duration,
    positive_int,
    print_json,
    when,
)
from streamq.config import Config
from streamq.errors import PayloadError
from streamq.producer import check_priority, check_stream

STDIN_BATCH = 10_000
"""JSON Lines read from stdin are enqueued this many at a time."""


def register(commands: Any) -> None:
    enqueue = command(commands, "enqueue", "add jobs to a stream; prints each job's id", run)
    enqueue.add_argument("--stream", required=True, help="stream to add to, e.g. instagram")
    enqueue.add_argument(
        "--payload",
        required=True,
        help="JSON text, @file.json, or - to read JSON Lines from stdin (one job per line)",
    )
    enqueue.add_argument("--key", help="dedup key: a live job with this key is not added twice")
    enqueue.add_argument("--account", help="account that publishes it (its rate limits apply)")
    enqueue.add_argument("--priority", default="normal", help="high, normal (default) or low")
    add_when(enqueue)
    enqueue.add_argument(
        "--replace",
        action="store_true",
        help="with --key: replace the payload and time of a still-scheduled job holding it",
    )
    enqueue.add_argument("--max-attempts", type=positive_int, help="runs before dead-lettering")
    enqueue.add_argument("--expire-after", type=duration, help="skip if this late when due")
    enqueue.add_argument("--job-timeout", type=duration, help="cancel a run longer than this")
    enqueue.add_argument("--json", action="store_true", help='print {"id": ...} per job')


def read_payload(text: str) -> Any:
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise PayloadError(f"cannot read payload file {path}: {exc.strerror}") from None
        return codec.parse_json(data, what=f"payload file {path}")
    return codec.parse_json(text)


def json_lines(stream: TextIO) -> Iterator[list[Any]]:
    """Batches of parsed JSON Lines; a bad line stops before its batch is enqueued."""
    batch: list[Any] = []
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        batch.append(codec.parse_json(line, what=f"stdin line {number}"))
        if len(batch) == STDIN_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _print_ids(ids: list[str], as_json: bool) -> None:
    if as_json:
        for job_id in ids:
            print_json({"id": job_id})
    else:
        sys.stdout.write("".join(f"{job_id}\n" for job_id in ids))


async def run(args: argparse.Namespace, config: Config) -> int:
    check_priority(args.priority)
    check_stream(args.stream)
    run_at, delay = when(args)
    if args.replace and not args.key:
        raise UsageError("--replace needs --key: it replaces the job holding that key")
    options = {
        "run_at": run_at,
        "delay": delay,
        "max_attempts": args.max_attempts,
        "expire_after": args.expire_after,
        "job_timeout": args.job_timeout,
    }
    if args.payload == "-":
        if args.key:
            raise UsageError("--key names one job; with --payload - put keys in the payloads")
        async with Queue(args.redis_url, config=config) as q:
            for batch in json_lines(sys.stdin):
                accounts = None if args.account is None else [args.account] * len(batch)
                ids = await q.enqueue_many(
                    args.stream, batch, accounts=accounts, priority=args.priority, **options
                )
                _print_ids(ids, args.json)
            sys.stdout.flush()
        return 0
    payload = read_payload(args.payload)
    async with Queue(args.redis_url, config=config) as q:
        job_id = await q.enqueue(
            args.stream,
            payload,
            key=args.key,
            account=args.account,
            priority=args.priority,
            on_conflict="replace" if args.replace else "keep",
            **options,
        )
    _print_ids([job_id], args.json)
    return 0

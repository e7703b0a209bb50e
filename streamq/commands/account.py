"""``streamq account pause|resume ACCOUNT``: hold an account's jobs, or release them;
``streamq account status PLATFORM ACCOUNT`` (streamq.commands.tokens)."""

from __future__ import annotations

import argparse
from typing import Any

from streamq import limiter, stats
from streamq.client import Queue
from streamq.commands.common import NotFound, command, group
from streamq.config import Config
from streamq.producer import check_stream

STREAM_HELP = "only on this stream (repeatable; default: every stream)"


def register(commands: Any) -> None:
    actions = group(commands, "account", "pause, resume or show an account")
    pause = command(
        actions, "pause", "hold its jobs (no attempts used) until resumed", pause_account
    )
    pause.add_argument(
        "--reason", default="paused by an operator", help="shown by limits show and the events"
    )
    resume = command(actions, "resume", "run its jobs again", resume_account)
    for parser in (pause, resume):
        parser.add_argument("account", help="the account, as given to enqueue --account")
        parser.add_argument("--stream", action="append", help=STREAM_HELP)
    from streamq.commands.tokens import add_account_status

    add_account_status(actions)  # its token (the token store) and pauses


def jobs(count: int) -> str:
    return f"{count} waiting job" + ("" if count == 1 else "s")


async def _streams(q: Queue, args: argparse.Namespace) -> list[str]:
    """The streams named (none need exist yet: an account may be paused ahead of its
    jobs), else every stream ever used."""
    limiter.check_account(args.account)
    if args.stream:
        return [check_stream(stream) for stream in args.stream]
    streams = await stats.known_streams(q.redis)
    if not streams:
        raise NotFound("no streams yet: name one with --stream")
    return streams


async def pause_account(args: argparse.Namespace, config: Config) -> int:
    async with Queue(args.redis_url, config=config) as q:
        for stream in await _streams(q, args):
            await q.pause_account(args.account, stream, reason=args.reason)
            print(f"{stream}: paused {args.account}")
    return 0


async def resume_account(args: argparse.Namespace, config: Config) -> int:
    async with Queue(args.redis_url, config=config) as q:
        for stream in await _streams(q, args):
            was_paused, resumed = await q.resume_account(args.account, stream)
            if was_paused:
                print(f"{stream}: resumed {args.account} ({jobs(resumed)} released)")
            else:
                print(f"{stream}: {args.account} was not paused")
    return 0

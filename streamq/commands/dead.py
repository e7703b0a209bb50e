"""``streamq dead list|replay|purge --stream S``: a stream's dead letters."""

from __future__ import annotations

import argparse
from typing import Any

from streamq.client import Queue
from streamq.commands.common import command, group, known, nothing, positive_int, print_json, table
from streamq.config import Config

STREAM_HELP = "the stream whose dead letters these are"


def register(commands: Any) -> None:
    actions = group(commands, "dead", "dead letters of a stream")
    listing = command(actions, "list", "show dead letters, oldest first", list_dead)
    listing.add_argument("--stream", required=True, help=STREAM_HELP)
    listing.add_argument(
        "--json", action="store_true", help="print them as a JSON array ([] when none)"
    )
    listing.add_argument(
        "--count", type=positive_int, default=100, help="at most this many per partition (100)"
    )
    again = command(actions, "replay", "run dead letters again", replay_dead)
    again.add_argument("--stream", required=True, help=STREAM_HELP)
    which = again.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help="every dead letter of the stream")
    which.add_argument("ids", nargs="*", default=[], metavar="ID", help="job or entry ids")
    purge = command(actions, "purge", "delete every dead letter of the stream", purge_dead)
    purge.add_argument("--stream", required=True, help=STREAM_HELP)


async def list_dead(args: argparse.Namespace, config: Config) -> int:
    async with Queue(args.redis_url, config=config) as q:
        await known(q, [args.stream])
        letters = await q.dead(args.stream, args.count)
    if args.json:
        print_json(letters)
    elif not letters:
        nothing(f"no dead letters on {args.stream}")
    else:
        rows = [
            (letter.entry_id, letter.job_id or "(foreign entry)", letter.reason)
            for letter in letters
        ]
        table(("entry", "job", "reason"), rows, title=f"dead letters on {args.stream}")
    return 0


async def replay_dead(args: argparse.Namespace, config: Config) -> int:
    async with Queue(args.redis_url, config=config) as q:
        await known(q, [args.stream])
        replayed, skipped = await q.replay_dead(args.stream, None if args.all else args.ids)
    print(f"replayed {replayed}" + (f", skipped {skipped} (not replayable)" if skipped else ""))
    return 0


async def purge_dead(args: argparse.Namespace, config: Config) -> int:
    async with Queue(args.redis_url, config=config) as q:
        await known(q, [args.stream])
        print(f"purged {await q.purge_dead(args.stream)}")
    return 0

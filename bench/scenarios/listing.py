"""listing: what a page of a job listing costs at a million jobs, and what keeping the listing
indexes costs the hot path.

Pages: 1,000,000 jobs scheduled over a week (due on the minute, so about 100 share each due
time), each for one of 10,000 accounts, and 100,000 more on another stream all due at the same
instant. Each page of 100 (``q.jobs``) is timed 20 times: the server's time per page is the sum
of the durations SLOWLOG records for the page's commands (logging every command while the page
is read: the script that reads the index, the pipelined reads of the records), and the wall
time is the call as this process sees it. Beside them, the one ZRANGE BYSCORE ... LIMIT a
cursor of score and offset among the ties would send (Valkey 8 skips to the offset by rank,
Redis 7.0 walks it; either way wrong once a tie before the cursor leaves, which is why the
cursor names the job instead).

Hot path: the same enqueue-then-drain run (scheduled jobs with accounts: the due index on
enqueue and promotion, the finished index on finish; bench/listing_hot_path.py) against this
tree and against a copy of the commit before the listings (``--before``, default 5bf0de8^1,
taken with ``git archive`` into a temporary directory), alternated on the same servers."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import redis as sync_redis

import streamq
from bench.common import ROOT, UVLOOP, BenchError, Section, engine_label, servers
from bench.report import UI
from streamq import keys, listing

PAGE_COLUMNS = [
    "engine",
    "listing",
    "jobs in set",
    "page",
    "server us/page",
    "index read us",
    "wall ms/page",
]
HOT_COLUMNS = [
    "engine",
    "side",
    "round",
    "jobs",
    "enqueue jobs/s",
    "drain jobs/s",
    "enqueue server us/job",
    "drain server us/job",
]
REPEATS = 20
HANDLER = "async def noop(job):\n    return None\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, help="scheduled jobs (1,000,000; quick 20,000)")
    parser.add_argument("--accounts", type=int, default=10_000, help="accounts they belong to")
    parser.add_argument("--ties", type=int, help="jobs due at one instant (100,000; quick 5,000)")
    parser.add_argument(
        "--commits",
        nargs="*",
        default=["5bf0de8^1", "5bf0de8"],
        help="commits to run the hot path on beside this tree (default: just before the "
        "listings merge, and the merge)",
    )
    parser.add_argument("--hot-jobs", type=int, help="jobs per hot-path run (50,000; quick 3,000)")
    parser.add_argument("--pairs", type=int, default=3, help="alternated rounds of the sides")
    parser.add_argument("--no-hot-path", action="store_true", help="pages only")
    parser.add_argument("--no-pages", action="store_true", help="hot path only")


# -- pages --------------------------------------------------------------------------------------


async def fill(url: str, stream: str, jobs: int, accounts: int, ties: bool) -> None:
    """``jobs`` scheduled jobs: on the minute over a week from tomorrow, or all at one instant."""
    start = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(days=1)
    chunk = 1000 if ties else 100  # one enqueue_many per due time: 100 jobs a minute
    async with streamq.connect(url) as q:
        limiter = anyio.Semaphore(4)

        async def one(first: int) -> None:
            n = min(chunk, jobs - first)
            async with limiter:
                await q.enqueue_many(
                    stream,
                    [{"n": first + i} for i in range(n)],
                    accounts=[f"acct{(first + i) % accounts}" for i in range(n)],
                    run_at=start + timedelta(minutes=0 if ties else first // chunk),
                )

        async with anyio.create_task_group() as tg:
            for first in range(0, jobs, chunk):
                tg.start_soon(one, first)


def time_pages(
    url: str, stream: str, cases: list[tuple[str, str | None, str | None]]
) -> list[tuple[str, tuple[float, float], float, int]]:
    """Per case (label, account, cursor): its label, median server µs, median wall ms, jobs."""
    client = sync_redis.Redis.from_url(url)
    client.config_set("slowlog-log-slower-than", 0)
    client.config_set("slowlog-max-len", 10_000)
    found = []
    try:
        for label, account, cursor in cases:
            served: list[tuple[float, float]] = []
            walls: list[float] = []
            listed = 0

            async def page(
                account: str | None = account,
                cursor: str | None = cursor,
                served: list[tuple[float, float]] = served,
                walls: list[float] = walls,
            ) -> int:
                async with streamq.connect(url) as q:
                    await q.redis.ping()
                    began = time.perf_counter()
                    client.slowlog_reset()
                    got = await q.jobs(stream, "scheduled", account=account, cursor=cursor)
                    walls.append((time.perf_counter() - began) * 1000)
                    served.append(slowlog_sum(client))
                    return len(got.jobs)

            for _ in range(REPEATS):
                listed = anyio.run(page, backend_options=UVLOOP)
            total = statistics.median(t for t, _ in served)
            index = statistics.median(i for _, i in served)
            found.append((label, (total, index), statistics.median(walls), listed))
    finally:
        client.config_set("slowlog-log-slower-than", 10_000)
        client.close()
    return found


def slowlog_sum(client: sync_redis.Redis) -> tuple[float, float]:
    """The µs SLOWLOG recorded since its reset: in all, and in reading the index (the
    page_members script, or a ZRANGE); the rest is reading the records."""
    entries: Any = client.slowlog_get(-1)
    total = index = 0
    for entry in entries:
        name = entry["command"]
        name = (name.decode() if isinstance(name, bytes) else str(name)).upper()
        if not name.startswith(("SLOWLOG", "PING", "CONFIG", "CLIENT", "HELLO")):
            total += int(entry["duration"])
            if name.startswith(("EVALSHA", "ZRANGE")):
                index += int(entry["duration"])
    return float(total), float(index)


def cursor_at(client: sync_redis.Redis, set_key: str, rank: int, account: str | None) -> str:
    """The cursor a page ending at ``rank`` of ``set_key`` would give."""
    found: Any = client.zrange(set_key, rank, rank, withscores=True)
    [(member, score)] = found
    return listing.encode_cursor("scheduled", account, (float(score), member.decode()))


def raw_score_resume(client: sync_redis.Redis, set_key: str, rank: int) -> tuple[float, float]:
    """Server µs of what a cursor of (score, offset among its ties) would send to resume at
    ``rank``: ZRANGE BYSCORE from the score with LIMIT skipping the ties already listed."""
    found: Any = client.zrange(set_key, rank, rank, withscores=True)
    [(_, score)] = found
    skip = rank - int(client.zcount(set_key, "-inf", f"({score!r}"))
    client.config_set("slowlog-log-slower-than", 0)
    served = []
    for _ in range(REPEATS):
        client.slowlog_reset()
        client.zrange(set_key, score, "+inf", byscore=True, offset=skip + 1, num=101)
        served.append(slowlog_sum(client))
    client.config_set("slowlog-log-slower-than", 10_000)
    middle = statistics.median(t for t, _ in served)
    return middle, middle


def pages(args: argparse.Namespace, ui: UI, section: Section, label: str, url: str) -> None:
    jobs = args.jobs or (20_000 if args.quick else 1_000_000)
    ties = args.ties or (5_000 if args.quick else 100_000)
    accounts = min(args.accounts, jobs)
    spread, tied = f"list-{uuid.uuid4().hex[:8]}", f"ties-{uuid.uuid4().hex[:8]}"
    with ui.step(f"{label}: {jobs:,} scheduled jobs, {ties:,} due at once", 2):
        anyio.run(fill, url, spread, jobs, accounts, False, backend_options=UVLOOP)
        anyio.run(fill, url, tied, ties, accounts, True, backend_options=UVLOOP)
    client = sync_redis.Redis.from_url(url)
    delayed, tied_set = keys.delayed(spread), keys.delayed(tied)
    if client.zcard(delayed) != jobs or client.zcard(tied_set) != ties:
        raise BenchError(f"listing: filled {client.zcard(delayed)} of {jobs} scheduled jobs")
    account = f"acct{accounts // 2}"
    due = keys.due(spread, account)
    in_account = int(client.zcard(due))
    with ui.step(f"{label}: pages", 1):
        spread_cases = [
            ("scheduled, first page", None, None),
            ("scheduled, page from the middle", None, cursor_at(client, delayed, jobs // 2, None)),
            (f"scheduled, account {account} (1 of {accounts:,})", account, None),
            (
                f"scheduled, account {account}, page from its middle",
                account,
                cursor_at(client, due, in_account // 2, account),
            ),
        ]
        timed = time_pages(url, spread, spread_cases)
        tied_timed = time_pages(
            url, tied, [("all due at one instant, page from the middle", None, cursor_at(
                client, tied_set, ties // 2, None
            ))]
        )  # fmt: skip
        raw = raw_score_resume(client, tied_set, ties // 2)
    sizes = [jobs, jobs, in_account, in_account]
    for (name, served, wall, listed), size in zip(timed, sizes, strict=True):
        section.rows.append(row(label, name, size, listed, served, wall))
    for name, served, wall, listed in tied_timed:
        section.rows.append(row(label, name, ties, listed, served, wall))
    section.rows.append(
        row(label, "  a score-and-offset cursor there: ZRANGE BYSCORE LIMIT", ties, 101, raw, None)
    )
    client.flushall(asynchronous=True)  # FLUSHALL of a million keys outlasts a read timeout
    client.close()


def row(
    engine: str,
    name: str,
    size: int,
    listed: int,
    served: tuple[float, float],
    wall: float | None,
) -> dict[str, Any]:
    return {
        "engine": engine, "listing": name, "jobs in set": size, "page": listed,
        "server us/page": round(served[0]), "index read us": round(served[1]),
        "wall ms/page": None if wall is None else round(wall, 2),
    }  # fmt: skip


# -- hot path -----------------------------------------------------------------------------------


def commit_tree(commit: str, into: Path) -> tuple[str, Path]:
    """A copy of ``commit``'s files under ``into`` (git archive: the repository is not
    touched); returns the commit's short hash and the copy's path."""
    try:
        short = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", commit],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        archive = into / f"{short}.tar"
        subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), short], check=True)
    except (subprocess.CalledProcessError, OSError) as exc:
        raise BenchError(f"listing: cannot take commit {commit!r}: {exc}") from None
    with tarfile.open(archive) as tar:
        tar.extractall(into / short, filter="data")
    return short, into / short


def hot_run(tree: Path, url: str, jobs: int, accounts: int, handler_dir: Path) -> dict[str, Any]:
    stream = f"hot-{uuid.uuid4().hex[:8]}"
    done = subprocess.run(
        [
            sys.executable, str(ROOT / "bench" / "listing_hot_path.py"), url, stream, str(jobs),
            str(accounts), "1", str(handler_dir),
        ],
        cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"listing: the hot-path run in {tree} failed: {last}")
    found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if Path(found["streamq"]).resolve() != tree.resolve():
        raise BenchError(f"listing: the run meant for {tree} imported {found['streamq']}")
    return found


def hot_path(
    args: argparse.Namespace,
    ui: UI,
    section: Section,
    label: str,
    url: str,
    sides: list[tuple[str, Path]],
) -> None:
    jobs = args.hot_jobs or (3_000 if args.quick else 50_000)
    with tempfile.TemporaryDirectory() as handlers:
        (Path(handlers) / "listing_noop.py").write_text(HANDLER)
        steps = args.pairs * len(sides)
        with ui.step(f"{label}: hot path, {args.pairs} alternated rounds", steps) as advance:
            for round_ in range(args.pairs):
                for side, tree in sides:
                    found = hot_run(tree, url, jobs, args.accounts, Path(handlers))
                    section.rows.append({
                        "engine": label, "side": side, "round": round_ + 1, "jobs": jobs,
                        **{column: found[column] for column in HOT_COLUMNS[4:]},
                    })  # fmt: skip
                    advance(len(section.rows))
                    sync_redis.Redis.from_url(url).flushall(asynchronous=True)
    for side, _ in sides:
        mine = [r for r in section.rows if r["engine"] == label and r["side"] == side]
        section.rows.append({
            "engine": label, "side": side, "round": "median", "jobs": jobs,
            **{c: statistics.median(r[c] for r in mine) for c in HOT_COLUMNS[4:]},
        })  # fmt: skip


def run(args: argparse.Namespace, ui: UI) -> list[Section]:
    page_section = Section(
        "listing", "listing: a page of 100 scheduled jobs (q.jobs), server and wall time",
        PAGE_COLUMNS,
    )  # fmt: skip
    hot = Section(
        "listing",
        "listing: the indexes' hot-path cost, scheduled jobs with accounts, one worker process",
        HOT_COLUMNS,
    )
    with tempfile.TemporaryDirectory() as scratch:
        sides: list[tuple[str, Path]] = []
        if not args.no_hot_path:
            for commit in args.commits:
                short, tree = commit_tree(commit, Path(scratch))
                sides.append((f"{commit} ({short})", tree))
            sides.append(("this tree", ROOT))
        with servers(args.engines) as started:
            for engine, srv in started:
                label = engine_label(engine, srv)
                if not args.no_pages:
                    pages(args, ui, page_section, label, srv.url)
                if sides:
                    hot_path(args, ui, hot, label, srv.url, sides)
    page_section.notes.append(
        "server us/page: SLOWLOG durations of the page's commands, summed (every command "
        "logged while the page is read), of which index read: the page_members script; "
        "median of 20 pages; wall ms: the q.jobs call as this process sees it"
    )
    sections = [] if args.no_pages else [page_section]
    if sides:
        hot.notes.append(
            "each side its own copy (git archive) run by bench/listing_hot_path.py, alternated "
            "on the same server; drain jobs/s from the last poll (every 10 ms) that saw no job "
            "done to the last job done"
        )
        sections.append(hot)
    return sections

"""day: a day of posts on six platforms, compressed into a few minutes.

Accounts live in eight time zones and post around 9:00, 12:30 and 19:00 *their* time, so the
load comes in waves as the day moves round the world. Each post is scheduled for its compressed
time and published by one ``streamq consume`` process per platform stream, with the platform's
default rate limits (streamq.limiter.DEFAULT_LIMITS) compressed by the same factor as the day,
written to a config file like a user's. Checked: every post published once (none lost, none
run twice, from the probe's hash of job ids), no limit window ever over its count, and the
lateness of each post against its scheduled time.

Run 1: 10,000 posts/day for 1,000 accounts, the whole day. Run 2: 10,000,000 posts/day (and
1,000,000 accounts, the same ten posts a day each): two cores cannot run a whole such day in
minutes, so it runs the busiest stretch of that day at its full rate, as many posts as
``--big-posts`` says, compressed less. Platform-wide daily caps (x 10,000, youtube 100 a day
per app) bound what any day can hold: posts beyond 80 % of a cap go to the other platforms.

The handler is a recording no-op unless ``--handler module:function`` names a publisher (say,
the simulator-backed publishers of streamq.platforms once they land): bench.handlers wraps it
and records a post only when it returned.
"""

from __future__ import annotations

import argparse
import math
import random
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import redis as sync_redis

from bench.common import (
    ROOT,
    UVLOOP,
    Section,
    engine_label,
    probe_env,
    read_probe,
    servers,
    spread,
    stop_process,
    wait_for_done,
)
from bench.report import UI
from streamq import connection
from streamq.config import Limit
from streamq.limiter import DEFAULT_LIMITS
from streamq.producer import JobOptions, Producer

COLUMNS = ["engine", "day", "posts", "accounts", "compressed", "published", "lost",
           "run twice", "violations", "p50 ms", "p99 ms", "max ms"]  # fmt: skip

ZONES = (
    ("America/New_York", 0.25),
    ("America/Los_Angeles", 0.12),
    ("America/Sao_Paulo", 0.08),
    ("Europe/London", 0.12),
    ("Europe/Paris", 0.15),
    ("Asia/Kolkata", 0.10),
    ("Asia/Tokyo", 0.10),
    ("Australia/Sydney", 0.08),
)
PEAKS = ((9.0, 1.0, 0.40), (12.5, 0.75, 0.25), (19.0, 1.5, 0.35))
"""Local hour, spread (hours), share of an account's posts."""
MIX = {"instagram": 0.30, "facebook": 0.22, "linkedin": 0.15, "x": 0.18, "tiktok": 0.14,
       "youtube": 0.01}  # fmt: skip
UNCAPPED = ("instagram", "facebook", "linkedin")
CAP_SHARE = 0.8
MINUTES = 1440
DUE_GRAIN_MS = 20
"""Due times are rounded to this, so posts due together are enqueued in one call."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--posts-per-day", type=int, default=10_000)
    parser.add_argument("--accounts", type=int, default=1_000)
    parser.add_argument("--minutes", type=float, help="the compressed day (3; quick 1)")
    parser.add_argument("--big-posts-per-day", type=int, default=10_000_000)
    parser.add_argument("--big-posts", type=int, help="posts run of it (100,000; quick 20,000)")
    parser.add_argument("--big-minutes", type=float, help="their compressed length (1.5; quick 1)")
    parser.add_argument(
        "--handler",
        help="publisher to run per post, module:function (default: none, a recording no-op)",
    )


@dataclass(frozen=True)
class Post:
    platform: str
    account: str
    minute: float
    """Minute of the UTC day it is due."""


def utc_offsets_minutes() -> list[float]:
    offsets = []
    for zone, _ in ZONES:
        offset = datetime.now(ZoneInfo(zone)).utcoffset()
        offsets.append(0.0 if offset is None else offset.total_seconds() / 60)
    return offsets


def density(offsets: Sequence[float]) -> list[list[float]]:
    """Posts per UTC minute of the day, per zone (unnormalised)."""
    table = []
    for minute in range(MINUTES):
        row = []
        for (_, weight), offset in zip(ZONES, offsets, strict=True):
            local_h = ((minute + offset) % MINUTES) / 60
            value = 0.0
            for hour, sigma, share in PEAKS:
                d = min(abs(local_h - hour), 24 - abs(local_h - hour))
                value += share * math.exp(-0.5 * (d / sigma) ** 2) / sigma
            row.append(weight * value)
        table.append(row)
    return table


def busiest_window(totals: list[float], fraction: float) -> tuple[int, int]:
    """The shortest run of minutes holding ``fraction`` of the day, at the busiest time."""
    doubled = totals + totals
    prefix = [0.0]
    for value in doubled:
        prefix.append(prefix[-1] + value)
    need = fraction * prefix[MINUTES]
    for length in range(1, MINUTES + 1):
        best = max(range(MINUTES), key=lambda s: prefix[s + length] - prefix[s])
        if prefix[best + length] - prefix[best] >= need:
            return best, length
    return 0, MINUTES


def plan(posts_per_day: int, accounts: int, count: int, seed: int = 8) -> tuple[list[Post], float]:
    """``count`` posts of a day of ``posts_per_day``: all of it, or its busiest stretch.
    Returns the posts and the real minutes they span."""
    rng = random.Random(seed)
    table = density(utc_offsets_minutes())
    totals = [sum(row) for row in table]
    start, length = busiest_window(totals, count / posts_per_day) if count < posts_per_day else (
        0, MINUTES)  # fmt: skip
    minutes = [(start + i) % MINUTES for i in range(length)]
    by_zone: list[list[int]] = [[] for _ in ZONES]
    edges, acc = [], 0.0
    for _, weight in ZONES:
        acc += weight
        edges.append(acc)
    for account in range(accounts):
        where = (account + 0.5) / accounts * acc
        by_zone[next(i for i, e in enumerate(edges) if where <= e)].append(account)
    chosen = rng.choices(minutes, weights=[totals[m] for m in minutes], k=count)
    platforms = rng.choices(list(MIX), weights=list(MIX.values()), k=count)
    posts = []
    for minute, platform in zip(chosen, platforms, strict=True):
        zone = rng.choices(range(len(ZONES)), weights=table[minute])[0]
        account = rng.choice(by_zone[zone])
        offset = (minute - start) % MINUTES + rng.random()
        posts.append(Post(platform, f"acct-{account}", offset))
    return cap_platforms(posts, rng), float(length)


def cap_platforms(posts: list[Post], rng: random.Random) -> list[Post]:
    """Move posts beyond 80 % of a platform-wide daily cap to platforms without one."""
    caps = {
        platform: int(CAP_SHARE * limit.max)
        for platform, limits in DEFAULT_LIMITS.items()
        for limit in limits
        if limit.scope == "platform" and limit.max and limit.per and limit.per >= 86_400
    }
    seen: dict[str, int] = defaultdict(int)
    capped = []
    for post in posts:
        seen[post.platform] += 1
        if post.platform in caps and seen[post.platform] > caps[post.platform]:
            post = Post(rng.choice(UNCAPPED), post.account, post.minute)
        capped.append(post)
    return capped


def compressed_limits(platform: str, factor: float) -> tuple[Limit, ...]:
    return tuple(
        Limit(
            scope=limit.scope,
            max=limit.max,
            per=None if limit.per is None else limit.per / factor,
            min_interval=None if limit.min_interval is None else limit.min_interval / factor,
        )
        for limit in DEFAULT_LIMITS[platform]
    )


def write_config(path: Path, streams: dict[str, str], factor: float) -> None:
    lines = []
    for platform, stream in streams.items():
        lines.append(f'[streams."{stream}"]')
        for limit in compressed_limits(platform, factor):
            lines.append(f'[[streams."{stream}".limits]]')
            lines.append(f'scope = "{limit.scope}"')
            if limit.max is not None and limit.per is not None:
                lines.append(f"max = {limit.max}")
                lines.append(f"per = {limit.per:.6f}")
            if limit.min_interval is not None:
                lines.append(f"min_interval = {limit.min_interval:.6f}")
    path.write_text("\n".join(lines) + "\n")


async def enqueue(url: str, streams: dict[str, str], posts: list[Post], start_ms: int,
                  factor: float) -> list[str]:  # fmt: skip
    groups: dict[tuple[str, int], list[Post]] = defaultdict(list)
    for post in posts:
        due = start_ms + post.minute * 60_000 / factor
        groups[(post.platform, int(due // DUE_GRAIN_MS * DUE_GRAIN_MS))].append(post)
    redis = connection.client(url)
    ids: list[str] = []
    try:
        producer = Producer(redis)
        limit = anyio.Semaphore(32)

        async def send(platform: str, due: int, group: list[Post]) -> None:
            async with limit:
                when = datetime.fromtimestamp(due / 1000, tz=UTC)
                ids.extend(
                    await producer.enqueue_many(
                        streams[platform],
                        [{"text": f"post of {p.account}"} for p in group],
                        accounts=[p.account for p in group],
                        options=JobOptions(run_at=when),
                    )
                )

        async with anyio.create_task_group() as tg:
            for (platform, due), group in sorted(groups.items(), key=lambda g: g[0][1]):
                tg.start_soon(send, platform, due, group)
    finally:
        await redis.aclose()
    return ids


def violations(starts: dict[str, list[tuple[str, float]]], factor: float,
               slack_ms: float = 2.0) -> int:  # fmt: skip
    """Windows holding more starts than their limit allows (handler start times, which trail
    the recorded admissions by a little: ``slack_ms`` of that is forgiven)."""
    found = 0
    for platform, entries in starts.items():
        for limit in compressed_limits(platform, factor):
            groups: dict[str, list[float]] = defaultdict(list)
            for account, ms in entries:
                groups[account if limit.scope == "account" else ""].append(ms)
            for count, window_ms in limit.windows():
                for times in groups.values():
                    times.sort()
                    found += sum(
                        1
                        for i in range(len(times) - count)
                        if times[i + count] - times[i] < window_ms - slack_ms
                    )
    return found


def one_day(
    url: str,
    args: argparse.Namespace,
    ui: UI,
    label: str,
    name: str,
    per_day: int,
    accounts: int,
    count: int,
    minutes: float,
    section: Section,
) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    posts, real_minutes = plan(per_day, accounts, count)
    factor = real_minutes / minutes
    streams = {platform: f"day-{run}-{platform}" for platform in MIX}
    config = ROOT / "bench" / "results" / "logs" / f"day-{run}.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    write_config(config, streams, factor)
    client = sync_redis.Redis.from_url(url)
    env = probe_env(url, run, times=True, ids=True)
    if args.handler:
        env["BENCH_DAY_HANDLER"] = args.handler
    workers: list[subprocess.Popen[bytes]] = []
    with (config.with_suffix(".log")).open("wb") as log:
        try:
            for stream in streams.values():
                command = [
                    sys.executable, "-m", "streamq", "consume", "--redis-url", url,
                    "--config", str(config), "--stream", stream,
                    "--handler", "bench.handlers:record_post", "--log-level", "WARNING",
                ]  # fmt: skip
                workers.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log))
            seconds, micros = client.time()
            lead_ms = 3000 + count / 5  # enough to enqueue them all before the first is due
            start_ms = int(seconds * 1000 + micros / 1000 + lead_ms)
            ids = anyio.run(enqueue, url, streams, posts, start_ms, factor, backend_options=UVLOOP)

            def died() -> str | None:
                for worker in workers:
                    if worker.poll() is not None:
                        return f"a day worker exited with {worker.returncode}: see {log.name}"
                return None

            with ui.step(f"{label}: day, {name}", count) as advance:
                wait_for_done(client, run, count, lead_ms / 1000 + minutes * 60 + 120, advance,
                              died)  # fmt: skip
            # Anything run twice would land within a moment of the rest.
            time.sleep(0.5)
        finally:
            for worker in workers:
                stop_process(worker)
    reading = read_probe(client, run)
    late: list[float] = []
    starts: dict[str, list[tuple[str, float]]] = defaultdict(list)
    by_stream = {stream: platform for platform, stream in streams.items()}
    for tag, ms in reading.times:
        job_id, due, account = tag.split("@")
        late.append(ms - float(due))
        starts[by_stream[job_id.split(":")[0]]].append((account, ms))
    section.samples[f"{label} {name}"] = late
    figures = spread(late)
    runs: dict[str, int] = defaultdict(int)
    for tag, hits in reading.ids.items():
        runs[tag.split("@")[0]] += hits
    seen = set(runs)
    return {
        "day": name,
        "posts": count,
        "accounts": accounts,
        "compressed": f"{real_minutes:,.0f} min of the day in {minutes:g} (x{factor:,.0f})",
        "published": len(seen),
        "lost": len(set(ids) - seen),
        "run twice": sum(1 for n in runs.values() if n > 1),
        "violations": violations(starts, factor),
        "p50 ms": figures["p50"],
        "p99 ms": figures["p99"],
        "max ms": figures["max"],
        "per platform": {p: sum(1 for post in posts if post.platform == p) for p in MIX},
    }


def run(args: argparse.Namespace, ui: UI) -> list[Section]:
    section = Section("day", "day: compressed days of posts under the default rate limits", COLUMNS)
    minutes = args.minutes or (1.0 if args.quick else 3.0)
    big_posts = args.big_posts or (20_000 if args.quick else 100_000)
    big_minutes = args.big_minutes or (1.0 if args.quick else 1.5)
    with servers(args.engines[:1]) as started:
        for engine, srv in started:
            label = engine_label(engine, srv)
            small = f"{args.posts_per_day:,}/day"
            section.rows.append({"engine": label, **one_day(
                srv.url, args, ui, label, small, args.posts_per_day, args.accounts,
                args.posts_per_day, minutes, section)})  # fmt: skip
            big = f"{args.big_posts_per_day:,}/day, busiest stretch"
            section.rows.append({"engine": label, **one_day(
                srv.url, args, ui, label, big, args.big_posts_per_day,
                max(args.accounts, args.big_posts_per_day // 10), big_posts, big_minutes,
                section)})  # fmt: skip
    section.notes.append(
        "limits: streamq's default limits per platform, windows divided by the compression "
        "factor; one `streamq consume` process per platform; handler: "
        + (args.handler or "recording no-op")
    )
    section.notes.append("targets: 0 lost, 0 run twice, 0 limit violations")
    return [section]

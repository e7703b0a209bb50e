"""publish: one worker running a built-in publisher against the platform simulator (latency,
transient errors, answers lost after the post was taken); posts per second, and lost and
duplicated posts counted from the simulator's own record of every post it received."""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import anyio

from bench.common import UVLOOP, Section, engine_label, servers
from bench.report import UI
from streamq import keys
from streamq.worker import Worker, WorkerOptions

COLUMNS = ["engine", "platform", "concurrency", "posts/s", "lost", "duplicates", "retried",
           "found by lookup"]  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--posts", type=int, help="posts (3,000; quick 500)")
    parser.add_argument("--platform", default="x", help="built-in publisher (x)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--latency", type=float, default=0.08, help="simulator latency, s")
    parser.add_argument("--error-rate", type=float, default=0.02)
    parser.add_argument("--lost-answer-rate", type=float, default=0.01)


async def publish_run(
    url: str, stream: str, n: int, concurrency: int, options: Any, platform_name: str
) -> dict[str, Any]:
    from streamq.client import Queue
    from streamq.config import Backoff, Config, StreamConfig
    from streamq.platforms.client import Session, resolve_settings
    from streamq.platforms.credentials import CallableCredentials, Credentials
    from streamq.simulator import Simulator

    sim = Simulator(options)
    async with sim.serve() as sim_url:
        settings = resolve_settings(platform_name, Config(), {"STREAMQ_PLATFORM_URL": sim_url})
        config = Config(streams={stream: StreamConfig(publisher=platform_name, limits=())})
        users = {"facebook": "1", "instagram": "2", "linkedin": "urn:li:person:3"}
        tokens = CallableCredentials(lambda p, a: Credentials(f"bench-{a}", users.get(p)))
        media = f"{sim_url}/_sim/media"
        posts = [
            {"text": f"post {i}", "image_url": f"{media}/{i}.jpg"}
            if platform_name == "instagram"
            else {"text": f"post {i}"}
            for i in range(n)
        ]
        async with (
            Queue(url, config=config) as q,
            Session(config, credentials=tokens, settings={platform_name: settings}) as s,
        ):
            ids = await q.enqueue_many(
                stream, posts, accounts=[f"acct-{i % 100}" for i in range(n)]
            )
            worker = Worker(
                q.redis,
                stream,
                s.publisher(platform_name),
                WorkerOptions(
                    concurrency=concurrency,
                    limits=(),
                    backoff=Backoff(base=0.05, factor=2, max=0.5, jitter=0.2),
                    max_attempts=10,
                    block_seconds=0.2,
                ),
            )
            started = time.perf_counter()
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(worker.run)
                while True:  # until every post is done or dead (retries included)
                    done, dead = await q.redis.hmget(keys.counts(stream), ["done", "dead"])
                    if int(done or 0) + int(dead or 0) >= n:
                        break
                    await anyio.sleep(0.02)
                elapsed = time.perf_counter() - started
                worker.stop()
            posted = {post.key for post in sim.posts}
    return {
        "posts/s": n / elapsed,
        "lost": len(set(ids) - posted),
        "duplicates": sim.summary()["duplicates"],
        "retried": worker.counts.failed,
        "found by lookup": sim.counts.found,
    }


def run(args: argparse.Namespace, ui: UI) -> list[Section]:
    from streamq.simulator import SimOptions

    posts = args.posts or (500 if args.quick else 3_000)
    options = SimOptions(
        latency=args.latency,
        error_rate=args.error_rate,
        lost_answer_rate=args.lost_answer_rate,
        processing=0.05,
    )
    section = Section(
        "publish",
        f"publish: {posts:,} posts through the built-in {args.platform} publisher, one worker, "
        f"simulator at {args.latency * 1000:.0f} ms, {args.error_rate:.0%} errors, "
        f"{args.lost_answer_rate:.0%} lost answers",
        COLUMNS,
    )
    with servers(args.engines[:1]) as started:
        for engine, srv in started:
            for concurrency in args.concurrency:
                ui.say(f"{engine}: {args.platform} publisher at concurrency {concurrency}")
                stream = f"bench-publish-{os.urandom(3).hex()}"
                figures = anyio.run(
                    publish_run, srv.url, stream, posts, concurrency, options, args.platform,
                    backend_options=UVLOOP,
                )  # fmt: skip
                section.rows.append(
                    {
                        "engine": engine_label(engine, srv),
                        "platform": args.platform,
                        "concurrency": concurrency,
                        **figures,
                    }
                )
    return [section]

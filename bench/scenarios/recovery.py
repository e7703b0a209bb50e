"""recovery: one worker process holds 500 jobs in flight (a slow handler) and is killed with
SIGKILL; a second worker, already running, takes them over once they have been idle for the
visibility timeout. Figures: seconds from the kill until all 500 are done, jobs lost (must be
0) and run twice, counted from a Redis hash of job ids the handler writes."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

import anyio
import redis as sync_redis

from bench.common import (
    ROOT,
    UVLOOP,
    BenchError,
    Section,
    engine_label,
    probe_env,
    read_probe,
    servers,
    stop_process,
    wait_for_done,
)
from bench.report import UI
from streamq import connection, keys
from streamq.producer import Producer

COLUMNS = [
    "engine",
    "in flight",
    "visibility timeout s",
    "recovered in s",
    "target s",
    "lost",
    "run twice",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--in-flight", type=int, default=500, help="jobs the killed worker holds")
    parser.add_argument(
        "--visibility-timeout", type=float, help="seconds before a job is reclaimed (10; quick 5)"
    )


async def enqueue(url: str, stream: str, n: int) -> None:
    redis = connection.client(url)
    try:
        await Producer(redis).enqueue_many(stream, [{"n": i} for i in range(n)])
    finally:
        await redis.aclose()


def worker(
    url: str,
    stream: str,
    run: str,
    sleep_s: float,
    args: argparse.Namespace,
    visibility: float,
    log: Any,
) -> subprocess.Popen[bytes]:
    env = {**probe_env(url, run, ids=True), "BENCH_SLEEP_S": str(sleep_s)}
    command = [
        sys.executable, "-m", "streamq", "consume", "--redis-url", url, "--stream", stream,
        "--handler", "bench.handlers:slow", "--concurrency", str(args.in_flight),
        "--visibility-timeout", f"{visibility:g}s", "--log-level", "WARNING",
    ]  # fmt: skip
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)


def poll(what: str, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise BenchError(f"recovery: {what} did not happen within {timeout:.0f} s")
        time.sleep(0.01)


def one_run(
    url: str, args: argparse.Namespace, visibility: float, ui: UI, label: str
) -> dict[str, Any]:
    run = uuid.uuid4().hex[:10]
    stream = f"recovery-{run}"
    lane = keys.lane(stream, "normal")
    client = sync_redis.Redis.from_url(url)
    n = args.in_flight
    anyio.run(enqueue, url, stream, n, backend_options=UVLOOP)
    log_path = ROOT / "bench" / "results" / "logs" / f"{stream}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        doomed = worker(url, stream, run, 3600.0, args, visibility, log)
        survivor: subprocess.Popen[bytes] | None = None
        try:

            def pending() -> int:
                try:
                    summary: Any = client.xpending(lane, keys.GROUP)
                except sync_redis.ResponseError:  # the worker has not made its group yet
                    return 0
                return int(summary["pending"])

            poll(f"{n} jobs in flight", lambda: pending() == n, 60)
            before = {entry["id"] for entry in client.client_list()}
            survivor = worker(url, stream, run, 0.05, args, visibility, log)

            def survivor_reading() -> bool:
                # Its reader waiting in XREADGROUP: Redis 7.0 lists a consumer in XINFO
                # CONSUMERS only once a read delivered something, so that cannot tell.
                return any(
                    entry["id"] not in before and entry["cmd"] == "xreadgroup"
                    for entry in client.client_list()
                )

            poll("the second worker reading", survivor_reading, 60)
            os.kill(doomed.pid, signal.SIGKILL)
            doomed.wait()
            killed = time.monotonic()
            with ui.step(f"{label}: recovery of {n} jobs", n) as advance:
                done = wait_for_done(client, run, n, visibility + 60, advance)
            recovered = time.monotonic() - killed
        finally:
            stop_process(doomed)
            if survivor is not None:
                stop_process(survivor)
    reading = read_probe(client, run)
    return {
        "in flight": n,
        "visibility timeout s": visibility,
        "recovered in s": recovered if done >= n else None,
        "target s": visibility + 2,
        "lost": n - len(reading.ids),
        "run twice": sum(1 for count in reading.ids.values() if count > 1),
    }


def run(args: argparse.Namespace, ui: UI) -> list[Section]:
    visibility = args.visibility_timeout or (5.0 if args.quick else 10.0)
    section = Section(
        "recovery", "recovery: a worker holding jobs in flight is killed (SIGKILL)", COLUMNS
    )
    with servers(args.engines) as started:
        for engine, srv in started:
            label = engine_label(engine, srv)
            section.rows.append({"engine": label, **one_run(srv.url, args, visibility, ui, label)})
    section.notes.append(
        "target: all in-flight jobs of the killed worker done within the visibility timeout + 2 s"
    )
    return [section]

"""cluster: no-op jobs on one Valkey server against a three-master Valkey Cluster, with the
stream unsplit and split into 3 and 6 partitions: bulk enqueue rate, drain rate with two
worker processes, and the servers' time per job. The probe records on a server of its own, so
its writes do not load the servers being measured."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from contextlib import ExitStack
from typing import Any

import anyio
import redis as sync_redis

from bench.common import ROOT, Section, probe_env, read_probe, stop_process, wait_for_done
from bench.report import UI
from bench.runner import server_usec
from streamq import connection
from streamq.config import Config, StreamConfig
from streamq.producer import Producer
from streamq.server import LocalCluster, LocalServer

COLUMNS = [
    "servers",
    "partitions",
    "processes",
    "enqueue jobs/s",
    "jobs/s",
    "server us/job",
    "lost",
]
SETUPS = [("one server", 1), ("3-master cluster", 1), ("3-master cluster", 3)]
SETUPS += [("3-master cluster", 6)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, help="jobs per run (100,000; quick 10,000)")
    parser.add_argument("--processes", type=int, default=2, help="worker processes (2)")


def run(args: argparse.Namespace, ui: UI) -> list[Section]:
    jobs = args.jobs or (10_000 if args.quick else 100_000)
    section = Section(
        "cluster",
        f"cluster: {jobs:,} no-op jobs on one server and on a 3-master cluster, "
        f"{args.processes} worker processes",
        COLUMNS,
    )
    with ExitStack() as stack:
        probe_server = stack.enter_context(LocalServer())
        single = stack.enter_context(LocalServer())
        cluster = stack.enter_context(LocalCluster(masters=3))
        for label, partitions in SETUPS:
            url = single.url if label == "one server" else cluster.url
            nodes = [single] if label == "one server" else cluster.nodes
            row = _run_one(url, nodes, probe_server.url, jobs, partitions, args.processes, ui)
            section.rows.append({"servers": label, "partitions": partitions, **row})
    section.notes.append(
        f"{os.cpu_count()} cores run the servers, the workers and the producer together: on a "
        "machine this small a cluster shows its overhead, not its gain. Its gain is headroom: "
        "each master has a core of its own on real hosts, and a stream split into partitions "
        "spreads over all of them."
    )
    return [section]


def _run_one(
    url: str,
    nodes: list[LocalServer],
    probe_url: str,
    jobs: int,
    partitions: int,
    processes: int,
    ui: UI,
) -> dict[str, Any]:
    run = uuid.uuid4().hex[:10]
    stream = f"cluster-{run}"
    config_path = ROOT / "bench" / "results" / "logs" / f"{stream}.toml"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(f"[streams.{stream}]\npartitions = {partitions}\n")
    config = Config(streams={stream: StreamConfig(partitions=partitions)})
    probe = sync_redis.Redis.from_url(probe_url)
    before = sum(server_usec(sync_redis.Redis(port=node.port)) for node in nodes)
    enqueue_seconds = anyio.run(_enqueue, url, stream, config, jobs)
    env = probe_env(probe_url, run)
    command = [
        sys.executable, "-m", "streamq", "consume", "--redis-url", url, "--stream", stream,
        "--config", str(config_path), "--handler", "bench.peers.drivers.streamq_peer:handle",
        "--log-level", "WARNING",
    ]  # fmt: skip
    log_path = config_path.with_suffix(".log")
    with log_path.open("wb") as log:
        workers = [
            subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
            for _ in range(processes)
        ]
        try:
            with ui.step(f"partitions {partitions} on {len(nodes)} server(s)", jobs) as advance:
                done = wait_for_done(probe, run, jobs, 120 + jobs / 200, advance)
        finally:
            for worker in workers:
                stop_process(worker)
    after = sum(server_usec(sync_redis.Redis(port=node.port)) for node in nodes)
    reading = read_probe(probe, run)
    span_s = (reading.last_ms - reading.first_ms) / 1000
    return {
        "processes": processes,
        "enqueue jobs/s": jobs / enqueue_seconds,
        "jobs/s": (done - 1) / span_s if span_s > 0 else None,
        "server us/job": (after - before) / max(done, 1),
        "lost": jobs - min(done, jobs),
    }


async def _enqueue(url: str, stream: str, config: Config, jobs: int) -> float:
    redis = connection.client(url)
    try:
        producer = Producer(redis, config)
        await producer.enqueue_many(stream, [["hit", 0]])  # connect and load the script first
        started = time.perf_counter()
        await producer.enqueue_many(stream, [["hit", i] for i in range(1, jobs)])
        return time.perf_counter() - started
    finally:
        await redis.aclose()

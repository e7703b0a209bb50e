"""Runs one system through one case — throughput, io-bound or lateness — the same way for
streamq and every peer: its driver enqueues, its workers run as subprocesses, the probe in the
handler records, and the figures are read back from Redis."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis as sync_redis

from bench.common import ROOT, BenchError, probe_env, read_probe, stop_process, wait_for_done
from bench.peers.drivers._cli import NAP_SECONDS
from bench.report import UI


@dataclass(frozen=True)
class Driver:
    """How to run one system: its python and its driver module."""

    name: str
    python: str
    module: str


@dataclass(frozen=True)
class Case:
    kind: str
    """throughput (no-op jobs at once), io-bound (50 ms each) or lateness (scheduled no-ops)."""
    jobs: int
    processes: int = 1
    concurrency: int = 0
    """Per worker process; 0 is the library's default."""
    lead_ms: int = 0
    """lateness: the first job is due this long after the producer starts."""
    step_ms: float = 0.0
    """lateness: due times step by this much (0: all due in the same instant)."""


def _command(driver: Driver, *args: str) -> list[str]:
    return [driver.python, "-m", driver.module, *args]


def _produce(driver: Driver, url: str, queue: str, case: Case, env: dict[str, str]) -> float:
    args = ["produce", "--url", url, "--queue", queue, "--jobs", str(case.jobs)]
    args += ["--kind", "nap" if case.kind == "io-bound" else "hit"]
    if case.kind == "lateness":
        seconds, micros = sync_redis.Redis.from_url(url).time()
        start = int(seconds * 1000 + micros / 1000) + case.lead_ms
        args += ["--due-start-ms", str(start), "--due-step-ms", str(case.step_ms)]
    done = subprocess.run(
        _command(driver, *args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"{driver.name} producer failed: {last}")
    seconds_taken: float = json.loads(done.stdout.strip().splitlines()[-1])["seconds"]
    return seconds_taken


def _workers(
    driver: Driver, url: str, queue: str, case: Case, env: dict[str, str], log: Any
) -> list[subprocess.Popen[bytes]]:
    args = ["work", "--url", url, "--queue", queue, "--concurrency", str(case.concurrency)]
    return [
        subprocess.Popen(_command(driver, *args), cwd=ROOT, env=env, stdout=log, stderr=log)
        for _ in range(case.processes)
    ]


def run_case(driver: Driver, url: str, case: Case, ui: UI, label: str) -> dict[str, Any]:
    """Figures of one run: enqueue rate, and jobs/s, wall time or lateness percentiles."""
    run = uuid.uuid4().hex[:10]
    queue = f"{case.kind}-{driver.name}-{run}"
    client = sync_redis.Redis.from_url(url)
    env = probe_env(url, run, times=case.kind == "lateness")
    # Peers whose tasks are declared at import time read where to connect from here.
    env |= {
        "BENCH_BROKER_URL": url,
        "BENCH_QUEUE": queue,
        "BENCH_CONCURRENCY": str(case.concurrency),
    }
    log_path = ROOT / "bench" / "results" / "logs" / f"{queue}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        workers: list[subprocess.Popen[bytes]] = []
        try:
            if case.kind == "lateness":
                # Workers first: scheduled jobs must find them running, as in production.
                workers = _workers(driver, url, queue, case, env, log)
            enqueue_seconds = _produce(driver, url, queue, case, env)
            server_before = server_usec(client)
            if not workers:
                workers = _workers(driver, url, queue, case, env, log)

            def died() -> str | None:
                for worker in workers:
                    if worker.poll() is not None:
                        return f"{driver.name} worker exited with {worker.returncode}: {log_path}"
                return None

            timeout = 120 + case.jobs / 200 + case.lead_ms / 1000 + case.step_ms * case.jobs / 1000
            # CPU is counted from the first finished job on, so the workers' start-up is not.
            cpu_from: list[tuple[int, float]] = []

            def progress(done: int) -> None:
                if done and not cpu_from:
                    cpu_from.append((done, sum(cpu_seconds(w.pid) for w in workers)))
                advance(done)

            with ui.step(label, case.jobs) as advance:
                done = wait_for_done(client, run, case.jobs, timeout, progress, died)
            server_us = server_usec(client) - server_before
            counted_from, cpu_start = cpu_from[0] if cpu_from else (0, 0.0)
            worker_s = sum(cpu_seconds(worker.pid) for worker in workers) - cpu_start
        finally:
            for worker in workers:
                stop_process(worker)
    reading = read_probe(client, run)
    result: dict[str, Any] = {
        "jobs": case.jobs,
        "done": done,
        "lost": case.jobs - min(done, case.jobs),
        "enqueue jobs/s": case.jobs / enqueue_seconds if enqueue_seconds else None,
        "server us/job": server_us / max(done, 1),
        "worker cpu us/job": worker_s * 1e6 / max(done - counted_from, 1),
    }
    span_s = (reading.last_ms - reading.first_ms) / 1000
    if case.kind == "throughput":
        result["jobs/s"] = (done - 1) / span_s if span_s > 0 else None
    elif case.kind == "io-bound":
        wall = span_s + NAP_SECONDS
        ideal = case.jobs * NAP_SECONDS / max(case.concurrency, 1)
        result.update({"wall s": wall, "ideal s": ideal, "wall / ideal": wall / ideal})
    else:
        result["lateness_ms"] = [ms - float(tag) for tag, ms in reading.times]
    if done < case.jobs:
        result["status"] = f"timed out: {done:,} of {case.jobs:,} done"
    return result


def server_usec(client: sync_redis.Redis) -> int:
    """Microseconds the server has spent running commands, all of them, since it started."""
    stats: Any = client.info("commandstats")
    return sum(int(entry["usec"]) for entry in stats.values())


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its descendants so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0.0
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return own + sum(cpu_seconds(int(child)) for child in children)

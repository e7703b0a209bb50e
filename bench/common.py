"""What every scenario shares: servers, the machine's description, reading the probe back,
percentiles, and the shape of a result."""

from __future__ import annotations

import os
import platform
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import redis as sync_redis

from bench import probe
from streamq.server import LocalServer

ROOT = Path(__file__).resolve().parent.parent
UVLOOP = {"use_uvloop": True}
ENGINES = ("valkey", "redis")


class BenchError(Exception):
    """A scenario could not run; the message says why (printed as one line)."""


@dataclass
class Section:
    """One table of results: ``rows`` are dicts keyed by ``columns`` (plus any extra keys,
    which go to --json only). ``samples`` feed the charts and are not printed."""

    scenario: str
    title: str
    columns: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    samples: dict[str, list[float]] = field(default_factory=dict)
    series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    """Lines to chart: name -> (seconds, value)."""


@contextmanager
def servers(engines: list[str]) -> Iterator[list[tuple[str, LocalServer]]]:
    """Throwaway servers on free loopback ports; Redis only when ``redis-server`` is on PATH."""
    started: list[tuple[str, LocalServer]] = []
    try:
        for engine in engines:
            if engine not in ENGINES:
                raise BenchError(f"unknown engine {engine!r}: use valkey or redis")
            binary = None if engine == "valkey" else shutil.which("redis-server")
            if engine == "redis" and binary is None:
                continue
            started.append((engine, LocalServer(binary).start()))
        yield started
    finally:
        for _, srv in started:
            srv.stop()


def engine_label(engine: str, srv: LocalServer) -> str:
    return f"{engine} {srv.version}"


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def spread(values: list[float]) -> dict[str, float]:
    return {
        "p50": percentile(values, 0.5),
        "p99": percentile(values, 0.99),
        "max": max(values, default=0.0),
    }


@dataclass
class ProbeReading:
    done: int
    first_ms: float
    last_ms: float
    times: list[tuple[str, float]]
    ids: dict[str, int]


def read_probe(client: sync_redis.Redis, run: str) -> ProbeReading:
    done = int(client.get(probe.key(run, "done")) or 0)
    spans: Any = client.hgetall(probe.key(run, "span"))
    firsts, lasts = [], []
    for value in spans.values():
        first, last = value.decode().split(",")
        firsts.append(float(first))
        lasts.append(float(last))
    times: list[tuple[str, float]] = []
    chunks: Any = client.lrange(probe.key(run, "times"), 0, -1)
    for chunk in chunks:
        for item in chunk.decode().split(";"):
            tag, ms = item.rsplit(",", 1)
            times.append((tag, float(ms)))
    raw_ids: Any = client.hgetall(probe.key(run, "ids"))
    return ProbeReading(
        done=done,
        first_ms=min(firsts, default=0.0),
        last_ms=max(lasts, default=0.0),
        times=times,
        ids={k.decode(): int(v) for k, v in raw_ids.items()},
    )


def wait_for_done(
    client: sync_redis.Redis,
    run: str,
    total: int,
    timeout: float,
    advance: Callable[[int], None],
    alive: Callable[[], str | None] = lambda: None,
) -> int:
    """Poll the probe's counter until ``total`` jobs are done; returns the count reached.
    Stops early, raising BenchError, if ``alive`` reports that a process died."""
    deadline = time.monotonic() + timeout
    done = 0
    while time.monotonic() < deadline:
        done = int(client.get(probe.key(run, "done")) or 0)
        advance(done)
        if done >= total:
            return done
        problem = alive()
        if problem:
            raise BenchError(problem)
        time.sleep(0.02)
    return done


def probe_env(url: str, run: str, *, times: bool = False, ids: bool = False) -> dict[str, str]:
    return {
        **os.environ,
        "BENCH_PROBE_URL": url,
        "BENCH_PROBE_RUN": run,
        "BENCH_PROBE_TIMES": "1" if times else "0",
        "BENCH_PROBE_IDS": "1" if ids else "0",
        "PYTHONPATH": str(ROOT),
    }


def stop_process(process: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """SIGTERM by PID, then SIGKILL if it does not exit within ``grace``."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def version_of(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, Any]:
    cpu = "unknown"
    memory = "unknown"
    try:
        found = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        cpu = found[1].strip() if found else cpu
        kib = re.search(r"MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text())
        memory = f"{int(kib[1]) / 1024 / 1024:.1f} GiB" if kib else memory
    except OSError:
        pass
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": commit or "unknown",
        "nproc": os.cpu_count(),
        "memory": memory,
        "cpu": cpu,
        "python": platform.python_version(),
        "libraries": {
            name: version_of(name)
            for name in ("streamq", "redis", "hiredis", "uvloop", "anyio", "msgspec")
        },
    }

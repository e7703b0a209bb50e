"""The systems benchmarked, and the virtualenvs the peers run in.

Each peer gets its own virtualenv under bench/.peers/<name>/ (gitignored), made on first use
with pinned versions: their redis-py pins clash with ours and with each other's (arq 0.28
wants redis < 6, saq and taskiq-redis want newer ones), and a worker must run with exactly
what its library was released against. The drivers in bench/peers/drivers/ run there as
subprocesses; streamq and the raw loop run with the bench's own python.
"""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from dataclasses import dataclass
from pathlib import Path

from bench.common import BenchError
from bench.report import UI
from bench.runner import Driver

PEERS_DIR = Path(__file__).resolve().parent / ".peers"

STREAMQ = Driver("streamq", sys.executable, "bench.peers.drivers.streamq_peer")
RAW = Driver("redis-py loop", sys.executable, "bench.peers.drivers.raw_peer")


@dataclass(frozen=True)
class Peer:
    name: str
    requirements: tuple[str, ...]
    packages: tuple[str, ...]
    """Whose versions the report shows."""
    settings: str
    """The settings used, from the library's docs, as the report shows them."""
    scenarios: tuple[str, ...] = ("throughput", "io-bound", "lateness")
    missing: str = ""
    """Why a scenario in ``scenarios``' complement was not run."""


PEERS: tuple[Peer, ...] = (
    Peer(
        "arq",
        ("arq==0.28.0",),
        ("arq", "redis"),
        "Worker defaults: max_jobs 10, poll_delay 0.5 s; enqueue_job one by one",
    ),
    Peer(
        "saq",
        # saq 0.26.4 imports typing_extensions without declaring it.
        ("saq[redis]==0.26.4", "typing_extensions"),
        ("saq", "redis"),
        "Worker defaults: concurrency 10, schedule timer 1 s; enqueue one by one",
    ),
    Peer(
        "taskiq",
        ("taskiq==0.13.0", "taskiq-redis==1.2.4"),
        ("taskiq", "taskiq-redis", "redis"),
        "RedisStreamBroker (consumer_id '0' so jobs enqueued before the worker are read), "
        "`taskiq worker --workers 1 --log-level WARNING`, default max-async-tasks 100; kiq one "
        "by one",
        scenarios=("throughput", "io-bound"),
        missing="lateness not run: the stream broker has no delayed delivery; taskiq schedules "
        "through a separate `taskiq scheduler` process and a schedule source",
    ),
    Peer(
        "celery",
        ("celery[redis]==5.7.0", "gevent==26.9.0"),
        ("celery", "kombu", "gevent", "redis"),
        "Redis broker, gevent pool (its docs' choice for I/O-bound work), -c 100 (200 for "
        "io-bound), transport max_connections 2 x concurrency + 10 (kombu's 10 fail under "
        "gevent), no result backend, --loglevel WARNING; apply_async(eta=) one by one",
    ),
    Peer(
        "streaq",
        ("streaq==7.2.0", "redis>=5"),
        ("streaq", "coredis"),
        "Worker defaults: concurrency 16, delayed tasks moved every 0.5 s; enqueue_many",
    ),
)


BULLMQ = Peer(
    "bullmq",
    ("bullmq==2.26.0",),
    ("bullmq", "redis"),
    "Queue.addBulk in batches of 10,000 with opts delay (an hour); Worker concurrency 100, "
    "default job options (completed jobs kept)",
    scenarios=("backlog",),
)
"""BullMQ's Python client: the backlog bench's peer (issue 28 compares bytes per job)."""


def peer_driver(peer: Peer) -> Driver:
    python = PEERS_DIR / peer.name / "bin" / "python"
    return Driver(peer.name, str(python), f"bench.peers.drivers.{peer.name}_peer")


def ensure_venv(peer: Peer, ui: UI) -> dict[str, str]:
    """Make (or reuse) the peer's virtualenv; returns the versions installed there."""
    home = PEERS_DIR / peer.name
    stamp = home / "bench-requirements.txt"
    wanted = "\n".join(peer.requirements)
    python = home / "bin" / "python"
    if not (python.exists() and stamp.exists() and stamp.read_text() == wanted):
        ui.say(f"installing {peer.name} into {home} ...")
        venv.EnvBuilder(with_pip=True, clear=True).create(home)
        done = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *peer.requirements],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise BenchError(f"pip could not install {peer.name}: {last}")
        stamp.write_text(wanted)
    query = (
        "import importlib.metadata as m, json, sys; "
        "print(json.dumps({p: m.version(p) for p in sys.argv[1:]}))"
    )
    done = subprocess.run(
        [str(python), "-c", query, *peer.packages], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise BenchError(f"{peer.name}'s virtualenv is broken: {done.stderr.strip()[-200:]}")
    versions: dict[str, str] = json.loads(done.stdout)
    return versions

"""Celery with its Redis broker (run by bench/.peers/celery/bin/python).

The worker is Celery's own CLI with the gevent pool, which Celery's docs recommend for I/O-bound
work (prefork is for CPU-bound tasks); tasks are plain functions whose sleeps gevent makes
cooperative. No result backend, as in Celery's default configuration."""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, datetime
from typing import Any

from celery import Celery

from bench import probe
from bench.peers.drivers import _cli

app = Celery("bench", broker=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0"))
app.conf.broker_connection_retry_on_startup = True
app.conf.worker_hijack_root_logger = False
# kombu's Redis transport keeps 10 connections per channel by default; 100 greenlets acking at
# once then fail with "Too many connections" and their tasks are never acknowledged.
app.conf.broker_transport_options = {
    "max_connections": 2 * (int(os.environ.get("BENCH_CONCURRENCY", "0")) or 100) + 10
}


@app.task(name="hit", ignore_result=True)
def hit(tag: int) -> None:
    probe.hit(tag)


@app.task(name="nap", ignore_result=True)
def nap(tag: int) -> None:
    time.sleep(_cli.NAP_SECONDS)  # cooperative: the gevent pool patches time.sleep
    probe.hit(tag)


def produce(args: Any) -> None:
    task = hit if args.kind == "hit" else nap
    tags = _cli.tags(args)
    started = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for tag in tags:
            eta = datetime.fromtimestamp(tag / 1000, tz=UTC) if _cli.scheduled(args) else None
            task.apply_async((tag,), queue=args.queue, eta=eta, producer=producer)
    _cli.report(started)


def main() -> None:
    args = _cli.parse()
    app.conf.broker_url = args.url
    if args.command == "produce":
        produce(args)
        return
    command = [
        sys.executable, "-m", "celery", "-A", "bench.peers.drivers.celery_peer", "worker",
        "-P", "gevent", "-c", str(args.concurrency or 100), "-Q", args.queue,
        "--loglevel", "WARNING",
    ]  # fmt: skip
    os.execv(sys.executable, command)


if __name__ == "__main__":
    main()

"""streamq handlers the recovery and day scenarios run (in ``streamq consume`` processes)."""

from __future__ import annotations

import os
import random
from typing import Any

import anyio

from bench import probe
from streamq.handler import Handler, load_handler
from streamq.job import Job


async def slow(job: Job) -> None:
    """Sleeps BENCH_SLEEP_S, then records the job id: a job whose worker dies mid-sleep is
    recorded only once another worker runs it."""
    await anyio.sleep(float(os.environ.get("BENCH_SLEEP_S", "0")))
    probe.hit(job.id)


_target: list[Handler | None] = []


def _publisher() -> Handler | None:
    if not _target:
        spec = os.environ.get("BENCH_DAY_HANDLER")
        _target.append(load_handler(spec) if spec else None)
    return _target[0]


async def record_post(job: Job) -> Any:
    """The day scenario's handler: notes when the post started, runs the publisher given with
    ``day --handler`` (none: a no-op), and records the post only once that returned, so a
    publish that failed and was retried counts once, when it succeeded."""
    started = probe.probe().now_ms()
    publisher = _publisher()
    result = None if publisher is None else await publisher(job)
    probe.hit(f"{job.id}@{job.envelope.run_at_ms or 0}@{job.account or ''}", started)
    return result


async def pause(job: Job) -> int:
    """Sleeps a random part of BENCH_SLEEP_S, so the wait scenario's jobs finish spread out."""
    await anyio.sleep(float(os.environ.get("BENCH_SLEEP_S", "0")) * random.random())
    return job.attempt

"""Listings under load: while two workers drain 20,000 jobs, a pass through the queued and the
scheduled jobs never lists a job twice, and never misses one that stayed in that state for the
whole pass (the issue's named load test)."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

import streamq
from streamq import channel, keys
from streamq.job import Job
from streamq.worker import Worker, WorkerOptions

pytestmark = pytest.mark.anyio

QUEUED, SOON, LATER = 20_000, 1_000, 2_000


async def _pass(q: streamq.Queue, stream: str, state: str) -> list[str]:
    seen: list[str] = []
    cursor = None
    while True:
        page = await q.jobs(stream, state, limit=200, cursor=cursor)
        seen += [info.id for info in page.jobs]
        if page.cursor is None:
            return seen
        cursor = page.cursor


async def _last_delivered(q: streamq.Queue, stream: str) -> tuple[int, int]:
    groups: Any = await q.redis.xinfo_groups(keys.lane(stream, "normal"))
    ms, _, seq = groups[0]["last-delivered-id"].decode().partition("-")
    return int(ms), int(seq)


async def test_paging_while_two_workers_drain(redis_url: str, stream: str) -> None:
    async def handler(job: Job) -> None:
        return None

    async with streamq.connect(redis_url) as q:
        queued = await q.enqueue_many(stream, list(range(QUEUED)))
        entries: Any = await q.redis.xrange(keys.lane(stream, "normal"))
        entry_of = {}
        for entry, fields in entries:
            ms, _, seq = entry.decode().partition("-")
            entry_of[streamq.codec.decode(fields[b"j"]).id] = (int(ms), int(seq))
        t0 = await channel.server_ms(q.redis)
        soon = [await q.enqueue(stream, n, delay=0.5 + n / 500) for n in range(SOON)]
        later = await q.enqueue_many(stream, list(range(LATER)), delay=3600)
        assert len(entry_of) == len(queued)
        options = WorkerOptions(concurrency=32, block_seconds=0.1, burst=False)
        workers = [Worker(q.redis, stream, handler, options) for _ in range(2)]
        passes = 0
        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            for worker in workers:
                tg.start_soon(worker.run)
            with anyio.fail_after(120):
                while True:
                    listed_queued = await _pass(q, stream, "queued")
                    listed_scheduled = await _pass(q, stream, "scheduled")
                    after = await channel.server_ms(q.redis)
                    delivered = await _last_delivered(q, stream)
                    # Never twice in one pass.
                    assert len(listed_queued) == len(set(listed_queued))
                    assert len(listed_scheduled) == len(set(listed_scheduled))
                    # Queued from the start and still undelivered at the end: listed.
                    stayed = {j for j in queued if entry_of[j] > delivered}
                    assert stayed <= set(listed_queued), len(stayed - set(listed_queued))
                    # Due after the pass ended: scheduled all along, so listed.
                    # Due after the pass ended: scheduled all along, so listed.
                    due_after = {j for n, j in enumerate(soon) if t0 + 500 + 2 * n > after}
                    assert due_after <= set(listed_scheduled)
                    assert set(later) <= set(listed_scheduled)
                    if passes == 0:
                        assert listed_queued, "the first pass came after the drain"
                    passes += 1
                    if not listed_queued and len(listed_scheduled) == LATER:
                        break
            for worker in workers:
                worker.stop()
        print(f"load: {passes} passes in {time.monotonic() - started:.1f}s")
        assert passes >= 2, "the workers drained everything before a second pass"

"""Waiting for jobs to finish: ``await q.wait(job_id)``, shared by every waiter of a process.

No waiter polls on its own. Per ``Queue``:

    reader   one per stream (or partition) with waiters: a blocking XREAD of its events on a
             connection of its own; a final event (done, dead, cancelled, expired) of a job
             someone waits for sends that job to the checker
    checker  one: reads the records of the jobs sent to it in one pipelined round trip and
             hands each finished one's JobInfo to its waiters

A new waiter is registered first, then (once its stream's reader has fixed the event id it
reads after) sent to the checker: a job that finished before the call is answered from its
record at once, and one that finishes after the reader's starting point is seen in the
events, so no outcome falls between the two.

Events off: a stream whose events are disabled, or skip a final type (``[streams.S.events]``
``enabled = false`` or ``skip``, as its workers publish them in its meta hash, else as this
process's config says), has no events to read. Its reader then sends every waited-for job of
the stream to the checker every ``POLL_SECONDS``: one pipelined read for all of them, so a
waiter learns of the outcome within that period, not at once. Whatever the mode, a waiter
whose timeout passes reads the record once more before raising ``TimeoutError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Iterable
from typing import Any, Final

import anyio
from redis.asyncio import Redis

from streamq import connection, control, keys
from streamq.config import Config
from streamq.connection import TRANSIENT_ERRORS, retry_delay
from streamq.control import FINISHED, JobInfo
from streamq.errors import JobNotFound

FINAL_EVENTS: Final = frozenset(FINISHED)
BLOCK_MS: Final = 5000
"""Longest wait of one read of the events: how late a reader notices it has no more waiters."""
POLL_SECONDS: Final = 0.25
"""How often the records of waited-for jobs are read on a stream without final events."""
READ_COUNT: Final = 1000


class _Waiter:
    __slots__ = ("done", "error", "info")

    def __init__(self) -> None:
        self.done = asyncio.Event()
        self.info: JobInfo | None = None
        self.error: BaseException | None = None


class _Reader:
    """One stream's reader: where it reads after, whether it is ready, and its task."""

    def __init__(self) -> None:
        self.ready = asyncio.Event()
        self.error: BaseException | None = None
        self.polling = False
        self.task: asyncio.Task[None] | None = None


class Waiters:
    """Every wait of one Queue: one reader per stream with waiters, one checker."""

    def __init__(self, redis: Redis, config: Config) -> None:
        self._redis = redis
        self._config = config
        self._waiting: dict[str, dict[str, list[_Waiter]]] = {}
        """stream -> job id -> its waiters"""
        self._readers: dict[str, _Reader] = {}
        self._to_check: set[str] = set()
        self._check_wanted = asyncio.Event()
        self._checker: asyncio.Task[None] | None = None

    @property
    def readers(self) -> int:
        """Readers running now (one per stream with waiters)."""
        return len(self._readers)

    async def wait(self, job_id: str, timeout: float | None = None) -> JobInfo:  # noqa: ASYNC109
        """The job's JobInfo once it is done, dead, cancelled or expired; TimeoutError after
        ``timeout`` seconds (None: no limit); JobNotFound for an unknown id."""
        stream = control.stream_of(job_id)
        waiter = _Waiter()
        jobs = self._waiting.setdefault(stream, {})
        jobs.setdefault(job_id, []).append(waiter)
        try:
            reader = self._reader(stream)
            await reader.ready.wait()
            if reader.error is not None:
                raise reader.error
            self._check([job_id])
            try:
                with anyio.fail_after(math.inf if timeout is None else max(0.0, timeout)):
                    await waiter.done.wait()
            except TimeoutError:
                info = await control.job_info(self._redis, job_id)
                if info.state in FINAL_EVENTS:
                    return info
                raise TimeoutError(
                    f"job {job_id} did not finish within {timeout:g}s (it is {info.state})"
                ) from None
            if waiter.error is not None:
                raise waiter.error
            assert waiter.info is not None
            return waiter.info
        finally:
            self._forget(stream, job_id, waiter)

    def _forget(self, stream: str, job_id: str, waiter: _Waiter) -> None:
        jobs = self._waiting.get(stream, {})
        mine = jobs.get(job_id, [])
        if waiter in mine:
            mine.remove(waiter)
        if not mine:
            jobs.pop(job_id, None)
        if not jobs:
            self._waiting.pop(stream, None)

    def _reader(self, stream: str) -> _Reader:
        reader = self._readers.get(stream)
        if reader is None:
            reader = self._readers[stream] = _Reader()
            reader.task = asyncio.get_running_loop().create_task(self._read(stream, reader))
        return reader

    def _check(self, job_ids: Iterable[str]) -> None:
        self._to_check.update(job_ids)
        self._check_wanted.set()
        if self._checker is None or self._checker.done():
            self._checker = asyncio.get_running_loop().create_task(self._check_loop())

    async def _polling(self, stream: str) -> bool:
        """Whether the stream's final events are off: then its waiters are polled."""
        raw: Any = await self._redis.hmget(keys.meta(stream), ["events_cap", "events_skip"])
        if raw[0] is not None:
            skip = set((raw[1] or b"").decode().split(","))
            return int(raw[0]) == 0 or bool(skip & FINAL_EVENTS)
        events = self._config.stream(stream).events
        return events.cap == 0 or bool(set(events.skipped) & FINAL_EVENTS)

    async def _read(self, stream: str, reader: _Reader) -> None:
        events_key = keys.events(stream)
        own: Redis | None = None
        try:
            reader.polling = await self._polling(stream)
            last: Any = await self._redis.xrevrange(events_key, count=1)
            cursor = last[0][0].decode() if last else "0-0"
        except BaseException as exc:
            reader.error = exc
            self._readers.pop(stream, None)
            reader.ready.set()
            raise
        reader.ready.set()
        failures = 0
        try:
            while True:
                waiting = self._waiting.get(stream)
                if not waiting:
                    # No await between the look and the removal: a waiter that comes now
                    # starts a new reader, whose starting point is after this one's.
                    self._readers.pop(stream, None)
                    return
                if reader.polling:
                    self._check(waiting)
                    await asyncio.sleep(POLL_SECONDS)
                    continue
                if own is None:
                    own = connection.reader(self._redis, events_key)
                try:
                    reply: Any = await own.xread(
                        {events_key: cursor}, count=READ_COUNT, block=BLOCK_MS
                    )
                except TRANSIENT_ERRORS:
                    failures += 1
                    with contextlib.suppress(*TRANSIENT_ERRORS):
                        await own.aclose()
                    own = None
                    await asyncio.sleep(retry_delay(failures))
                    continue
                failures = 0
                finished = []
                for _, entries in reply or []:
                    for entry_id, fields in entries:
                        cursor = entry_id.decode()
                        if fields.get(b"type", b"").decode() in FINAL_EVENTS:
                            job = fields.get(b"job", b"").decode()
                            if job in waiting:
                                finished.append(job)
                if finished:
                    self._check(finished)
        finally:
            if self._readers.get(stream) is reader:
                self._readers.pop(stream, None)
            if own is not None:
                with contextlib.suppress(*TRANSIENT_ERRORS):
                    await own.aclose()

    async def _check_loop(self) -> None:
        """Read the records of the jobs sent here, in one round trip per batch, and answer the
        waiters of those that finished (and of those that have no record)."""
        failures = 0
        while True:
            if not self._to_check:
                self._check_wanted.clear()
                try:
                    await asyncio.wait_for(self._check_wanted.wait(), BLOCK_MS / 1000)
                except TimeoutError:
                    if not self._to_check:
                        return
                continue
            batch = sorted(self._to_check)
            self._to_check.clear()
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for job_id in batch:
                        pipe.hgetall(keys.job(keys.stream_of_job(job_id), job_id))
                    records: list[Any] = await pipe.execute()
            except TRANSIENT_ERRORS:
                failures += 1
                self._to_check.update(batch)  # read again: a waiter is answered once
                await asyncio.sleep(retry_delay(failures))
                continue
            failures = 0
            for job_id, record in zip(batch, records, strict=True):
                self._answer(job_id, record)

    def _answer(self, job_id: str, record: dict[bytes, bytes]) -> None:
        waiters = self._waiting.get(keys.stream_of_job(job_id), {}).get(job_id)
        if not waiters:
            return
        info: JobInfo | None = None
        error: BaseException | None = None
        if not record:
            error = JobNotFound(
                f"no job {job_id!r} (never enqueued, a flow step not released yet, "
                "or its record passed retention)"
            )
        else:
            state = record.get(b"state", b"").decode()
            if state not in FINAL_EVENTS:
                return
            info = control.from_record(job_id, record)
        for waiter in waiters:
            waiter.info, waiter.error = info, error
            waiter.done.set()

    async def close(self) -> None:
        tasks = [r.task for r in self._readers.values() if r.task is not None]
        if self._checker is not None:
            tasks.append(self._checker)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._readers.clear()
        self._checker = None

"""Reading the lifecycle events the scripts append to each stream's ``streamq:{S}:events``,
and sharing the stream's event settings (``publish_settings``: cap, age, skipped types) in its
meta hash, where every script that appends reads them.

Every change of a job's state appends one event in the same script as the change, so an
event is there exactly when its change happened: ``queued``, ``scheduled``, ``started``,
``retried``, ``done`` (with the result), ``dead`` (with the reason), ``cancelled``, ``expired``,
``rate-limited`` and ``paused``; an operator's action through the admin API appends
``admin`` (who, what, to what). A ``started`` event is written together with the run's outcome
(a start is not a step on the server), with the time the handler started.

Two ways to read them:

- **Following**: ``follow(redis, streams, since=...)`` yields events after ``since`` (an event
  id per stream, a time, or the start), and waits for new ones. Resume from the last event's
  ``id``: nothing is missed and nothing seen twice.
- **A consumer group** (``group=``): instances of an app sharing the group split the events
  between them; each event is acknowledged once the loop body that got it returns, so one an
  instance was handling when it died is delivered to it again when it comes back (same
  ``consumer`` name), and to the others once it has been gone for a minute.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
import orjson
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from streamq import channel, keys, scheduler
from streamq.config import EVENT_TYPES, EventsConfig, parse_duration
from streamq.errors import ConfigError

TYPES = EVENT_TYPES
READ_COUNT = 500
JOB_SCAN_MOST = 2_000
"""How many of a stream's latest events ``of_job`` reads at most, looking for one job's: its
events stream has no index by job, so a job page's timeline costs a bounded read, most of it
decoding the replies (``python -m bench dashboard`` times it)."""
JOB_SCAN_CHUNK = 1_000
BLOCK_MS = 2000
ABANDONED_AFTER_MS = 60_000
"""A group member's events unacknowledged this long are taken over by the others."""
_EVENT_ID = re.compile(r"^\d+(-\d+)?$")


class Event(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    """The event's entry id in its stream's events: resume after it."""
    stream: str
    type: str
    job: str
    at_ms: int
    """When it happened, by the server's clock (for ``started``: when the handler started)."""
    attempt: int
    started_at_ms: int | None = None
    """The final event of a run (done, retried, dead, ...): when its handler started."""
    key: str | None = None
    account: str | None = None
    run_at_ms: int | None = None
    """``scheduled``, ``retried``, ``rate-limited``: when the job is due to run."""
    result: Any = None
    """``done``: what the handler returned."""
    error: str | None = None
    """``retried``, ``dead``, ``paused``: why."""
    by: str | None = None
    """``admin``: the name of the admin token that acted (never the token)."""
    action: str | None = None
    """``admin``: retry, cancel, reschedule, promote, replay, purge-dead, purge-finished,
    pause-account or resume-account."""
    target: str | None = None
    """``admin``: the job id, stream, or '<platform>/<account>' acted on."""
    detail: str | None = None
    """``admin``: what came of it, or its argument (a new due time, a reason)."""

    @property
    def at(self) -> datetime:
        return datetime.fromtimestamp(self.at_ms / 1000, tz=UTC)


def from_entry(stream: str, entry_id: bytes, fields: dict[bytes, bytes]) -> Event:
    def text(name: bytes) -> str | None:
        value = fields.get(name)
        return None if value is None else value.decode()

    result = fields.get(b"result")
    run_at = fields.get(b"run_at")
    started_at = fields.get(b"started_at")
    return Event(
        id=entry_id.decode(),
        stream=stream,
        type=fields[b"type"].decode(),
        job=fields[b"job"].decode(),
        at_ms=int(fields[b"at"]),
        attempt=int(fields.get(b"attempt", b"1")),
        started_at_ms=None if started_at is None else int(started_at),
        key=text(b"key"),
        account=text(b"account"),
        run_at_ms=None if run_at is None else int(run_at),
        result=None if result is None else orjson.loads(result),
        error=text(b"error"),
        by=text(b"by"),
        action=text(b"action"),
        target=text(b"target"),
        detail=text(b"detail"),
    )


class JobEvents(msgspec.Struct, kw_only=True):
    job: str
    events: list[Event]
    """The job's events, oldest first (as many as are still kept and were read)."""
    scanned: int
    """How many of its stream's events were read to find them."""
    complete: bool
    """True when every event kept since the job was enqueued was read; false when the read
    stopped at ``JOB_SCAN_MOST`` (the job's older events may be missing)."""


async def of_job(
    redis: Redis, job_id: str, enqueued_at_ms: int | None, most: int = JOB_SCAN_MOST
) -> JobEvents:
    """One job's events, read from its stream's events newest first, back to when it was
    enqueued or for ``most`` events, whichever comes first."""
    stream = keys.stream_of_job(job_id)
    name = keys.events(stream)
    wanted = job_id.encode()
    found: list[Event] = []
    scanned = 0
    upper: str = "+"
    # Its enqueue event is written with its record, by the same clock: none can be older.
    lowest = "-" if enqueued_at_ms is None else f"{max(enqueued_at_ms - 1, 0)}-0"
    complete = False
    while scanned < most:
        count = min(JOB_SCAN_CHUNK, most - scanned)
        entries: Any = await redis.xrevrange(name, upper, lowest, count=count)
        scanned += len(entries)
        for entry_id, fields in entries:
            if fields.get(b"job") == wanted:
                found.append(from_entry(stream, entry_id, fields))
        if len(entries) < count:
            complete = True
            break
        upper = f"({entries[-1][0].decode()}"
    else:  # stopped at ``most``: complete if nothing older was left
        complete = not await redis.xrevrange(name, upper, lowest, count=1)
    found.reverse()
    return JobEvents(job=job_id, events=found, scanned=scanned, complete=complete)


def position(since: str | int | datetime | None, now_ms: int) -> str:
    """An events-stream id to read after: an id as it is, a time (aware datetime, or ms since
    the epoch), a duration ago ("10m"), "now" (only new events) or None (the oldest kept)."""
    if since is None:
        return "0-0"
    if isinstance(since, datetime):
        return f"{scheduler.aware_ms(since) - 1}-18446744073709551615"
    if isinstance(since, int):
        return f"{since - 1}-18446744073709551615"
    text = since.strip()
    if text == "now":
        return f"{now_ms}-0"
    if _EVENT_ID.match(text):
        return text if "-" in text else f"{text}-0"
    try:
        when = scheduler.parse_at(text)
    except ConfigError:
        try:
            ago = parse_duration(text, "since")
        except ConfigError:
            raise ConfigError(
                f"since must be an event id, a time or a duration ago like '10m', not {since!r}"
            ) from None
        return f"{now_ms - round(ago * 1000)}-0"
    return position(when, now_ms)


async def publish_settings(redis: Redis, stream: str, settings: EventsConfig) -> None:
    """Share the stream's event settings with every process that changes its jobs: the
    scripts read them from the meta hash, so producers need no config of their own."""
    await redis.hset(
        keys.meta(stream),
        mapping={
            "events_cap": settings.cap,
            "events_age_ms": settings.max_age_ms,
            "events_skip": ",".join(settings.skipped),
        },
    )


async def follow(
    redis: Redis,
    streams: Sequence[str],
    *,
    since: str | int | datetime | dict[str, str] | None = None,
    wait: bool = True,
    group: str | None = None,
    consumer: str | None = None,
    types: Sequence[str] | None = None,
    count: int = READ_COUNT,
    abandoned_after_ms: int = ABANDONED_AFTER_MS,
) -> AsyncIterator[Event]:
    """Events of ``streams`` in order per stream; with ``wait`` it keeps waiting for more.

    ``since`` is where to start (see ``position``), or a dict of the last event id seen per
    stream, to resume. With ``group``, the group starts at ``since`` when it is first created
    and afterwards continues where it stands."""
    if not streams:
        return
    wanted = set(types) if types else None
    if wanted and not wanted <= set(TYPES):
        raise ConfigError(f"unknown event type(s): {', '.join(sorted(wanted - set(TYPES)))}")
    now = await channel.server_ms(redis)
    by_key = {keys.events(stream): stream for stream in streams}
    if isinstance(since, dict):
        cursors = {keys.events(s): position(since.get(s), now) for s in streams}
    else:
        start = position(since, now)
        cursors = dict.fromkeys(by_key, start)
    if group is None:
        async for event in _follow_plain(redis, by_key, cursors, wait, count):
            if wanted is None or event.type in wanted:
                yield event
        return
    name = consumer or f"{socket.gethostname()}-{os.getpid()}"
    for key in by_key:
        try:
            await redis.xgroup_create(key, group, id=cursors[key], mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
    async for event in _follow_group(redis, by_key, group, name, wait, count, abandoned_after_ms):
        if wanted is None or event.type in wanted:
            yield event


async def _follow_plain(
    redis: Redis, by_key: dict[str, str], cursors: dict[str, str], wait: bool, count: int
) -> AsyncIterator[Event]:
    while True:
        wanted: dict[Any, Any] = dict(cursors)
        reply: Any = await redis.xread(wanted, count=count, block=BLOCK_MS if wait else None)
        got = 0
        for key, entries in reply or []:
            name = key.decode() if isinstance(key, bytes) else key
            for entry_id, fields in entries:
                cursors[name] = entry_id.decode()
                got += 1
                yield from_entry(by_key[name], entry_id, fields)
        if not got and not wait:
            return


async def _follow_group(
    redis: Redis,
    by_key: dict[str, str],
    group: str,
    consumer: str,
    wait: bool,
    count: int,
    abandoned_after_ms: int,
) -> AsyncIterator[Event]:
    # First what this consumer was given and did not acknowledge (it stopped midway), then what
    # another member left unacknowledged for ABANDONED_AFTER_MS (it died), then new events.
    cursors = dict.fromkeys(by_key, "0")
    while True:
        only_new = all(c == ">" for c in cursors.values())
        if only_new:
            for name in by_key:
                claimed: Any = await redis.xautoclaim(
                    name, group, consumer, min_idle_time=abandoned_after_ms, count=count
                )
                for entry_id, fields in claimed[1]:
                    if fields:  # an entry trimmed meanwhile comes back empty
                        yield from_entry(by_key[name], entry_id, fields)
                        await redis.xack(name, group, entry_id)
        block = BLOCK_MS if wait and only_new else None
        wanted: dict[Any, Any] = dict(cursors)
        reply: Any = await redis.xreadgroup(group, consumer, wanted, count=count, block=block)
        got = 0
        for key, entries in reply or []:
            name = key.decode() if isinstance(key, bytes) else key
            if not entries:
                cursors[name] = ">"
            for entry_id, fields in entries:
                if cursors[name] != ">":
                    cursors[name] = entry_id.decode()
                got += 1
                yield from_entry(by_key[name], entry_id, fields)
                await redis.xack(name, group, entry_id)  # the loop body that had it returned
        if not got:
            if only_new and not wait:
                return
            cursors = dict.fromkeys(cursors, ">")

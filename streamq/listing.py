"""Job listings: a stream's jobs in one state, a page at a time, at any number of jobs.

Each state is read from the structure that holds its jobs, never by a SCAN of the keyspace:

    scheduled, retrying   the delayed set by due time (or the account's due index), each member's
                          record telling the two apart
    queued                each lane after its consumer group's last-delivered id, high lane first
    running               each lane's pending entries (XPENDING), with the consumer holding each
    paused                the parked set of each paused account, by enqueue time
    held                  the held set of each account in the holding set, by enqueue time
    dead                  the dead-letter stream, by when each died
    done, cancelled,      the finished index of that state, by finish time, for as long as the
    expired               records are kept

A page reads O(log n + page) entries per source (a partition's lane, set or account), plus the
members it skips: records whose state no longer matches (a retry met while listing scheduled
jobs, a job promoted between two reads), and, for a filter no structure indexes (an account
over queued, running, dead or finished jobs; a key over finished ones), every job it passes.
Sources of several partitions are merged in order; the cursor is the position of the last job
returned, so a job that keeps its place is listed once per pass however the others move. In a
sorted set that position is (score, job id): a page resumes just after the last job listed,
not at the first of the jobs that share its due time (scripts.page_members).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from streamq import channel, codec, keys, scripts
from streamq.control import JobInfo
from streamq.errors import ListingError

__all__ = ["MAX_LIMIT", "STATES", "JobPage", "ListingError", "list_jobs"]

STATES: Final = (
    "scheduled",
    "queued",
    "running",
    "retrying",
    "paused",
    "held",
    "dead",
    "done",
    "cancelled",
    "expired",
)
MAX_LIMIT: Final = 1000
_FINISHED_INDEXED: Final = ("done", "cancelled", "expired")
_RECORD_FIELDS: Final = (
    "state",
    "attempt",
    "priority",
    "key",
    "account",
    "enqueued_at",
    "run_at",
    "started_at",
    "finished_at",
    "error",
    "result",
    "env",
    "entry",
    "cancel",
)
_INF = float("inf")

Position = tuple[Any, ...]
"""Where a job sits in a listing's order: (score, job id) for sorted sets; (lane rank, entry
ms, entry sequence, partition index) for streams."""


class JobPage(msgspec.Struct, kw_only=True):
    """One page of a listing: its jobs, and the cursor of the next page (None: no more)."""

    jobs: list[JobInfo]
    cursor: str | None = None


@dataclass
class _Item:
    position: Position
    stream: str
    job_id: str
    envelope: bytes | None = None
    entry: str | None = None
    consumer: str | None = None
    delivered_at_ms: int | None = None
    """Running: when its entry was delivered to the worker holding it (by the server's clock).
    A start is not written to the record while the handler runs (streamq.starts), so this is
    the start a running job shows; a worker's read-ahead may hold it a moment before."""
    reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# -- input --------------------------------------------------------------------------------------


def check_state(state: str) -> str:
    if state not in STATES:
        raise ListingError(f"unknown state {state!r}: choose among {', '.join(STATES)}")
    return state


def check_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ListingError(f"limit must be a whole number from 1 to {MAX_LIMIT}, not {limit!r}")
    return limit


def check_range(since_ms: int | None, until_ms: int | None) -> None:
    if since_ms is not None and until_ms is not None and since_ms > until_ms:
        raise ListingError("inverted time range: since is after until")


class _Cursor(msgspec.Struct, array_like=True):
    state: str
    account: str | None
    position: list[Any]


def encode_cursor(state: str, account: str | None, position: Position) -> str:
    raw = msgspec.json.encode(_Cursor(state, account, list(position)))
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str, state: str, account: str | None) -> Position:
    """The position a cursor names; ListingError for one that is not ours or that belongs to
    another listing (another state or account)."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        cursor = msgspec.json.decode(raw, type=_Cursor)
    except (binascii.Error, ValueError, msgspec.DecodeError, msgspec.ValidationError):
        raise ListingError(f"bad cursor {text[:40]!r}: pass the cursor a page gave") from None
    if cursor.state != state or cursor.account != account:
        raise ListingError(
            f"this cursor belongs to a listing of {cursor.state} jobs"
            + (f" of account {cursor.account!r}" if cursor.account else "")
            + ": start without one"
        )
    shape = (float, str) if _sorted_set_state(state) else (int, int, int, int)
    position = tuple(cursor.position)
    if len(position) != len(shape) or not all(
        isinstance(v, t) or (t is float and isinstance(v, int) and not isinstance(v, bool))
        for v, t in zip(position, shape, strict=True)
    ):
        raise ListingError(f"bad cursor {text[:40]!r}: pass the cursor a page gave")
    return (float(position[0]), position[1]) if _sorted_set_state(state) else position


def _sorted_set_state(state: str) -> bool:
    return state not in ("queued", "running", "dead")


# -- sources ------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _entry_position(entry: str) -> tuple[int, int]:
    ms, _, seq = entry.partition("-")
    return int(ms), int(seq or 0)


class _SortedSet:
    """Members of one sorted set, by (score, member), within [since, until]."""

    def __init__(self, redis: Redis, stream: str, key: str, since: float, until: float) -> None:
        self.redis, self.stream, self.key = redis, stream, key
        self.since, self.until = since, until

    async def fetch(self, after: Position | None, count: int) -> tuple[list[_Item], bool]:
        items: list[_Item] = []
        while True:
            # After the cursor's (score, member), never from its score: a page resumes after
            # the last job listed however many share its due time (scripts.page_members).
            raw = await scripts.page_members(
                self.redis,
                self.key,
                low=self.since,
                high=self.until,
                after=None if after is None else (float(after[0]), str(after[1])),
                count=count,
            )
            for member, score in raw:
                # Members that are not jobs: admit_jobs' '@held:<account>' safety nets.
                if not member.startswith("@"):
                    items.append(_Item((score, member), self.stream, member))
            if len(raw) < count:
                return items, True
            if items:
                return items, False
            after = (raw[-1][1], raw[-1][0])  # a page of safety nets only: read on past it


class _Lane:
    """A lane's entries: those no worker has read yet (queued) or those delivered and not
    acknowledged (running), by entry id; ``rank`` orders lanes, then partitions."""

    def __init__(
        self,
        redis: Redis,
        stream: str,
        key: str,
        rank: int,
        part: int,
        since: float,
        until: float,
        *,
        running: bool,
    ) -> None:
        self.redis, self.stream, self.key = redis, stream, key
        self.rank, self.part, self.running = rank, part, running
        self.since, self.until = since, until

    def _start(self, after: Position | None, floor: tuple[int, int] | None) -> str | None:
        """The XRANGE start after the cursor, the since bound and ``floor`` (exclusive), or
        None when this lane lies wholly before the cursor."""
        candidates: list[tuple[tuple[int, int], bool]] = []  # (id, exclusive)
        if self.since != -_INF:
            candidates.append(((int(self.since), 0), False))
        if floor is not None:
            candidates.append((floor, True))
        if after is not None:
            if after[0] > self.rank:
                return None
            if after[0] == self.rank:
                candidates.append(((after[1], after[2]), self.part <= after[3]))
        if not candidates:
            return "-"
        best = max(candidates)
        return ("(" if best[1] else "") + f"{best[0][0]}-{best[0][1]}"

    def _end(self) -> str:
        return "+" if self.until == _INF else f"{int(self.until)}-18446744073709551615"

    async def fetch(self, after: Position | None, count: int) -> tuple[list[_Item], bool]:
        if self.running:
            return await self._pending(after, count)
        try:
            groups: Any = await self.redis.xinfo_groups(self.key)
        except ResponseError:  # no such key: no job ever went through this lane
            return [], True
        floor = None
        for group in groups:
            if _text(group["name"]) == keys.GROUP:
                floor = _entry_position(_text(group["last-delivered-id"]))
        start = self._start(after, floor)
        if start is None:
            return [], True
        raw: Any = await self.redis.xrange(self.key, min=start, max=self._end(), count=count)
        items = [self._item(_text(entry), fields) for entry, fields in raw]
        return [item for item in items if item is not None], len(raw) < count

    async def _pending(self, after: Position | None, count: int) -> tuple[list[_Item], bool]:
        start = self._start(after, None)
        if start is None:
            return [], True
        try:
            pending: Any = await self.redis.xpending_range(
                self.key, keys.GROUP, min=start, max=self._end(), count=count
            )
        except ResponseError:  # NOGROUP: no worker ever read this lane
            return [], True
        if not pending:
            return [], True
        # XPENDING tells how long ago each was delivered (by the server's clock), not when.
        now_ms = await channel.server_ms(self.redis)
        async with self.redis.pipeline(transaction=False) as pipe:
            for row in pending:
                entry = _text(row["message_id"])
                pipe.xrange(self.key, min=entry, max=entry)
            found = await pipe.execute()
        items = []
        for row, rows in zip(pending, found, strict=True):
            if not rows:  # acknowledged and deleted between the two reads
                continue
            item = self._item(_text(row["message_id"]), rows[0][1])
            if item is not None:
                item.consumer = _text(row["consumer"])
                item.delivered_at_ms = now_ms - int(row["time_since_delivered"])
                items.append(item)
        return items, len(pending) < count

    def _item(self, entry: str, fields: dict[bytes, bytes]) -> _Item | None:
        raw = fields.get(b"j")
        if raw is None:
            return None  # not a job of ours: the worker dead-letters it when read
        try:
            job_id = codec.decode(raw).id
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None
        ms, seq = _entry_position(entry)
        return _Item((self.rank, ms, seq, self.part), self.stream, job_id, raw, entry)


class _Dead:
    """A partition's dead-letter stream, by entry id (when each job died)."""

    def __init__(self, redis: Redis, stream: str, part: int, since: float, until: float) -> None:
        self.redis, self.stream, self.part = redis, stream, part
        self.lane = _Lane(redis, stream, keys.dead(stream), 0, part, since, until, running=False)

    async def fetch(self, after: Position | None, count: int) -> tuple[list[_Item], bool]:
        start = self.lane._start(after, None)
        if start is None:
            return [], True
        raw: Any = await self.redis.xrange(
            keys.dead(self.stream), min=start, max=self.lane._end(), count=count
        )
        items = []
        for entry_id, fields in raw:
            item = self.lane._item(_text(entry_id), fields)
            if item is not None:
                item.reason = fields.get(b"_reason", b"").decode("utf-8", "replace")
                items.append(item)
        return items, len(raw) < count


class _One:
    """The one job a dedup key names, if any (a key is held by one live job at a time)."""

    def __init__(self, redis: Redis, stream: str, key: str) -> None:
        self.redis, self.stream, self.key = redis, stream, key

    async def fetch(self, after: Position | None, count: int) -> tuple[list[_Item], bool]:
        if after is not None:
            return [], True
        holder: Any = await self.redis.hget(keys.dedup(self.stream), self.key)
        if holder is None:
            return [], True
        return [_Item((0.0, _text(holder)), self.stream, _text(holder))], True


_Source = _SortedSet | _Lane | _Dead | _One


async def _sources(
    redis: Redis,
    parts: Sequence[str],
    state: str,
    account: str | None,
    key: str | None,
    since: float,
    until: float,
) -> list[_Source]:
    sources: list[_Source] = []
    for index, stream in enumerate(parts):
        if key is not None and state not in ("dead", *_FINISHED_INDEXED):
            sources.append(_One(redis, stream, key))
        elif state in ("scheduled", "retrying"):
            index_key = keys.delayed(stream) if account is None else keys.due(stream, account)
            sources.append(_SortedSet(redis, stream, index_key, since, until))
        elif state in ("queued", "running"):
            for rank, lane in enumerate(keys.LANES):
                sources.append(
                    _Lane(
                        redis,
                        stream,
                        keys.lane(stream, lane),
                        rank,
                        index,
                        since,
                        until,
                        running=state == "running",
                    )
                )
        elif state == "dead":
            sources.append(_Dead(redis, stream, index, since, until))
        elif state in _FINISHED_INDEXED:
            sources.append(_SortedSet(redis, stream, keys.finished(stream, state), since, until))
        else:  # paused, held: one set per account
            if account is not None:
                accounts = [account]
            elif state == "paused":
                fields: Any = await redis.hkeys(keys.paused(stream))
                accounts = [f[2:] for f in map(_text, fields) if f.startswith("a:")]
            else:
                members: Any = await redis.zrange(keys.holding(stream), 0, -1)
                accounts = [_text(m) for m in members]
            for name in accounts:
                set_key = (keys.parked if state == "paused" else keys.held)(stream, name)
                sources.append(_SortedSet(redis, stream, set_key, since, until))
    return sources


# -- records ------------------------------------------------------------------------------------


def _int(value: bytes | None) -> int | None:
    return None if value is None else int(value)


def _opt(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "replace")


async def _resolve(
    redis: Redis, items: list[_Item], state: str, account: str | None, key: str | None
) -> list[JobInfo]:
    """The JobInfo of each item whose record is (still) in ``state`` and matches the filters."""
    if not items:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for item in items:
            pipe.hmget(keys.job(item.stream, item.job_id), _RECORD_FIELDS)
        records = await pipe.execute()
    found = []
    for item, values in zip(items, records, strict=True):
        record = dict(zip(_RECORD_FIELDS, values, strict=True))
        info = _info(item, record, state)
        if info is None:
            continue
        if account is not None and info.account != account:
            continue
        if key is not None and info.key != key:
            continue
        found.append(info)
    return found


def _info(item: _Item, record: dict[str, bytes | None], state: str) -> JobInfo | None:
    recorded = _opt(record["state"])
    if state == "dead":
        if recorded is not None and recorded != "dead":
            return None  # replayed between the two reads
    elif state in ("queued", "running"):
        if recorded != "queued" or _opt(record["entry"]) != item.entry:
            return None
    elif recorded != state:
        return None
    raw = item.envelope if item.envelope is not None else record["env"]
    envelope = None
    if raw is not None:
        try:
            envelope = codec.record_envelope(raw, item.job_id, record["key"], record["account"])
        except (msgspec.DecodeError, msgspec.ValidationError):
            envelope = None
    result = record["result"]
    account = _opt(record["account"])
    if account is None and envelope is not None:
        account = envelope.account
    run_at = _int(record["run_at"])
    if run_at is None and envelope is not None:
        run_at = envelope.run_at_ms
    return JobInfo(
        id=item.job_id,
        stream=item.stream,
        state=state,
        attempt=int(record["attempt"] or (envelope.attempt if envelope else 1)),
        priority=(_opt(record["priority"]) or "normal"),
        key=_opt(record["key"]) or (envelope.key if envelope else None),
        account=account,
        payload=envelope.payload if envelope else None,
        enqueued_at_ms=_int(record["enqueued_at"])
        or (envelope.enqueued_at_ms if envelope else None),
        run_at_ms=run_at,
        started_at_ms=_int(record["started_at"]) or item.delivered_at_ms,
        finished_at_ms=_int(record["finished_at"]),
        error=_opt(record["error"]) or item.reason,
        result=None if not result else msgspec.json.decode(result),
        consumer=item.consumer,
        cancel_requested=record["cancel"] is not None,
    )


# -- the listing --------------------------------------------------------------------------------


async def list_jobs(
    redis: Redis,
    parts: Sequence[str],
    state: str,
    *,
    account: str | None = None,
    key: str | None = None,
    since_ms: int | None = None,
    until_ms: int | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> JobPage:
    """One page of ``parts``' jobs in ``state`` (the partitions of one stream, merged in order).
    Raises ListingError for an unknown state, a bad cursor, an inverted range or a limit out of
    1..MAX_LIMIT."""
    check_state(state)
    check_limit(limit)
    check_range(since_ms, until_ms)
    try:
        if account is not None:
            keys.check_account(account)
        if key is not None:
            keys.check_key(key)
    except ValueError as exc:
        raise ListingError(str(exc)) from None
    after = None if cursor is None else decode_cursor(cursor, state, account)
    since = -_INF if since_ms is None else float(since_ms)
    until = _INF if until_ms is None else float(until_ms)
    sources = await _sources(redis, parts, state, account, key, since, until)
    jobs: list[JobInfo] = []
    batch = min(MAX_LIMIT, limit + 1)
    while sources:
        fetched = await asyncio.gather(*(source.fetch(after, batch) for source in sources))
        bound: Position | None = None
        candidates: list[_Item] = []
        remaining: list[_Source] = []
        for items, exhausted in fetched:
            candidates += items
            if not exhausted:
                last = items[-1].position
                bound = last if bound is None else min(bound, last)
        for source, (items, exhausted) in zip(sources, fetched, strict=True):
            # A source keeps its place while it has items left: unread, or read past the bound.
            if not exhausted or (bound is not None and items and items[-1].position > bound):
                remaining.append(source)
        # Past the earliest last item of a source with more to give, another source's next
        # items may come first: those wait for the next round.
        candidates = sorted(
            (c for c in candidates if bound is None or c.position <= bound),
            key=lambda c: c.position,
        )
        listed = await _resolve(redis, candidates, state, account, key)
        by_id = {(info.stream, info.id): info for info in listed}
        for item in candidates:
            info = by_id.get((item.stream, item.job_id))
            if info is None:
                continue
            if len(jobs) == limit:
                return JobPage(jobs=jobs, cursor=encode_cursor(state, account, after or ()))
            jobs.append(info)
            after = item.position
        if bound is None:
            break
        after = bound if after is None or bound > after else after
        sources = remaining
    return JobPage(jobs=jobs, cursor=None)

"""Finding and steering jobs by id, and working with dead letters.

A job id names its stream (``instagram:...``), so every operation here needs the id alone.
State changes go through scripts that check the state they start from, so an operation racing
a worker either applies fully or reports the state that won.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from redis.asyncio import Redis

from streamq import channel, codec, keys, scheduler, scripts
from streamq.config import Backoff, StreamConfig
from streamq.errors import ConfigError, InvalidJobState, JobNotFound, RecordChanged

__all__ = ["Attempt", "DeadLetter", "InvalidJobState", "JobInfo", "JobNotFound"]

FINISHED = ("done", "dead", "cancelled", "expired")
REVIVABLE = ("dead", "cancelled", "expired")
PURGED_BY_DEFAULT = ("done", "cancelled", "expired")
"""Dead jobs' records are kept unless asked for: ``job retry ID`` needs them."""
PURGE_BATCH = 500


class Attempt(msgspec.Struct, kw_only=True):
    """One run of a job: who ran it, when, how it ended, and why (for a failure, the error and
    where it was raised: the traceback's last frames)."""

    n: int
    worker: str | None = None
    started_at_ms: int | None = None
    finished_at_ms: int | None = None
    started_at: str | None = None
    """ISO 8601, UTC, with its zone."""
    finished_at: str | None = None
    outcome: str
    """done, retried, rate-limited, paused, dead or cancelled."""
    error: str | None = None
    trace: str | None = None


class JobSettings(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What was set for this job at enqueue (or by its flow or cron schedule); a setting left
    out is the stream's configured default."""

    max_attempts: int | None = None
    expire_after_ms: int | None = None
    job_timeout_ms: int | None = None
    backoff: Backoff | None = None
    cron: str | None = None
    """The recurring schedule this run belongs to."""
    flow: str | None = None
    """The flow this job is a step of, and the step's name."""
    step: str | None = None


def settings_of(envelope: codec.Envelope) -> JobSettings:
    return JobSettings(
        max_attempts=envelope.max_attempts,
        expire_after_ms=envelope.expire_after_ms,
        job_timeout_ms=envelope.job_timeout_ms,
        backoff=envelope.backoff,
        cron=envelope.cron,
        flow=None if envelope.flow is None else envelope.flow.id,
        step=None if envelope.flow is None else envelope.flow.step,
    )


def iso(ms: int | None) -> str | None:
    """A time in ms since the epoch as ISO 8601 with its zone (UTC), to the millisecond."""
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


class JobInfo(msgspec.Struct, kw_only=True):
    """What ``streamq job show`` prints: a job's record, with "active" worked out from the
    consumer group (a queued job delivered to a worker is running)."""

    id: str
    stream: str
    state: str
    attempt: int
    priority: str
    key: str | None = None
    account: str | None = None
    payload: Any = None
    enqueued_at_ms: int | None = None
    run_at_ms: int | None = None
    started_at_ms: int | None = None
    finished_at_ms: int | None = None
    error: str | None = None
    result: Any = None
    consumer: str | None = None
    """The worker running it, while active."""
    cancel_requested: bool = False
    attempts: list[Attempt] = msgspec.field(default_factory=list)
    """Its runs, oldest first: the latest ``scripts.ATTEMPTS_KEPT`` that did not end done
    (retried, rate-limited, paused, dead, cancelled while running), then the done one. A run
    cut short by a crash is not there (its entry was reclaimed and run again)."""
    options: JobSettings = msgspec.field(default_factory=JobSettings)
    """Its own settings from its envelope (none when the envelope is not kept)."""
    enqueued_at: str | None = None
    """The ``*_ms`` times again, as ISO 8601 with the zone (UTC)."""
    run_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None


class DeadLetter(msgspec.Struct, kw_only=True):
    entry_id: str
    job_id: str | None
    """None for an entry streamq did not write."""
    reason: str
    source: str
    payload: Any = None
    fields: dict[str, str] = msgspec.field(default_factory=dict)
    """The entry's own fields when it was not one of ours."""


def stream_of(job_id: str) -> str:
    """The stream (or partition) a job id names; JobNotFound for a malformed id."""
    try:
        return keys.stream_of_job(job_id)
    except ValueError:
        raise JobNotFound(f"no job {job_id!r}: job ids look like 'instagram:...'") from None


_stream_of = stream_of


def _int(value: bytes | None) -> int | None:
    return None if value is None else int(value)


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


async def _record(redis: Redis, job_id: str) -> tuple[str, dict[bytes, bytes]]:
    """The job's stream and record; raises JobNotFound."""
    stream = _stream_of(job_id)
    record: Any = await redis.hgetall(keys.job(stream, job_id))
    if not record:
        raise JobNotFound(
            f"no job {job_id!r} (never enqueued, a flow step not released yet, "
            "or its record passed retention)"
        )
    return stream, record


async def job_info(redis: Redis, job_id: str) -> JobInfo:
    stream, record = await _record(redis, job_id)
    state = record[b"state"].decode()
    priority = record.get(b"priority", b"normal").decode()
    envelope_raw = record.get(b"env")
    consumer = None
    entry = record.get(b"entry")
    if state == "queued" and entry is not None:
        lane = keys.lane(stream, priority)  # type: ignore[arg-type]
        async with redis.pipeline(transaction=False) as pipe:
            pipe.xpending_range(lane, keys.GROUP, entry, entry, 1)
            pipe.xrange(lane, entry, entry)
            # NOGROUP means no worker ever read the lane: then it is simply not delivered.
            pending, found = await pipe.execute(raise_on_error=False)
        if pending and not isinstance(pending, Exception):
            state, consumer = "active", pending[0]["consumer"].decode()
        if found and b"j" in found[0][1]:
            envelope_raw = found[0][1][b"j"]
    return from_record(job_id, record, state=state, envelope=envelope_raw, consumer=consumer)


def from_record(
    job_id: str,
    record: dict[bytes, bytes],
    *,
    state: str | None = None,
    envelope: bytes | None = None,
    consumer: str | None = None,
) -> JobInfo:
    """The JobInfo of a record read already (``job_info`` adds what a queued job's lane says:
    whether a worker holds it, and its envelope)."""
    stream = keys.stream_of_job(job_id)
    state = state or record[b"state"].decode()
    priority = record.get(b"priority", b"normal").decode()
    envelope_raw = envelope if envelope is not None else record.get(b"env")
    decoded: codec.Envelope | None = None
    if envelope_raw is not None:
        try:
            decoded = codec.record_envelope(
                envelope_raw, job_id, record.get(b"key"), record.get(b"account")
            )
        except (msgspec.DecodeError, msgspec.ValidationError):
            decoded = None
    result_raw = record.get(b"result")
    times = {
        name: _int(record.get(field))
        for name, field in (
            ("enqueued", b"enqueued_at"),
            ("run", b"run_at"),
            ("started", b"started_at"),
            ("finished", b"finished_at"),
        )
    }
    # A record holds no time, key or account its envelope holds (enqueue_jobs.lua: a backlog
    # pays for each field once); records written before that hold them, and those are read
    # first. A queued job's envelope is its lane entry's (job_info reads it).
    if decoded is not None:
        times["enqueued"] = times["enqueued"] or decoded.enqueued_at_ms
        times["run"] = times["run"] or decoded.run_at_ms
    return JobInfo(
        id=job_id,
        stream=stream,
        state=state,
        attempt=int(record.get(b"attempt", b"1")),
        priority=priority,
        key=_text(record.get(b"key")) or (decoded.key if decoded else None),
        account=_text(record.get(b"account")) or (decoded.account if decoded else None),
        payload=None if decoded is None else decoded.payload,
        enqueued_at_ms=times["enqueued"],
        run_at_ms=times["run"],
        started_at_ms=times["started"],
        finished_at_ms=times["finished"],
        error=_text(record.get(b"error")),
        result=None if not result_raw else msgspec.json.decode(result_raw),
        consumer=consumer,
        cancel_requested=b"cancel" in record,
        attempts=_attempts(record, state),
        options=JobSettings() if decoded is None else settings_of(decoded),
        enqueued_at=iso(times["enqueued"]),
        run_at=iso(times["run"]),
        started_at=iso(times["started"]),
        finished_at=iso(times["finished"]),
    )


class _Run(msgspec.Struct):
    """A run as finish_jobs.lua writes it in the record's ``attempts``."""

    n: int
    outcome: str
    worker: str = ""
    started_ms: int = 0
    finished_ms: int = 0
    error: str = ""
    trace: str = ""


def _attempts(record: dict[bytes, bytes], state: str) -> list[Attempt]:
    runs: list[_Run] = []
    raw = record.get(b"attempts")
    if raw:
        try:
            runs = msgspec.json.decode(raw, type=list[_Run])
        except (msgspec.DecodeError, msgspec.ValidationError):
            runs = []
    if state == "done" and b"started_at" in record:
        runs.append(
            _Run(
                n=int(record.get(b"attempt", b"1")),
                outcome="done",
                worker=(record.get(b"worker") or b"").decode(),
                started_ms=int(record[b"started_at"]),
                finished_ms=int(record.get(b"finished_at", b"0")),
            )
        )
    return [
        Attempt(
            n=run.n,
            worker=run.worker or None,
            started_at_ms=run.started_ms or None,
            finished_at_ms=run.finished_ms or None,
            started_at=iso(run.started_ms or None),
            finished_at=iso(run.finished_ms or None),
            outcome=run.outcome,
            error=run.error or None,
            trace=run.trace or None,
        )
        for run in runs
    ]


async def cancel(redis: Redis, job_id: str, config: StreamConfig | None = None) -> str:
    """Cancel a job. Returns 'cancelled' (it will never start) or 'cancelling' (it was already
    running: its handler sees job.cancelled and it is not retried).
    Raises InvalidJobState for a finished job."""
    retention_ms = round((config or StreamConfig()).retention * 1000)
    _stream_of(job_id)  # a clear error for a malformed id
    return await scripts.cancel_job(redis, job_id, retention_ms=retention_ms)


async def reschedule(
    redis: Redis,
    job_id: str,
    run_at: datetime | None = None,
    delay: timedelta | float | str | None = None,
) -> int:
    """Move a scheduled or retrying job to a new due time; returns it (ms since the epoch).
    A queued job not due yet (promoted ahead of its due time: docs/timing.md) moves too."""
    stream = _stream_of(job_id)
    if run_at is None and delay is None:
        raise InvalidJobState("reschedule needs run_at or delay")
    due = scheduler.due_ms(run_at, delay, now_ms=await channel.server_ms(redis))
    assert due is not None
    record_key = keys.job(stream, job_id)
    for _ in range(5):
        read: Any = await redis.hmget(record_key, ["env", "key", "account"])
        raw, key, account = read
        if raw is None:
            raw = await _queued_envelope(redis, stream, job_id)
        if raw is None:
            state: Any = await redis.hget(record_key, "state")
            if state is None:
                raise JobNotFound(f"no job {job_id!r}")
            raise InvalidJobState(f"job {job_id} is {state.decode()}: only scheduled jobs move")
        envelope = msgspec.structs.replace(
            codec.record_envelope(raw, job_id, key, account), run_at_ms=due
        )
        try:
            await scripts.reschedule_job(
                redis, job_id, due_ms=due, envelope=codec.encode(envelope), read=raw
            )
        except RecordChanged:
            continue
        return due
    raise InvalidJobState(f"job {job_id} kept changing while being rescheduled: try again")


async def _queued_envelope(redis: Redis, stream: str, job_id: str) -> bytes | None:
    """The envelope of a queued job, from its entry (a queued job's record has none); None
    when the job is not queued. reschedule_job decides whether it may still move."""
    fields: Any = await redis.hmget(keys.job(stream, job_id), "state", "entry", "priority")
    state, entry, priority = fields
    if state != b"queued" or entry is None or priority not in (None, b"high", b"normal", b"low"):
        return None
    lane = keys.lane(stream, "normal" if priority is None else priority.decode())
    found: Any = await redis.xrange(lane, entry, entry)
    if not found or b"j" not in found[0][1]:
        return None
    raw: bytes = found[0][1][b"j"]
    return raw


PROMOTABLE = ("scheduled", "retrying")


async def promote(redis: Redis, job_id: str) -> int:
    """Run a scheduled or retrying job now: it becomes due at the server's present time (a
    reschedule to now, so workers are woken and its due index follows); returns that time.
    Raises InvalidJobState for a job in any other state."""
    _, record = await _record(redis, job_id)
    state = record[b"state"].decode()
    if state not in PROMOTABLE:
        raise InvalidJobState(f"job {job_id} is {state}: only scheduled or retrying jobs run now")
    return await reschedule(redis, job_id, delay=0)


async def retry(redis: Redis, job_id: str) -> None:
    """Run a dead, cancelled or expired job again now, with its attempts reset."""
    stream, record = await _record(redis, job_id)
    state = record[b"state"].decode()
    if state not in REVIVABLE or b"env" not in record:
        raise InvalidJobState(
            f"job {job_id} is {state}: only dead, cancelled or expired jobs retry"
        )
    await _revive(
        redis,
        stream,
        codec.record_envelope(record[b"env"], job_id, record.get(b"key"), record.get(b"account")),
        record.get(b"priority", b"normal").decode(),
        record.get(b"dead_entry", b"").decode(),
    )


async def _revive(
    redis: Redis, stream: str, envelope: codec.Envelope, priority: str, dead_entry: str
) -> None:
    # Due now by the server's clock, so expire_after counts from the revival, not the enqueue.
    now = await channel.server_ms(redis)
    # A dead letter of a verify run runs as an ordinary run: if the job's "may have been sent"
    # mark is still set in its record, that run looks before it sends (streamq.job).
    # Not a first run (first_run off): the run reads the checkpoints and the mark earlier runs
    # left in the record.
    fresh = msgspec.structs.replace(
        envelope, attempt=1, run_at_ms=now, verify=None, lookups_failed=0, first_run=False
    )
    lane: keys.Priority = "normal"
    for known in keys.LANES:
        if priority == known:
            lane = known
    await scripts.revive_job(redis, fresh, lane=lane, dead_entry=dead_entry)


async def dead_letters(
    redis: Redis, stream: str, count: int = 100, after: str | None = None
) -> list[DeadLetter]:
    """The oldest ``count`` dead letters, or those following entry id ``after`` (a page)."""
    start = "-" if after is None else f"({after}"
    raw: Any = await redis.xrange(keys.dead(stream), min=start, count=count)
    return [_dead_letter(entry_id, fields) for entry_id, fields in raw]


def _dead_letter(entry_id: bytes, fields: dict[bytes, bytes]) -> DeadLetter:
    envelope = None
    if b"j" in fields:
        try:
            envelope = codec.decode(fields[b"j"])
        except (msgspec.DecodeError, msgspec.ValidationError):
            envelope = None
    own = {
        k.decode("utf-8", "backslashreplace"): v.decode("utf-8", "backslashreplace")
        for k, v in fields.items()
        if not k.startswith(b"_") and (envelope is None or k != b"j")
    }
    return DeadLetter(
        entry_id=entry_id.decode(),
        job_id=envelope.id if envelope else None,
        reason=fields.get(b"_reason", b"").decode("utf-8", "backslashreplace"),
        source=fields.get(b"_source", b"").decode(),
        payload=envelope.payload if envelope else None,
        fields=own,
    )


async def replay(redis: Redis, stream: str, ids: list[str] | None = None) -> tuple[int, int]:
    """Run dead letters again (all of them, or those named by job id or dead-letter entry id).
    Returns (replayed, skipped): entries streamq did not write cannot be replayed."""
    raw: Any = await redis.xrange(keys.dead(stream))
    wanted = set(ids) if ids is not None else None
    replayed = skipped = 0
    for entry_id, fields in raw:
        letter = _dead_letter(entry_id, fields)
        if wanted is not None and not {letter.entry_id, letter.job_id} & wanted:
            continue
        if letter.job_id is None:
            skipped += 1
            continue
        priority: Any = await redis.hget(keys.job(stream, letter.job_id), "priority")
        envelope = codec.decode(fields[b"j"])
        try:
            await _revive(
                redis, stream, envelope, (priority or b"normal").decode(), letter.entry_id
            )
        except InvalidJobState:
            skipped += 1
            continue
        replayed += 1
    return replayed, skipped


async def purge_dead(redis: Redis, stream: str) -> int:
    """Delete every dead letter of ``stream``; returns how many there were."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.xlen(keys.dead(stream))
        pipe.delete(keys.dead(stream))
        count, _ = await pipe.execute()
    return int(count)


async def purge_finished(
    redis: Redis,
    stream: str,
    older_than: float = 0.0,
    states: tuple[str, ...] = PURGED_BY_DEFAULT,
) -> int:
    """Delete the records of ``stream``'s jobs that finished in one of ``states`` at least
    ``older_than`` seconds ago, before their retention ends; returns how many.

    Records carry no index, so this walks the stream's record keys with SCAN: its cost grows
    with every key of the server, not only this stream's. Jobs still to run are never touched.
    """
    unknown = set(states) - set(FINISHED)
    if unknown or not states:
        raise ConfigError(
            f"cannot purge jobs in state {sorted(unknown) or 'none'}: choose among "
            + ", ".join(FINISHED)
        )
    keep_ms = max(0, round(older_than * 1000))
    deleted = 0
    batch: list[str] = []
    async for key in redis.scan_iter(match=keys.job(stream, "*"), count=PURGE_BATCH):
        batch.append(key.decode() if isinstance(key, bytes) else str(key))
        if len(batch) == PURGE_BATCH:
            deleted += await scripts.purge_records(redis, batch, keep_ms=keep_ms, states=states)
            batch = []
    if batch:
        deleted += await scripts.purge_records(redis, batch, keep_ms=keep_ms, states=states)
    return deleted

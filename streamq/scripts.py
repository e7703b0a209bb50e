"""The Lua scripts in ``streamq/lua``, each called through one typed function.

Every script lives in its own ``verb_noun.lua`` file whose header lists KEYS, ARGV and the reply.
A line ``-- @include "name.lua"`` is replaced by ``lua/include/name.lua``, so helpers several
scripts need (the server's clock, freeing a dedup key) are written once.

Each script has one function here, named after it, with named and typed parameters: it builds
KEYS from :mod:`streamq.keys` in the header's order (callers never write a KEYS list), sends the
call, and decodes the reply into a typed value, or raises the exception that
:data:`streamq.errors.SCRIPT_CODES` maps the script's refusal to.

Scripts are sent with EVALSHA; a server that has not seen one (a restart, SCRIPT FLUSH, a new
cluster node) answers NOSCRIPT, and the script is loaded and only the refused calls sent again.
That rule is :func:`_evalsha` for every async caller (one call, or a pipeline of many, plain or
cluster) and :func:`_evalsha_sync` for the heartbeat's thread.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final, Literal

import redis as sync_redis
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from streamq import codec, keys
from streamq.errors import script_error

EncodableArg = bytes | str | int | float
Call = tuple[Sequence[str], Sequence[EncodableArg]]
"""One script call: its KEYS and its ARGV."""


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    source: bytes
    sha: str


_INCLUDE = re.compile(rb'^-- @include "([\w.]+)"$', re.MULTILINE)


@functools.cache
def load(name: str) -> Script:
    lua = resources.files("streamq").joinpath("lua")
    source = lua.joinpath(f"{name}.lua").read_bytes()
    source = _INCLUDE.sub(lambda m: lua.joinpath("include", m[1].decode()).read_bytes(), source)
    return Script(name, source, hashlib.sha1(source).hexdigest())


def names() -> list[str]:
    """Every script's name (the ``lua/*.lua`` files)."""
    lua = resources.files("streamq").joinpath("lua")
    return sorted(p.name.removesuffix(".lua") for p in lua.iterdir() if p.name.endswith(".lua"))


# -- sending: the one EVALSHA / NOSCRIPT rule ---------------------------------------------------


async def _evalsha(redis: Redis, script: Script, calls: Sequence[Call]) -> list[Any]:
    """Every call's reply, in order: one EVALSHA, or a pipeline of them. Calls the server
    answers NOSCRIPT for (it had not seen the script, or lost it mid-pipeline) are sent again
    after loading it, and only they."""
    replies: list[Any] = [None] * len(calls)
    todo = list(range(len(calls)))
    for _ in range(2):
        if len(todo) == 1:
            script_keys, args = calls[todo[0]]
            try:
                results = [await redis.evalsha(script.sha, len(script_keys), *script_keys, *args)]
            except NoScriptError as exc:
                results = [exc]
        else:
            async with redis.pipeline(transaction=False) as pipe:
                for i in todo:
                    script_keys, args = calls[i]
                    # execute_command, not evalsha: a cluster pipeline refuses evalsha by name,
                    # though it routes EVALSHA by its keys like any keyed command.
                    pipe.execute_command(
                        "EVALSHA", script.sha, len(script_keys), *script_keys, *args
                    )
                results = await pipe.execute(raise_on_error=False)
        todo = _take_replies(todo, results, replies)
        if not todo:
            return replies
        await redis.script_load(script.source)
    raise NoScriptError(f"{script.name} could not be loaded")


def _evalsha_sync(client: sync_redis.Redis, script: Script, call: Call) -> Any:
    """``_evalsha`` of one call for a synchronous client (the heartbeat's thread)."""
    script_keys, args = call
    replies: list[Any] = [None]
    for _ in range(2):
        try:
            results = [client.evalsha(script.sha, len(script_keys), *script_keys, *args)]
        except NoScriptError as exc:
            results = [exc]
        if not _take_replies([0], results, replies):
            return replies[0]
        client.script_load(script.source)
    raise NoScriptError(f"{script.name} could not be loaded")


def _take_replies(todo: list[int], results: list[Any], replies: list[Any]) -> list[int]:
    """File the replies of the calls ``todo``; returns those refused with NOSCRIPT. Any other
    error is raised."""
    missing = []
    for i, result in zip(todo, results, strict=True):
        if isinstance(result, NoScriptError):
            missing.append(i)
        elif isinstance(result, Exception):
            raise result
        else:
            replies[i] = result
    return missing


async def _run(redis: Redis, name: str, script_keys: Sequence[str], args: Sequence[Any]) -> Any:
    return (await _evalsha(redis, load(name), [(script_keys, args)]))[0]


def lane_args(by_lane: Sequence[Iterable[bytes]]) -> list[EncodableArg]:
    """Entry ids grouped by lane as the scripts take them: the count of each lane, then the ids."""
    lanes = [list(ids) for ids in by_lane]
    assert len(lanes) == len(keys.LANES), "one group of ids per lane"
    counts: list[EncodableArg] = [len(ids) for ids in lanes]
    return counts + [i for ids in lanes for i in ids]


# -- KEYS, in each header's order ---------------------------------------------------------------


StreamKey = Callable[[str], str | list[str]]
"""A function of streamq.keys that names one of a stream's keys (``keys.lanes``: all three)."""


@functools.lru_cache(maxsize=4096)
def _keys(stream: str, *kinds: StreamKey) -> tuple[str, ...]:
    """The keys of ``stream`` that ``kinds`` name, in that order."""
    named: list[str] = []
    for kind in kinds:
        key = kind(stream)
        named += [key] if isinstance(key, str) else key
    return tuple(named)


# -- the scripts --------------------------------------------------------------------------------


async def enqueue_jobs(
    redis: Redis,
    stream: str,
    lane: keys.Priority,
    slices: Sequence[tuple[Sequence[str], bytes]],
    *,
    expire_after_ms: int | None,
    recurring: str = "",
) -> list[list[tuple[int, str]]]:
    """Add jobs, one call per slice of (job ids, their packed :class:`codec.EnqueueRow` rows),
    pipelined. Returns per slice the (0-based position, existing job id) of each job not added
    because a live job holds its dedup key."""
    fixed = (
        keys.lane(stream, lane),
        *_keys(
            stream, keys.dedup, keys.delayed, keys.control, keys.cron_fired, keys.events, keys.meta
        ),
    )
    head = [lane, "" if expire_after_ms is None else expire_after_ms, recurring]
    record_prefix = keys.job(stream, "")
    prefix = keys.script_prefix(stream)
    calls: list[Call] = [
        ((*fixed, *[record_prefix + job_id for job_id in ids]), [*head, rows, prefix])
        for ids, rows in slices
    ]
    replies = await _evalsha(redis, load("enqueue_jobs"), calls)
    return [
        [(int(taken[i]) - 1, codec.text(taken[i + 1])) for i in range(0, len(taken), 2)]
        for taken in replies
    ]


async def replace_job(
    redis: Redis,
    job_id: str,
    *,
    key: str,
    envelope: bytes,
    due_ms: int | None,
    account: str | None,
) -> bool:
    """Give a scheduled job holding ``key`` a new envelope (and due time, and account);
    False when it is no longer scheduled or no longer holds the key."""
    stream = keys.stream_of_job(job_id)
    reply = await _run(
        redis,
        "replace_job",
        [
            keys.job(stream, job_id),
            *_keys(stream, keys.delayed, keys.dedup, keys.control, keys.events, keys.meta),
        ],
        [
            job_id,
            key,
            envelope,
            "" if due_ms is None else due_ms,
            keys.script_prefix(stream),
            account or "",
        ],
    )
    return bool(reply)


ATTEMPTS_KEPT: Final = 10
"""How many failed runs a job's record keeps in its attempts history (the latest): the record
stays bounded however often a job is retried or rate-limited."""


async def finish_jobs(
    redis: Redis,
    stream: str,
    entries: Sequence[Sequence[bytes]],
    outcomes: Sequence[codec.Outcome],
    *,
    retention_ms: int,
    consumer: str = "",
    flow_steps: Sequence[str] = (),
    folded: str = "",
) -> int:
    """Acknowledge a batch (``entries``: the entry ids of each lane) and record each job's
    outcome, run by ``consumer``; returns how many entries were acknowledged. ``flow_steps``:
    the outbox members of the batch's flow steps (streamq.flows.outbox_member). ``folded``:
    '' or a '0'/'1' per outcome, '1' where the run's start was never sent (start_jobs): this
    call takes it (streamq.starts)."""
    reply = await _run(
        redis,
        "finish_jobs",
        _keys(
            stream,
            keys.lanes,
            keys.dedup,
            keys.delayed,
            keys.dead,
            keys.counts,
            keys.control,
            keys.events,
            keys.meta,
        ),
        [
            keys.GROUP,
            *[b" ".join(lane_ids) for lane_ids in entries],
            retention_ms,
            codec.pack_rows(outcomes),
            keys.script_prefix(stream),
            consumer,
            ATTEMPTS_KEPT,
            "\n".join(flow_steps),
            folded,
        ],
    )
    return int(reply)


@dataclass(frozen=True, slots=True)
class Admission:
    """admit_jobs' answer."""

    verdicts: list[Literal[0, 1, 2]]
    """Per job: 1 run, 2 run but it was cancelled, 0 not here (deferred, parked, or no longer
    this consumer's)."""
    platform_paused_until_ms: int
    """0 when the platform is not paused."""
    now_ms: int
    """The server's clock: a start was logged as '<job id>@<now_ms>'."""


async def admit_jobs(
    redis: Redis,
    stream: str,
    consumer: str,
    rows: Sequence[codec.AdmitRow],
    *,
    limits: bytes,
) -> Admission:
    """Decide which of a batch of jobs just read may start now (``limits``: packed
    :class:`streamq.limiter.StreamLimits`)."""
    reply = await _run(
        redis,
        "admit_jobs",
        _keys(
            stream,
            keys.lanes,
            keys.delayed,
            keys.counts,
            keys.control,
            keys.paused,
            keys.rate_log,
            keys.plan,
            keys.events,
            keys.meta,
        ),
        [keys.GROUP, consumer, keys.script_prefix(stream), limits, codec.pack_rows(rows)],
    )
    verdicts, platform_until, now = reply
    return Admission([int(v) for v in verdicts], int(platform_until), int(now))  # type: ignore[misc]


@dataclass(frozen=True, slots=True)
class Promotion:
    """promote_due's answer."""

    promoted: int
    expired: int
    now_ms: int
    next_due_ms: int | None
    """When the next waiting job is due (server ms), None when nothing waits."""


async def promote_due(
    redis: Redis, stream: str, job_ids: Sequence[str], *, retention_ms: int, ahead_ms: int = 0
) -> Promotion:
    """Move the due ones of ``job_ids`` (the earliest of the delayed set) onto their lanes;
    with ``ahead_ms``, also those due within that long (a worker holds them until due)."""
    reply = await _run(
        redis,
        "promote_due",
        [
            *_keys(
                stream, keys.delayed, keys.lanes, keys.dedup, keys.counts, keys.events, keys.meta
            ),
            *[keys.job(stream, job_id) for job_id in job_ids],
        ],
        [retention_ms, keys.script_prefix(stream), ahead_ms, *job_ids],
    )
    promoted, expired, now, head = (int(value) for value in reply)
    return Promotion(promoted, expired, now, None if head < 0 else head)


DUE_WAIT: Final = 0
"""check_due's verdict: not due yet by the server's clock."""
DUE_RUN: Final = 1
DUE_CANCELLED: Final = 2
"""Due, but cancelled while it waited: it ends as cancelled without running."""
DUE_GONE: Final = 3
"""Taken back to the delayed set (rescheduled) while it waited: no longer this worker's."""


@dataclass(frozen=True, slots=True)
class DueCheck:
    """check_due's answer."""

    now_us: int
    """The server's clock (TIME) as the verdicts were given, in µs."""
    verdicts: list[int]


async def check_due(
    redis: Redis, stream: str, jobs: Sequence[tuple[str, int, bytes, keys.Priority]]
) -> DueCheck:
    """Whether each of ``jobs`` (job id, due ms, entry id, lane) read ahead of its due time may
    start now, by the server's clock (see check_due.lua)."""
    rows = [codec.pack_due_check(job_id, due, entry, lane) for job_id, due, entry, lane in jobs]
    return await check_due_rows(redis, stream, rows)


async def check_due_rows(redis: Redis, stream: str, rows: Sequence[bytes]) -> DueCheck:
    """check_due of jobs whose rows were packed ahead (codec.pack_due_check): the call at the
    due time packs nothing per job."""
    reply = await _run(
        redis,
        "check_due",
        [keys.lane(stream, "high")],
        [keys.script_prefix(stream), keys.GROUP, codec.join_due_checks(rows)],
    )
    now, verdicts = reply
    return DueCheck(int(now), verdicts)


async def cancel_job(
    redis: Redis, job_id: str, *, retention_ms: int
) -> Literal["cancelled", "cancelling"]:
    """Cancel a job: 'cancelled' (it will never start) or 'cancelling' (it is running).
    Raises JobNotFound, or InvalidJobState for a finished job."""
    stream = keys.stream_of_job(job_id)
    outcome, before = await _run(
        redis,
        "cancel_job",
        [
            keys.job(stream, job_id),
            *_keys(
                stream,
                keys.delayed,
                keys.lanes,
                keys.dedup,
                keys.counts,
                keys.control,
                keys.events,
                keys.meta,
            ),
        ],
        [job_id, keys.GROUP, retention_ms, keys.script_prefix(stream)],
    )
    outcome, before = codec.text(outcome), codec.text(before)
    if outcome == "missing":
        raise script_error("missing", f"no job {job_id!r}")
    if outcome == "unchanged":
        raise script_error("unchanged", f"job {job_id} is already {before}: nothing to cancel")
    assert outcome in ("cancelled", "cancelling")
    return outcome  # type: ignore[return-value]


async def reschedule_job(
    redis: Redis, job_id: str, *, due_ms: int, envelope: bytes, read: bytes | str
) -> None:
    """Move a scheduled or retrying job, or a queued one not due yet (promoted ahead), to
    ``due_ms`` (``envelope``: the one ``read`` from its record or queued entry, re-encoded with
    that due time). Raises JobNotFound; RecordChanged when the record
    changed since it was read; InvalidJobState when the job is not scheduled."""
    stream = keys.stream_of_job(job_id)
    state = await _run(
        redis,
        "reschedule_job",
        [
            keys.job(stream, job_id),
            *_keys(stream, keys.delayed, keys.control, keys.events, keys.meta, keys.counts),
        ],
        [job_id, due_ms, envelope, read, keys.script_prefix(stream), keys.GROUP],
    )
    if state is None:
        raise script_error("missing", f"no job {job_id!r}")
    state = codec.text(state)
    if state == "changed":
        raise script_error("changed", f"job {job_id} changed while being rescheduled")
    if state not in ("scheduled", "retrying"):
        raise script_error("unchanged", f"job {job_id} is {state}: only scheduled jobs move")


async def revive_job(
    redis: Redis,
    envelope: codec.Envelope,
    *,
    lane: keys.Priority,
    dead_entry: str,
) -> str:
    """Queue a dead, cancelled or expired job again (``envelope`` has attempt 1); returns its
    new entry id. Raises InvalidJobState when its state cannot be revived."""
    stream = keys.stream_of_job(envelope.id)
    reply = await _run(
        redis,
        "revive_job",
        [
            keys.job(stream, envelope.id),
            keys.lane(stream, lane),
            *_keys(stream, keys.dead, keys.dedup, keys.events, keys.meta),
        ],
        [envelope.id, codec.encode(envelope), lane, dead_entry, envelope.key or ""],
    )
    if isinstance(reply, list):
        state = codec.text(reply[0])
        raise script_error("unchanged", f"job {envelope.id} is {state}: it cannot be retried")
    return codec.text(reply)


@dataclass(frozen=True, slots=True)
class Reject:
    """An entry dead_letter files without running it."""

    entry: bytes
    reason: str
    envelope: codec.Envelope | None
    """None for an entry that is not a job of ours."""


async def dead_letter(
    redis: Redis, stream: str, lane: keys.Priority, rejects: Sequence[Reject], *, retention_ms: int
) -> int:
    """Move entries that cannot run from ``lane`` to the dead-letter stream; returns how many."""
    args: list[EncodableArg] = [keys.GROUP, retention_ms]
    record_keys: list[str] = []
    for reject in rejects:
        env = reject.envelope
        if env is not None:
            record_keys.append(keys.job(stream, env.id))
        args += (
            reject.entry,
            reject.reason,
            (env and env.key) or "",
            env.id if env else "",
            len(record_keys) if env is not None else 0,
        )
    script_keys = [
        keys.lane(stream, lane),
        *_keys(stream, keys.dead, keys.dedup, keys.counts, keys.events, keys.meta),
        keys.flow_outbox(stream),
        *record_keys,
    ]
    return int(await _run(redis, "dead_letter", script_keys, args))


GONE_KEPT: Final = 1000
"""About how many records a stream's workers-gone log keeps."""


@dataclass(frozen=True, slots=True)
class Reclaimed:
    """One lane's part of reclaim_jobs' answer."""

    cursor: str
    """Where the next claim on this lane goes on from ('0-0': start over)."""
    entries: list[Any]
    """XAUTOCLAIM's [entry id, fields] pairs."""
    deliveries: list[int]
    """How many times each entry has now been delivered (this claim included)."""


async def reclaim_jobs(
    redis: Redis,
    stream: str,
    consumer: str,
    *,
    min_idle_ms: int,
    count: int,
    cursors: Sequence[str],
    gap_ms: int,
) -> list[Reclaimed]:
    """Claim for ``consumer`` up to ``count`` entries idle ``min_idle_ms``, highest lane first,
    and drop from the group the other consumers idle that long that own nothing (logged in
    ``workers_gone`` with what was taken from them). Idle time counts from the server's epoch
    at the earliest (``gap_ms``: see ``beat``)."""
    reply = await _run(
        redis,
        "reclaim_jobs",
        _keys(stream, keys.lanes, keys.workers, keys.workers_gone, keys.liveness),
        [keys.GROUP, consumer, min_idle_ms, count, *cursors, GONE_KEPT, gap_ms],
    )
    return _reclaimed(reply)


def _reclaimed(reply: Any) -> list[Reclaimed]:
    return [
        Reclaimed(codec.text(cursor), entries, [int(d) for d in deliveries])
        for cursor, entries, deliveries in reply
    ]


async def reclaim_lapsed(
    redis: Redis,
    stream: str,
    consumer: str,
    *,
    count: int,
    liveness_ms: int,
    gap_ms: int,
) -> list[Reclaimed]:
    """Claim for ``consumer`` up to ``count`` entries of the consumers whose heartbeat lapsed
    (their ``beat`` deadline passed), whatever their idle time, and fence those consumers (see
    finish_jobs); nothing within ``liveness_ms`` of a new epoch, nor while ``consumer``'s own
    deadline has passed."""
    reply = await _run(
        redis,
        "reclaim_lapsed",
        _keys(stream, keys.lanes, keys.liveness, keys.workers_gone),
        [keys.GROUP, consumer, count, liveness_ms, gap_ms, GONE_KEPT],
    )
    return _reclaimed(reply)


def beat(
    client: sync_redis.Redis,
    stream: str,
    consumer: str,
    *,
    liveness_ms: int,
    run_id: str,
    gap_ms: int,
) -> tuple[int, int, int]:
    """From the heartbeat's thread: ``consumer`` is alive for ``liveness_ms`` more; ``run_id``
    (the server's, read on the same connection) or a gap of ``gap_ms`` in every worker's
    heartbeats starts a new epoch. Returns (now, when the epoch began) in server ms, and how
    many consumers of the stream are alive now."""
    script_keys = _keys(stream, keys.liveness)
    now, since, live = _evalsha_sync(
        client, load("beat"), (script_keys, [consumer, liveness_ms, run_id, gap_ms])
    )
    return int(now), int(since), int(live)


async def refresh_claims(
    redis: Redis, stream: str, consumer: str, held: Sequence[Iterable[bytes]]
) -> list[bytes]:
    """Keep ``consumer``'s claims on ``held`` (entry ids per lane) fresh; returns the ids it no
    longer owns."""
    lost: list[bytes] = await _run(
        redis, "refresh_claims", _keys(stream, keys.lanes), [keys.GROUP, consumer, *lane_args(held)]
    )
    return lost


def refresh_pending(
    client: sync_redis.Redis,
    stream: str,
    consumer: str,
    held: Sequence[Iterable[bytes]],
    *,
    stalled_ms: int,
) -> int:
    """``refresh_claims`` from the heartbeat's thread, while the event loop is stalled;
    returns how many entries were refreshed."""
    args: list[EncodableArg] = [keys.GROUP, consumer, stalled_ms, *lane_args(held)]
    return int(_evalsha_sync(client, load("refresh_pending"), (_keys(stream, keys.lanes), args)))


async def release_jobs(
    redis: Redis,
    stream: str,
    lane: keys.Priority,
    consumer: str,
    jobs: Sequence[tuple[bytes, str]],
) -> int:
    """Hand back ``jobs`` ((entry id, job id) pairs) fetched but never started; returns how
    many were released."""
    record_prefix = keys.job(stream, "")
    reply = await _run(
        redis,
        "release_jobs",
        [keys.lane(stream, lane), *[record_prefix + job_id for _, job_id in jobs]],
        [keys.GROUP, consumer, *[entry for entry, _ in jobs]],
    )
    return int(reply)


async def retire_consumer(redis: Redis, stream: str, consumer: str) -> int:
    """Remove ``consumer`` from the lanes where it owns nothing; returns from how many."""
    return int(
        await _run(
            redis,
            "retire_consumer",
            _keys(stream, keys.lanes, keys.workers, keys.liveness),
            [keys.GROUP, consumer],
        )
    )


async def resume_account(redis: Redis, stream: str, account: str) -> tuple[bool, int]:
    """Lift an account's pause: (whether it was paused, how many parked jobs go back)."""
    was_paused, resumed = await _run(
        redis,
        "resume_account",
        [
            *_keys(stream, keys.paused, keys.delayed, keys.control),
            keys.parked(stream, account),
            *_keys(stream, keys.events, keys.meta),
        ],
        [keys.script_prefix(stream), account],
    )
    return bool(was_paused), int(resumed)


async def purge_records(
    redis: Redis, record_keys: Sequence[str], *, keep_ms: int, states: Sequence[str]
) -> int:
    """Delete those of ``record_keys`` in ``states`` that finished over ``keep_ms`` ago."""
    return int(await _run(redis, "purge_records", record_keys, [keep_ms, *states]))


async def page_members(
    redis: Redis,
    set_key: str,
    *,
    low: float,
    high: float,
    after: tuple[float, str] | None,
    count: int,
) -> list[tuple[str, float]]:
    """Up to ``count`` (member, score) of ``set_key`` with scores in [low, high] (infinities
    for no bound), in (score, member) order, after the member ``after`` names at its score."""
    args: list[EncodableArg] = [
        _score_bound(low),
        _score_bound(high),
        "" if after is None else repr(after[0]),
        "" if after is None else after[1],
        count,
    ]
    flat = await _run(redis, "page_members", [set_key], args)
    return [(codec.text(flat[i]), float(flat[i + 1])) for i in range(0, len(flat), 2)]


def _score_bound(value: float) -> str:
    if value == float("inf"):
        return "+inf"
    if value == float("-inf"):
        return "-inf"
    return repr(value)


async def sample_counts(redis: Redis, stream: str, *, every_ms: int, keep_ms: int) -> bool:
    """Add a copy of the counts to the samples if the last is ``every_ms`` old; True if added."""
    reply = await _run(
        redis, "sample_counts", _keys(stream, keys.counts, keys.samples), [every_ms, keep_ms]
    )
    return bool(reply)


async def record_minute(
    redis: Redis, stream: str, *, minute_ms: int, keep_ms: int, lateness: Sequence[int]
) -> bool:
    """Add to the stream's series for the minute starting at ``minute_ms``: the counts and
    depth if no call of that minute copied them yet, and ``lateness`` (bucket counts seen since
    the caller's last call). True when this call copied the counts."""
    buckets: list[EncodableArg] = []
    for index, count in enumerate(lateness):
        if count:
            buckets += [index, count]
    reply = await _run(
        redis,
        "record_minute",
        [keys.counts(stream), keys.series(stream, minute_ms), *keys.lanes(stream)],
        [keep_ms, keys.GROUP, *buckets],
    )
    return bool(reply)


async def append_audit(
    redis: Redis,
    stream: str,
    *,
    by: str,
    action: str,
    target: str,
    job_id: str = "",
    account: str = "",
    detail: str = "",
) -> None:
    """Append an ``admin`` event to the stream's events: who (a token's name, never its
    value) did which action to what."""
    await _run(
        redis,
        "append_audit",
        _keys(stream, keys.events, keys.meta),
        [by, action, target, job_id, account, detail],
    )


async def renew_leadership(redis: Redis, lock: str, token: str, *, ttl_ms: int) -> bool:
    """Extend the autoscaler's leadership ``lock`` if ``token`` still holds it."""
    return bool(await _run(redis, "renew_leadership", [lock], [token, ttl_ms]))


async def release_leadership(redis: Redis, lock: str, token: str) -> bool:
    """Give up the autoscaler's leadership ``lock`` if ``token`` holds it."""
    return bool(await _run(redis, "release_leadership", [lock], [token]))


LeaseAnswer = Literal["granted", "newer", "busy", "missing", "reauth"]
_LEASE_ANSWERS: tuple[LeaseAnswer, ...] = ("granted", "newer", "busy", "missing", "reauth")
"""lease_token's answer codes 0..4, in order (see its header)."""


def _token_keys(platform: str, account: str) -> list[str]:
    return [keys.token_record(platform, account), keys.token_lease(platform, account)]


async def lease_token(
    redis: Redis, platform: str, account: str, *, seen_version: int, lease_ms: int
) -> tuple[LeaseAnswer, int]:
    """Ask to be the one worker that refreshes an account's token. Returns the answer and its
    value: the fence (granted), the record's version (newer, reauth), the ms the lease still
    runs (busy), or 0 (missing)."""
    code, value = await _run(
        redis, "lease_token", _token_keys(platform, account), [seen_version, lease_ms]
    )
    return _LEASE_ANSWERS[int(code)], int(value)


async def write_token(
    redis: Redis,
    platform: str,
    account: str,
    *,
    fence: int,
    fields: Sequence[EncodableArg],
) -> tuple[bool, int]:
    """Store an account's token fields under ``fence`` (0: a put by the app, which always
    lands). Returns (written, the record's version)."""
    written, version = await _run(
        redis, "write_token", _token_keys(platform, account), [fence, *fields]
    )
    return bool(written), int(version)


async def save_checkpoint(redis: Redis, job_id: str, name: str, value: str) -> dict[str, str]:
    """Keep checkpoint ``name`` = ``value`` in the job's record; returns every checkpoint it
    holds now. Raises JobNotFound when the record is gone."""
    stream = keys.stream_of_job(job_id)
    reply = await _run(redis, "save_checkpoint", [keys.job(stream, job_id)], [name, value])
    if reply is None:
        raise script_error("missing", f"no job {job_id!r}: its checkpoint was not kept")
    return codec.checkpoints(reply)


async def mark_sent(redis: Redis, job_id: str, *, sent: bool) -> int | None:
    """Set (``sent``: keeps an earlier time) or clear the job's "may have been sent" mark;
    returns the mark (server ms), None when cleared. Raises JobNotFound when the record is
    gone."""
    stream = keys.stream_of_job(job_id)
    reply = int(await _run(redis, "mark_sent", [keys.job(stream, job_id)], [int(sent)]))
    if reply < 0:
        raise script_error("missing", f"no job {job_id!r}: its send mark was not kept")
    return reply or None


async def start_jobs(
    redis: Redis, stream: str, job_ids: Sequence[str], entries: Sequence[bytes]
) -> int:
    """Count a run of each of ``job_ids`` whose handler started, delivered from ``entries``
    (the entry id of each, in order); returns how many were counted (a job without a record is
    not). One key routes the call and three arguments carry the batch: the ids packed in one
    msgpack array, the entries joined, so no job costs an argument of its own."""
    assert len(job_ids) == len(entries), "one entry id per job"
    reply = await _run(
        redis,
        "start_jobs",
        [keys.lane(stream, "high")],
        [keys.script_prefix(stream), codec.pack_job_ids(job_ids), b" ".join(entries)],
    )
    return int(reply)


# -- flows (streamq.flows): each script touches one flow's slot, or one key's -------------------


async def claim_flow_key(
    redis: Redis, key: str, flow_id: str, *, finished: str = "", ttl_ms: int
) -> str:
    """Make the flow dedup ``key`` name ``flow_id`` unless it names another flow (or, given
    ``finished``, unless it no longer names that finished flow); returns the flow it names."""
    reply = await _run(redis, "claim_flow_key", [keys.flow_key(key)], [flow_id, finished, ttl_ms])
    return codec.text(reply)


async def create_flow(
    redis: Redis, flow_id: str, *, spec: str, envelopes: str, run_at_ms: int, key: str
) -> bool:
    """Write a new flow's record; False when it existed (nothing is changed then)."""
    reply = await _run(
        redis, "create_flow", [keys.flow(flow_id)], [spec, envelopes, run_at_ms, key]
    )
    return bool(reply)


async def advance_flow(
    redis: Redis,
    flow_id: str,
    step: str,
    state: str,
    *,
    result: str,
    error: str,
    retention_ms: int,
) -> tuple[str, bool]:
    """Tell the flow that ``step`` ended in ``state``; returns (the flow's state, whether this
    call ended the flow). The state is '' when the flow's record is gone."""
    flow_state, ended = await _run(
        redis, "advance_flow", [keys.flow(flow_id)], [step, state, result, error, retention_ms]
    )
    return codec.text(flow_state), bool(ended)


async def mark_flow_released(redis: Redis, flow_id: str, steps: Sequence[str]) -> list[str]:
    """Note that ``steps`` were enqueued; returns those cancelled with their flow meanwhile."""
    if not steps:
        return []
    reply = await _run(redis, "mark_flow_released", [keys.flow(flow_id)], list(steps))
    return [codec.text(name) for name in reply]


async def cancel_flow(
    redis: Redis, flow_id: str, *, retention_ms: int
) -> tuple[str, bool, list[str]] | None:
    """Cancel the flow's steps not yet enqueued; returns (the flow's state, whether this call
    ended it, the job ids of its enqueued steps not final), or None when there is no flow."""
    reply = await _run(redis, "cancel_flow", [keys.flow(flow_id)], [retention_ms])
    if not reply:
        return None
    state, ended, *jobs = reply
    return codec.text(state), bool(ended), [codec.text(job) for job in jobs]


async def announce_flow(
    redis: Redis,
    stream: str,
    flow_id: str,
    kind: str,
    *,
    at_ms: int,
    steps: str,
    remember_ms: int,
) -> bool:
    """Write the flow's end event into ``stream``'s events unless it holds it already;
    returns whether this call wrote it."""
    reply = await _run(
        redis,
        "announce_flow",
        [keys.events(stream), keys.meta(stream), keys.flows_told(stream)],
        [flow_id, kind, at_ms, steps, remember_ms],
    )
    return bool(reply)

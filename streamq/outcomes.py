"""What a run means: a handler's result or exception turned into the outcome the worker records.

Pure functions of the job, the server's clock (``now_ms``) and the stream's settings: no Redis,
no worker state, so every rule here is unit-tested without a server. The worker acts on what
comes back (a :class:`~streamq.codec.Parked` from a handler means "pause the account", a
:class:`~streamq.codec.Deferred` holding ``'platform'`` means "read nothing until then").

    handler returned             Done
    raised RateLimited           Deferred (attempt unchanged; holds the account or platform)
    cancelled while it ran       Cancelled
    raised Fail(pause_account)   Parked (its account is paused until resumed)
    raised Fail, or last attempt Dead; but Retried as a verify run when its post may exist
    raised anything else         Retried after Retry(after) or the backoff

    a verify run (job.verify_only) that returned   Done, the result marked recovered
                       raised NotPublished         Dead, with the reason it had before
                       raised Fail                 Dead, the reason saying a post may exist
                       raised anything else        a verify run again (the lookup failed:
                                                   up to VERIFY_RUNS), then Dead as Fail

A job whose "may have been sent" mark is set (streamq.job) is never recorded dead without a
lookup first: where it would end dead, it runs once more with ``job.verify_only``, the reason
it would have had kept in its envelope (``verify``). :func:`reclaimed` applies the same rule to
a job whose worker died (its delivery budget counts runs, not deliveries).
"""

from __future__ import annotations

import logging
import math
import traceback
from typing import Any, Final

import msgspec
import orjson

from streamq import keys, logs, scheduler
from streamq.codec import (
    Cancelled,
    Dead,
    Deferred,
    Done,
    Envelope,
    Expired,
    Outcome,
    Parked,
    Retried,
    delivered,
    envelope_text,
    stored_envelope,
)
from streamq.config import StreamConfig
from streamq.errors import Fail, NotPublished, RateLimited, Retry
from streamq.job import Job

log = logging.getLogger("streamq.worker")

_result_encoder = msgspec.json.Encoder(enc_hook=repr)


def _next_text(env: Envelope) -> str:
    """The envelope an outcome writes for the job's next entry or its record: the job was
    delivered (and may have run), so it is no longer its first run (codec.delivered)."""
    return envelope_text(delivered(env))


def _result_text(job: Job, value: Any) -> str:
    """``value`` as JSON; a value JSON cannot hold (a container holding itself, or one whose
    repr raises) becomes a note saying so: the handler ran, so its job is still done (a
    retry would post again), and the worker goes on."""
    try:
        return _result_encoder.encode(value).decode()
    except Exception as error:  # whatever the value's own repr raises, too
        note = f"the handler's result is not JSON: {type(error).__name__}"
        env = job.envelope
        log.warning(
            "job %s: %s; recorded as a note", env.id, note,
            extra=logs.job(env.id, job.stream, env.attempt),
        )  # fmt: skip
        return _result_encoder.encode({"unrecorded": note}).decode()


def done(job: Job, started_ms: int, value: Any) -> Done:
    """The handler returned ``value`` (stored as JSON; '' for None)."""
    env = job.envelope
    if env.verify is not None and isinstance(value, dict):
        value = {**value, "recovered": True}  # found by the lookup, not sent by this run
    result = "" if value is None else _result_text(job, value)
    stored = ""
    if job._raw:
        try:
            stored = stored_envelope(job._raw, env.id, env.enqueued_at_ms).decode()
        except UnicodeDecodeError:
            # Bytes not UTF-8 in a field the decoder skipped (another writer's entry): a
            # msgpack str cannot carry them, so finish_jobs reads the entry, as it did before.
            stored = ""
    return Done(env.id, env.key or "", env.attempt, started_ms, result, stored)


def expired(job: Job) -> Expired:
    env = job.envelope
    return Expired(
        env.id,
        env.key or "",
        env.attempt,
        0,
        _next_text(env),
        job._lane + 1,
        job._entry.decode(),
    )


def cancelled(job: Job, started_ms: int = 0) -> Cancelled:
    env = job.envelope
    return Cancelled(
        env.id,
        env.key or "",
        env.attempt,
        started_ms,
        _next_text(env),
        job._lane + 1,
        job._entry.decode(),
    )


def parked(job: Job, reason: str, started_ms: int = 0) -> Parked:
    """Pause the job's account (it has one) and park the job, attempt unchanged."""
    env = job.envelope
    assert env.account is not None
    return Parked(
        env.id,
        env.key or "",
        env.attempt,
        started_ms,
        _next_text(env),
        reason,
        env.account,
        env.enqueued_at_ms,
        job._lane + 1,
        job._entry.decode(),
    )


def held_back(job: Job, now_ms: int, wait_ms: int) -> Deferred:
    """Defer a job, without running it, until a platform pause ends."""
    env = job.envelope
    later = msgspec.structs.replace(env, run_at_ms=now_ms + wait_ms)
    return Deferred(
        env.id,
        env.key or "",
        env.attempt,
        0,
        _next_text(later),
        wait_ms,
        "platform paused",
        "",
        job._lane + 1,
        job._entry.decode(),
    )


def failure(
    job: Job, exc: BaseException, options: StreamConfig, *, started_ms: int, now_ms: int
) -> Deferred | Cancelled | Parked | Dead | Retried:
    """The outcome of a run that raised ``exc``: defer, cancel, park, dead-letter or retry."""
    env = job.envelope
    key = env.key or ""
    lane, entry = job._lane + 1, job._entry.decode()
    if isinstance(exc, RateLimited):
        delay_ms = round(exc.retry_after * 1000)
        later = msgspec.structs.replace(env, run_at_ms=now_ms + delay_ms)
        hold = ""
        if exc.scope == "platform":
            hold = keys.pause_field(None)
        elif env.account is not None:
            hold = keys.pause_field(env.account)
        return Deferred(
            env.id,
            key,
            env.attempt,
            started_ms,
            _next_text(later),
            delay_ms,
            exc.reason,
            hold,
            lane,
            entry,
        )
    if job.cancelled:  # cancelled while it ran: it ends here, as cancelled
        return cancelled(job, started_ms)
    if isinstance(exc, Fail) and exc.pause_account and env.account is not None:
        log.warning(
            "job %s: pausing account %s: %s",
            env.id,
            env.account,
            exc.reason,
            extra=logs.job(env.id, job.stream, env.attempt),
        )
        return parked(job, exc.reason, started_ms)
    error = describe(exc)
    if env.verify is not None:
        if not isinstance(exc, Fail | NotPublished) and env.lookups_failed + 1 < VERIFY_RUNS:
            return verify_again(job, exc, options, started_ms=started_ms, now_ms=now_ms)
        return verified_dead(job, exc, started_ms)
    allowed = env.max_attempts or options.max_attempts
    if isinstance(exc, Fail) or env.attempt >= allowed:
        reason = (
            exc.reason
            if isinstance(exc, Fail)
            else f"gave up after {env.attempt} attempts: {error}"
        )
        if job.may_have_sent:
            return verify(
                job,
                reason,
                options,
                started_ms=started_ms,
                now_ms=now_ms,
                trace=last_frames(exc),
            )
        log.warning(
            "job %s is dead: %s", env.id, reason, extra=logs.job(env.id, job.stream, env.attempt)
        )
        return Dead(
            env.id,
            key,
            env.attempt,
            started_ms,
            _next_text(env),
            reason,
            last_frames(exc),
            lane,
            entry,
        )
    if isinstance(exc, Retry) and exc.after is not None:
        delay = exc.after
    else:
        delay = scheduler.backoff_seconds(env.backoff or options.backoff, env.attempt)
    delay_ms = round(delay * 1000)
    log.info(
        "job %s attempt %d failed (%s); retrying in %.1fs",
        env.id,
        env.attempt,
        error,
        delay,
        extra=logs.job(env.id, job.stream, env.attempt),
    )
    again = msgspec.structs.replace(env, attempt=env.attempt + 1, run_at_ms=now_ms + delay_ms)
    return _next_attempt(job, again, started_ms, delay_ms, error, last_frames(exc))


def verify(
    job: Job, reason: str, options: StreamConfig, *, started_ms: int, now_ms: int, trace: str = ""
) -> Retried:
    """Run the job once more, only to look up whether an earlier send landed, instead of
    recording it dead with ``reason`` while its post may exist."""
    env = job.envelope
    delay_ms = round(scheduler.backoff_seconds(env.backoff or options.backoff, env.attempt) * 1000)
    log.warning(
        "job %s would be dead (%s), but its post may exist: looking it up first",
        env.id,
        reason,
        extra=logs.job(env.id, job.stream, env.attempt),
    )
    again = msgspec.structs.replace(
        env, attempt=env.attempt + 1, run_at_ms=now_ms + delay_ms, verify=reason
    )
    error = f"{reason}; a post may exist: looking it up before recording the job dead"
    return _next_attempt(job, again, started_ms, delay_ms, error, trace)


def verify_again(
    job: Job, exc: BaseException, options: StreamConfig, *, started_ms: int, now_ms: int
) -> Retried:
    """A verify run whose lookup failed without an answer (a timeout, a 5xx): that says
    nothing of the post, so it is asked again after the backoff, not recorded dead beside a
    post that may well exist (up to VERIFY_RUNS lookups)."""
    env = job.envelope
    delay_ms = round(scheduler.backoff_seconds(env.backoff or options.backoff, env.attempt) * 1000)
    again = msgspec.structs.replace(
        env,
        attempt=env.attempt + 1,
        run_at_ms=now_ms + delay_ms,
        lookups_failed=env.lookups_failed + 1,
    )
    log.info(
        "job %s: its lookup failed (%s); looking again in %.1fs",
        env.id,
        describe(exc),
        delay_ms / 1000,
        extra=logs.job(env.id, job.stream, env.attempt),
    )
    error = f"{env.verify}; {MAY_EXIST}: its lookup failed ({describe(exc)}), looking again"
    return _next_attempt(job, again, started_ms, delay_ms, error, last_frames(exc))


def _next_attempt(
    job: Job, again: Envelope, started_ms: int, delay_ms: int, error: str, trace: str
) -> Retried:
    """The run of ``job`` that failed, and its next attempt (``again``) due in ``delay_ms``."""
    return Retried(
        again.id,
        again.key or "",
        again.attempt,
        started_ms,
        _next_text(again),
        delay_ms,
        error,
        trace,
        job._lane + 1,
        job._entry.decode(),
    )


MAY_EXIST: Final = "a post may exist"
"""In the reason of a job recorded dead whose lookup could not tell: replaying it looks first."""


def verified_dead(job: Job, exc: BaseException, started_ms: int) -> Dead:
    """The outcome of a verify run that raised: NotPublished (nothing landed) ends the job dead
    with the reason it had; any other failure of the lookup ends it dead saying a post may
    exist (its mark stays set, so a replay looks first)."""
    env = job.envelope
    assert env.verify is not None
    if isinstance(exc, NotPublished):
        reason = env.verify
    else:
        reason = f"{env.verify}; {MAY_EXIST}: its lookup failed ({describe(exc)})"
    log.warning(
        "job %s is dead: %s", env.id, reason, extra=logs.job(env.id, job.stream, env.attempt)
    )
    # Dead letters are replayed as ordinary runs (they look first: the mark is in the record).
    plain = msgspec.structs.replace(env, verify=None, lookups_failed=0)
    return Dead(
        env.id,
        env.key or "",
        env.attempt,
        started_ms,
        _next_text(plain),
        reason,
        last_frames(exc),
        job._lane + 1,
        job._entry.decode(),
    )


VERIFY_RUNS: Final = 3
"""Verify runs a job whose worker keeps dying, or whose lookup keeps failing without an answer,
gets before it is recorded dead saying a post may exist (a lookup that itself kills its worker,
or a listing down for good, must not loop forever)."""


def reclaimed(
    env: Envelope, *, runs: int | None, deliveries: int, may_have_sent: bool, options: StreamConfig
) -> tuple[Envelope, str | None]:
    """A job taken over from a worker that went quiet: the envelope of its next run, or the
    reason it is dead instead.

    ``runs`` is how many times its entry started (start_jobs), all of them cut short; None when
    the job has no record, and then the entry's ``deliveries`` (this one included) count
    instead. Each cut-short run counts as an attempt; more than ``max_deliveries`` of them, or
    more attempts than allowed, and the job is dead: unless its post may exist, and then it
    runs as a verify run first (up to VERIFY_RUNS of them).
    """
    env = delivered(env)  # a release or dead letter of it must not skip the record
    crashed = deliveries - 1 if runs is None else runs
    if env.verify is not None:  # a verify run whose worker died
        if crashed < VERIFY_RUNS:
            return env, None
        return env, (
            f"{env.verify}; {MAY_EXIST}: its lookup did not finish (the worker running it stopped)"
        )
    again = msgspec.structs.replace(env, attempt=env.attempt + crashed)
    allowed = env.max_attempts or options.max_attempts
    over_runs = crashed - options.max_deliveries + 1
    over_attempts = again.attempt - allowed
    if over_runs <= 0 and over_attempts <= 0:
        return again, None
    if over_runs > 0:
        reason = (
            f"ran {crashed} times without finishing (max_deliveries={options.max_deliveries})"
            if runs is not None
            else f"delivered {deliveries} times without being acknowledged "
            f"(max_deliveries={options.max_deliveries})"
        )
    else:
        reason = (
            f"gave up after {allowed} attempts: the worker running it stopped before it "
            "finished (crashed, killed, or stalled)"
        )
    if not may_have_sent:
        return again, reason
    if max(over_runs, over_attempts) <= VERIFY_RUNS:
        return msgspec.structs.replace(again, verify=reason), None
    return (
        again,
        f"{reason}; {MAY_EXIST}: its lookup did not finish (the worker running it stopped)",
    )


def is_expired(env: Envelope, options: StreamConfig, now_ms: int) -> bool:
    """Whether the job came due longer ago than its (or the stream's) ``expire_after``."""
    expire_ms = env.expire_after_ms
    if expire_ms is None:
        if options.expire_after is None:
            return False
        expire_ms = round(options.expire_after * 1000)
    due = env.run_at_ms if env.run_at_ms is not None else env.enqueued_at_ms
    return now_ms > due + expire_ms


class JobTimeout(Exception):
    """What a run cut off by the worker's watchdog (past its job timeout) is recorded with:
    a failed attempt like any other exception."""


def timeout_of(env: Envelope, options: StreamConfig) -> float:
    """The job's own timeout, else the stream's (seconds; inf for none)."""
    if env.job_timeout_ms is not None:
        return env.job_timeout_ms / 1000
    return options.job_timeout or math.inf


def describe(exc: BaseException) -> str:
    """An exception as an outcome records it: type and message, at most 1,000 characters."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text[:1000]


FRAMES_KEPT: Final = 3
TRACE_CHARS: Final = 1500


def last_frames(exc: BaseException, count: int = FRAMES_KEPT) -> str:
    """Where ``exc`` was raised: the traceback's last ``count`` frames, one line each
    (``file:line in function: source``), at most TRACE_CHARS; '' when it has none (Fail and
    Retry raised on purpose say why in their reason)."""
    if isinstance(exc, Fail | Retry) or exc.__traceback__ is None:
        return ""
    frames = traceback.extract_tb(exc.__traceback__)[-count:]
    lines = [
        f"{frame.filename}:{frame.lineno} in {frame.name}"
        + (f": {frame.line}" if frame.line else "")
        for frame in frames
    ]
    return "\n".join(lines)[-TRACE_CHARS:]


def hook_calls(outcome: Outcome) -> list[tuple[str, tuple[Any, ...]]]:
    """The hooks a recorded outcome calls, by name, with their arguments after the job."""
    if isinstance(outcome, Done):
        return [("on_done", (orjson.loads(outcome.result) if outcome.result else None,))]
    if isinstance(outcome, Retried):
        return [("on_failed", (outcome.reason,))]
    if isinstance(outcome, Dead):
        return [("on_failed", (outcome.reason,)), ("on_dead", (outcome.reason,))]
    if isinstance(outcome, Cancelled):
        return [("on_cancelled", ())]
    if isinstance(outcome, Expired):
        return [("on_expired", ())]
    return []

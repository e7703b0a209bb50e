"""The exceptions streamq raises, in one tree.

    StreamqError
    ├── ConfigError          bad config file, option or argument value
    │   ├── ListingError     a job listing's bad state, range, limit or cursor (a ValueError too)
    │   └── FlowError        a flow's steps cannot run: a cycle, an unknown or duplicate name
    ├── PayloadError         a payload that is not JSON, or not encodable
    ├── HandlerError         a handler spec that does not import or is not async
    ├── ServerError          the embedded server cannot be started or found
    ├── ConnectionFailed     Redis is unreachable, went silent, or refused our credentials
    ├── ServerFull           Redis refused a write: it is at maxmemory (policy noeviction)
    ├── JobNotFound          no record for that job id (never enqueued, or past retention)
    ├── FlowNotFound         no record for that flow id (never enqueued, or past retention)
    ├── StreamNotFound       a stream neither configured nor ever used (no keys in Redis)
    ├── JobFailed            q.result(): the job ended dead (or expired) instead of done
    │   └── JobExpired       it was never run: it came due too long ago
    ├── JobCancelled         q.result(): the job was cancelled
    └── InvalidJobState      the job is not in a state that allows the operation
        └── RecordChanged    the job's record changed while the operation read it: try again

Every message is one line meant for a person: the CLI prints it as it is and exits non-zero.

Handlers steer a job's outcome by raising one of these (they are not errors of streamq's):

    JobSignal
    ├── Retry(after=None)        run it again: after `after` seconds, or after the backoff
    ├── Fail(reason)             give up now: straight to the dead-letter stream (or, with
    │                            pause_account=True, pause the job's account and wait)
    ├── RateLimited(retry_after) the platform said "slow down": run it again later, without
    │                            counting an attempt, and hold the account's (or with
    │                            scope="platform", every) job until then
    └── NotPublished(reason)     on a verify run (job.verify_only): the lookup found no post,
                                 so the job ends dead with the reason it had
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final, Literal


class StreamqError(Exception):
    """Base class of every error streamq raises on purpose."""


class ConfigError(StreamqError):
    """A configuration value, option or argument is not acceptable."""


class ListingError(ConfigError, ValueError):
    """A job listing cannot mean what it was asked: an unknown state, a bad cursor, an inverted
    time range, a limit out of range."""


class FlowError(ConfigError, ValueError):
    """A flow's steps cannot make a flow: a cycle, an unknown ``after`` name, a duplicate or
    invalid step name, an unknown failure policy. Nothing of the flow is enqueued."""


class FlowNotFound(StreamqError):
    """No record exists for the flow id (never enqueued, or removed after retention)."""


class PayloadError(StreamqError):
    """A payload is not valid JSON or cannot be encoded."""


class HandlerError(StreamqError):
    """A handler spec does not name an importable async function."""


class ServerError(StreamqError):
    """The embedded server could not be started, found or stopped."""


class ConnectionFailed(StreamqError):
    """Redis could not be reached, or refused the credentials given."""


class ServerFull(StreamqError):
    """Redis is at ``maxmemory`` and refuses writes (``noeviction``): nothing is queued until
    memory is freed, and nothing already queued is dropped."""


class JobNotFound(StreamqError):
    """No record exists for the job id (never enqueued, or removed after retention)."""


class StreamNotFound(StreamqError):
    """The stream is not in the config and no producer or worker ever used it (it is not in
    ``streamq:streams``): asked about, it would only answer zeros and empty lists."""


class JobFailed(StreamqError):
    """``q.result()``: the job ended without a result, dead (``reason`` says why) or expired.
    ``info`` is its JobInfo."""

    def __init__(self, message: str, info: Any = None, reason: str = "") -> None:
        super().__init__(message)
        self.info = info
        self.reason = reason


class JobExpired(JobFailed):
    """``q.result()``: the job was never run: it came due longer ago than its expire_after."""


class JobCancelled(StreamqError):
    """``q.result()``: the job was cancelled. ``info`` is its JobInfo."""

    def __init__(self, message: str, info: Any = None) -> None:
        super().__init__(message)
        self.info = info


class InvalidJobState(StreamqError):
    """The job's state does not allow the operation (e.g. rescheduling a finished job)."""


class RecordChanged(InvalidJobState):
    """The job's record changed between reading it and acting on it: try again."""


SCRIPT_CODES: Final[dict[str, type[StreamqError]]] = {
    "missing": JobNotFound,
    "unchanged": InvalidJobState,
    "changed": RecordChanged,
}
"""The one table of the scripts' refusals (see each ``lua/*.lua`` header): what a script
answers instead of doing its work → the exception ``streamq.scripts`` raises for it.

    missing     no record for the job id (cancel_job 'missing', reschedule_job false)
    unchanged   the job's state does not allow it (cancel_job 'unchanged', reschedule_job a
                state other than scheduled or retrying, revive_job { state })
    changed     reschedule_job: the envelope read is no longer the record's
"""


def script_error(code: str, message: str) -> StreamqError:
    """The exception for a script's refusal ``code`` (a key of SCRIPT_CODES)."""
    return SCRIPT_CODES[code](message)


class JobSignal(Exception):
    """Base of the exceptions a handler raises to choose its job's outcome."""


class Retry(JobSignal):
    """Run the job again, after ``after`` seconds or, when None, after the stream's backoff."""

    def __init__(self, after: float | None = None, reason: str = "retry requested") -> None:
        super().__init__(reason)
        self.after = after
        self.reason = reason


class Fail(JobSignal):
    """Give up on the job now: it goes to the dead-letter stream with ``reason``.

    With ``pause_account=True`` (say, the account's token was revoked) the job's account is
    paused instead: this job and every other of the account wait, without using attempts,
    until ``streamq account resume``. A job without an account is dead-lettered as usual.
    """

    def __init__(self, reason: str, *, pause_account: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.pause_account = pause_account


class RateLimited(JobSignal):
    """The platform asked to slow down: run the job again after ``retry_after`` seconds,
    without counting an attempt.

    Every worker also holds back the scope the platform throttled until then: the job's
    account (the default, for a job that has one), or with ``scope="platform"`` every job of
    the stream. A job without an account and no scope given holds back only itself.
    """

    def __init__(
        self,
        retry_after: float,
        reason: str = "rate limited",
        *,
        scope: Literal["account", "platform"] | None = None,
    ) -> None:
        super().__init__(reason)
        self.retry_after = max(0.0, float(retry_after))
        self.reason = reason
        self.scope = scope


_KINDS = {
    "str": "text",
    "int": "a whole number",
    "float": "a number",
    "bool": "true or false",
    "object": "an object",
    "array": "a list",
    "null": "null",
}
_PLAIN: tuple[tuple[str, Callable[[re.Match[str]], str]], ...] = (
    (r"Expected `str` of length >= 1", lambda m: "must not be empty"),
    (
        r"Expected `(\w+)` of length >= (\d+)",
        lambda m: f"needs at least {m[2]} {'characters' if m[1] == 'str' else 'items'}",
    ),
    (
        r"Expected `(\w+)` of length <= (\d+)",
        lambda m: f"allows at most {m[2]} {'characters' if m[1] == 'str' else 'items'}",
    ),
    (r"Expected `str` matching regex '(.*)'", lambda m: f"does not match {m[1]}"),
    (
        r"Expected `([\w |]+)`, got `(\w+)`",
        lambda m: f"must be {_KINDS.get(m[1], m[1])}, not {_KINDS.get(m[2], m[2])}",
    ),
    (r"Object missing required field `(.+)`", lambda m: f"missing field {m[1]!r}"),
    (r"Object contains unknown field `(.+)`", lambda m: f"unknown field {m[1]!r}"),
    (r"Invalid enum value (.+)", lambda m: f"{m[1]} is not one of the values allowed"),
)


def readable(message: str) -> str:
    """msgspec's validation message for a person: ``title: must not be empty`` rather than
    ``Expected `str` of length >= 1 - at `$.title```."""
    text, _, path = message.partition(" - at `$")
    path = path.rstrip("`").lstrip(".")
    for pattern, say in _PLAIN:
        found = re.fullmatch(pattern, text)
        if found is not None:
            text = say(found)
            break
    else:
        text = text.replace("`", "'")
    return f"{path}: {text}" if path else text


class NotPublished(JobSignal):
    """Raised by a handler on a verify run (``job.verify_only``): it looked, and no earlier
    send of the job landed. The job ends dead with the reason it had before the lookup."""

    def __init__(self, reason: str = "no post found") -> None:
        super().__init__(reason)
        self.reason = reason

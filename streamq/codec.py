"""The wire format: the only module that knows how a job is laid out in a stream entry, and
how the rows the scripts take are laid out.

A stream entry written by streamq has exactly one field, ``j``, whose value is a JSON object
(the :class:`Envelope`). One field keeps XADD and XREADGROUP replies small and lets the worker
tell a foreign entry (any other shape) from one of ours without guessing.

The scripts take their batches as one msgpack argument: an array of rows, each a msgpack array
(positions are the scripts' contract, see each ``lua/*.lua`` header). Here those rows are
msgspec Structs with ``array_like=True``, read and built by name everywhere else and exactly as
compact on the wire as a tuple:

    Outcome (finish_jobs)   Done | Retried | Deferred | Parked | Dead | Expired | Cancelled,
                            tagged by a one-letter code in position 1
    EnqueueRow              enqueue_jobs' jobs (AccountEnqueueRow when the job has an account)
    AdmitRow                admit_jobs' jobs (ReclaimedAdmitRow carries the envelope to keep)
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
from collections.abc import Sequence
from typing import Annotated, Any, Final

import msgspec
import orjson

from streamq.config import Backoff
from streamq.errors import ConfigError, PayloadError
from streamq.keys import MAX_ACCOUNT_LENGTH, MAX_KEY_LENGTH

ENTRY_FIELD: Final = b"j"
FORMAT_VERSION: Final = 1

# Bounds an entry written by hand must keep to: a number the scripts cannot carry exactly
# (msgpack stops at 64 bits, Lua's numbers at 2**53) would fail later, in the middle of
# acknowledging a whole batch, instead of here, where the one entry is dead-lettered.
_LARGEST: Final = 2**53
Count = Annotated[int, msgspec.Meta(ge=1, le=_LARGEST)]
Millis = Annotated[int, msgspec.Meta(ge=0, le=_LARGEST)]
JobId = Annotated[str, msgspec.Meta(min_length=1, max_length=1000)]
Key = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_KEY_LENGTH)]
Account = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ACCOUNT_LENGTH)]


class FlowRef(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=False):
    """What a step of a flow knows of its flow (``job.flow``, see streamq.flows)."""

    id: str = msgspec.field(name="i")
    """The flow's id."""
    step: str = msgspec.field(name="s")
    """This step's name in the flow."""
    results: dict[str, Any] = msgspec.field(default_factory=dict, name="r")
    """The results of the steps this one ran after (every step's, for on_complete), by name;
    a step that failed (policy continue or ignore) or was cancelled has None."""
    errors: dict[str, str] = msgspec.field(default_factory=dict, name="e")
    """The errors of those steps that did not succeed, by name."""


def outbox_member(job_id: str, flow: FlowRef) -> str:
    """A flow step's member of its stream's flow outbox: ``<job id> <flow id> <step>`` (none
    of the three holds a space)."""
    return f"{job_id} {flow.id} {flow.step}"


class Envelope(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=False, kw_only=True):
    """A job as stored in a stream entry.

    Field names are short because they are repeated in every entry; unknown fields are ignored so
    that an older worker can read entries written by a newer producer during a rolling upgrade.
    """

    id: JobId
    enqueued_at_ms: Millis = msgspec.field(name="t")
    """Written before the payload so that a scheduled job's record can drop it by prefix (it is
    the time in the job's id: lua/include/stored_envelope.lua). Readers take any order."""
    key: Key | None = msgspec.field(default=None, name="k")
    account: Account | None = msgspec.field(default=None, name="u")
    """The account that publishes the job: its rate limits and pause apply. The key and the
    account come before the payload for the same reason as ``t``: a scheduled job's record
    holds them as fields of its own, and its envelope without them (:func:`scheduled_form`)."""
    payload: Any
    attempt: Count = msgspec.field(default=1, name="a")
    version: Count = msgspec.field(default=FORMAT_VERSION, name="v")
    run_at_ms: Millis | None = msgspec.field(default=None, name="r")
    """When the job was due (scheduled jobs and retries); None means at enqueue."""
    expire_after_ms: Millis | None = msgspec.field(default=None, name="x")
    max_attempts: Count | None = msgspec.field(default=None, name="m")
    job_timeout_ms: Millis | None = msgspec.field(default=None, name="o")
    cron: str | None = msgspec.field(default=None, name="c")
    """Name of the recurring schedule this occurrence belongs to."""
    backoff: Backoff | None = msgspec.field(default=None, name="b")
    verify: str | None = msgspec.field(default=None, name="y")
    """Set on a verify delivery only: the reason the job would have been dead with, when an
    earlier run may have sent its post (see streamq.job). The handler only looks the post up."""
    lookups_failed: int = msgspec.field(default=0, name="yf")
    """On a verify delivery: how many verify runs before it had their lookup fail (a timeout, a
    5xx, a dropped answer); up to VERIFY_RUNS, a failed lookup is tried again, not taken for
    an answer (streamq.outcomes)."""
    flow: FlowRef | None = msgspec.field(default=None, name="fl")
    """Set on a step of a flow only (streamq.flows)."""
    first_run: bool = msgspec.field(default=False, name="f")
    """Set by the producer on a new job's entry (and kept while that envelope waits: scheduled,
    deferred or parked before it ever started): no run of the job can have left anything in its
    record (checkpoints, the "may have been sent" mark), so the worker skips reading the record
    (streamq.fetcher). Every envelope written after a delivery drops it (:func:`delivered`):
    retries, deferrals, parking, dead letters, verify runs, reclaims, replays, releases. Keep it
    the last field: release_jobs.lua drops it from the end of the JSON text."""


def delivered(envelope: Envelope) -> Envelope:
    """``envelope`` as any entry or record written after its job was delivered carries it:
    without ``first_run``, so the run after it reads what earlier runs left in the record."""
    if envelope.first_run:
        return msgspec.structs.replace(envelope, first_run=False)
    return envelope


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Envelope)


def encode(envelope: Envelope) -> bytes:
    try:
        return _encoder.encode(envelope)
    except (TypeError, ValueError, OverflowError) as exc:
        raise PayloadError(f"payload cannot be encoded as JSON: {exc}") from None


class _PayloadOnly(msgspec.Struct):
    payload: Any


_payload_decoder = msgspec.json.Decoder(_PayloadOnly)


def encode_new(envelope: Envelope) -> bytes:
    """``encode`` for a job being added: also refuses a payload that JSON would not give back
    as it is (bytes, tuples, sets, NaN, keys that are not strings, dates, objects), so a
    handler always sees exactly what was enqueued. Raises PayloadError."""
    encoded = encode(envelope)
    if _payload_decoder.decode(encoded).payload != envelope.payload:
        raise PayloadError(
            f"payload cannot be stored exactly as JSON: {_first_change(envelope.payload)}"
        )
    return encoded


def check_payload(payload: Any) -> None:
    """Raise PayloadError unless ``payload`` round-trips through JSON exactly."""
    encode_new(Envelope(id="-", payload=payload, enqueued_at_ms=0))


def _first_change(value: Any, path: str = "$") -> str:
    """Where JSON would change ``value``, for the error message."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{path} is {value!r} (JSON has no NaN or infinity)"
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{path} has a key of type {type(key).__name__} (JSON keys are strings)"
            found = _first_change(item, f"{path}.{key[:40]}")
            if found:
                return found
        return ""
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _first_change(item, f"{path}[{index}]")
            if found:
                return found
        return ""
    if value is None or isinstance(value, str | int | float):
        return ""
    hint = " (use a list)" if isinstance(value, tuple | set | frozenset) else ""
    return f"{path} is a {type(value).__name__}{hint}"


def decode(raw: bytes) -> Envelope:
    """Decode an entry's ``j`` value; raises msgspec errors if it is not ours."""
    try:
        return _decoder.decode(raw)
    except ConfigError as exc:  # a nested setting (the backoff) checks itself as it decodes
        raise msgspec.ValidationError(str(exc)) from None


_ID_FIELD: Final = b'{"id":"'
_SCHEDULED: Final = b"~"
_KEYED: Final = b"^"
_FIRST_RUN_END: Final = b',"f":true}'


_ID_TIME: Final = re.compile(r":([0-9a-fA-F]+)-[0-9a-fA-F]+\Z")
"""lua/include/stored_envelope.lua's id_ms_text pattern: the time an id spells (the part
after its last ':', as _created_ms reads it)."""


def _created_ms(job_id: str) -> int:
    """The creation time an id spells (``<stream>:<ms hex>-<counter+random hex>``)."""
    return int(job_id.rpartition(":")[2].partition("-")[0], 16)


def _json_text(value: str | bytes) -> bytes:
    """A key or an account as JSON text, escaped as lua/include/stored_envelope.lua's
    json_text does it: only '"' and '\\' (both are printable: streamq.keys.check_key). One
    holding anything the encoder escapes otherwise does not match a new envelope's text, so
    :func:`scheduled_form` leaves that envelope whole."""
    raw = value.encode() if isinstance(value, str) else value
    return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def _owner_fields(key: str | bytes | None, account: str | bytes | None) -> bytes:
    """What a new job's envelope holds between ``"t":<ms>,`` and ``"payload":``."""
    text = b""
    if key:
        text = b'"k":' + _json_text(key) + b","
    if account:
        text += b'"u":' + _json_text(account) + b","
    return text


def _head(job_id: str, enqueued_at_ms: int, owner: bytes = b"") -> bytes:
    """A new job's envelope text up to its payload: the id, the enqueue time, then ``owner``
    (:func:`_owner_fields`), as Envelope writes them; what the stored forms drop."""
    return b'{"id":"%s","t":%d,%s"payload":' % (job_id.encode(), enqueued_at_ms, owner)


def scheduled_form(encoded: bytes, envelope: Envelope) -> bytes:
    """A new job's encoded envelope as its record keeps it while it is scheduled: ``^`` and
    the text between ``"payload":`` and ``,"f":true}`` (lua/include/stored_envelope.lua, whose
    scheduled_envelope does the same for envelopes sent whole). The id, the enqueue time (the
    time the id spells), the key and the account (the record's own fields) and the first-run
    flag are rebuilt by :func:`entry_envelope`. An envelope of any other shape comes back as
    it is, for the script to store as before. The producer sends this form so that the server
    does no string work for it at enqueue."""
    owner = _owner_fields(envelope.key, envelope.account)
    head = _head(envelope.id, envelope.enqueued_at_ms, owner)
    if (
        envelope.first_run
        and encoded.startswith(head)
        and encoded.endswith(_FIRST_RUN_END)
        and _created_ms(envelope.id) == envelope.enqueued_at_ms
    ):
        return _KEYED + encoded[len(head) : -len(_FIRST_RUN_END)]
    return encoded


def entry_envelope(
    raw: bytes, job_id: str, key: bytes | str | None = None, account: bytes | str | None = None
) -> bytes:
    """A record's ``env`` as an entry carries it (lua/include/stored_envelope.lua has the same
    function for the scripts). Four forms: a new scheduled job's record keeps ``^`` and the
    envelope between ``"payload":`` and ``,"f":true}`` (its id and enqueue time are its key's
    id, its key and account the record's ``key`` and ``account``, which the caller passes, its
    first-run flag that of every job enqueued); the release before kept ``~`` and the same
    text with the key and account in it; a done job's record, and earlier versions' scheduled
    ones, the envelope without the id; other records the whole envelope."""
    if raw.startswith(_ID_FIELD):
        return raw
    if raw.startswith(_KEYED):
        owner = _owner_fields(key, account)
        return _head(job_id, _created_ms(job_id), owner) + raw[1:] + _FIRST_RUN_END
    if raw.startswith(_SCHEDULED):
        return _head(job_id, _created_ms(job_id)) + raw[1:] + _FIRST_RUN_END
    return _ID_FIELD + job_id.encode() + b'",' + raw[1:]


def stored_envelope(raw: bytes, job_id: str, enqueued_at_ms: int) -> bytes:
    """An entry's envelope ``raw`` as a done job's record keeps it (the worker sends it with
    the outcome, so finish_jobs reads no entry), in a form :func:`entry_envelope` gives back
    exactly: ``~`` and the payload for a job on its first entry (``enqueued_at_ms`` its
    envelope's, the time its id spells), else the envelope without the id its record's key
    names; ``raw`` itself when it does not start with that id. On every done job's path: a few
    byte comparisons, no parse."""
    id_head = _ID_FIELD + job_id.encode() + b'",'
    if not raw.startswith(id_head):
        return raw
    if raw.endswith(_FIRST_RUN_END):
        head = _head(job_id, enqueued_at_ms)
        # The id must spell the time, in a shape the scripts' entry_envelope reads too.
        spelled = _ID_TIME.search(job_id)
        if spelled and int(spelled[1], 16) == enqueued_at_ms and raw.startswith(head):
            return _SCHEDULED + raw[len(head) : -len(_FIRST_RUN_END)]
    return b"{" + raw[len(id_head) :]


def record_envelope(
    raw: bytes, job_id: str, key: bytes | str | None = None, account: bytes | str | None = None
) -> Envelope:
    """Decode a record's ``env`` (any form, see :func:`entry_envelope`; ``key`` and ``account``
    are the record's fields of those names); raises msgspec errors if it is not ours."""
    return decode(entry_envelope(raw, job_id, key, account))


class UnknownEntry(ValueError):
    """A stream entry streamq did not write, or cannot read."""


def decode_fields(fields: list[bytes] | dict[bytes, bytes]) -> Envelope:
    """Decode a raw entry (a flat field/value list or a dict); raises UnknownEntry."""
    return decode_entry(fields)[0]


def decode_entry(fields: list[bytes] | dict[bytes, bytes]) -> tuple[Envelope, bytes]:
    """:func:`decode_fields`, with the envelope's text as the entry holds it."""
    if isinstance(fields, dict):
        if len(fields) != 1 or ENTRY_FIELD not in fields:
            raise UnknownEntry(f"foreign entry with fields {_field_names(list(fields))}")
        raw = fields[ENTRY_FIELD]
    else:
        if len(fields) != 2 or fields[0] != ENTRY_FIELD:
            raise UnknownEntry(f"foreign entry with fields {_field_names(fields[::2])}")
        raw = fields[1]
    try:
        envelope = decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UnknownEntry(f"undecodable entry: {exc}") from None
    if envelope.version > FORMAT_VERSION:
        raise UnknownEntry(f"entry format v{envelope.version} is newer than this worker's")
    return envelope, raw


def _field_names(names: list[bytes]) -> str:
    shown = [n[:40].decode("utf-8", "backslashreplace") or "''" for n in names[:5]]
    return "[" + ", ".join(shown) + (", ..." if len(names) > 5 else "") + "]"


def parse_json(text: str | bytes, what: str = "payload") -> Any:
    """Parse user-supplied JSON, raising PayloadError with a one-line reason."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"{what} is not valid JSON: {exc}") from None


_checkpoints_decoder = msgspec.json.Decoder(dict[str, str])


def checkpoints(raw: bytes | str) -> dict[str, str]:
    """A record's ``checkpoints`` field (a JSON object, name -> value); '' is none."""
    return _checkpoints_decoder.decode(raw) if raw else {}


def text(value: bytes | str) -> str:
    """A reply value as str (replies are bytes: connections do not decode)."""
    return value.decode() if isinstance(value, bytes) else value


# -- rows the scripts take ------------------------------------------------------------------------


class Outcome(msgspec.Struct, array_like=True, gc=False):
    """What happened to one delivered job: a row of finish_jobs' outcomes.

    Every outcome but :class:`Done` ends with the entry's lane (1-3) and id, so the script can
    drop an outcome whose entry is no longer this worker's."""

    id: str
    key: str
    """The dedup key, '' for none."""
    attempt: int
    started_ms: int
    """When the handler started (server clock), 0 when it did not run."""

    @property
    def name(self) -> str:
        """The outcome's name in counts, metrics and hooks: done, retried, deferred, parked,
        dead, expired or cancelled."""
        return OUTCOME_NAMES[type(self)]


class Done(Outcome, tag="d"):
    result: str
    """The handler's return value as JSON, '' for None."""
    envelope: str = ""
    """The entry's envelope as the done record keeps it (:func:`stored_envelope`); '' and
    finish_jobs reads it from the entry."""


class _Later(Outcome):
    """An outcome that runs the job again after ``delay_ms``."""

    envelope: str
    """The envelope of the next run, as JSON."""
    delay_ms: int
    reason: str


class Retried(_Later, tag="r"):
    """Run again after the delay; ``attempt`` is the next attempt's number, ``reason`` the
    error."""

    trace: str
    """The traceback's last frames, for the job's attempts history ('' for none)."""
    lane: int
    entry: str


class Deferred(_Later, tag="l"):
    """Run again after the delay without using an attempt (rate limited, platform pause)."""

    hold: str
    """'' or the pause field to hold until then ('platform', 'a:<account>')."""
    lane: int
    entry: str


class _Ended(Outcome):
    """An outcome that takes the job off the lanes for good, or until its account resumes."""

    envelope: str


class Parked(_Ended, tag="p"):
    """The job's account is paused until resumed; the job waits for it, attempt unchanged."""

    reason: str
    account: str
    enqueued_ms: int
    lane: int
    entry: str


class Dead(_Ended, tag="x"):
    reason: str
    trace: str
    """The traceback's last frames, for the job's attempts history ('' for none)."""
    lane: int
    entry: str


class _Dropped(_Ended):
    """Not run, and never will be: Expired (it came due too long ago) or Cancelled."""

    lane: int
    entry: str


class Expired(_Dropped, tag="e"):
    pass


class Cancelled(_Dropped, tag="c"):
    pass


OUTCOME_NAMES: Final[dict[type[Outcome], str]] = {
    Done: "done",
    Retried: "retried",
    Deferred: "deferred",
    Parked: "parked",
    Dead: "dead",
    Expired: "expired",
    Cancelled: "cancelled",
}


class EnqueueRow(msgspec.Struct, array_like=True, gc=False):
    """One job of enqueue_jobs' batch."""

    id: str
    key: str
    """The dedup key, '' for none."""
    envelope: str
    due_ms: int
    """0 = now."""


class AccountEnqueueRow(EnqueueRow):
    """An enqueue row of a job that has an account (a separate shape, so rows without one
    carry no empty trailing field)."""

    account: str


class AdmitRow(msgspec.Struct, array_like=True, gc=False):
    """One job of admit_jobs' batch."""

    lane: int
    """1-3."""
    entry: str
    id: str
    account: str
    """'' for none."""
    enqueued_ms: int


class ReclaimedAdmitRow(AdmitRow):
    """A reclaimed job's admit row: its envelope counts the crashed runs in its attempt, so a
    deferral keeps that envelope instead of the entry's."""

    envelope: str


_msgpack_encode = msgspec.msgpack.Encoder().encode


def pack_rows(rows: Sequence[Outcome | EnqueueRow | AdmitRow]) -> bytes:
    """A batch of rows as the scripts take it: one msgpack array."""
    return _msgpack_encode(rows)


def pack_job_ids(job_ids: Sequence[str]) -> bytes:
    """Job ids as one msgpack array argument (start_jobs)."""
    return _msgpack_encode(job_ids)


def pack_due_check(job_id: str, due_ms: int, entry: bytes, lane: str) -> bytes:
    """One job's row of check_due.lua's argument, packed on its own (msgpack): a worker packs
    it as it holds the job, before the due time, and joins the rows then (join_due_checks)."""
    return _msgpack_encode((job_id, due_ms, entry.decode(), lane))


def join_due_checks(rows: Sequence[bytes]) -> bytes:
    """Rows packed by pack_due_check, as check_due.lua takes them: one msgpack array (its
    header, then the rows as they are: nothing is packed again)."""
    count = len(rows)
    if count < 16:
        header = bytes((0x90 | count,))
    elif count <= 0xFFFF:
        header = b"\xdc" + count.to_bytes(2, "big")
    else:
        header = b"\xdd" + count.to_bytes(4, "big")
    return header + b"".join(rows)


def envelope_text(envelope: Envelope) -> str:
    """An envelope as a row carries it: str, because the server's cmsgpack reads msgpack str
    values but not bin."""
    return encode(envelope).decode()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# The tie-breaking counter of new_job_id: ids made in one millisecond by this process.
_id_lock = threading.Lock()
_id_ms = -1
_id_count = 0


def new_job_id(stream: str, at_ms: int | None = None) -> str:
    """A job id that names its stream and sorts by creation:
    ``<stream>:<ms hex 11>-<counter hex 6><random hex 12>``.

    Wherever jobs wait in a sorted set (scheduled, retrying, parked, held), equal scores fall
    back to the member, the id: the counter, which counts the ids this process made in the same
    millisecond, makes that fallback the order they were made in (a bulk enqueue's list order)
    rather than the random part's. The random part keeps ids of different processes apart; it
    orders only ids of different processes made in the same millisecond. Ids written by earlier
    versions (``<ms hex 11>-<random hex 12>``) are read as they are.
    """
    global _id_ms, _id_count
    ms = now_ms() if at_ms is None else at_ms
    with _id_lock:
        if ms > _id_ms:
            _id_ms, _id_count = ms, 0
        else:
            _id_count += 1
        count = _id_count
    return f"{stream}:{ms:011x}-{count:06x}{os.urandom(6).hex()}"

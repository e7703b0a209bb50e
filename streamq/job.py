"""The job a handler receives, and what it keeps across runs for publishing once.

A job may run more than once: a retry after an error or a timeout, a redelivery after its
worker died, ``streamq dead replay`` or ``streamq job retry``. Any of those runs must not post
a second time what an earlier one may already have posted. The job's record (not its stream
entry, which a retry or a replay replaces) keeps what a run needs to know:

``await job.may_send()``
    Call it before any request that can create something. It sets the record's "may have been
    sent" mark (server time, ms); the first time is kept. From then on, every later run of the
    job (retry, redelivery, replay, retry by id) gets ``job.sent_since_ms``, and looks before it
    sends; and the engine never records the job dead while the mark is set without a lookup
    first (``job.verify_only`` below).
``await job.sent_nothing()``
    Clears the mark. Call it only when you know no post of this job exists: this run's request
    was refused outright (a 4xx that creates nothing) and any earlier send was looked up and not
    found. Otherwise leave it set: nothing else clears it, not even a verify run that raises
    NotPublished (a replay then looks once more, which costs a lookup and closes the windows a
    lookup has), nor done (nothing runs a done job again).
``job.sent_since_ms``
    When an earlier run (or delivery) first marked "may have been sent", read from the record
    as the job was delivered; None when no earlier run may have sent anything. It stays as read
    for the whole run (``may_send`` in this run does not change it). This, not ``job.attempt >
    1``, tells a publisher to look first: a replay resets the attempts, not the mark.
``await job.checkpoint(name, value)`` / ``job.checkpoints``
    Saves one step's result (a container id, an upload session URI, a publish id) in the
    record, atomically, before the next step; ``job.checkpoints`` holds those of earlier runs
    (read as the job was delivered) plus this run's. They survive retries, redeliveries, replays and
    ``job retry``, so a later run resumes from the step instead of starting over. Names are 1-100
    printable characters, values strings of at most 64 KiB.
``job.verify_only``
    True when the engine delivers the job only to ask "did an earlier send land?": its mark is
    set and it would otherwise end dead (its last attempt failed, it raised Fail, or its
    delivery budget ran out after crashes). The handler must not send; it looks the post up
    and returns its result when found (the job ends done, a dict result gets ``"recovered":
    true``), or raises :class:`streamq.errors.NotPublished` when not (the job ends dead with
    its earlier reason). :class:`streamq.errors.Fail` (the lookup answered that it cannot
    tell) ends it dead with that reason plus "a post may exist: its lookup failed (...)"; any
    other exception (the lookup got no answer: a timeout, a 5xx) is looked up again after the
    backoff, and ends it dead so only after VERIFY_RUNS lookups; a verify run whose worker dies
    (VERIFY_RUNS times, see streamq.outcomes) ends it dead with "a post may exist: its lookup
    did not finish". The mark
    stays set either way, so ``dead replay`` and ``job retry`` look before they send.

Storage (the record ``streamq:{S}:job:<id>``): ``checkpoints`` (a JSON object, name -> value,
written by ``lua/save_checkpoint.lua``), ``sent_since`` (ms, ``lua/mark_sent.lua``), both read
by the worker as it takes the job (one pipelined read per batch fetched), except on a new job's
first entry, which no earlier run can have written to (``codec.Envelope.first_run``); and
``runs`` with ``run_entry`` (the handler starts of the current entry, counted by
``lua/start_jobs.lua`` as each run starts: streamq.starts), which the delivery budget counts
instead of deliveries.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Final

import msgspec

from streamq import scripts
from streamq.codec import Envelope, FlowRef

MAX_CHECKPOINT_NAME: Final = 100
MAX_CHECKPOINT_VALUE: Final = 65536


class Job(msgspec.Struct):
    """One delivery of a job, as handed to ``async def handler(job: Job) -> result``."""

    stream: str
    priority: str
    envelope: Envelope
    """The job as stored in its stream entry."""
    _lane: int
    _entry: bytes
    _admitted_ms: int = 0
    """When rate limits logged this job's start (0: none did)."""
    cancelled: bool = False
    """Set while the handler runs when someone cancels the job: stop early if you can; the job
    will not be retried."""
    _redis: Any = None
    """The client checkpoints and the send mark are written through (the worker's)."""
    _checkpoints: dict[str, str] = msgspec.field(default_factory=dict)
    _sent_since_ms: int | None = None
    """The mark as read when this run started (earlier runs')."""
    _mark_ms: int | None = None
    """The mark as this run knows it now (earlier runs', or this run's may_send)."""
    _raw: bytes = b""
    """The entry's envelope as read (its ``j`` value): a done job's record keeps it
    (codec.stored_envelope), sent with the outcome instead of read back from the entry."""
    _start_queued: bool = False
    """Its run's start is queued in streamq.starts, not yet sent."""
    _start_folded: bool = False
    """Its outcome came while its start was queued, and took it: the start goes with the
    outcome's finish_jobs call instead (streamq.acks)."""

    @property
    def id(self) -> str:
        """Stable id, ``<stream>:<token>``; the same on every delivery and retry."""
        return self.envelope.id

    @property
    def payload(self) -> Any:
        """The decoded JSON value given at enqueue."""
        return self.envelope.payload

    @property
    def attempt(self) -> int:
        """1 on the first run; rate-limit deferrals do not count."""
        return self.envelope.attempt

    @property
    def key(self) -> str | None:
        return self.envelope.key

    @property
    def account(self) -> str | None:
        return self.envelope.account

    @property
    def enqueued_at(self) -> datetime:
        return datetime.fromtimestamp(self.envelope.enqueued_at_ms / 1000, tz=UTC)

    @property
    def run_at(self) -> datetime | None:
        """When the job was due, for scheduled jobs and retries."""
        due = self.envelope.run_at_ms
        return None if due is None else datetime.fromtimestamp(due / 1000, tz=UTC)

    @property
    def flow(self) -> FlowRef | None:
        """For a step of a flow (streamq.flows): ``.id`` (the flow's), ``.step`` (this step's
        name), ``.results`` and ``.errors`` of the steps it ran after, by name; else None."""
        return self.envelope.flow

    @property
    def entry_id(self) -> str:
        """The Redis stream entry id this delivery came from."""
        return self._entry.decode()

    # -- publishing once (see the module's docstring) --------------------------------------------

    @property
    def checkpoints(self) -> Mapping[str, str]:
        """Checkpoints saved by earlier runs of this job, and by this one."""
        return MappingProxyType(self._checkpoints)

    @property
    def sent_since_ms(self) -> int | None:
        """When an earlier run first marked "may have been sent" (server ms); None if none."""
        return self._sent_since_ms

    @property
    def verify_only(self) -> bool:
        """Only look up whether an earlier send landed; do not send."""
        return self.envelope.verify is not None

    @property
    def may_have_sent(self) -> bool:
        """Whether the record's mark is set, as this run knows it (the engine's question)."""
        return self._mark_ms is not None

    async def checkpoint(self, name: str, value: str) -> None:
        """Save ``value`` under ``name`` in the job's record, atomically; raises ValueError for
        a bad name or value, JobNotFound when the record is gone."""
        if not name or len(name) > MAX_CHECKPOINT_NAME or not name.isprintable():
            raise ValueError(
                f"invalid checkpoint name {name[:40]!r}: use 1-{MAX_CHECKPOINT_NAME} "
                "printable characters"
            )
        if not isinstance(value, str) or len(value) > MAX_CHECKPOINT_VALUE:
            raise ValueError(
                f"checkpoint {name!r}: the value must be a string of at most "
                f"{MAX_CHECKPOINT_VALUE} characters"
            )
        self._checkpoints = await scripts.save_checkpoint(self._client(), self.id, name, value)

    async def may_send(self) -> None:
        """Mark the job "may have been sent" (keeps the first time); call it before any
        request that can create something."""
        self._mark_ms = await scripts.mark_sent(self._client(), self.id, sent=True)

    async def sent_nothing(self) -> None:
        """Clear the mark: no post of this job exists (see the module's docstring)."""
        self._mark_ms = await scripts.mark_sent(self._client(), self.id, sent=False)

    def _client(self) -> Any:
        if self._redis is None:
            raise RuntimeError(f"job {self.id} was not delivered by a worker: nothing to save to")
        return self._redis

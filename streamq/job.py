"""The job a handler receives."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from streamq.codec import Envelope


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
    def entry_id(self) -> str:
        """The Redis stream entry id this delivery came from."""
        return self._entry.decode()

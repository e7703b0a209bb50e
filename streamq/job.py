"""The job a handler receives."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec


class Job(msgspec.Struct):
    """One job as handed to a handler: ``async def handler(job: Job) -> result``."""

    id: str
    """Stable id, ``<stream>:<token>``; the same on every delivery and retry."""
    stream: str
    payload: Any
    """The decoded JSON value given at enqueue."""
    attempt: int
    """1 on the first delivery."""
    enqueued_at_ms: int
    key: str | None
    priority: str
    _lane: int
    _entry: bytes
    """The stream entry this delivery came from, as the worker acknowledges it."""

    @property
    def enqueued_at(self) -> datetime:
        return datetime.fromtimestamp(self.enqueued_at_ms / 1000, tz=UTC)

    @property
    def entry_id(self) -> str:
        """The Redis stream entry id this delivery came from."""
        return self._entry.decode()

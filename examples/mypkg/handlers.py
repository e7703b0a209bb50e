"""A handler as the docs sketch it: ``publish`` takes a ``streamq.Job`` and returns what the job
keeps as its result. It publishes nowhere (``create_post`` stands in for your platform's
client and prints the post), so the docs' ``streamq consume --handler mypkg.handlers:publish``
examples run as written."""

from __future__ import annotations

import hashlib
from typing import Any

import streamq


class TokenRevoked(Exception):
    """What your platform client raises when the user took the app's access away."""


class TooManyRequests(Exception):
    """What your platform client raises on a 429, with the platform's Retry-After."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"429: retry after {seconds}s")
        self.seconds = seconds


async def create_post(job: streamq.Job) -> str:
    """Stands in for your platform client: prints the post, answers a post id."""
    print(f"{job.stream}: {job.payload}", flush=True)
    return hashlib.sha256(job.id.encode()).hexdigest()[:12]


async def publish(job: streamq.Job) -> dict[str, Any]:
    # job.id, job.stream, job.payload (decoded JSON), job.attempt (1 on the first run),
    # job.enqueued_at, job.run_at (aware datetimes), job.key, job.priority, job.cancelled
    try:
        post_id = await create_post(job)
    except TokenRevoked as exc:
        raise streamq.Fail(f"token revoked: {exc}", pause_account=True) from exc  # wait, paused
    except TooManyRequests as exc:
        raise streamq.RateLimited(retry_after=exc.seconds) from exc  # later; no attempt used
    return {"post_id": post_id}  # any other exception: retried with backoff


async def refuse(job: streamq.Job) -> None:
    """A job the platform will never take: dead at once, without retries (the docs' dead
    letters)."""
    raise streamq.Fail("the platform refused the post: example")

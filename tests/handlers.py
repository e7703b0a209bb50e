"""Handlers that worker subprocesses in the tests load with --handler tests.handlers:NAME.

They record what they ran in Redis (``STREAMQ_TEST_RECORD_URL``, key prefix from the payload or
``STREAMQ_TEST_RECORD``) so a test can count runs per job across processes and crashes.
"""

from __future__ import annotations

import os
from typing import Any

import anyio
from redis.asyncio import Redis

from streamq.job import Job

_client: Redis | None = None


def _redis() -> Redis:
    global _client
    if _client is None:
        _client = Redis.from_url(os.environ["STREAMQ_TEST_RECORD_URL"])
    return _client


async def record(job: Job) -> str:
    """Count a run of the job, note which process ran it, then take a little time.

    A payload {"fail_first": true} raises on the first attempt (the job is retried).
    """
    prefix = os.environ.get("STREAMQ_TEST_RECORD", "rec")
    async with _redis().pipeline(transaction=False) as pipe:
        pipe.hincrby(f"{prefix}:runs", job.id, 1)
        pipe.sadd(f"{prefix}:by:{os.getpid()}", job.id)
        await pipe.execute()
    await anyio.sleep(float(os.environ.get("STREAMQ_TEST_JOB_SECONDS", "0.002")))
    if isinstance(job.payload, dict) and job.payload.get("fail_first") and job.attempt == 1:
        raise RuntimeError("first attempt fails")
    await _redis().hincrby(f"{prefix}:succeeded", job.id, 1)
    return job.id


async def noop(job: Job) -> None:
    return None


def not_async(job: Job) -> None:
    return None


NOT_CALLABLE: Any = 42

"""Handlers that worker subprocesses in the tests load with --handler tests.handlers:NAME.

They record what they ran in Redis (``STREAMQ_TEST_RECORD_URL``, key prefix from the payload or
``STREAMQ_TEST_RECORD``) so a test can count runs per job across processes and crashes.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import anyio
from redis.asyncio import Redis

from streamq import channel, connection
from streamq.errors import Fail, RateLimited, Retry
from streamq.job import Job

_client: Redis | None = None
_connecting = anyio.Lock()


async def _redis() -> Redis:
    """The recording client, connected once before handlers share it: a cluster client used
    by several tasks before its first reply can send a command twice (redis-py)."""
    global _client
    async with _connecting:
        if _client is None:
            url = os.environ["STREAMQ_TEST_RECORD_URL"]
            client = connection.client(url)
            await connection.check(client, url)
            _client = client
    return _client


async def record(job: Job) -> str:
    """Count a run of the job, note which process ran it, then take a little time.

    A payload {"fail_first": true} raises on the first attempt (the job is retried), and so does
    every run in a process started with ``STREAMQ_TEST_RAISE=1``.
    """
    prefix = os.environ.get("STREAMQ_TEST_RECORD", "rec")
    async with (await _redis()).pipeline(transaction=False) as pipe:
        pipe.hincrby(f"{prefix}:runs", job.id, 1)
        pipe.sadd(f"{prefix}:by:{os.getpid()}", job.id)
        await pipe.execute()
    await anyio.sleep(float(os.environ.get("STREAMQ_TEST_JOB_SECONDS", "0.002")))
    if isinstance(job.payload, dict) and job.payload.get("fail_first") and job.attempt == 1:
        raise RuntimeError("first attempt fails")
    if os.environ.get("STREAMQ_TEST_RAISE") == "1":
        raise RuntimeError("this process's runs fail")
    await (await _redis()).hincrby(f"{prefix}:succeeded", job.id, 1)
    return job.id


async def server_stamp(job: Job) -> None:
    """Note, by the server's clock, when the job started and when it was due.

    A payload {"fail_first": true} asks for a retry 2 s later on the first attempt.
    """
    prefix = os.environ.get("STREAMQ_TEST_RECORD", "rec")
    started = await channel.server_ms(await _redis())
    due = job.run_at.timestamp() * 1000 if job.run_at is not None else None
    line = json.dumps({"id": job.id, "a": job.attempt, "start": started, "due": due})
    await (await _redis()).rpush(f"{prefix}:starts", line)
    await (await _redis()).sadd(f"{prefix}:by:{os.getpid()}", job.id)
    if isinstance(job.payload, dict) and job.payload.get("fail_first") and job.attempt == 1:
        raise Retry(after=2, reason="first attempt retries in 2 s")
    await (await _redis()).hincrby(f"{prefix}:succeeded", job.id, 1)


async def noop(job: Job) -> None:
    return None


def not_async(job: Job) -> None:
    return None


NOT_CALLABLE: Any = 42


async def stamp(job: Job) -> None:
    """Note when the job started (this process's clock) and for which account.

    A payload {"throttle": seconds} raises RateLimited for that long on the first attempt;
    {"revoked": true} fails and pauses the account (until resumed, then it succeeds).
    """
    prefix = os.environ.get("STREAMQ_TEST_RECORD", "rec")
    started = time.time()
    payload = job.payload if isinstance(job.payload, dict) else {}
    redis = await _redis()
    if payload.get("throttle") and not await redis.hexists(f"{prefix}:throttled", job.id):
        await redis.hset(f"{prefix}:throttled", job.id, started)
        raise RateLimited(payload["throttle"], scope=payload.get("scope"))
    if payload.get("revoked") and not await redis.hexists(f"{prefix}:revoked", job.id):
        await redis.hset(f"{prefix}:revoked", job.id, started)
        raise Fail("token revoked", pause_account=True)
    # The limiter's own start time (the server's clock at admission; 0 on a stream without
    # limits): exact, where `t` also carries this process's scheduling delay after admission.
    admitted = job._admitted_ms / 1000
    line = json.dumps(
        {"id": job.id, "account": job.account, "t": started, "a": job.attempt, "admitted": admitted}
    )
    await redis.rpush(f"{prefix}:starts", line)


async def outcome(job: Job) -> str:
    """Ends as the payload says, so a test can build a workload with known outcomes.

    {"then": "retry"} raises every time (retried until max_attempts, then dead); "fail" raises
    Fail (dead at once); "wait_cancel" runs until someone cancels the job, then raises (so it
    ends as cancelled). Anything else succeeds.
    """
    then = job.payload.get("then") if isinstance(job.payload, dict) else None
    if then == "retry":
        raise Retry(after=0.01, reason="asked to retry")
    if then == "fail":
        raise Fail("asked to fail")
    if then == "wait_cancel":
        with anyio.fail_after(30):
            while not job.cancelled:  # noqa: ASYNC110 - a flag the worker sets; no event
                await anyio.sleep(0.005)
        raise RuntimeError("stopped: cancelled")
    return "ok"


async def _count_run(job: Job) -> str:
    prefix = os.environ.get("STREAMQ_TEST_RECORD", "rec")
    await (await _redis()).hincrby(f"{prefix}:runs", job.id, 1)
    return prefix


async def misbehave(job: Job) -> str:
    """Misbehaves as the payload says, else succeeds like ``record``.

    {"hang": true} awaits forever (only the job timeout ends it); {"block": seconds} blocks the
    event loop with time.sleep, then succeeds; {"crash": true} ends the process with
    os._exit(1) before anything is acknowledged.
    """
    prefix = await _count_run(job)
    payload = job.payload if isinstance(job.payload, dict) else {}
    if payload.get("hang"):
        await anyio.Event().wait()
    if payload.get("block"):
        time.sleep(payload["block"])  # noqa: ASYNC251 - blocking the loop is the point
    if payload.get("crash"):
        os._exit(1)
    await (await _redis()).hincrby(f"{prefix}:succeeded", job.id, 1)
    return job.id

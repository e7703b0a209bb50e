"""Putting jobs on a stream: one at a time or in bulk, with dedup keys and priority lanes.

Jobs go in through the ``enqueue_jobs`` script in slices of up to ``SLICE`` jobs, and the slices of
one call are pipelined, so a bulk import costs one round trip per ``PIPELINE_SLICES`` slices and
no per-job Redis work beyond the XADD itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final, get_args

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from streamq import codec, scripts
from streamq import keys as keyspace
from streamq.errors import ConfigError
from streamq.keys import Priority

SLICE: Final = 500
PIPELINE_SLICES: Final = 16


def check_priority(priority: str) -> Priority:
    if priority not in get_args(Priority):
        raise ConfigError(f"unknown priority {priority!r}: use high, normal or low")
    return priority  # type: ignore[return-value]


def check_stream(stream: str) -> str:
    try:
        return keyspace.check_stream_name(stream)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


class Producer:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._registered: set[str] = set()

    async def enqueue(
        self, stream: str, payload: Any, *, key: str | None = None, priority: str = "normal"
    ) -> str:
        [job_id] = await self.enqueue_many(stream, [payload], keys=[key], priority=priority)
        return job_id

    async def enqueue_many(
        self,
        stream: str,
        payloads: Iterable[Any],
        *,
        keys: Sequence[str | None] | None = None,
        priority: str = "normal",
    ) -> list[str]:
        """Enqueue every payload; returns one id per payload, in order.

        A payload whose key is held by a live job gets that job's id back and adds nothing.
        """
        stream = check_stream(stream)
        lane = check_priority(priority)
        payload_list = payloads if isinstance(payloads, list) else list(payloads)
        if keys is not None and len(keys) != len(payload_list):
            raise ConfigError("enqueue_many: keys must have one entry per payload")
        if not payload_list:
            return []
        await self._register(stream)
        ids, slices = _encode(stream, payload_list, keys)
        script_keys = [keyspace.lane(stream, lane), keyspace.dedup(stream)]
        for start in range(0, len(slices), PIPELINE_SLICES):
            replies = await self._run_slices(script_keys, slices[start : start + PIPELINE_SLICES])
            for offset, taken in enumerate(replies):
                base = (start + offset) * SLICE
                for i in range(0, len(taken), 2):
                    ids[base + int(taken[i]) - 1] = taken[i + 1].decode()
        return ids

    async def _run_slices(
        self, script_keys: list[str], slices: list[list[scripts.EncodableArg]]
    ) -> list[Any]:
        """Pipeline one EVALSHA per slice; a slice the server answers NOSCRIPT for (it had not
        seen the script, or lost it mid-pipeline) is sent again after loading, and only it."""
        replies: list[Any] = [None] * len(slices)
        todo = list(range(len(slices)))
        for _ in range(2):
            async with self._redis.pipeline(transaction=False) as pipe:
                for i in todo:
                    pipe.evalsha(scripts.enqueue_jobs.sha, 2, *script_keys, *slices[i])
                results = await pipe.execute(raise_on_error=False)
            missing = []
            for i, result in zip(todo, results, strict=True):
                if isinstance(result, NoScriptError):
                    missing.append(i)
                elif isinstance(result, Exception):
                    raise result
                else:
                    replies[i] = result
            if not missing:
                return replies
            await self._redis.script_load(scripts.enqueue_jobs.source)
            todo = missing
        raise NoScriptError("enqueue_jobs could not be loaded")

    async def _register(self, stream: str) -> None:
        if stream not in self._registered:
            await self._redis.sadd(keyspace.STREAM_REGISTRY, stream)
            self._registered.add(stream)


def _encode(
    stream: str, payloads: list[Any], job_keys: Sequence[str | None] | None
) -> tuple[list[str], list[list[scripts.EncodableArg]]]:
    """Job ids and the enqueue_jobs ARGV of each slice."""
    now = codec.now_ms()
    ids: list[str] = []
    slices: list[list[scripts.EncodableArg]] = []
    args: list[scripts.EncodableArg] = []
    for index, payload in enumerate(payloads):
        job_id = codec.new_job_id(stream, now)
        key = job_keys[index] if job_keys is not None else None
        ids.append(job_id)
        envelope = codec.Envelope(id=job_id, payload=payload, enqueued_at_ms=now, key=key)
        args += (job_id, key or "", codec.encode(envelope))
        if len(args) == SLICE * 3:
            slices.append([SLICE, *args])
            args = []
    if args:
        slices.append([len(args) // 3, *args])
    return ids, slices

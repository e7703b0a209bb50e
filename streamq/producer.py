"""Putting jobs on a stream: now or later, one at a time or in bulk, with dedup keys and lanes.

Jobs go in through the ``enqueue_jobs`` script in slices of up to ``SLICE`` jobs, and the slices of
one call are pipelined, so a bulk import costs one round trip per ``PIPELINE_SLICES`` slices and
no per-job Redis work beyond the XADD (or ZADD) and the job's record.

A call whose connection fails (cut, or silent past the socket timeout) is sent again, with the
same job ids, for up to the socket timeout: the script skips jobs whose record exists, so a
call the server carried out before its answer was lost adds nothing twice. Past that, the
call raises ConnectionFailed; a server at maxmemory raises ServerFull at once. Both say, in
one line, what may and may not be queued.
"""

from __future__ import annotations

import contextlib
import math
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, Final, Literal, TypedDict, TypeVar, get_args

import anyio
import anyio.lowlevel
import msgspec
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from streamq import channel, codec, limiter, metrics, scheduler, scripts
from streamq import keys as keyspace
from streamq.config import MAX_ATTEMPTS, Backoff, Config, parse_duration
from streamq.connection import TRANSIENT_ERRORS, retry_delay
from streamq.errors import ConfigError, ConnectionFailed, InvalidJobState, PayloadError, ServerFull
from streamq.keys import Priority

T = TypeVar("T")

OFFSET_REFRESH_SECONDS: Final = 60.0
SLICE: Final = 500
PIPELINE_SLICES: Final = 16

OnConflict = Literal["keep", "replace"]


class JobOptions(msgspec.Struct, frozen=True, kw_only=True):
    """What may be set per job at enqueue; None means the stream's configured default."""

    run_at: datetime | None = None
    delay: timedelta | float | str | None = None
    max_attempts: int | None = None
    expire_after: float | str | None = None
    job_timeout: float | str | None = None
    backoff: Backoff | None = None
    on_conflict: OnConflict = "keep"


class JobOptionArgs(TypedDict, total=False):
    """:class:`JobOptions` as keyword arguments: ``q.enqueue(stream, payload, delay="5m")``."""

    run_at: datetime | None
    delay: timedelta | float | str | None
    max_attempts: int | None
    expire_after: float | str | None
    job_timeout: float | str | None
    backoff: Backoff | None
    on_conflict: OnConflict


def check_priority(priority: str) -> Priority:
    if priority not in get_args(Priority):
        raise ConfigError(f"unknown priority {priority!r}: use high, normal or low")
    return priority  # type: ignore[return-value]


def check_stream(stream: str) -> str:
    try:
        return keyspace.check_stream_name(stream)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


@contextlib.asynccontextmanager
async def _one_error() -> AsyncIterator[None]:
    """A task group's lone error as itself, not wrapped in an exception group."""
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


def _check_key(key: str) -> str:
    try:
        return keyspace.check_key(key)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _ms(value: float | str | None, what: str) -> int | None:
    return None if value is None else round(parse_duration(value, what) * 1000)


class Producer:
    def __init__(self, redis: Redis, config: Config | None = None) -> None:
        self._redis = redis
        self._config = config or Config()
        self._registered: set[str] = set()
        self._clock = channel.ServerClock()
        self._clock_checked = -math.inf
        self._last_now_ms = 0
        self._next_partition = -1

    async def _sent_until_answered(
        self, stream: str, call: Callable[[], Awaitable[T]], *, sent: bool = True
    ) -> T:
        """``call``'s answer, sending it again while the connection fails, for up to the
        socket timeout. ``call`` must be safe to repeat (every enqueue is: see the module)."""
        deadline = time.monotonic() + self._config.socket_timeout
        failures = 0
        while True:
            try:
                return await call()
            except redis_errors.OutOfMemoryError:
                raise ServerFull(
                    f"Redis refused to queue jobs on {stream}: it is out of memory (maxmemory "
                    "reached, policy noeviction); this call's jobs from the refused one on are "
                    "not queued, nothing queued before is lost; raise maxmemory or free memory"
                ) from None
            except TRANSIENT_ERRORS as exc:  # after OutOfMemoryError, which is one of them
                failures += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    maybe = "may be partly queued" if sent else "are not queued"
                    raise ConnectionFailed(
                        f"enqueue on {stream} failed: no answer from Redis within "
                        f"{self._config.socket_timeout:g}s ({_first_line(exc)}); this call's "
                        f"jobs {maybe}: enqueue them again with dedup keys to add none twice"
                    ) from None
                await anyio.sleep(min(left, retry_delay(failures)))

    async def _server_now_ms(self) -> int:
        """Now by the server's clock, which delays and due times are relative to; the offset
        from this process's clock is re-read once a minute."""
        if time.monotonic() - self._clock_checked > OFFSET_REFRESH_SECONDS:
            await self._clock.sync(self._redis)
            self._clock_checked = time.monotonic()
        # Never backwards (a re-read offset may be a little smaller): job ids and parked and
        # held jobs sort by this time first, so a later call must not get an earlier one.
        self._last_now_ms = max(self._last_now_ms, self._clock.now_ms())
        return self._last_now_ms

    async def enqueue(
        self,
        stream: str,
        payload: Any,
        *,
        key: str | None = None,
        account: str | None = None,
        priority: str = "normal",
        options: JobOptions | None = None,
        cron: str | None = None,
    ) -> str:
        [job_id] = await self.enqueue_many(
            stream,
            [payload],
            keys=[key],
            accounts=None if account is None else [account],
            priority=priority,
            options=options,
            cron=cron,
        )
        return job_id

    async def enqueue_many(
        self,
        stream: str,
        payloads: Iterable[Any],
        *,
        keys: Sequence[str | None] | None = None,
        accounts: Sequence[str | None] | None = None,
        priority: str = "normal",
        options: JobOptions | None = None,
        cron: str | None = None,
    ) -> list[str]:
        """Enqueue every payload; returns one id per payload, in order.

        ``accounts`` names, per payload, the account that publishes it: its rate limits and
        pause apply (see streamq.limiter).

        A payload whose key is held by a live job gets that job's id back and adds nothing
        (or, with ``on_conflict="replace"``, replaces that job's payload and due time while it
        is still scheduled).
        """
        stream = check_stream(stream)
        lane = check_priority(priority)
        opts = options or JobOptions()
        if opts.on_conflict not in get_args(OnConflict):
            raise ConfigError(f"unknown on_conflict {opts.on_conflict!r}: use keep or replace")
        if opts.max_attempts is not None and not 1 <= opts.max_attempts <= MAX_ATTEMPTS:
            raise ConfigError(f"max_attempts must be from 1 to {MAX_ATTEMPTS}")
        payload_list = payloads if isinstance(payloads, list) else list(payloads)
        if keys is not None and len(keys) != len(payload_list):
            raise ConfigError("enqueue_many: keys must have one entry per payload")
        if keys is not None:
            for key in keys:
                if key is not None:
                    _check_key(key)
        if accounts is not None:
            if len(accounts) != len(payload_list):
                raise ConfigError("enqueue_many: accounts must have one entry per payload")
            for account in accounts:
                if account is not None:
                    limiter.check_account(account)
        if not payload_list:
            return []
        count = self._config.stream(stream).partitions
        if count > 1 and keyspace.partition_index(stream) is None:
            return await self._enqueue_partitioned(
                stream, count, payload_list, keys, accounts, lane, opts, cron
            )
        return await self._enqueue_into(stream, payload_list, keys, accounts, lane, opts, cron)

    async def _enqueue_partitioned(
        self,
        stream: str,
        count: int,
        payloads: list[Any],
        job_keys: Sequence[str | None] | None,
        accounts: Sequence[str | None] | None,
        lane: Priority,
        opts: JobOptions,
        cron: str | None,
    ) -> list[str]:
        """Split the payloads among the stream's partitions (see ``route``), enqueue each
        share, and give the ids back in the payloads' order."""
        shares: dict[int, list[int]] = {}
        for index in range(len(payloads)):
            account = accounts[index] if accounts is not None else None
            key = job_keys[index] if job_keys is not None else None
            shares.setdefault(self.route(count, account, key), []).append(index)
        ids: list[str] = [""] * len(payloads)

        async def send(target: int, indices: list[int]) -> None:
            share_ids = await self._enqueue_into(
                keyspace.partition(stream, target),
                [payloads[i] for i in indices],
                None if job_keys is None else [job_keys[i] for i in indices],
                None if accounts is None else [accounts[i] for i in indices],
                lane,
                opts,
                cron,
            )
            for i, job_id in zip(indices, share_ids, strict=True):
                ids[i] = job_id

        # At once: on a cluster the partitions' shares go to different shards.
        async with _one_error(), anyio.create_task_group() as sends:
            for target, indices in shares.items():
                sends.start_soon(send, target, indices)
        return ids

    def route(self, count: int, account: str | None, key: str | None) -> int:
        """The partition of a job: its account's, so the account's jobs keep their order and
        its limits hold on one partition; else its key's, so a key stays unique; else the
        next in turn."""
        if account is not None:
            return zlib.crc32(b"a:" + account.encode()) % count
        if key is not None:
            return zlib.crc32(b"k:" + key.encode()) % count
        self._next_partition = (self._next_partition + 1) % count
        return self._next_partition

    async def _enqueue_into(
        self,
        stream: str,
        payload_list: list[Any],
        keys: Sequence[str | None] | None,
        accounts: Sequence[str | None] | None,
        lane: Priority,
        opts: JobOptions,
        cron: str | None,
    ) -> list[str]:
        now = await self._sent_until_answered(stream, self._server_now_ms, sent=False)
        due = scheduler.due_ms(opts.run_at, opts.delay, now_ms=now)
        template = codec.Envelope(
            id="",
            payload=None,
            enqueued_at_ms=now,
            run_at_ms=due,
            expire_after_ms=_ms(opts.expire_after, "expire_after"),
            max_attempts=opts.max_attempts,
            job_timeout_ms=_ms(opts.job_timeout, "job_timeout"),
            backoff=opts.backoff,
            cron=cron,
            first_run=True,  # a new job: the worker need not read its record (codec.Envelope)
        )
        await self._sent_until_answered(stream, lambda: self._register(stream), sent=False)
        ids: list[str] = []
        max_bytes = self._config.stream(stream).max_payload_bytes
        chunk = SLICE * PIPELINE_SLICES
        replies: list[list[list[tuple[int, str]]]] = []
        one_in_flight = anyio.Semaphore(1)

        async def send(slices: list[tuple[list[str], bytes]]) -> None:
            try:
                replies.append(
                    await self._sent_until_answered(
                        stream,
                        lambda: scripts.enqueue_jobs(
                            self._redis,
                            stream,
                            lane,
                            slices,
                            expire_after_ms=template.expire_after_ms,
                            recurring=cron or "",
                        ),
                    )
                )
            finally:
                one_in_flight.release()

        # Chunks go out in order, one at a time, while the next one is being encoded: the
        # server works on chunk k while this process packs chunk k + 1. A payload refused
        # while encoding stops there: the chunks before it are in.
        async with _one_error(), anyio.create_task_group() as sends:
            for start in range(0, len(payload_list), chunk):
                part = payload_list[start : start + chunk]
                part_keys = None if keys is None else keys[start : start + chunk]
                part_accounts = None if accounts is None else accounts[start : start + chunk]
                part_ids, slices = _encode(
                    stream, part, part_keys, part_accounts, template, max_bytes, start
                )
                ids += part_ids
                await one_in_flight.acquire()
                sends.start_soon(send, slices)
                await anyio.lowlevel.checkpoint()  # let the send go out before encoding more
        held_by_others: list[int] = []
        for chunk_index, chunk_replies in enumerate(replies):
            for offset, taken in enumerate(chunk_replies):
                base = chunk_index * chunk + offset * SLICE
                for position, holder in taken:
                    # An occurrence refused as stale comes back with no id at all.
                    ids[base + position] = holder
                    held_by_others.append(base + position)
        metrics.jobs_enqueued(stream, lane, len(payload_list) - len(held_by_others))
        if opts.on_conflict == "replace" and keys is not None:
            for index in held_by_others:
                account = accounts[index] if accounts is not None else None
                # A scheduled job may have run before (a deferral after a start): its
                # replacement reads the record when it runs.
                job = msgspec.structs.replace(
                    template, key=keys[index], account=account, first_run=False
                )
                await self._replace(stream, payload_list[index], ids[index], job)
        return ids

    async def _replace(
        self, stream: str, payload: Any, job_id: str, template: codec.Envelope
    ) -> None:
        """Give the scheduled job holding the template's key this payload, due time and
        account; raises InvalidJobState when it is no longer scheduled (queued, running or
        retrying)."""
        key = template.key
        assert key is not None
        envelope = msgspec.structs.replace(template, id=job_id, payload=payload)
        replaced = await self._sent_until_answered(
            stream, lambda: self._replace_script(job_id, key, stream, envelope, template)
        )
        if not replaced:
            raise InvalidJobState(
                f"job {job_id} holding key {key!r} is no longer scheduled: not replaced"
            )

    async def _replace_script(
        self,
        job_id: str,
        key: str,
        stream: str,
        envelope: codec.Envelope,
        template: codec.Envelope,
    ) -> bool:
        return await scripts.replace_job(
            self._redis,
            job_id,
            key=key,
            envelope=codec.encode_new(envelope),
            due_ms=template.run_at_ms,
            account=template.account,
        )

    async def _register(self, stream: str) -> None:
        if stream not in self._registered:
            await self._redis.sadd(keyspace.STREAM_REGISTRY, stream)
            self._registered.add(stream)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _encode(
    stream: str,
    payloads: list[Any],
    job_keys: Sequence[str | None] | None,
    accounts: Sequence[str | None] | None,
    template: codec.Envelope,
    max_bytes: int,
    first: int,
) -> tuple[list[str], list[tuple[list[str], bytes]]]:
    """Job ids, and the job ids and packed rows (enqueue_jobs' ARGV[4]) of each slice.
    Raises PayloadError for an envelope over ``max_bytes`` (``first`` numbers the payloads)."""
    ids: list[str] = []
    slices: list[tuple[list[str], bytes]] = []
    slice_ids: list[str] = []
    jobs: list[codec.EnqueueRow] = []
    due = template.run_at_ms or 0
    replace = msgspec.structs.replace
    encode = codec.encode_new
    scheduled = codec.scheduled_form
    for index, payload in enumerate(payloads):
        job_id = codec.new_job_id(stream, template.enqueued_at_ms)
        key = job_keys[index] if job_keys is not None else None
        ids.append(job_id)
        account = accounts[index] if accounts is not None else None
        envelope = replace(template, id=job_id, payload=payload, key=key, account=account)
        slice_ids.append(job_id)
        try:
            encoded = encode(envelope)
        except PayloadError as exc:
            if first or len(payloads) > 1:
                raise PayloadError(f"payload {first + index + 1}: {exc}") from None
            raise
        if len(encoded) > max_bytes:
            raise PayloadError(
                f"payload {first + index + 1} is {len(encoded)} bytes encoded, over the "
                f"stream's max_payload_bytes of {max_bytes}"
            )
        if due:
            # A job with a due time goes in the form its record keeps while scheduled, so the
            # script does no string work for it (codec.scheduled_form).
            encoded = scheduled(encoded, envelope)
        # str, not bytes: the server's cmsgpack reads msgpack str but not bin.
        if account is None:
            jobs.append(codec.EnqueueRow(job_id, key or "", encoded.decode(), due))
        else:
            jobs.append(codec.AccountEnqueueRow(job_id, key or "", encoded.decode(), due, account))
        if len(slice_ids) == SLICE:
            slices.append((slice_ids, codec.pack_rows(jobs)))
            slice_ids, jobs = [], []
    if slice_ids:
        slices.append((slice_ids, codec.pack_rows(jobs)))
    return ids, slices

"""The Python API: ``async with streamq.connect() as q: await q.enqueue(...)``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, Unpack

from redis.asyncio import Redis

from streamq import (
    codec,
    connection,
    control,
    flows,
    keys,
    limiter,
    listing,
    platforms,
    scheduler,
    stats,
    waiting,
)
from streamq.config import Config, load_config
from streamq.control import DeadLetter, JobInfo
from streamq.errors import FlowError, JobCancelled, JobExpired, JobFailed
from streamq.events import Event, follow
from streamq.producer import JobOptionArgs, JobOptions, Producer, check_stream

if TYPE_CHECKING:
    from streamq.tokens import Tokens


class Queue:
    """A connection to streamq: enqueue jobs and read figures. Use as an async context manager."""

    def __init__(self, url: str | None = None, *, config: Config | None = None) -> None:
        self._url = url
        self.config = config if config is not None else load_config()
        self._config_url = self.config.redis_url
        self._redis: Redis | None = None
        self._producer: Producer | None = None
        self._waiters: waiting.Waiters | None = None
        self._validators: dict[str, platforms.Validator | None] = {}
        self.resolved_url: str | None = None

    async def __aenter__(self) -> Self:
        self._redis, self.resolved_url = await connection.connect(
            self._url, self._config_url, socket_timeout=self.config.socket_timeout
        )
        self._producer = Producer(self._redis, self.config)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._waiters is not None:
            await self._waiters.close()
            self._waiters = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    @property
    def redis(self) -> Redis:
        if self._redis is None:
            raise RuntimeError("use 'async with streamq.connect() as q:' before calling q")
        return self._redis

    @property
    def tokens(self) -> Tokens:
        """The token store (streamq.tokens): ``await q.tokens.put(platform, account, ...)``."""
        from streamq.tokens import Tokens

        return Tokens(self)

    @property
    def producer(self) -> Producer:
        if self._producer is None:
            raise RuntimeError("use 'async with streamq.connect() as q:' before calling q")
        return self._producer

    async def enqueue(
        self,
        stream: str,
        payload: Any,
        *,
        key: str | None = None,
        account: str | None = None,
        priority: str = "normal",
        **options: Unpack[JobOptionArgs],
    ) -> str:
        """Add one job; returns its id (an existing job's id if ``key`` is held by a live job).

        ``run_at`` (an aware datetime) or ``delay`` schedules it; ``on_conflict="replace"``
        gives a still-scheduled job holding ``key`` this payload and due time instead.
        """
        [job_id] = await self.enqueue_many(
            stream,
            [payload],
            keys=[key],
            accounts=None if account is None else [account],
            priority=priority,
            **options,
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
        **options: Unpack[JobOptionArgs],
    ) -> list[str]:
        """Add many jobs in pipelined batches; returns one id per payload, in order.
        ``accounts`` names the publishing account of each payload (rate limits and pauses).

        On a stream that a built-in publisher runs (streamq.platforms), every payload is
        checked first: a post the platform would refuse raises PayloadError and nothing is
        enqueued."""
        check = self.validator(stream)
        if check is not None:
            payloads = payloads if isinstance(payloads, list) else list(payloads)
            check(payloads)
        return await self.producer.enqueue_many(
            stream,
            payloads,
            keys=keys,
            accounts=accounts,
            priority=priority,
            options=JobOptions(**options),
        )

    def validator(self, stream: str) -> platforms.Validator | None:
        """The payload check of the publisher that runs ``stream``; None when a handler does
        (then enqueue checks nothing beyond JSON)."""
        try:
            return self._validators[stream]
        except KeyError:
            pass
        name = platforms.publisher_for(stream, self.config.stream(stream))
        check = None if name is None else platforms.validator(name)
        self._validators[stream] = check
        return check

    async def partitions(self, stream: str) -> list[str]:
        """The streams that hold ``stream``'s jobs: itself, or its configured partitions, and
        any partition left from an earlier partition count that producers wrote to."""
        return await stats.partitions_of(self.redis, check_stream(stream), self.config)

    def _partition_count(self, stream: str) -> int:
        return (
            1 if keys.partition_index(stream) is not None else self.config.stream(stream).partitions
        )

    def recurring_home(self, stream: str) -> str:
        """Where ``stream``'s recurring schedules live and their occurrences run: the stream,
        or partition 0 of a partitioned one (a schedule and its occurrences share a slot)."""
        return keys.partitions(stream, self._partition_count(stream))[0]

    def partition_of(self, stream: str, account: str) -> str:
        """The partition that holds ``account``'s jobs of ``stream`` (the stream if unsplit)."""
        count = self.config.stream(stream).partitions
        if count <= 1 or keys.partition_index(stream) is not None:
            return stream
        return keys.partition(stream, self.producer.route(count, account, None))

    async def pause_account(
        self, account: str, stream: str, *, reason: str = "paused by an operator"
    ) -> None:
        """Hold every job of ``account`` on ``stream`` (no attempts used) until resumed."""
        for part in await self.partitions(stream):
            await limiter.pause_account(self.redis, part, account, reason)

    async def resume_account(self, account: str, stream: str) -> tuple[bool, int]:
        """Run the account's jobs again: (whether it was paused, jobs released)."""
        was_paused, released = False, 0
        for part in await self.partitions(stream):
            paused, resumed = await limiter.resume_account(self.redis, part, account)
            was_paused, released = was_paused or paused, released + resumed
        return was_paused, released

    async def limits(self, stream: str, account: str | None = None) -> limiter.LimitsReport:
        """Usage and remaining capacity of the stream's (and the account's) rate limits; on a
        partitioned stream, of the account's partition (or of the partition named)."""
        stream = check_stream(stream)
        if account is not None:
            stream = self.partition_of(stream, limiter.check_account(account))
        configured = self.config.stream(stream)
        limits = limiter.limits_for(stream, configured.limits, configured.partitions)
        return await limiter.report(self.redis, stream, limits, account)

    async def known(self, stream: str) -> str:
        """``stream`` if it is configured or was ever used, else StreamNotFound (the rule every
        question about a named stream follows: ``stats.known_stream``)."""
        return await stats.known_stream(self.redis, self.config, stream)

    async def stats(self, streams: list[str] | None = None) -> stats.Snapshot:
        """Figures of the streams named (each must be known), or of every stream used."""
        for stream in streams or []:
            await self.known(stream)
        return await stats.snapshot(self.redis, streams)

    async def job(self, job_id: str) -> JobInfo:
        """A job's record and state; raises JobNotFound."""
        return await control.job_info(self.redis, job_id)

    async def jobs(
        self,
        stream: str,
        state: str,
        *,
        account: str | None = None,
        key: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> listing.JobPage:
        """One page of the stream's jobs in ``state`` (see streamq.listing.STATES), in the
        state's order (due time, lane order, enqueue, death or finish time), merged over its
        partitions; pass the page's ``cursor`` for the next one (None: no more). ``since`` and
        ``until`` (aware datetimes, inclusive) bound that time. Raises ListingError (a
        ValueError) for an unknown state, a bad cursor, an inverted range or a limit over
        1,000, and StreamNotFound for a stream never configured nor used."""
        return await listing.list_jobs(
            self.redis,
            await self.partitions(await self.known(stream)),
            state,
            account=account,
            key=key,
            since_ms=_ms(since, "since"),
            until_ms=_ms(until, "until"),
            limit=limit,
            cursor=cursor,
        )

    async def iter_jobs(
        self, stream: str, state: str, *, page_size: int = 100, **filters: Any
    ) -> AsyncIterator[JobInfo]:
        """Every job of a listing (``jobs``' filters), page after page:
        ``async for info in q.iter_jobs("instagram", "scheduled", account="acme")``."""
        cursor = None
        while True:
            page = await self.jobs(stream, state, limit=page_size, cursor=cursor, **filters)
            for info in page.jobs:
                yield info
            if page.cursor is None:
                return
            cursor = page.cursor

    @property
    def waiters(self) -> waiting.Waiters:
        """What every ``wait`` of this Queue shares (one events reader per stream)."""
        if self._waiters is None:
            self._waiters = waiting.Waiters(self.redis, self.config)
        return self._waiters

    async def wait(self, job_id: str, timeout: float | None = None) -> JobInfo:  # noqa: ASYNC109
        """The job's JobInfo as soon as it is done, dead, cancelled or expired (at once if it
        is already). Raises TimeoutError after ``timeout`` seconds (None: no limit) and
        JobNotFound for an unknown id. Waiters share one reader of each stream's events
        (streamq.waiting); with events off they share one poll of the records."""
        return await self.waiters.wait(job_id, timeout)

    async def result(self, job_id: str, timeout: float | None = None) -> Any:  # noqa: ASYNC109
        """What the job's handler returned, once it is done. Raises JobFailed (dead: ``reason``
        says why), JobExpired (never run), JobCancelled, or TimeoutError."""
        info = await self.wait(job_id, timeout)
        if info.state == "done":
            return info.result
        if info.state == "cancelled":
            raise JobCancelled(f"job {job_id} was cancelled", info)
        if info.state == "expired":
            raise JobExpired(f"job {job_id} expired: it came due too long ago to run", info)
        reason = info.error or "no reason recorded"
        raise JobFailed(f"job {job_id} failed: {reason}", info, reason)

    async def enqueue_flow(
        self,
        steps: Sequence[flows.Step],
        run_at: datetime | None = None,
        on_complete: flows.Step | None = None,
        *,
        key: str | None = None,
    ) -> flows.Flow:
        """Add a flow (streamq.flows): ``steps`` after nothing run at ``run_at`` (None: now),
        each other once every step it is ``after`` succeeded, ``on_complete`` once every step
        is final. Every step is checked first (names, order, streams, payloads): a bad one
        raises FlowError or PayloadError and nothing is enqueued. With ``key``, a flow still
        running under that key is returned instead. Returns the flow's id and job ids."""
        return await flows.enqueue_flow(
            self, steps, run_at=run_at, on_complete=on_complete, key=key
        )

    async def cross_post(
        self,
        post: Any,
        platforms: Sequence[str],
        *,
        account: str | None = None,
        run_at: datetime | None = None,
        key: str | None = None,
        on_complete: flows.Step | None = None,
    ) -> flows.Flow:
        """Publish one post to several platforms as one flow (one step per platform, named
        after it): the post is checked for every platform before anything is enqueued."""
        if isinstance(platforms, str):  # a str is a Sequence[str]: one step per letter
            raise FlowError(
                f"cross_post takes a list of platforms, not one string: platforms=[{platforms!r}]"
            )
        if not platforms:
            raise FlowError("cross_post needs at least one platform")
        steps = [
            flows.Step(name=platform, stream=platform, payload=post, account=account)
            for platform in platforms
        ]
        return await self.enqueue_flow(steps, run_at, on_complete, key=key)

    async def flow(self, flow_id: str) -> flows.FlowInfo:
        """A flow's state and every step's state, result and error; raises FlowNotFound."""
        return await flows.flow_info(self.redis, flow_id)

    async def cancel_flow(self, flow_id: str) -> str:
        """Cancel every step of the flow not yet started; returns the flow's state."""
        return await flows.cancel_flow(self, flow_id)

    async def reschedule_flow(self, flow_id: str, run_at: datetime) -> int:
        """Move every step of the flow that is still scheduled; returns how many moved."""
        return await flows.reschedule_flow(self, flow_id, run_at)

    async def cancel(self, job_id: str) -> str:
        """'cancelled' (it will never start) or 'cancelling' (already running: not retried)."""
        stream_config = self.config.stream(control._stream_of(job_id))
        return await control.cancel(self.redis, job_id, stream_config)

    async def reschedule(
        self,
        job_id: str,
        run_at: datetime | None = None,
        delay: timedelta | float | str | None = None,
    ) -> int:
        """Move a scheduled or retrying job; returns its new due time in ms since the epoch."""
        return await control.reschedule(self.redis, job_id, run_at=run_at, delay=delay)

    async def promote(self, job_id: str) -> int:
        """Run a scheduled or retrying job now; returns its new due time (the server's now)."""
        return await control.promote(self.redis, job_id)

    async def retry(self, job_id: str) -> None:
        """Run a dead, cancelled or expired job again, attempts reset."""
        await control.retry(self.redis, job_id)

    async def dead(self, stream: str, count: int = 100) -> list[DeadLetter]:
        """The oldest ``count`` dead letters of each of the stream's partitions."""
        letters: list[DeadLetter] = []
        for part in await self.partitions(await self.known(stream)):
            letters += await control.dead_letters(self.redis, part, count)
        return letters

    async def replay_dead(self, stream: str, ids: list[str] | None = None) -> tuple[int, int]:
        """Run dead letters again (all, or by job id / entry id): (replayed, skipped)."""
        replayed = skipped = 0
        for part in await self.partitions(await self.known(stream)):
            done, passed = await control.replay(self.redis, part, ids)
            replayed, skipped = replayed + done, skipped + passed
        return replayed, skipped

    async def replay(self, stream: str, ids: list[str] | None = None) -> int:
        """Run dead letters again (all, or by job id / entry id); returns how many."""
        replayed, _ = await self.replay_dead(stream, ids)
        return replayed

    async def purge_dead(self, stream: str) -> int:
        parts = await self.partitions(await self.known(stream))
        return sum([await control.purge_dead(self.redis, p) for p in parts])

    def events(
        self,
        streams: str | Sequence[str],
        *,
        since: str | int | datetime | dict[str, str] | None = None,
        wait: bool = True,
        group: str | None = None,
        consumer: str | None = None,
        types: Sequence[str] | None = None,
        count: int = 500,
    ) -> AsyncIterator[Event]:
        """The streams' lifecycle events, in order per stream; ``async for ev in q.events(...)``.

        ``since``: an event id, a time, a duration ago ("10m"), "now", or a dict of the last
        id seen per stream (resume); None starts with the oldest kept. ``wait`` keeps waiting
        for new events. With ``group``, the app instances sharing it split the events, each
        acknowledged when the loop body that got it returns (see streamq.events)."""
        names = [streams] if isinstance(streams, str) else list(streams)
        parts = [
            part
            for name in names
            for part in keys.partitions(check_stream(name), self._partition_count(name))
        ]
        return follow(
            self.redis,
            parts,
            since=since,
            wait=wait,
            group=group,
            consumer=consumer,
            types=types,
            count=count,
        )

    async def schedule_recurring(
        self,
        name: str,
        stream: str,
        *,
        cron: str,
        tz: str = "UTC",
        payload: Any = None,
        priority: str = "normal",
    ) -> None:
        """Run ``payload`` on ``stream`` at every time ``cron`` names in ``tz``; each occurrence
        runs once however many workers there are. Replaces a schedule of the same name."""
        from streamq.producer import check_priority

        codec.check_payload(payload)
        check = self.validator(stream)
        if check is not None:
            check([payload])
        schedule = scheduler.Recurring(
            name=name,
            stream=self.recurring_home(check_stream(stream)),
            cron=cron,
            tz=tz,
            payload=payload,
            priority=check_priority(priority),
        )
        await scheduler.add_recurring(self.redis, schedule)

    async def recurring(self, stream: str) -> list[scheduler.Recurring]:
        return await scheduler.list_recurring(self.redis, self.recurring_home(stream))

    async def remove_recurring(self, stream: str, name: str) -> bool:
        """Forget a schedule and cancel its waiting occurrence; False if there was none."""
        holder = await scheduler.remove_recurring(self.redis, self.recurring_home(stream), name)
        if holder is None:
            return False
        if holder:
            with contextlib.suppress(control.InvalidJobState):  # it finished meanwhile
                await self.cancel(holder)
        return True


def _ms(when: datetime | None, name: str) -> int | None:
    if when is None:
        return None
    if not isinstance(when, datetime) or when.tzinfo is None:
        raise listing.ListingError(f"{name} must be an aware datetime (with a time zone)")
    return round(when.timestamp() * 1000)


def connect(url: str | None = None, *, config: Config | None = None) -> Queue:
    """A Queue for ``url``; None means ``STREAMQ_REDIS_URL``, then the config file's
    ``redis_url`` (``STREAMQ_CONFIG``), else the embedded server."""
    return Queue(url, config=config)

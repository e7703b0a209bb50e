"""What a stream looks like to the autoscaler, read from Redis: the Observation of policy.py.

Rates come from counters the engine keeps anyway, compared between two reads: arrivals from
the lanes' ``entries-added`` (XINFO STREAM, Redis 7+), service time from the handler time the
finish script sums into the counts hash (``busy_ms`` over ``ran``).
"""

from __future__ import annotations

from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from autoscaler.policy import Observation
from streamq import channel, keys, limiter, stats

DEFAULT_SERVICE_SECONDS = 1.0
"""Assumed handler time until the stream has run jobs."""


class Sample(msgspec.Struct, frozen=True):
    at_ms: int
    added: int
    ran: int
    busy_ms: int


class StreamWatch:
    """Reads one stream's observations; remembers the last sample to turn counters into rates."""

    def __init__(
        self, redis: Redis, stream: str, limits: limiter.StreamLimits, lead_seconds: float
    ) -> None:
        self.redis = redis
        self.stream = stream
        self.ceiling = limiter.platform_rate(limits)
        self.lead_ms = round(lead_seconds * 1000)
        self._last: Sample | None = None
        self._service = DEFAULT_SERVICE_SECONDS

    async def observe(self, workers: int) -> Observation:
        now_ms = await channel.server_ms(self.redis)
        # A partitioned stream is watched as one: its partitions' figures add up.
        parts = (await stats.stream_parts(self.redis, [self.stream]))[self.stream]
        each = [await stats.stream_stats(self.redis, part, now_ms) for part in parts]
        figures = each[0] if len(each) == 1 else stats.merged(self.stream, each)
        added = ran = busy = due_soon = 0
        for part in parts:
            for lane in keys.lanes(part):
                try:
                    info: Any = await self.redis.xinfo_stream(lane)
                except ResponseError:  # a lane nobody wrote to yet does not exist
                    continue
                added += int(info.get("entries-added", 0) or 0)
            part_ran, part_busy = await self.redis.hmget(keys.counts(part), ["ran", "busy_ms"])
            ran += int(part_ran or 0)
            busy += int(part_busy or 0)
            due_soon += int(
                await self.redis.zcount(keys.delayed(part), "-inf", now_ms + self.lead_ms)
            )
        sample = Sample(now_ms, added, ran, busy)
        arrival = 0.0
        if self._last is not None and sample.at_ms > self._last.at_ms:
            elapsed = (sample.at_ms - self._last.at_ms) / 1000
            arrival = max(0, sample.added - self._last.added) / elapsed
            runs = sample.ran - self._last.ran
            if runs > 0:
                self._service = max(0.001, (sample.busy_ms - self._last.busy_ms) / runs / 1000)
        self._last = sample
        return Observation(
            at=now_ms / 1000,
            workers=workers,
            backlog=figures.depth,
            arrival_rate=arrival,
            service_seconds=self._service,
            due_soon=due_soon,
            rate_ceiling=self.ceiling,
        )

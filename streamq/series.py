"""A stream's recent history, minute by minute, for the dashboard's charts: runs done, failed
and retried, depth, and p99 lateness, for the last 24 hours.

Kept in Redis by the workers, off the per-job path: every ``health.REPORT_SECONDS`` each
worker calls ``record_minute`` (``streamq:{S}:series:<minute ms>``, a small hash per minute
that expires after ``KEPT_MS``). The first call of a minute copies the stream's outcome
counters and depth; every call adds the lateness histogram buckets the worker saw since its
last call. So a minute's runs are the next copy's counters minus its own (exact, whatever the
number of workers, and counting what no worker's memory holds: dead letters of a reclaim), and
its lateness is every worker's buckets merged. Nothing is recomputed from a viewer's polls, and
the series is the same for every viewer.

A minute no worker reported in (none ran) has no copy: it shows zero runs and ``sampled``
false, and the runs between the copies around it count in the earlier copied minute.
Lateness is an upper bound: the edge of the bucket the 99th percentile falls in
(``metrics.LATENESS_BUCKETS``), as for ``streamq health``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import msgspec
from redis.asyncio import Redis

from streamq import channel, keys, scripts
from streamq.metrics import LATENESS_BUCKETS

MINUTE_MS: Final = 60_000
KEPT_MS: Final = 25 * 3600 * 1000
"""A day of minutes, and an hour more, so the oldest minute shown still has its successor."""
MAX_MINUTES: Final = 24 * 60
_COUNTERS: Final = ("done", "retried", "dead")


class SeriesPoint(msgspec.Struct, kw_only=True):
    t: int
    """The minute's start, ms since the epoch (server clock)."""
    done: int
    failed: int
    """Runs that raised or timed out: retried plus dead."""
    retried: int
    dead: int
    depth: int
    """Jobs waiting or in flight at the minute's start (0 when not sampled)."""
    lateness_p99_ms: int | None
    """99th percentile of start minus due time of the runs started (an upper bound: its
    bucket's edge); null when none started."""
    sampled: bool
    """False when no worker reported in that minute (its figures are zeros, not measured)."""


class Series(msgspec.Struct, kw_only=True):
    stream: str
    bucket_seconds: int
    points: list[SeriesPoint]
    """Oldest first, one per minute, the last one the minute under way."""


def minute_of(ms: int) -> int:
    return ms - ms % MINUTE_MS


async def record(redis: Redis, stream: str, now_ms: int, lateness: Sequence[int]) -> bool:
    """One worker's report into the minute under way (``now_ms``, by the server's clock)."""
    return await scripts.record_minute(
        redis, stream, minute_ms=minute_of(now_ms), keep_ms=KEPT_MS, lateness=lateness
    )


async def read(redis: Redis, stream: str, parts: Sequence[str], minutes: int) -> Series:
    """The last ``minutes`` minutes of ``stream``, summed over ``parts`` (its partitions, or
    itself)."""
    now = await channel.server_ms(redis)
    last = minute_of(now)
    starts = [last - (minutes - 1 - i) * MINUTE_MS for i in range(minutes)]
    # Each minute's copy is closed by the next copied minute's, the last one by the counters
    # now: the window's minutes and the counters, in one round trip.
    async with redis.pipeline(transaction=False) as pipe:
        for part in parts:
            for start in starts:
                pipe.hgetall(keys.series(part, start))
            pipe.hmget(keys.counts(part), list(_COUNTERS))
        replies: list[Any] = await pipe.execute()
    width = len(starts) + 1
    buckets = len(LATENESS_BUCKETS) + 1
    done = [0] * minutes
    retried = [0] * minutes
    dead = [0] * minutes
    depth = [0] * minutes
    sampled = [False] * minutes
    lateness = [[0] * buckets for _ in range(minutes)]
    for p in range(len(parts)):
        block = replies[p * width : (p + 1) * width]
        copies: list[tuple[int, list[int]]] = []
        for i, raw in enumerate(block[:-1]):
            fields = {k.decode(): v for k, v in raw.items()}
            for name, value in fields.items():
                if name.startswith("l") and name[1:].isdigit() and int(name[1:]) < buckets:
                    lateness[i][int(name[1:])] += int(value)
            if "at" in fields:
                sampled[i] = True
                depth[i] += int(fields.get("depth", 0))
                copies.append((i, [int(fields.get(c, 0)) for c in _COUNTERS]))
        if not copies:  # no worker reported on this part in the window: no runs to count
            continue
        current = [int(v or 0) for v in block[-1]]
        ends = [c[1] for c in copies[1:]] + [current]
        for (i, begin), end in zip(copies, ends, strict=True):
            # A counter can only fall if someone reset it: no runs rather than negative ones.
            done[i] += max(0, end[0] - begin[0])
            retried[i] += max(0, end[1] - begin[1])
            dead[i] += max(0, end[2] - begin[2])
    points = [
        SeriesPoint(
            t=start,
            done=done[i],
            failed=retried[i] + dead[i],
            retried=retried[i],
            dead=dead[i],
            depth=depth[i],
            lateness_p99_ms=p99_ms(lateness[i]),
            sampled=sampled[i],
        )
        for i, start in enumerate(starts)
    ]
    return Series(stream=stream, bucket_seconds=MINUTE_MS // 1000, points=points)


def p99_ms(counts: list[int]) -> int | None:
    from streamq.health import quantile_bound  # here: health imports this module to record

    bound = quantile_bound(counts, 0.99)
    return None if bound is None else round(bound * 1000)

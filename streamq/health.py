"""Health: what workers record for it, and the checks of ``streamq health``.

Workers write two small signals every ``REPORT_SECONDS`` (5 s), off the hot path:
- ``streamq:{S}:samples``: a timestamped copy of the stream's outcome counts (done, retried,
  dead), at most one per ``SAMPLE_SECONDS`` (10 s) whatever the number of workers, kept an
  hour. Subtracting an older sample from the current counts gives the error rate (and the job
  rate ``streamq top`` shows) over a recent window, from a single read.
- ``streamq:{S}:lateness``: per worker, the 95th percentile of start minus due time over its
  last minute, read from its lateness histogram's buckets (so an upper bound: the bucket's
  edge). Summaries older than ``LATENESS_FRESH_SECONDS`` are ignored and later removed.

``check`` answers healthy (0), degraded (1) or down (2, the server cannot be reached or
answered in time). A stream is degraded when it is beyond any threshold of its
``[streams.S.health]`` table (see streamq.config.HealthConfig); the server is degraded when its
``maxmemory-policy`` evicts keys, since an evicting server can silently drop jobs.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import anyio
import msgspec
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from streamq import connection, keys, scripts, series, server, stats
from streamq.config import Config
from streamq.errors import StreamqError
from streamq.metrics import LATENESS_BUCKETS, WorkerMetrics

log = logging.getLogger("streamq.health")

REPORT_SECONDS: Final = 5.0
SAMPLE_SECONDS: Final = 10.0
SAMPLES_KEPT_SECONDS: Final = 3600.0
LATENESS_WINDOW_SECONDS: Final = 60.0
LATENESS_FRESH_SECONDS: Final = 60.0
LATENESS_KEPT_SECONDS: Final = 600.0
HEALTH_FORMAT: Final = 1

HEALTHY, DEGRADED, DOWN = 0, 1, 2
STATUS_NAMES: Final = {HEALTHY: "healthy", DEGRADED: "degraded", DOWN: "down"}


# -- what workers record ------------------------------------------------------------------------


def quantile_bound(
    counts: list[int], q: float, bounds: tuple[float, ...] = LATENESS_BUCKETS
) -> float | None:
    """The upper edge of the bucket holding quantile ``q`` (the last edge for +Inf); None if
    there are no observations."""
    total = sum(counts)
    if not total:
        return None
    target, running = q * total, 0
    for index, count in enumerate(counts):
        running += count
        if running >= target:
            return bounds[min(index, len(bounds) - 1)]
    return bounds[-1]


async def report_loop(
    redis: Redis,
    stream: str,
    consumer: str,
    worker_metrics: WorkerMetrics,
    now_ms: Callable[[], int],
    interval: float = REPORT_SECONDS,
) -> None:
    """Every ``interval``: add a counts sample (if due), this worker's lateness summary, and
    its part of the minute's series (streamq.series)."""
    window = max(2, round(LATENESS_WINDOW_SECONDS / interval) + 1)
    history: deque[list[int]] = deque(maxlen=window)
    rounds = 0
    while True:
        history.append(worker_metrics.lateness_counts())
        recent = [new - old for new, old in zip(history[-1], history[0], strict=True)]
        before = history[-2] if len(history) > 1 else [0] * len(history[-1])
        since_last = [new - old for new, old in zip(history[-1], before, strict=True)]
        try:
            await report(
                redis,
                stream,
                consumer,
                recent,
                now_ms(),
                tidy=rounds % window == 0,
                since_last=since_last,
            )
        except (*connection.TRANSIENT_ERRORS, redis_errors.ResponseError) as exc:
            log.debug("could not record health signals: %s", exc)
        rounds += 1
        await anyio.sleep(interval)


async def report(
    redis: Redis,
    stream: str,
    consumer: str,
    recent: list[int],
    now: int,
    *,
    tidy: bool = False,
    since_last: list[int] | None = None,
) -> None:
    """Add a counts sample if one is due, and record ``consumer``'s lateness summary from
    ``recent`` (lateness bucket counts over its last minute); ``tidy`` drops stale summaries.
    The minute's series gets the counts (first report of the minute) and ``since_last``, the
    lateness buckets since this worker's previous report."""
    await scripts.sample_counts(
        redis,
        stream,
        every_ms=round(SAMPLE_SECONDS * 1000),
        keep_ms=round(SAMPLES_KEPT_SECONDS * 1000),
    )
    summary = {"at": now, "jobs": sum(recent), "p95_s": quantile_bound(recent, 0.95)}
    lateness = keys.lateness(stream)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hset(lateness, consumer, msgspec.json.encode(summary))
        pipe.pexpire(lateness, round(LATENESS_KEPT_SECONDS * 1000))
        await pipe.execute()
    await series.record(redis, stream, now, since_last or [])
    if tidy:  # summaries of workers gone for good (they never remove their own)
        summaries = await _summaries(redis, stream)
        stale = [name for name, s in summaries.items() if now - s.at > LATENESS_KEPT_SECONDS * 1e3]
        if stale:
            await redis.hdel(lateness, *stale)


class _Summary(msgspec.Struct):
    at: int
    jobs: int
    p95_s: float | None


async def _summaries(redis: Redis, stream: str) -> dict[str, _Summary]:
    raw: dict[Any, bytes] = await redis.hgetall(keys.lateness(stream))  # type: ignore[assignment]
    found = {}
    for name, value in raw.items():
        try:
            found[name.decode()] = msgspec.json.decode(value, type=_Summary)
        except msgspec.DecodeError:
            continue  # not ours to judge; it expires with the key
    return found


async def recent_lateness(redis: Redis, streams: list[str], now_ms: int) -> float | None:
    """The worst p95 lateness (s) among workers of the streams (a stream's partitions, or
    itself) that reported within the last minute and ran something; None when none did."""
    fresh = [
        s.p95_s
        for stream in streams
        for s in (await _summaries(redis, stream)).values()
        if now_ms - s.at <= LATENESS_FRESH_SECONDS * 1000 and s.jobs and s.p95_s is not None
    ]
    return max(fresh) if fresh else None


class Rates(msgspec.Struct):
    """Outcomes over a recent span of time, fleet-wide."""

    span_s: float
    done: int
    retried: int
    dead: int

    @property
    def runs(self) -> int:
        return self.done + self.retried + self.dead

    @property
    def error_rate(self) -> float | None:
        return (self.retried + self.dead) / self.runs if self.runs else None


async def recent_rates(
    redis: Redis, streams: list[str], now_ms: int, window_s: float
) -> Rates | None:
    """Outcomes of the streams (a stream's partitions, or itself) together, each since its
    newest sample at least ``window_s`` old (or its oldest, when its samples span less), over
    the longest of those spans; None without any sample (no worker ran in the last hour)."""
    each = [r for r in [await _recent_rates(redis, s, now_ms, window_s) for s in streams] if r]
    if not each:
        return None
    return Rates(
        max(r.span_s for r in each),
        sum(r.done for r in each),
        sum(r.retried for r in each),
        sum(r.dead for r in each),
    )


async def _recent_rates(redis: Redis, stream: str, now_ms: int, window_s: float) -> Rates | None:
    since = now_ms - round(window_s * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hmget(keys.counts(stream), ["done", "retried", "dead"])
        pipe.zrevrangebyscore(keys.samples(stream), since, "-inf", start=0, num=1)
        pipe.zrange(keys.samples(stream), 0, 0)
        current, before, oldest = await pipe.execute()
    baseline = (before or oldest or [None])[0]
    if baseline is None:
        return None
    at, done, retried, dead = (int(part) for part in baseline.decode().split(":"))
    now = [int(value or 0) for value in current]
    return Rates(max(0.0, (now_ms - at) / 1000), now[0] - done, now[1] - retried, now[2] - dead)


# -- the checks ---------------------------------------------------------------------------------


class ServerHealth(msgspec.Struct):
    reachable: bool
    url: str
    """Redacted: never a password."""
    version: str | None = None
    maxmemory_policy: str | None = None
    """None when the server would not say (CONFIG may be disabled on managed servers)."""
    problems: list[str] = msgspec.field(default_factory=list)


class StreamHealth(msgspec.Struct):
    stream: str
    status: str
    consumers: int
    expected_workers: int | None
    depth: int
    oldest_pending_age_s: float | None
    error_rate: float | None
    error_window_s: float | None
    """The span the error rate covers (up to the configured window)."""
    lateness_p95_s: float | None
    problems: list[str]


class HealthReport(msgspec.Struct):
    format: int
    status: str
    code: int
    server: ServerHealth
    streams: list[StreamHealth]
    problems: list[str]
    """Every problem, prefixed with its stream (or "server")."""

    def summary(self) -> str:
        """The one line a probe log shows."""
        if not self.problems:
            return f"{self.status}: {len(self.streams)} stream(s) checked"
        return f"{self.status}: " + "; ".join(self.problems)


def _resolve(url: str | None, config: Config) -> tuple[str | None, str]:
    """The URL to check, without starting the embedded server; or None and why not."""
    if url or os.environ.get("STREAMQ_REDIS_URL") or config.redis_url:
        try:
            return connection.resolve_url(url, config.redis_url), ""
        except StreamqError as exc:
            return None, str(exc)
    state = server.status()
    if state.running:
        return server.url_for(state.home), ""
    return None, f"the embedded server is not running (home {state.home})"


def _down(url: str, reason: str) -> HealthReport:
    srv = ServerHealth(False, url, problems=[reason])
    return HealthReport(HEALTH_FORMAT, "down", DOWN, srv, [], [f"server: {reason}"])


async def check(
    url: str | None,
    config: Config,
    streams: list[str] | None = None,
    *,
    expected_workers: int | None = None,
    within: float = 3.0,
) -> HealthReport:
    """Check the server and the streams (given, else every known or configured one); never
    raises for an unreachable server, and answers within about ``within`` seconds."""
    resolved, why = _resolve(url, config)
    if resolved is None:
        return _down(connection.redact(url or "embedded"), why)
    shown = connection.redact(resolved)
    try:
        redis = connection.client(resolved)
    except StreamqError as exc:
        return _down(shown, str(exc))
    try:
        with anyio.fail_after(within):
            return await _check(redis, shown, config, streams, expected_workers)
    except TimeoutError:
        return _down(shown, f"no answer within {within:g}s")
    except StreamqError as exc:
        return _down(shown, str(exc))
    except (*connection.TRANSIENT_ERRORS, redis_errors.RedisError) as exc:
        return _down(shown, f"cannot reach Redis at {shown}: {exc}")
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(1):
            await redis.aclose()


async def _check(
    redis: Redis,
    shown: str,
    config: Config,
    streams: list[str] | None,
    expected_workers: int | None,
) -> HealthReport:
    version = await connection.check(redis, shown)
    srv = ServerHealth(True, shown, version, await _memory_policy(redis))
    if srv.maxmemory_policy not in (None, "noeviction"):
        srv.problems.append(
            f"maxmemory-policy is {srv.maxmemory_policy}: it can evict jobs (use noeviction)"
        )
    known = set(await stats.stream_parts(redis))  # a partitioned stream is known as one
    expected = {name for name, s in config.streams.items() if s.health.expected_workers}
    names = streams or sorted(known | expected)
    snap = await stats.snapshot(redis, names)
    checked = [
        await _stream(redis, figures, config, expected_workers, snap.server_time_ms)
        for figures in snap.streams
    ]
    for figures in checked:
        if figures.stream not in known:  # a typo in a probe would otherwise pass forever
            figures.problems.insert(0, "no worker or producer has used this stream yet")
            figures.status = "degraded"
    problems = [f"server: {p}" for p in srv.problems]
    problems += [f"{s.stream}: {p}" for s in checked for p in s.problems]
    code = DEGRADED if problems else HEALTHY
    return HealthReport(HEALTH_FORMAT, STATUS_NAMES[code], code, srv, checked, problems)


async def _memory_policy(redis: Redis) -> str | None:
    try:
        reply: Any = await redis.config_get("maxmemory-policy")
    except redis_errors.ResponseError:  # CONFIG renamed or forbidden by an ACL
        return None
    value = reply.get(b"maxmemory-policy", reply.get("maxmemory-policy"))
    return None if value is None else value.decode() if isinstance(value, bytes) else str(value)


async def _stream(
    redis: Redis,
    figures: stats.StreamStats,
    config: Config,
    expected_override: int | None,
    now_ms: int,
) -> StreamHealth:
    limits = config.stream(figures.stream).health
    expected = expected_override if expected_override is not None else limits.expected_workers
    holders = stats.holders(figures)
    rates = await recent_rates(redis, holders, now_ms, limits.error_window)
    lateness = await recent_lateness(redis, holders, now_ms)
    problems = []
    if expected and figures.consumers < limits.min_alive * expected:
        problems.append(
            f"{figures.consumers} of {expected} expected workers alive "
            f"(below {limits.min_alive:.0%})"
        )
    if figures.depth > limits.max_depth:
        problems.append(f"depth {figures.depth} over {limits.max_depth}")
    age = figures.oldest_pending_age_s
    if age is not None and age > limits.max_pending_age:
        problems.append(f"oldest pending job {age:.0f}s old (over {limits.max_pending_age:g}s)")
    error_rate = rates.error_rate if rates is not None else None
    if error_rate is not None and error_rate > limits.max_error_rate:
        assert rates is not None
        problems.append(
            f"error rate {error_rate:.1%} over {limits.max_error_rate:.0%} "
            f"({rates.retried + rates.dead} of {rates.runs} runs in {rates.span_s:.0f}s)"
        )
    if lateness is not None and lateness > limits.max_lateness:
        problems.append(f"p95 lateness {lateness:g}s over {limits.max_lateness:g}s")
    return StreamHealth(
        stream=figures.stream,
        status="degraded" if problems else "healthy",
        consumers=figures.consumers,
        expected_workers=expected,
        depth=figures.depth,
        oldest_pending_age_s=age,
        error_rate=None if error_rate is None else round(error_rate, 4),
        error_window_s=None if rates is None else round(rates.span_s, 1),
        lateness_p95_s=lateness,
        problems=problems,
    )


def to_json(report: HealthReport) -> bytes:
    return msgspec.json.encode(report)

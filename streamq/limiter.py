"""Rate limits per platform and per account, enforced in Redis, and account pauses.

A stream's limits apply at two scopes: ``platform`` (every job of the stream: the app's quota)
and ``account`` (the jobs of each account, named at enqueue). A worker passes every job it reads
through the ``admit_jobs`` script before starting it, a batch per call: the script records the
start in a sliding-window log, or moves the job to the delayed set, due when its turn comes (see
the script's header for how turns are planned). Nothing polls: a deferred job sleeps in the
delayed set like any scheduled job, and other accounts' jobs keep flowing past it.

Built-in limits for the common platforms (DEFAULT_LIMITS) apply to a stream of that name unless
its config gives ``limits`` (an empty list turns them off). The figures, and where they come
from (checked 2026-11; platforms change them, so check yours):

    instagram  account 50 / 24h     Meta, "IG User Media Publish" and the content_publishing_limit
                                    endpoint (quota_total 50, quota_duration 86400); older docs
                                    said 25, a carousel counts as one post
    facebook   account 200 / 1h     Graph API "Rate Limits": 200 calls per user per rolling hour
                                    (no count is published for Page feed posts; Reels: 30 / 24h)
    linkedin   account 150 / 24h    not published by LinkedIn (per-member daily limits are shown
                                    in the Developer Portal); 150 is a third-party figure
    x          account 100 / 15m    X API v2 rate limits for POST /2/tweets: 100 per 15 minutes
               platform 10000 / 24h per user, 10,000 per 24 hours per app
    tiktok     account 6 / 1m       Content Posting API: 6 post-init requests per minute per
               account 15 / 24h     token; the daily cap is not published (third parties: ~15)
    youtube    platform 100 / 24h   Data API v3: videos.insert has its own bucket of 100 calls
                                    per day per Cloud project
"""

from __future__ import annotations

import math
from typing import Any, Final

import msgspec
from redis.asyncio import Redis

from streamq import channel, codec, keys, scripts
from streamq.config import Limit
from streamq.errors import ConfigError

HOUR: Final = 3600.0
DAY: Final = 86400.0

DEFAULT_LIMITS: Final[dict[str, tuple[Limit, ...]]] = {
    "instagram": (Limit(scope="account", max=50, per=DAY),),
    "facebook": (Limit(scope="account", max=200, per=HOUR),),
    "linkedin": (Limit(scope="account", max=150, per=DAY),),
    "x": (
        Limit(scope="account", max=100, per=15 * 60.0),
        Limit(scope="platform", max=10_000, per=DAY),
    ),
    "tiktok": (
        Limit(scope="account", max=6, per=60.0),
        Limit(scope="account", max=15, per=DAY),
    ),
    "youtube": (Limit(scope="platform", max=100, per=DAY),),
}

Windows = list[tuple[int, int]]
"""(count, window ms) pairs."""


class StreamLimits(msgspec.Struct, frozen=True):
    """A stream's limits as the admission script takes them."""

    platform: Windows
    account: Windows

    @property
    def any(self) -> bool:
        return bool(self.platform or self.account)

    def packed(self) -> bytes:
        return _msgpack([self.platform, self.account])


def limits_for(
    stream: str, configured: tuple[Limit, ...] | None, partitions: int = 1
) -> StreamLimits:
    """The limits that apply to ``stream``: the configured ones, else the built-in ones.

    For one of ``partitions`` partitions (``S:i``): an account's jobs all go to one partition,
    so its limits hold there whole; the platform's are shared out, partition i taking
    ``count // partitions`` starts a window, plus one of the remainder, so together they never
    exceed the platform's (and may fall short of it when load is uneven)."""
    chosen = (
        configured if configured is not None else DEFAULT_LIMITS.get(keys.base_stream(stream), ())
    )
    platform: Windows = []
    account: Windows = []
    for limit in chosen:
        (platform if limit.scope == "platform" else account).extend(limit.windows())
    index = keys.partition_index(stream)
    if index is not None and partitions > 1:
        platform = [_share(count, window, index, partitions) for count, window in platform]
    return StreamLimits(platform=platform, account=account)


def _share(count: int, window_ms: int, index: int, partitions: int) -> tuple[int, int]:
    if count < partitions:
        raise ConfigError(
            f"a platform limit of {count} per {window_ms / 1000:g}s cannot be shared by "
            f"{partitions} partitions: use at most {count} partitions"
        )
    return count // partitions + (1 if index < count % partitions else 0), window_ms


def platform_rate(limits: StreamLimits) -> float | None:
    """The most jobs per second the platform's limits allow in the long run (None: no limit).
    Workers beyond rate x service time / concurrency would only wait: the autoscaler's ceiling."""
    if not limits.platform:
        return None
    return min(count / (window_ms / 1000) for count, window_ms in limits.platform)


def check_account(account: str) -> str:
    try:
        return keys.check_account(account)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


# -- pausing ------------------------------------------------------------------------------------


async def pause_account(redis: Redis, stream: str, account: str, reason: str = "paused") -> None:
    """Hold every job of ``account`` on ``stream`` until resumed: jobs read meanwhile are
    parked (state 'paused'), untouched and without using attempts."""
    check_account(account)
    field = keys.pause_field(account)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(keys.paused(stream), field, -1)
        pipe.hset(keys.pause_reasons(stream), field, reason)
        await pipe.execute()
    await redis.sadd(keys.STREAM_REGISTRY, stream)  # so stats and `limits show` list it


async def resume_account(redis: Redis, stream: str, account: str) -> tuple[bool, int]:
    """Lift the pause; returns (whether it was paused, how many parked jobs go back to run)."""
    check_account(account)
    return await scripts.resume_account(redis, stream, account)


# -- reporting ----------------------------------------------------------------------------------


class LimitSpec(msgspec.Struct, frozen=True):
    scope: str
    """'platform' or 'account' (each account)."""
    max: int
    per_seconds: float


class WindowUsage(msgspec.Struct, frozen=True):
    scope: str
    """'platform' or 'account'."""
    max: int
    per_seconds: float
    used: int
    remaining: int
    frees_in_seconds: float
    """Until the next start is allowed (0 when there is room)."""


class Pause(msgspec.Struct, frozen=True):
    scope: str
    """'platform' or the account."""
    until_ms: int | None
    """None: until resumed."""
    reason: str


class LimitsReport(msgspec.Struct, frozen=True):
    stream: str
    account: str | None
    limits: list[LimitSpec]
    """Every limit of the stream (a min_interval shows as max 1)."""
    windows: list[WindowUsage]
    """Use of the platform's windows, and of the account's when one was asked for."""
    pauses: list[Pause]
    waiting_platform: int
    """Jobs deferred until the platform has room."""
    waiting_account: int | None
    parked: int | None
    platform_rate_per_second: float | None


async def report(
    redis: Redis, stream: str, limits: StreamLimits, account: str | None = None
) -> LimitsReport:
    """Usage and remaining capacity of each window (the account's when one is given)."""
    if account is not None:
        check_account(account)
    now = await channel.server_ms(redis)
    windows: list[WindowUsage] = []
    scopes: list[tuple[str, str, Windows]] = [("platform", keys.rate_log(stream), limits.platform)]
    if account is not None:
        scopes.append(("account", keys.rate_log(stream, account), limits.account))
    for scope, log, pairs in scopes:
        for count, window_ms in pairs:
            used = int(await redis.zcount(log, f"({now - window_ms}", "+inf"))
            frees = 0.0
            if used >= count:
                nth: Any = await redis.zrange(log, -count, -count, withscores=True)
                frees = max(0.0, (nth[0][1] + window_ms - now) / 1000) if nth else 0.0
            windows.append(
                WindowUsage(scope, count, window_ms / 1000, used, max(0, count - used), frees)
            )
    raw_pauses: Any = await redis.hgetall(keys.paused(stream))
    reasons: Any = await redis.hgetall(keys.pause_reasons(stream))
    pauses = []
    for field, value in sorted(raw_pauses.items()):
        until = int(value)
        if until != -1 and until <= now:
            continue
        name = codec.text(field)
        if account is not None and name not in ("platform", keys.pause_field(account)):
            continue
        pauses.append(
            Pause(
                scope=name.removeprefix("a:"),
                until_ms=None if until == -1 else until,
                reason=codec.text(reasons.get(field, b"")),
            )
        )
    waiting_account = parked = None
    if account is not None:
        waiting_account = int(await redis.zcard(keys.plan(stream, account)))
        parked = int(await redis.zcard(keys.parked(stream, account)))
    specs = [LimitSpec("platform", n, w / 1000) for n, w in limits.platform]
    specs += [LimitSpec("account", n, w / 1000) for n, w in limits.account]
    return LimitsReport(
        stream=stream,
        account=account,
        limits=specs,
        windows=windows,
        pauses=pauses,
        waiting_platform=int(await redis.zcard(keys.plan(stream))),
        waiting_account=waiting_account,
        parked=parked,
        platform_rate_per_second=platform_rate(limits),
    )


def ceiling_workers(limits: StreamLimits, service_seconds: float, concurrency: int) -> int | None:
    """The most workers a stream's platform limits can keep busy (None: no platform limit)."""
    rate = platform_rate(limits)
    if rate is None:
        return None
    return max(1, math.ceil(rate * service_seconds / concurrency))


_msgpack = msgspec.msgpack.Encoder().encode

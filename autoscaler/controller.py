"""`streamq autoscale`: every few seconds, observe each stream, decide, and resize its pool.

Only the leader acts. With the local target, controllers of the same streams take a Redis lock
named after them (SET NX PX with a token, renewed while they run), and each acquisition gets a
fencing number from INCR, logged with every decision; controllers of other streams do not
contend. On Kubernetes, a Lease does the same (autoscaler.kubernetes.LeaseLeadership).
Every decision that changes a pool is logged at INFO with its inputs and reason (the others at
DEBUG) and exported as metrics (autoscaler.metrics).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import anyio
from redis.asyncio import Redis
from redis.exceptions import RedisError

from autoscaler import metrics
from autoscaler.observe import StreamWatch
from autoscaler.policy import Policy, Scaler
from autoscaler.targets import Target, TargetError
from streamq import keys, limiter, scripts
from streamq.config import Config

log = logging.getLogger("streamq.autoscaler")


def identity() -> str:
    """This controller, for locks and Leases: host, pid and a random part."""
    return f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class Leadership(Protocol):
    fence: int | None

    async def hold(self) -> bool: ...

    async def still_leading(self) -> bool:
        """True while the leadership last held has not lapsed (checked before every act)."""
        ...

    async def release(self) -> None: ...


class Unelected:
    """For dry runs: decides without taking any lock or Lease from the real controllers."""

    fence: int | None = None

    async def hold(self) -> bool:
        return True

    async def still_leading(self) -> bool:
        return True

    async def release(self) -> None:
        return None


class RedisLeadership:
    """A Redis lock held while this controller runs; ``fence`` grows with every new leader."""

    def __init__(self, redis: Redis, streams: Sequence[str], ttl_seconds: float) -> None:
        self.redis = redis
        self.key = keys.autoscaler_leader(list(streams))
        self.fence_key = keys.autoscaler_fence(list(streams))
        self.ttl_ms = round(ttl_seconds * 1000)
        self.token = identity()
        self.fence: int | None = None

    async def hold(self) -> bool:
        """Take or keep the lock; False while another controller leads."""
        if self.fence is not None:
            if await scripts.renew_leadership(self.redis, self.key, self.token, ttl_ms=self.ttl_ms):
                return True
            log.warning("lost the leadership (fence %d)", self.fence)
            self.fence = None
        if await self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms):
            self.fence = int(await self.redis.incr(self.fence_key))
            log.info("leading the autoscaling (fence %d)", self.fence)
            return True
        return False

    async def still_leading(self) -> bool:
        if self.fence is None:
            return False
        holder: Any = await self.redis.get(self.key)
        return holder is not None and holder.decode() == self.token

    async def release(self) -> None:
        """Give the lock up on a clean stop, so the next leader need not wait it out."""
        if self.fence is not None:
            await scripts.release_leadership(self.redis, self.key, self.token)
            self.fence = None


async def run(
    redis: Redis,
    streams: Sequence[str],
    policies: Mapping[str, Policy],
    target: Target,
    config: Config,
    *,
    leadership: Leadership | None = None,
    interval: float = 5.0,
    ticks: int | None = None,
) -> None:
    """Observe, decide and scale every ``interval`` seconds (``ticks`` times, or forever)."""
    watches = {
        stream: StreamWatch(
            redis,
            stream,
            limiter.limits_for(stream, config.stream(stream).limits),
            policies[stream].lead,
        )
        for stream in streams
    }
    scalers = {stream: Scaler(policies[stream]) for stream in streams}
    if leadership is None:
        leadership = RedisLeadership(redis, streams, ttl_seconds=max(3 * interval, 5.0))
    done = 0
    try:
        while ticks is None or done < ticks:
            try:
                leading = await leadership.hold()
            except (RedisError, OSError) as exc:  # a blip: no one acts until it answers again
                log.warning("leader election: %s; trying again next tick", exc)
                leading = False
            metrics.record_leadership(leadership.fence if leading else None)
            if leading:
                for stream in streams:
                    await _tick(stream, watches[stream], scalers[stream], target, leadership)
            done += 1
            await anyio.sleep(interval)
    finally:
        with anyio.CancelScope(shield=True):
            await leadership.release()


async def _tick(
    stream: str, watch: StreamWatch, scaler: Scaler, target: Target, leadership: Leadership
) -> None:
    try:
        current = await target.workers(stream)
        seen = await watch.observe(current)
        decision = scaler.decide(seen)
        metrics.record(stream, seen, decision)
        changes = decision.workers != current
        log.log(
            logging.INFO if changes else logging.DEBUG,
            "%s: %d -> %d workers (fence %s; backlog %d, arrivals %.1f/s, service %.3fs, "
            "due soon %d, ceiling %s; %s)",
            stream,
            current,
            decision.workers,
            leadership.fence,
            seen.backlog,
            seen.arrival_rate,
            seen.service_seconds,
            seen.due_soon,
            "none" if seen.rate_ceiling is None else f"{seen.rate_ceiling:g}/s",
            decision.reason,
        )
        if changes:
            # A tick can outlast the lock when the API is slow: act only while still leading.
            if not await leadership.still_leading():
                log.warning("%s: leadership lapsed before resizing; deciding again", stream)
                return
            await target.scale(stream, decision.workers)
    except (TargetError, RedisError, OSError) as exc:
        metrics.TARGET_ERRORS.labels(stream).inc()
        log.warning("%s: %s; trying again next tick", stream, exc)

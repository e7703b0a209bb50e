"""`streamq autoscale`: every few seconds, observe each stream, decide, and resize its pool.

Only the leader acts: controllers of the same streams take a Redis lock named after them (SET NX
PX with a token, renewed while they run), and each acquisition gets a fencing number from INCR,
logged with every decision. Controllers of other streams do not contend.
Targets:
- ``LocalTarget`` runs ``streamq consume`` processes on this machine: starts them, stops the
  newest with SIGTERM (they finish their jobs), and replaces any that died.
- dry run: decisions are logged and nothing is changed.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Sequence
from typing import Any, Final, Protocol

import anyio
from redis.asyncio import Redis

from autoscaler.observe import StreamWatch
from autoscaler.policy import Policy, Scaler
from streamq import keys, limiter
from streamq.config import Config

log = logging.getLogger("streamq.autoscaler")

LEADER_PREFIX: Final = f"{keys.PREFIX}:autoscaler:leader:"

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class Target(Protocol):
    def workers(self, stream: str) -> int: ...

    def scale(self, stream: str, count: int) -> None: ...

    def close(self) -> None: ...


class DryRun:
    """Changes nothing; remembers what it was told so decisions build on each other."""

    def __init__(self) -> None:
        self._sizes: dict[str, int] = {}

    def workers(self, stream: str) -> int:
        return self._sizes.get(stream, 0)

    def scale(self, stream: str, count: int) -> None:
        self._sizes[stream] = count

    def close(self) -> None:
        return None


class LocalTarget:
    """``streamq consume`` processes on this machine, per stream."""

    def __init__(self, consume_args: dict[str, list[str]], grace_seconds: float = 30.0) -> None:
        self.consume_args = consume_args
        self.grace_seconds = grace_seconds
        self._pools: dict[str, list[subprocess.Popen[bytes]]] = {}
        self._stopping: list[subprocess.Popen[bytes]] = []

    def workers(self, stream: str) -> int:
        pool = self._pools.setdefault(stream, [])
        alive = [p for p in pool if p.poll() is None]
        if len(alive) < len(pool):
            log.warning("%d %s worker(s) exited: replacing", len(pool) - len(alive), stream)
            self._pools[stream] = alive
            self.scale(stream, len(pool))
        self._stopping = [p for p in self._stopping if p.poll() is None]
        return len(self._pools[stream])

    def scale(self, stream: str, count: int) -> None:
        pool = self._pools.setdefault(stream, [])
        while len(pool) < count:
            pool.append(
                subprocess.Popen(
                    [sys.executable, "-m", "streamq", "consume", *self.consume_args[stream]],
                    stdin=subprocess.DEVNULL,
                )
            )
        while len(pool) > count:
            process = pool.pop()
            process.send_signal(signal.SIGTERM)  # finishes its running jobs, then exits
            self._stopping.append(process)

    def close(self) -> None:
        every = [p for pool in self._pools.values() for p in pool] + self._stopping
        for process in every:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in every:
            try:
                process.wait(self.grace_seconds + 5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._pools.clear()
        self._stopping.clear()


class Leadership:
    """A Redis lock held while this controller runs; ``fence`` grows with every new leader."""

    def __init__(self, redis: Redis, streams: Sequence[str], ttl_seconds: float) -> None:
        self.redis = redis
        self.key = LEADER_PREFIX + ",".join(sorted(streams))
        self.fence_key = self.key + ":fence"
        self.ttl_ms = round(ttl_seconds * 1000)
        self.token = f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.fence: int | None = None

    async def hold(self) -> bool:
        """Take or keep the lock; False while another controller leads."""
        if self.fence is not None:
            renewed: Any = await self.redis.eval(_RENEW, 1, self.key, self.token, self.ttl_ms)
            if renewed:
                return True
            log.warning("lost the leadership (fence %d)", self.fence)
            self.fence = None
        if await self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms):
            self.fence = int(await self.redis.incr(self.fence_key))
            log.info("leading the autoscaling (fence %d)", self.fence)
            return True
        return False


async def run(
    redis: Redis,
    streams: Sequence[str],
    policy: Policy,
    target: Target,
    config: Config,
    *,
    interval: float = 5.0,
    ticks: int | None = None,
) -> None:
    """Observe, decide and scale every ``interval`` seconds (``ticks`` times, or forever)."""
    watches = {
        stream: StreamWatch(
            redis, stream, limiter.limits_for(stream, config.stream(stream).limits), policy.lead
        )
        for stream in streams
    }
    scalers = {stream: Scaler(policy) for stream in streams}
    leadership = Leadership(redis, streams, ttl_seconds=max(3 * interval, 5.0))
    done = 0
    while ticks is None or done < ticks:
        if await leadership.hold():
            for stream in streams:
                current = target.workers(stream)
                decision = scalers[stream].decide(await watches[stream].observe(current))
                if decision.workers != current:
                    log.info(
                        "%s: %d -> %d workers (fence %s; %s)",
                        stream,
                        current,
                        decision.workers,
                        leadership.fence,
                        decision.reason,
                    )
                    target.scale(stream, decision.workers)
        done += 1
        await anyio.sleep(interval)

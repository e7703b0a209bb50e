"""What a process hears from the server: its clock, and a stream's control channel.

Due times, delays, expiry and rate-limit windows all follow the server's clock (TIME), never a
process's own, so processes whose clocks disagree still agree on what is due.

    server_ms(redis)    now by the server's clock: one round trip
    ServerClock         the server's clock without a round trip: this process's clock plus an
                        offset, set from TIME or from a script's answer (scripts read TIME)
    ControlListener     follows ``streamq:{S}:control``, where scripts and producers tell a
                        stream's workers about cancellations ('c'), platform pauses ('p') and
                        wake-ups ('w': a job is due before everything else waiting)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import anyio
from redis.asyncio import Redis

from streamq import connection, keys
from streamq.connection import TRANSIENT_ERRORS

log = logging.getLogger("streamq.scheduler")


async def server_ms(redis: Redis) -> int:
    """Now by the server's clock, in ms since the epoch."""
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


class ServerClock:
    """The server's clock read locally: ``clock()`` (seconds) plus the last known offset."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.offset_ms = 0
        """Server clock minus this process's clock, as of the last sync."""
        self.synced = False

    def now_ms(self) -> int:
        return round(self.clock() * 1000) + self.offset_ms

    def saw(self, server_now_ms: int) -> None:
        """The server's clock read just now (a script's answer): the offset follows it."""
        self.offset_ms = server_now_ms - round(self.clock() * 1000)
        self.synced = True

    async def sync(self, redis: Redis) -> None:
        self.saw(await server_ms(redis))


class ControlListener:
    """Hands what arrives on a stream's control stream to its callbacks, from the position
    noted by ``prepare`` (or from the stream's end when run unprepared)."""

    def __init__(
        self,
        redis: Redis,
        stream: str,
        *,
        on_cancel: Callable[[str], None] = lambda job_id: None,
        on_platform_pause: Callable[[int], None] = lambda until_ms: None,
        on_wake: Callable[[], None] = lambda: None,
    ) -> None:
        self.redis = redis
        self.stream = stream
        self.on_cancel = on_cancel
        self.on_platform_pause = on_platform_pause
        self.on_wake = on_wake
        self._last_id: bytes | None = None

    async def prepare(self) -> None:
        """Note where the control stream stands, before the worker takes any job: a
        cancellation sent from then on reaches this worker."""
        self._last_id = await self._newest_id(self.redis)

    async def run(self) -> None:
        """Listen until cancelled, on a connection of its own (a blocking read holds it)."""
        listener = connection.own_connection(self.redis)
        try:
            if self._last_id is None:
                self._last_id = await self._newest_id(listener)
            await self._listen(listener, self._last_id)
        finally:
            if listener is not self.redis:
                with anyio.CancelScope(shield=True):
                    await listener.aclose()

    async def _newest_id(self, redis: Redis) -> bytes:
        newest: Any = await redis.xrevrange(keys.control(self.stream), count=1)
        return newest[0][0] if newest else b"0-0"

    async def _listen(self, listener: Redis, last_id: bytes) -> None:
        control = keys.control(self.stream)
        while True:
            try:
                reply: Any = await listener.xread({control: last_id}, count=100, block=5000)
            except TRANSIENT_ERRORS as exc:
                log.warning("control stream read failed, retrying: %s", exc)
                await anyio.sleep(1)
                continue
            for _, messages in reply or []:
                for message_id, fields in messages:
                    last_id = self._last_id = message_id
                    if b"c" in fields:
                        self.on_cancel(fields[b"c"].decode())
                    if b"p" in fields:
                        self.on_platform_pause(int(fields[b"p"]))
                    if b"w" in fields:
                        self.on_wake()

"""A worker's claims on its consumer group: taking over entries of consumers that died,
keeping its own fresh, and leaving the group when it stops.

    lapsed_loop                   entries of consumers whose heartbeat lapsed (dead, frozen
                                  or cut off: streamq.heartbeat) are claimed at once, whatever
                                  their idle time, and those consumers fenced
    reclaim_loop                  entries idle past the visibility timeout (their consumer
                                  crashed or stalled) are claimed and enter through the
                                  fetcher's ``accept``, which counts their deliveries
    reclaim_once                  both, once: a burst worker's look for what is left
    refresh_loop                  the claims of the jobs this worker holds are renewed every
                                  third of the visibility timeout, so nobody takes them over
    retire                        the consumer leaves the group once its entries are settled

Between a handler that blocks the event loop and these loops stands the heartbeat thread
(streamq.heartbeat), which refreshes the same claims from a thread of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Final

import anyio
from redis import exceptions as redis_errors

from streamq import scripts
from streamq.connection import TRANSIENT_ERRORS
from streamq.fetcher import Fetcher, lane_gone
from streamq.heartbeat import gap_ms

log = logging.getLogger("streamq.worker")  # the worker's logger: this module serves it

HEARTBEAT_SECONDS: Final = 5.0
"""How often a worker touches its consumer group at the least: the reclaimer's period."""


class Reclaimer:
    """Works for a fetcher: what it reclaims enters through the fetcher's ``accept`` and
    goes to the same lane buffers, whose claims it refreshes."""

    def __init__(self, fetcher: Fetcher) -> None:
        self.fetcher = fetcher
        self.redis = fetcher.redis
        self.stream = fetcher.stream
        self.consumer = fetcher.consumer
        self.options = fetcher.options
        self.buffers = fetcher.buffers
        self.counts = fetcher.counts
        self.stop_event = fetcher.stop_event
        self._cursors: list[str] = ["0-0"] * len(fetcher.lanes)

    async def reclaim_loop(self) -> None:
        await self._repeat(
            self.reclaim_idle,
            min(HEARTBEAT_SECONDS, self.options.visibility_timeout / 4),
            "reclaim",
            logging.WARNING,
        )

    async def lapsed_loop(self) -> None:
        # Eight looks per liveness timeout: a dead worker's jobs move within about 1.1 of it.
        await self._repeat(
            self.reclaim_lapsed,
            self.options.liveness_timeout / 8,
            "reclaim of lapsed workers",
            logging.DEBUG,
        )

    async def _repeat(
        self, step: Callable[[], Awaitable[int]], period: float, what: str, level: int
    ) -> None:
        """``step`` every ``period`` seconds for the worker's life: a lost connection is tried
        again next time, a lane deleted under it (the stream purged) is no error."""
        while True:
            try:
                await step()
            except TRANSIENT_ERRORS as exc:
                log.log(level, "%s failed, will try again: %s", what, exc)
            except redis_errors.ResponseError as exc:
                if not lane_gone(exc):
                    raise
            await anyio.sleep(period)

    def _room(self) -> int:
        return max(0, self.options.concurrency + self.fetcher.prefetch - self.buffers.claimed)

    async def reclaim_lapsed(self) -> int:
        """Claim the entries of consumers whose heartbeat lapsed; returns how many were taken."""
        if self.stop_event.is_set():
            return 0
        room = self._room()
        if not room:
            return 0
        liveness_ms = int(self.options.liveness_timeout * 1000)
        reply = await scripts.reclaim_lapsed(
            self.redis,
            self.stream,
            self.consumer,
            count=room,
            liveness_ms=liveness_ms,
            gap_ms=gap_ms(liveness_ms),
        )
        return await self._accept(reply, "entries of a worker whose heartbeat lapsed")

    async def reclaim_idle(self) -> int:
        """Claim entries idle past the visibility timeout (and drop the consumers gone from
        the group); returns how many were taken."""
        if self.stop_event.is_set():
            return 0
        reply = await scripts.reclaim_jobs(
            self.redis,
            self.stream,
            self.consumer,
            min_idle_ms=int(self.options.visibility_timeout * 1000),
            count=self._room(),
            cursors=self._cursors,
            gap_ms=gap_ms(int(self.options.liveness_timeout * 1000)),
        )
        for lane, claimed in enumerate(reply):
            self._cursors[lane] = claimed.cursor
        return await self._accept(reply, "idle entries")

    async def reclaim_once(self) -> int:
        """Both, once (a burst worker's last look before it stops): the entries of workers
        whose heartbeat lapsed, then entries idle past the visibility timeout."""
        return await self.reclaim_lapsed() + await self.reclaim_idle()

    async def _accept(self, reply: list[scripts.Reclaimed], what: str) -> int:
        found = 0
        for lane, claimed in enumerate(reply):
            if self.stop_event.is_set() and claimed.entries:
                # Stopped while the claim was on the wire: they stay pending, and another
                # worker takes them once this one's heartbeat lapses.
                continue
            if claimed.entries:
                lane_name = self.fetcher.lanes[lane]
                log.info("reclaimed %d %s (%s)", len(claimed.entries), what, lane_name)
                found += await self.fetcher.accept(lane, claimed.entries, claimed.deliveries)
        self.counts.reclaimed += found
        return found

    async def refresh_loop(self) -> None:
        period = self.options.visibility_timeout / 3
        while True:
            await anyio.sleep(period)
            if not self.buffers.claimed:
                continue
            held = [list(ids) for ids in self.buffers.held]
            try:
                lost = await scripts.refresh_claims(self.redis, self.stream, self.consumer, held)
            except (*TRANSIENT_ERRORS, redis_errors.ResponseError) as exc:
                log.warning("could not refresh claims, will try again: %s", exc)
                continue
            # Someone else runs them now; stop refreshing (their results are still recorded).
            self.buffers.forget(lost)
            if lost:
                log.warning(
                    "%d entries were taken over by another consumer while running here "
                    "(this worker stalled past the visibility timeout)",
                    len(lost),
                )

    async def retire(self) -> None:
        try:
            await scripts.retire_consumer(self.redis, self.stream, self.consumer)
        except (*TRANSIENT_ERRORS, redis_errors.ResponseError) as exc:
            log.debug("could not retire consumer %s: %s", self.consumer, exc)

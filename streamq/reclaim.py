"""A worker's claims on its consumer group: taking over entries of consumers that died,
keeping its own fresh, and leaving the group when it stops.

    reclaim_loop / reclaim_once   entries idle past the visibility timeout (their consumer
                                  crashed or stalled) are claimed and enter through the
                                  fetcher's ``accept``, which counts their deliveries
    refresh_loop                  the claims of the jobs this worker holds are renewed every
                                  third of the visibility timeout, so nobody takes them over
    retire                        the consumer leaves the group once its entries are settled

Between a handler that blocks the event loop and these loops stands the heartbeat thread
(streamq.heartbeat), which refreshes the same claims from a thread of its own.
"""

from __future__ import annotations

import logging
from typing import Final

import anyio
from redis import exceptions as redis_errors

from streamq import scripts
from streamq.connection import TRANSIENT_ERRORS
from streamq.fetcher import Fetcher, lane_gone

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
        period = min(HEARTBEAT_SECONDS, self.options.visibility_timeout / 4)
        while True:
            try:
                await self.reclaim_once()
            except TRANSIENT_ERRORS as exc:
                log.warning("reclaim failed, will try again: %s", exc)
            except redis_errors.ResponseError as exc:
                if not lane_gone(exc):
                    raise
            await anyio.sleep(period)

    async def reclaim_once(self) -> int:
        """Claim entries idle past the visibility timeout; returns how many were taken."""
        if self.stop_event.is_set():
            return 0
        room = max(0, self.options.concurrency + self.fetcher.prefetch - self.buffers.claimed)
        reply = await scripts.reclaim_jobs(
            self.redis,
            self.stream,
            self.consumer,
            min_idle_ms=int(self.options.visibility_timeout * 1000),
            count=room,
            cursors=self._cursors,
        )
        found = 0
        for lane, claimed in enumerate(reply):
            self._cursors[lane] = claimed.cursor
            if self.stop_event.is_set() and claimed.entries:
                # Stopped while the claim was on the wire: they stay pending, and another
                # worker reclaims them once the visibility timeout passes.
                continue
            if claimed.entries:
                log.info(
                    "reclaimed %d idle %s entries", len(claimed.entries), self.fetcher.lanes[lane]
                )
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

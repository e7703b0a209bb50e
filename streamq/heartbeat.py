"""The worker's claims kept fresh from a thread, when its event loop cannot do it.

A handler that blocks the event loop (``time.sleep`` or CPU-bound work inside ``async def``)
stops every task of the worker: the refresher would miss its turn, the claims would go idle
past the visibility timeout, and another worker would take over jobs that are still running
here, to run them twice. So a daemon thread watches the loop:

    loop   the watchdog stamps ``Heartbeat.tick()`` every 0.25 s (no Redis, nothing per job)
    thread wakes every ``check_every`` s; while the stamp is fresh it does nothing at all;
           once the loop has not ticked for ``stall_after`` s it logs one line, counts the
           stall in the metrics, and refreshes the claims through its own synchronous
           connection until the loop runs again

It refreshes (refresh_pending.lua) the entries the loop holds and the finished ones it has not
acknowledged (a copy taken under the GIL), which this consumer still owns, and the entries
delivered to it since the stall began: a blocking read the loop had sent receives entries it
has not looked at yet. An older entry the loop does not know is not kept: its read's reply
was lost (a dropped connection), and another worker must reclaim it. The thread gives up once a
stall outlasts the job timeout: a loop blocked that long will not finish its jobs, and other
workers should have them. It stops with the worker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Final

import prometheus_client
import redis as sync_redis
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from streamq import connection, keys, scripts

log = logging.getLogger("streamq.worker")

STALLED: Final = prometheus_client.Gauge(
    "streamq_event_loop_stalled_seconds",
    "How long the worker's event loop has not run (0 while it runs): a handler is blocking it.",
    ["stream"],
)
STALLS: Final = prometheus_client.Counter(
    "streamq_event_loop_stalls_total",
    "Times the worker's event loop stopped for longer than the stall threshold.",
    ["stream"],
)


class Heartbeat:
    def __init__(
        self,
        redis: Redis,
        stream: str,
        consumer: str,
        held: Callable[[], list[list[bytes]]],
        running: Callable[[], list[str]],
        *,
        visibility_timeout: float,
        give_up_after: float | None,
        stall_after: float | None = None,
    ) -> None:
        self._async_client = redis
        self._stream = stream
        self._consumer = consumer
        self._lanes = keys.lanes(stream)
        self._held = held
        self._running = running
        self.refresh_every = visibility_timeout / 3
        # Soon enough that a claim the loop refreshed just before it stopped is refreshed again
        # within the visibility timeout (after refresh_every + stall_after + check_every at
        # most), and well above the watchdog's stamping period, which a busy loop stretches.
        default = max(0.5, min(2.0, visibility_timeout / 4))
        self.stall_after = stall_after if stall_after is not None else default
        self.check_every = self.stall_after / 4
        self._give_up_after = give_up_after
        self._ticked = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: sync_redis.Redis | None = None
        self._stalled = STALLED.labels(stream)
        self._stalls = STALLS.labels(stream)
        self.stalls = 0
        """Stalls seen so far (also in the metrics)."""
        self.longest_stall = 0.0

    def tick(self) -> None:
        """Called from the event loop: it is running."""
        self._ticked = time.monotonic()

    def start(self) -> None:
        self._ticked = time.monotonic()
        self._thread = threading.Thread(
            target=self._run, name=f"streamq-heartbeat-{self._stream}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._client is not None:
            self._client.close()
        self._stalled.set(0)

    def _run(self) -> None:
        stall_began: float | None = None
        refreshed = 0.0
        gave_up = False
        while not self._stop.wait(self.check_every):
            now = time.monotonic()
            quiet = now - self._ticked
            if quiet < self.stall_after:
                if stall_began is not None:
                    lasted = self._ticked - stall_began
                    self.longest_stall = max(self.longest_stall, lasted)
                    self._stalled.set(0)
                    log.warning(
                        "event loop ran again after a stall of %.1fs",
                        lasted,
                        extra={"stream": self._stream, "consumer": self._consumer},
                    )
                stall_began, gave_up = None, False
                continue
            if stall_began is None:
                stall_began = self._ticked
                refreshed = 0.0  # at once: the loop's last refresh may be a while ago
                self.stalls += 1
                self._stalls.inc()
                log.warning(
                    "event loop stalled for %.1fs (running jobs: %s): a handler is blocking "
                    "it; its claims are kept from a thread",
                    quiet,
                    ", ".join(self._running()) or "none",
                    extra={"stream": self._stream, "consumer": self._consumer},
                )
            self._stalled.set(quiet)
            if self._give_up_after is not None and quiet > self._give_up_after:
                if not gave_up:
                    gave_up = True
                    log.warning(
                        "event loop stalled for %.0fs, past the job timeout: no longer keeping "
                        "its claims, other workers will take its jobs over",
                        quiet,
                        extra={"stream": self._stream, "consumer": self._consumer},
                    )
                continue
            if now - refreshed >= self.refresh_every:
                refreshed = now
                self._refresh(now - stall_began)

    def _refresh(self, stalled: float) -> None:
        if self._client is None:
            self._client = connection.sync_twin(self._async_client, self._lanes[0])
        try:
            scripts.refresh_pending(
                self._client,
                self._stream,
                self._consumer,
                self._held(),
                stalled_ms=int(stalled * 1000),
            )
        except (redis_errors.RedisError, OSError) as exc:
            log.warning("heartbeat could not refresh claims, will try again: %s", exc)

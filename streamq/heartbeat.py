"""The worker's heartbeat: a thread that says the worker is alive, and keeps its claims fresh
when its event loop cannot.

Liveness. Every quarter of the liveness timeout (``liveness_timeout``, 2 s) the thread beats
(beat.lua): the consumer counts as alive until now + the liveness timeout, by the server's
clock, in the stream's liveness hash. It beats from a thread of its own so that a handler that
blocks the loop does not make its worker look dead; a killed, frozen or cut-off process stops
beating, and once its deadline passes a live worker takes its entries over at once
(streamq.reclaim, reclaim_lapsed.lua) and fences it, so that if it was only frozen its late
outcomes for those entries are dropped (finish_jobs.lua). Each beat sends the server's run id,
read by INFO on the same connection just before: a new run id (the server restarted, or a
replica took over) starts a new epoch, within which the time the server was down counts neither
as a lapsed heartbeat nor as idle time (see epoch.lua).

A handler that blocks the event loop (``time.sleep`` or CPU-bound work inside ``async def``)
stops every task of the worker: the refresher would miss its turn, the claims would go idle
past the visibility timeout, and another worker would take over jobs that are still running
here, to run them twice. So a daemon thread watches the loop:

    loop   the watchdog stamps ``Heartbeat.tick()`` every 0.25 s (no Redis, nothing per job)
    thread wakes every ``check_every`` s; while the stamp is fresh it does nothing at all;
           once the loop has not ticked for ``stall_after`` s it logs one line, counts the
           stall in the metrics, and refreshes the claims through its own synchronous
           connection until the loop runs again

Claims. It refreshes (refresh_pending.lua) the entries the loop holds and the finished ones it
has not acknowledged (a copy taken under the GIL), which this consumer still owns, and the entries
delivered to it since the stall began: a blocking read the loop had sent receives entries it
has not looked at yet. An older entry the loop does not know is not kept: its read's reply
was lost (a dropped connection), and another worker must reclaim it. The thread gives up once a
stall outlasts the job timeout: a loop blocked that long will not finish its jobs, and other
workers should have them; it stops beating then too, so they take them over at once. It stops
with the worker.
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


def gap_ms(liveness_ms: int) -> int:
    """No heartbeat from any worker for this long starts a new epoch (epoch.lua): half the
    liveness timeout, two missed beats of a worker: a restart that lasted longer is seen by
    the gap even by a script that runs before any beat has brought the new run id."""
    return liveness_ms // 2


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
        liveness_timeout: float = 2.0,
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
        self.liveness_ms = int(liveness_timeout * 1000)
        self.beat_every = liveness_timeout / 4
        self.epoch_since: int | None = None
        """When the server's current epoch began (server ms), as the latest beat saw it."""
        self.beats = 0
        """Beats that reached the server."""
        self.live_workers: int | None = None
        """How many workers of the stream were alive at the latest beat (this one too)."""
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
        beaten = time.monotonic()
        self._beat()
        while not self._stop.wait(min(self.check_every, self.beat_every)):
            now = time.monotonic()
            quiet = now - self._ticked
            if not gave_up and now - beaten >= self.beat_every:
                beaten = now
                self._beat()
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

    def _connection(self) -> sync_redis.Redis:
        if self._client is None:
            self._client = connection.sync_twin(self._async_client, self._lanes[0])
        return self._client

    def _beat(self) -> None:
        client = self._connection()
        try:
            # The run id and the beat on one connection (the twin holds one). Only a restart
            # falling between the two lets a beat carry the previous run id to the next server
            # (the client retries on a new connection); the gap (epoch.lua) still sees a restart
            # that lasted longer than gap_ms, and the next beat brings the new run id.
            run_id = str(client.info("server")["run_id"])
            _, since, live = scripts.beat(
                client,
                self._stream,
                self._consumer,
                liveness_ms=self.liveness_ms,
                run_id=run_id,
                gap_ms=gap_ms(self.liveness_ms),
            )
        except (redis_errors.RedisError, OSError) as exc:
            log.warning("heartbeat could not beat, will try again: %s", exc)
            return
        if self.epoch_since is not None and since != self.epoch_since:
            log.warning(
                "the server's epoch changed (a restart, a failover or a gap in the heartbeats): "
                "no worker is taken for dead, nor any claim for idle, for the time before it",
                extra={"stream": self._stream, "consumer": self._consumer},
            )
        self.epoch_since = since
        self.live_workers = live
        self.beats += 1

    def _refresh(self, stalled: float) -> None:
        client = self._connection()
        try:
            scripts.refresh_pending(
                client,
                self._stream,
                self._consumer,
                self._held(),
                stalled_ms=int(stalled * 1000),
            )
        except (redis_errors.RedisError, OSError) as exc:
            log.warning("heartbeat could not refresh claims, will try again: %s", exc)

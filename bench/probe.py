"""What every benchmarked handler calls: one probe, the same for streamq and its peers.

A handler calls ``hit(tag)`` when it runs. The probe notes the time on the *server's* clock
(the local clock plus an offset measured once against Redis TIME) and a background thread
ships the notes to Redis every few milliseconds, so the handler itself never waits on the
network and every system pays the same small cost per job. What is shipped, under
``bench:<run>:...``:

- ``done``: a counter of hits;
- ``span``: a hash, per process, of its first and last hit (ms), for rates;
- ``times``: a list of "tag,ms;tag,ms;..." chunks, when BENCH_PROBE_TIMES=1 (lateness: the tag
  is the due time);
- ``ids``: a hash tag -> hits, when BENCH_PROBE_IDS=1 (lost and duplicated jobs).

This module runs inside the peers' virtualenvs too, so it imports nothing but the standard
library and the synchronous redis-py client, and is configured by environment variables
(BENCH_PROBE_URL, BENCH_PROBE_RUN) that the bench sets for the worker processes it starts.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import redis

FLUSH_SECONDS = 0.01


def server_offset_ms(client: redis.Redis) -> float:
    """Server clock minus local clock, from the TIME sample with the shortest round trip."""
    best: tuple[float, float] | None = None
    for _ in range(7):
        before = time.time()
        seconds, micros = client.time()
        after = time.time()
        rtt = after - before
        offset = (seconds + micros / 1e6) - (before + after) / 2
        if best is None or rtt < best[0]:
            best = (rtt, offset)
    assert best is not None
    return best[1] * 1000


def key(run: str, kind: str) -> str:
    return f"bench:{run}:{kind}"


class Probe:
    def __init__(self, url: str, run: str, *, times: bool, ids: bool) -> None:
        self.client = redis.Redis.from_url(url)
        self.run = run
        self.times = times
        self.ids = ids
        self.offset_ms = server_offset_ms(self.client)
        self.name = f"{os.getpid()}"
        self._lock = threading.Lock()
        self._pending: list[tuple[Any, float]] = []
        self._count = 0
        self._first: float | None = None
        self._last = 0.0
        threading.Thread(target=self._flush_forever, daemon=True, name="bench-probe").start()

    def now_ms(self) -> float:
        return time.time() * 1000 + self.offset_ms

    def hit(self, tag: Any, at_ms: float | None = None) -> None:
        now = self.now_ms() if at_ms is None else at_ms
        with self._lock:
            self._count += 1
            if self._first is None:
                self._first = now
            self._last = now
            if self.times or self.ids:
                self._pending.append((tag, now))

    def _flush_forever(self) -> None:
        while True:
            time.sleep(FLUSH_SECONDS)
            try:
                self.flush()
            except redis.RedisError:
                # The bench stops the server when it is done; a late flush has nowhere to go.
                return

    def flush(self) -> None:
        with self._lock:
            count, self._count = self._count, 0
            pending, self._pending = self._pending, []
            first, last = self._first, self._last
        if not count:
            return
        pipe = self.client.pipeline(transaction=False)
        if self.times:
            pipe.rpush(key(self.run, "times"), ";".join(f"{t},{ms:.3f}" for t, ms in pending))
        if self.ids:
            for tag, _ in pending:
                pipe.hincrby(key(self.run, "ids"), str(tag), 1)
        pipe.hset(key(self.run, "span"), self.name, f"{first:.3f},{last:.3f}")
        # The counter goes last: once it reaches the total, everything above has landed.
        pipe.incrby(key(self.run, "done"), count)
        pipe.execute()


_probe: Probe | None = None
_probe_lock = threading.Lock()


def probe() -> Probe:
    """This process's probe, made on first use from the environment the bench set."""
    global _probe
    if _probe is None:
        with _probe_lock:
            if _probe is None:
                _probe = Probe(
                    os.environ["BENCH_PROBE_URL"],
                    os.environ["BENCH_PROBE_RUN"],
                    times=os.environ.get("BENCH_PROBE_TIMES") == "1",
                    ids=os.environ.get("BENCH_PROBE_IDS") == "1",
                )
    return _probe


def hit(tag: Any = None, at_ms: float | None = None) -> None:
    """Count one job; ``at_ms`` (server clock) when it started earlier than now."""
    probe().hit(tag, at_ms)

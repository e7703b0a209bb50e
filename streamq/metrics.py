"""Prometheus metrics of workers (and of any process that enqueues), served over HTTP.

    streamq consume --stream instagram --handler ... --metrics-port 9464

Everything is registered in prometheus_client's default registry, so a process that adds its
own metrics (the autoscaler does) exposes them on the same endpoint: call
``streamq.metrics.serve(port, host)`` once per process.

Labels are ``stream``, ``outcome`` and ``priority`` only, never job or account ids, so the
number of series stays bounded by streams × a few values.

The worker's hot path moves tens of thousands of jobs a second, so nothing here is touched per
job while it runs except one ``list.append`` of its handler time: counters move once per
finished batch (``inc(n)``), and histograms take a batch at a time (one bisect per value and
one lock per batch, against prometheus_client's three locks per ``observe``).

Per-stream figures (length, pending, lag, ...) are read from Redis by
``refresh_stream_figures``, a task on the caller's event loop, every few seconds; a scrape
only reads what the last refresh stored, so it never waits on Redis nor blocks the loop.
Every worker of a stream reports the same figures: aggregate them with ``max by (stream)``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from bisect import bisect_left
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import anyio
import prometheus_client
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from streamq import codec, keys, stats
from streamq.errors import ConfigError

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from streamq.job import Job

log = logging.getLogger("streamq.metrics")

REGISTRY: Final = prometheus_client.REGISTRY

# The `_created` series double every counter's and histogram's series for a timestamp that
# Prometheus itself derives from resets; exposed by default only for OpenMetrics' sake.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

LATENESS_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
)  # fmt: skip
"""Seconds: from "on time" (a few ms) to an hour late (a fleet that was down)."""
DURATION_BUCKETS: Final = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip
"""Seconds: platform API calls take 0.1–5 s; the low buckets show no-op and cached handlers."""

OUTCOMES: Final = {
    codec.OUTCOME_NAMES[codec.Done]: "done",
    codec.OUTCOME_NAMES[codec.Retried]: "retried",
    codec.OUTCOME_NAMES[codec.Dead]: "dead",
    codec.OUTCOME_NAMES[codec.Expired]: "expired",
    codec.OUTCOME_NAMES[codec.Cancelled]: "cancelled",
}
"""Outcomes that end a run (or a job) → the ``outcome`` label."""
DEFERRALS: Final = {
    codec.OUTCOME_NAMES[codec.Deferred]: "throttled",
    codec.OUTCOME_NAMES[codec.Parked]: "parked",
}
"""Outcomes that put a job aside without using an attempt; "limited" (over a rate limit
or paused at admission) is counted when the admission answers."""


class _Series:
    """One label set of a BatchedHistogram: bucket counts (not cumulative), sum."""

    __slots__ = ("_bounds", "_lock", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...], lock: threading.Lock) -> None:
        self._bounds = bounds
        self._lock = lock
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe_many(self, values: Sequence[float]) -> None:
        bounds, counts = self._bounds, self.counts
        with self._lock:  # the scrape reads from the HTTP server's thread
            for value in values:
                counts[bisect_left(bounds, value)] += 1
            self.sum += sum(values)


class BatchedHistogram(Collector):
    """A Prometheus histogram fed a batch of observations at a time."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: tuple[str, ...],
        buckets: tuple[float, ...],
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.buckets = buckets
        self._lock = threading.Lock()
        self._series: dict[tuple[str, ...], _Series] = {}
        if registry is not None:
            registry.register(self)

    def labels(self, *values: str) -> _Series:
        with self._lock:
            series = self._series.get(values)
            if series is None:
                series = self._series[values] = _Series(self.buckets, self._lock)
            return series

    def describe(self) -> Iterable[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        bounds = [floatToGoString(b) for b in self.buckets] + ["+Inf"]  # type: ignore[no-untyped-call]
        with self._lock:
            for values, series in self._series.items():
                cumulative, running = [], 0
                for bound, count in zip(bounds, series.counts, strict=True):
                    running += count
                    cumulative.append((bound, float(running)))
                family.add_metric(list(values), cumulative, series.sum)
        yield family


JOBS_ENQUEUED: Final = prometheus_client.Counter(
    "streamq_jobs_enqueued_total",
    "Jobs added by this process (Producer.enqueue/enqueue_many), dedup hits excluded.",
    ["stream", "priority"],
)
JOBS_STARTED: Final = prometheus_client.Counter(
    "streamq_jobs_started_total",
    "Handler runs this worker started, counted when their batch is acknowledged.",
    ["stream", "priority"],
)
JOBS_COMPLETED: Final = prometheus_client.Counter(
    "streamq_jobs_completed_total",
    "Runs and jobs this worker finished, by outcome (done, retried, dead, expired, cancelled).",
    ["stream", "outcome"],
)
JOBS_DEFERRED: Final = prometheus_client.Counter(
    "streamq_jobs_deferred_total",
    "Jobs put aside without using an attempt: limited (rate limit or pause at admission), "
    "throttled (RateLimited, platform pause), parked (their account was paused).",
    ["stream", "outcome"],
)
JOB_DURATION: Final = BatchedHistogram(
    "streamq_job_duration_seconds",
    "Handler run time, successful or not.",
    ("stream",),
    DURATION_BUCKETS,
)
JOB_LATENESS: Final = BatchedHistogram(
    "streamq_job_lateness_seconds",
    "Start minus due time (the schedule, the retry time, or the enqueue time for jobs due "
    "at once), by the server's clock.",
    ("stream", "priority"),
    LATENESS_BUCKETS,
)


def jobs_enqueued(stream: str, priority: str, count: int) -> None:
    if count:
        JOBS_ENQUEUED.labels(stream, priority).inc(count)


@dataclass(slots=True)
class WorkerCounts:
    """What one worker did since it started (returned by ``Worker.run``)."""

    completed: int = 0
    """Jobs whose handler returned."""
    failed: int = 0
    """Runs that raised or timed out (each retried or dead-lettered)."""
    dead_lettered: int = 0
    deferred: int = 0
    """Runs that raised RateLimited."""
    limited: int = 0
    """Jobs read but not started: over a rate limit, or their account or platform paused."""
    parked: int = 0
    """Jobs that paused their account (Fail(pause_account=True)), or found it pausing."""
    expired: int = 0
    cancelled: int = 0
    reclaimed: int = 0
    released: int = 0

    def add(self, tally: dict[str, int]) -> None:
        """Count an acknowledged batch, as ``WorkerMetrics.finished`` tallied it."""
        self.completed += tally.get(codec.OUTCOME_NAMES[codec.Done], 0)
        self.dead_lettered += tally.get(codec.OUTCOME_NAMES[codec.Dead], 0)
        self.deferred += tally.get(codec.OUTCOME_NAMES[codec.Deferred], 0)
        self.expired += tally.get(codec.OUTCOME_NAMES[codec.Expired], 0)
        self.cancelled += tally.get(codec.OUTCOME_NAMES[codec.Cancelled], 0)
        self.parked += tally.get(codec.OUTCOME_NAMES[codec.Parked], 0)


class WorkerMetrics:
    """A worker's series, looked up once; updated once per acknowledged batch."""

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self.durations: list[float] = []
        """Handler times (s) appended by the worker as runs end; drained by ``finished``."""
        self._started = [JOBS_STARTED.labels(stream, lane) for lane in keys.LANES]
        self._completed = {name: JOBS_COMPLETED.labels(stream, o) for name, o in OUTCOMES.items()}
        self._deferred = {name: JOBS_DEFERRED.labels(stream, o) for name, o in DEFERRALS.items()}
        self._limited = JOBS_DEFERRED.labels(stream, "limited")
        self._duration = JOB_DURATION.labels(stream)
        self._lateness = [JOB_LATENESS.labels(stream, lane) for lane in keys.LANES]

    def finished(self, batch: Sequence[tuple[Job, codec.Outcome]]) -> dict[str, int]:
        """Count an acknowledged batch of outcomes; returns how many of each (by name)."""
        by_kind: dict[type[codec.Outcome], int] = {}
        started = [0, 0, 0]
        late: list[list[float]] = [[], [], []]
        for job, outcome in batch:
            kind = type(outcome)
            by_kind[kind] = by_kind.get(kind, 0) + 1
            start_ms = outcome.started_ms
            if start_ms:
                lane = job._lane
                started[lane] += 1
                env = job.envelope
                due = env.enqueued_at_ms if env.run_at_ms is None else env.run_at_ms
                late[lane].append(max(0.0, (start_ms - due) / 1000))
        tally = {codec.OUTCOME_NAMES[kind]: count for kind, count in by_kind.items()}
        for name, count in tally.items():
            counter = self._completed.get(name) or self._deferred.get(name)
            if counter is not None:
                counter.inc(count)
        for lane, count in enumerate(started):
            if count:
                self._started[lane].inc(count)
                self._lateness[lane].observe_many(late[lane])
        if self.durations:
            self._duration.observe_many(self.durations)
            self.durations.clear()
        return tally

    def limited(self, count: int) -> None:
        if count:
            self._limited.inc(count)

    def dead_lettered(self, count: int) -> None:
        """Entries dead-lettered without a run (foreign, or delivered too often)."""
        if count:
            self._completed[codec.OUTCOME_NAMES[codec.Dead]].inc(count)

    def lateness_counts(self) -> list[int]:
        """Lateness bucket counts (not cumulative) since the worker started, all lanes."""
        return [sum(column) for column in zip(*(s.counts for s in self._lateness), strict=True)]


# -- per-stream figures from Redis --------------------------------------------------------------

_STREAM_GAUGES: Final = (
    ("length", "Entries in the stream's lanes: waiting plus in flight."),
    ("pending", "Entries delivered to a worker and not yet acknowledged."),
    ("lag", "Entries not yet delivered to any worker (waiting)."),
    ("delayed", "Scheduled jobs and retries waiting for their time."),
    ("dead", "Entries in the dead-letter stream."),
    ("consumers", "Workers seen by the consumer group within the last 15 s."),
    ("oldest_pending_age_seconds", "Age of the oldest unacknowledged entry."),
)


class StreamFigures(Collector):
    """The last figures read for each stream, exposed as ``streamq_stream_*`` gauges."""

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        self._figures: dict[str, stats.StreamStats] = {}
        if registry is not None:
            registry.register(self)

    def update(self, snapshot: stats.Snapshot) -> None:
        for figures in snapshot.streams:
            self._figures[figures.stream] = figures  # one assignment: atomic for a scrape

    def describe(self) -> Iterable[Metric]:
        for name, text in _STREAM_GAUGES:
            yield GaugeMetricFamily(f"streamq_stream_{name}", text, labels=["stream"])

    def collect(self) -> Iterable[Metric]:
        current = list(self._figures.values())
        for name, text in _STREAM_GAUGES:
            family = GaugeMetricFamily(f"streamq_stream_{name}", text, labels=["stream"])
            for figures in current:
                value = _figure(figures, name)
                if value is not None:
                    family.add_metric([figures.stream], value)
            yield family


def _figure(figures: stats.StreamStats, name: str) -> float | None:
    if name == "lag":
        return float(figures.waiting)
    if name == "oldest_pending_age_seconds":
        return figures.oldest_pending_age_s
    value: int = getattr(figures, name)
    return float(value)


STREAM_FIGURES: Final = StreamFigures()

REFRESH_SECONDS: Final = 5.0


async def refresh_stream_figures(
    redis: Redis,
    streams: list[str],
    interval: float = REFRESH_SECONDS,
    figures: StreamFigures = STREAM_FIGURES,
) -> None:
    """Read the streams' figures now and every ``interval`` seconds, until cancelled."""
    failing = False
    while True:
        try:
            figures.update(await stats.snapshot(redis, streams))
            failing = False
        except (redis_errors.RedisError, OSError) as exc:  # BUSY, ACL, outages: try later
            if not failing:  # once per outage, not every few seconds
                log.warning("could not read stream figures for metrics: %s", exc)
            failing = True
        await anyio.sleep(interval)


# -- exposition ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricsServer:
    """The running ``/metrics`` endpoint; ``close()`` stops it."""

    host: str
    port: int
    _server: WSGIServer
    _thread: threading.Thread

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def serve(
    port: int, host: str = "127.0.0.1", registry: CollectorRegistry = REGISTRY
) -> MetricsServer:
    """Serve the registry's metrics at ``http://host:port/metrics`` from a daemon thread.

    Port 0 picks a free port (see ``.port``). Binds loopback unless told otherwise: give
    ``host="0.0.0.0"`` in a container whose port Prometheus scrapes. Raises OSError when the
    address is taken.
    """
    try:
        server, thread = prometheus_client.start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc.strerror}") from None
    bound_port = int(server.server_address[1])
    return MetricsServer(host, bound_port, server, thread)


@contextlib.asynccontextmanager
async def exposed(
    redis: Redis, streams: list[str], port: int | None, host: str = "127.0.0.1"
) -> AsyncIterator[MetricsServer | None]:
    """While the block runs: serve ``/metrics`` and keep the streams' figures fresh.
    Does nothing when ``port`` is None, so callers need no branch for "metrics off"."""
    if port is None:
        yield None
        return
    exposition = serve(port, host)
    log.info("serving metrics at %s", exposition.url, extra={"metrics_url": exposition.url})
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(refresh_stream_figures, redis, streams)
            yield exposition
            tasks.cancel_scope.cancel()
    finally:
        exposition.close()

"""The autoscaler's decisions as Prometheus metrics: what it saw, what it wanted, what it did.

Labels are stream names only (bounded by the streams it was given). Served with
``streamq autoscale --metrics-port N``, by streamq.metrics.serve (one registry for all).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from autoscaler.policy import Decision, Observation

_STREAM = ("stream",)

WORKERS = Gauge("streamq_autoscaler_workers", "Workers running when last observed", _STREAM)
DESIRED = Gauge("streamq_autoscaler_desired_workers", "Workers decided on", _STREAM)
RECOMMENDED = Gauge(
    "streamq_autoscaler_recommended_workers",
    "Workers the load asked for, before tolerance, stabilization and step limits",
    _STREAM,
)
BACKLOG = Gauge("streamq_autoscaler_backlog_jobs", "Jobs waiting or running", _STREAM)
ARRIVALS = Gauge(
    "streamq_autoscaler_arrival_rate_jobs_per_second", "Jobs arriving on the lanes", _STREAM
)
SERVICE = Gauge("streamq_autoscaler_service_seconds", "Mean handler time of a job", _STREAM)
DUE_SOON = Gauge("streamq_autoscaler_due_soon_jobs", "Scheduled jobs due within the lead", _STREAM)
CEILING = Gauge(
    "streamq_autoscaler_rate_ceiling_jobs_per_second",
    "Starts a second the stream's platform limits allow (absent: no limit)",
    _STREAM,
)
SCALINGS = Counter(
    "streamq_autoscaler_scalings_total", "Changes of a pool's size", ("stream", "direction")
)
TARGET_ERRORS = Counter(
    "streamq_autoscaler_target_errors_total", "Failed reads or resizes of a pool", _STREAM
)
LEADER = Gauge("streamq_autoscaler_leader", "1 while this controller leads, else 0")
FENCE = Gauge("streamq_autoscaler_fence", "Fencing number of this controller's leadership")


def record(stream: str, seen: Observation, decision: Decision) -> None:
    WORKERS.labels(stream).set(seen.workers)
    DESIRED.labels(stream).set(decision.workers)
    RECOMMENDED.labels(stream).set(decision.recommended)
    BACKLOG.labels(stream).set(seen.backlog)
    ARRIVALS.labels(stream).set(seen.arrival_rate)
    SERVICE.labels(stream).set(seen.service_seconds)
    DUE_SOON.labels(stream).set(seen.due_soon)
    if seen.rate_ceiling is not None:
        CEILING.labels(stream).set(seen.rate_ceiling)
    if decision.workers != seen.workers:
        direction = "up" if decision.workers > seen.workers else "down"
        SCALINGS.labels(stream, direction).inc()


def record_leadership(fence: int | None) -> None:
    LEADER.set(0 if fence is None else 1)
    if fence is not None:
        FENCE.set(fence)

"""How many workers a stream should have: the autoscaler's decision, with no I/O.

One decision per stream per tick, from what the stream looks like now (an Observation) and
the recommendations of the last few minutes:

1. **Size from flow, not only from backlog.** By Little's law a stream receiving ``λ`` jobs a
   second that each take ``S`` seconds keeps ``λ·S`` jobs running; a worker runs
   ``concurrency`` at once. So ``λ·S / concurrency`` workers keep up, plus what drains the
   backlog within ``target_drain`` and what the jobs coming due within ``lead`` need. The right
   size comes in one step instead of creeping up a replica at a time.
2. **Never beyond what the rate limits can use.** A platform allowing ``r`` starts a second
   keeps at most ``r·S`` jobs running, whatever the backlog: workers beyond
   ``r·S / concurrency`` would only wait.
3. **Ahead of scheduled bursts.** Jobs due within ``lead`` seconds count as work now, so the
   fleet is up before the 9:00 rush, not after it.
4. **The Kubernetes HPA's behaviour model** on top: a tolerance band in which nothing changes,
   stabilization windows (scale up to the *lowest* recommendation of the last
   ``scale_up_window`` seconds, down to the *highest* of the last ``scale_down_window``), step
   limits per decision, ``min_workers``/``max_workers``, and scale to zero after ``idle_after``
   seconds with no work, woken again by the first job.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import msgspec

from streamq.config import AutoscaleConfig
from streamq.errors import ConfigError


class Policy(msgspec.Struct, frozen=True, kw_only=True):
    min_workers: int = 0
    max_workers: int = 10
    concurrency: int = 32
    """Jobs one worker runs at once (its --concurrency)."""
    target_drain: float = 60.0
    """Seconds in which the backlog should be worked off."""
    lead: float = 60.0
    """Jobs due within this many seconds count as work already."""
    tolerance: float = 0.1
    """No change while the recommendation is within this fraction of the current size."""
    scale_up_window: float = 0.0
    scale_down_window: float = 300.0
    max_step_up: int | None = None
    """Workers added in one decision at most (None: no limit)."""
    max_step_down: int | None = 1
    idle_after: float = 300.0
    """With min_workers 0: seconds without any work before scaling to zero."""

    def __post_init__(self) -> None:
        if not 0 <= self.min_workers <= self.max_workers:
            raise ConfigError("need 0 <= min_workers <= max_workers")
        if self.concurrency < 1:
            raise ConfigError("concurrency must be at least 1")
        if self.target_drain <= 0 or self.lead < 0:
            raise ConfigError("target_drain must be positive and lead not negative")
        if not 0 <= self.tolerance < 1:
            raise ConfigError("tolerance is a fraction between 0 and 1")
        for step in (self.max_step_up, self.max_step_down):
            if step is not None and step < 1:
                raise ConfigError("a step limit must be at least 1")


class Observation(msgspec.Struct, frozen=True, kw_only=True):
    at: float
    """When, in seconds (any monotonic clock)."""
    workers: int
    """Workers running now."""
    backlog: int
    """Jobs waiting or running (the lanes' depth)."""
    arrival_rate: float
    """Jobs a second coming onto the lanes (new and promoted)."""
    service_seconds: float
    """Mean time one job takes in its handler."""
    due_soon: int = 0
    """Scheduled jobs due within the policy's lead."""
    rate_ceiling: float | None = None
    """Starts a second the stream's platform limits allow (None: no platform limit)."""


class Decision(msgspec.Struct, frozen=True):
    workers: int
    recommended: int
    """What the flow asked for, before tolerance, stabilization and steps."""
    reason: str


def recommend(obs: Observation, policy: Policy) -> tuple[int, str]:
    """Workers the stream needs now, within [min_workers, max_workers] and the rate ceiling."""
    workers, _, reason = _need(obs, policy)
    return workers, reason


def _need(obs: Observation, policy: Policy) -> tuple[int, float, str]:
    """The recommendation, the unrounded need it comes from, and why."""
    per_worker = policy.concurrency / max(obs.service_seconds, 1e-6)  # jobs/s one worker does
    flow = obs.arrival_rate / per_worker
    backlog = obs.backlog / (per_worker * policy.target_drain)
    scheduled = obs.due_soon / (per_worker * max(policy.lead, 1e-6)) if obs.due_soon else 0.0
    raw = flow + backlog + scheduled
    needed = math.ceil(raw - 1e-9)
    reason = f"flow {flow:.2f} + backlog {backlog:.2f} + scheduled {scheduled:.2f}"
    if obs.rate_ceiling is not None:
        useful = max(1, math.ceil(obs.rate_ceiling / per_worker - 1e-9))
        if needed > useful:
            needed, raw = useful, float(useful)
            reason = f"{reason}; capped at {useful} by the rate limits"
    has_work = obs.backlog > 0 or obs.arrival_rate > 0 or obs.due_soon > 0
    if has_work:
        needed = max(needed, 1)  # activation from zero
    return max(policy.min_workers, min(policy.max_workers, needed)), raw, reason


class Scaler:
    """Turns recommendations into decisions for one stream, remembering recent ones."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._history: deque[tuple[float, int]] = deque()
        self._last_work: float | None = None

    def decide(self, obs: Observation) -> Decision:
        policy = self.policy
        wanted, raw, reason = _need(obs, policy)
        current = obs.workers
        if obs.backlog or obs.arrival_rate or obs.due_soon or self._last_work is None:
            self._last_work = obs.at
        if wanted == 0 and obs.at - self._last_work < policy.idle_after:
            wanted = max(1, policy.min_workers) if current else 0
            reason = "idle, not yet long enough to scale to zero"
        self._history.append((obs.at, wanted))
        horizon = obs.at - max(policy.scale_up_window, policy.scale_down_window)
        while self._history and self._history[0][0] < horizon:
            self._history.popleft()
        # The band is on the unrounded need, as the HPA's is on its metric ratio.
        if current > 0 and wanted > 0 and abs(raw / current - 1) <= policy.tolerance:
            target, reason = current, f"{reason}; within tolerance"
        elif wanted > current:
            recent = [w for t, w in self._history if t >= obs.at - policy.scale_up_window]
            target = max(current, min(recent))
            if policy.max_step_up is not None:
                target = min(target, current + policy.max_step_up)
        elif wanted < current:
            recent = [w for t, w in self._history if t >= obs.at - policy.scale_down_window]
            target = min(current, max(recent))
            if policy.max_step_down is not None:
                target = max(target, current - policy.max_step_down)
        else:
            target = current
        target = max(policy.min_workers, min(policy.max_workers, target))
        return Decision(target, wanted, reason)


def policy_for(settings: AutoscaleConfig, concurrency: int, **flags: Any) -> Policy:
    """A stream's policy: flags given (not None) over its config file table over defaults."""
    chosen = {
        name: value
        for name, value in msgspec.structs.asdict(settings).items()
        if value is not None and name in Policy.__struct_fields__
    }
    chosen.update({name: value for name, value in flags.items() if value is not None})
    return Policy(concurrency=concurrency, **chosen)

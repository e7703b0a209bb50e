"""The autoscaler's decision: sizing from flow, the rate-limit ceiling, scheduled bursts, and
the HPA behaviour model (tolerance, stabilization, steps, scale to zero)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoscaler.policy import Observation, Policy, Scaler, policy_for, recommend
from streamq.config import parse_config
from streamq.errors import ConfigError
from tests.conftest import run_cli


def observe(at: float = 0.0, workers: int = 1, **figures: float) -> Observation:
    values = {"backlog": 0, "arrival_rate": 0.0, "service_seconds": 1.0, **figures}
    return Observation(
        at=at,
        workers=workers,
        backlog=int(values["backlog"]),
        arrival_rate=values["arrival_rate"],
        service_seconds=values["service_seconds"],
        due_soon=int(values.get("due_soon", 0)),
        rate_ceiling=figures.get("rate_ceiling"),
    )


def test_it_reaches_the_size_the_flow_needs_in_one_step() -> None:
    # 100 posts/s of 2 s each keep 200 running; 32 per worker: 7 workers (Little's law).
    scaler = Scaler(Policy(max_workers=50))
    decision = scaler.decide(observe(arrival_rate=100, service_seconds=2.0))
    assert decision.workers == 7


def test_the_backlog_is_sized_to_drain_within_the_target() -> None:
    policy = Policy(max_workers=50, concurrency=10, target_drain=60)
    # 10 jobs/s per worker, 60 s: 600 per worker; 3,000 waiting: 5 workers.
    assert recommend(observe(backlog=3000), policy)[0] == 5


def test_it_never_asks_for_more_workers_than_the_rate_limits_can_keep_busy() -> None:
    policy = Policy(max_workers=50, concurrency=32)
    obs = observe(backlog=100_000, arrival_rate=500, service_seconds=2.0, rate_ceiling=20.0)
    workers, reason = recommend(obs, policy)
    # 20 starts/s of 2 s each keep 40 running: two workers of 32.
    assert workers == 2
    assert "rate limits" in reason


def test_it_scales_up_ahead_of_jobs_coming_due() -> None:
    policy = Policy(max_workers=50, concurrency=10, lead=60)
    obs = observe(workers=0, due_soon=3000, service_seconds=1.0)
    assert Scaler(policy).decide(obs).workers == 5


def test_small_changes_inside_the_tolerance_do_nothing() -> None:
    scaler = Scaler(Policy(max_workers=50, concurrency=10, tolerance=0.1))
    # Needs 10.5 -> 11 workers against 10: inside 10 %.
    assert scaler.decide(observe(workers=10, arrival_rate=105)).workers == 10
    assert scaler.decide(observe(at=1, workers=10, arrival_rate=150)).workers == 15


def test_scale_down_waits_out_its_window_and_steps() -> None:
    scaler = Scaler(Policy(max_workers=50, concurrency=10, scale_down_window=300))
    assert scaler.decide(observe(at=0, workers=1, arrival_rate=200)).workers == 20
    assert scaler.decide(observe(at=10, workers=20, arrival_rate=10)).workers == 20
    assert scaler.decide(observe(at=299, workers=20, arrival_rate=10)).workers == 20
    assert scaler.decide(observe(at=311, workers=20, arrival_rate=10)).workers == 19


def test_scale_up_stabilization_ignores_a_blip() -> None:
    scaler = Scaler(Policy(max_workers=50, concurrency=10, scale_up_window=30))
    assert scaler.decide(observe(at=0, workers=2, arrival_rate=20)).workers == 2
    assert scaler.decide(observe(at=5, workers=2, arrival_rate=300)).workers == 2
    assert scaler.decide(observe(at=40, workers=2, arrival_rate=300)).workers == 30


def test_an_idle_stream_goes_to_zero_only_after_idle_after_and_wakes_on_work() -> None:
    scaler = Scaler(Policy(max_workers=5, idle_after=120, max_step_down=None))
    assert scaler.decide(observe(at=0, workers=1, arrival_rate=1)).workers == 1
    assert scaler.decide(observe(at=60, workers=1)).workers == 1
    assert scaler.decide(observe(at=500, workers=1)).workers == 0
    assert scaler.decide(observe(at=501, workers=0, backlog=1)).workers == 1


@given(
    workers=st.integers(0, 40),
    backlog=st.integers(0, 10**6),
    arrival=st.floats(0, 5000),
    service=st.floats(0.001, 60),
    ceiling=st.none() | st.floats(0.001, 1000),
    due=st.integers(0, 10**5),
    low=st.integers(0, 5),
    high=st.integers(5, 40),
)
def test_decisions_stay_in_bounds_and_under_the_ceiling(
    workers: int,
    backlog: int,
    arrival: float,
    service: float,
    ceiling: float | None,
    due: int,
    low: int,
    high: int,
) -> None:
    policy = Policy(min_workers=low, max_workers=high, concurrency=8)
    obs = Observation(
        at=0.0,
        workers=workers,
        backlog=backlog,
        arrival_rate=arrival,
        service_seconds=service,
        due_soon=due,
        rate_ceiling=ceiling,
    )
    decision = Scaler(policy).decide(obs)
    assert low <= decision.workers <= high
    if ceiling is not None:
        useful = max(1, math.ceil(ceiling * service / 8 - 1e-9))
        assert decision.workers <= max(low, min(high, max(workers, useful)))


@given(
    loads=st.lists(
        st.tuples(st.integers(0, 10**6), st.floats(0, 5000), st.integers(0, 10**5)),
        min_size=3,
        max_size=30,
    ),
    ceiling=st.floats(0.1, 500),
    service=st.floats(0.01, 5),
    low=st.integers(0, 3),
    high=st.integers(3, 60),
)
def test_from_under_the_ceiling_no_run_of_decisions_ever_passes_it(
    loads: list[tuple[int, float, int]], ceiling: float, service: float, low: int, high: int
) -> None:
    policy = Policy(min_workers=low, max_workers=high, concurrency=8)
    scaler = Scaler(policy)
    cap = max(low, min(high, max(1, math.ceil(ceiling * service / 8 - 1e-9))))
    workers = low
    for tick, (backlog, arrival, due) in enumerate(loads):
        seen = Observation(
            at=tick * 5.0,
            workers=workers,
            backlog=backlog,
            arrival_rate=arrival,
            service_seconds=service,
            due_soon=due,
            rate_ceiling=ceiling,
        )
        workers = scaler.decide(seen).workers
        assert workers <= cap  # more would only wait on the platform's limits


def test_a_bad_policy_is_refused() -> None:
    with pytest.raises(ConfigError, match="min_workers"):
        Policy(min_workers=5, max_workers=2)
    with pytest.raises(ConfigError, match="tolerance"):
        Policy(tolerance=1.5)


@given(
    rate=st.floats(50, 2000),
    noise=st.lists(st.floats(-0.08, 0.08), min_size=30, max_size=60),
)
def test_noisy_but_steady_load_does_not_flap(rate: float, noise: list[float]) -> None:
    """Load wobbling by up to 8 % around a steady rate: once sized, the count stays put."""
    policy = Policy(max_workers=200, concurrency=10, tolerance=0.1, scale_down_window=300)
    scaler = Scaler(policy)
    workers = scaler.decide(observe(at=0, workers=1, arrival_rate=rate)).workers
    changes = 0
    for tick, wobble in enumerate(noise, start=1):
        decided = scaler.decide(
            observe(at=tick * 15, workers=workers, arrival_rate=rate * (1 + wobble))
        ).workers
        changes += decided != workers
        workers = decided
    assert changes <= 1


@given(
    before=st.floats(10, 200),
    factor=st.floats(1.5, 10),
    window=st.sampled_from([0, 15, 30, 60]),
)
def test_a_step_in_load_is_met_within_the_stabilization_window(
    before: float, factor: float, window: int
) -> None:
    policy = Policy(max_workers=500, concurrency=10, scale_up_window=window)
    scaler = Scaler(policy)
    workers = scaler.decide(observe(at=0, workers=1, arrival_rate=before)).workers
    after = before * factor
    needed = recommend(observe(arrival_rate=after), policy)[0]
    raw = after * 1.0 / policy.concurrency  # workers the new flow keeps busy, unrounded
    met_at = None
    for tick in range(1, 40):
        at = 100 + tick * 5
        workers = scaler.decide(observe(at=at, workers=workers, arrival_rate=after)).workers
        # Met: sized for it, or within the tolerance band of it (where nothing moves).
        met = workers >= needed or abs(raw / workers - 1) <= policy.tolerance
        if met and met_at is None:
            met_at = at - 100
    assert met_at is not None
    assert met_at <= window + 5


def test_a_streams_policy_comes_from_its_config_table_with_flags_on_top() -> None:
    config = parse_config(
        {
            "streams": {
                "instagram": {
                    "concurrency": 8,
                    "autoscale": {"min_workers": 2, "max_workers": 7, "target_drain": "2m",
                                  "scale_down_window": "90s", "deployment": "ig-workers"},
                }
            }
        }
    )  # fmt: skip
    stream = config.stream("instagram")
    policy = policy_for(stream.autoscale, stream.concurrency, max_workers=5, lead=None)
    assert (policy.min_workers, policy.max_workers, policy.concurrency) == (2, 5, 8)
    assert (policy.target_drain, policy.scale_down_window, policy.lead) == (120.0, 90.0, 60.0)
    assert stream.autoscale.deployment == "ig-workers"
    assert policy_for(config.stream("x").autoscale, 32) == Policy()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--min", "5", "--max", "2"], "need 0 <= min_workers <= max_workers"),
        (["--tolerance", "1.5"], "tolerance is a fraction"),
        (["--target", "moon"], "invalid choice"),
    ],
)
def test_a_bad_policy_is_refused_in_one_line(flags: list[str], message: str) -> None:
    result = run_cli("autoscale", "--stream", "s", "--dry-run", *flags)
    assert result.returncode != 0
    [line] = result.stderr.strip().splitlines()
    assert message in line

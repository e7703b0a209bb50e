"""The admission gate's decisions, without a server: platform holds, which jobs the admission
script must see, and when a handler's account pause settles."""

from __future__ import annotations

from typing import Any

from streamq import channel, codec
from streamq.admission import Gate
from streamq.job import Job
from streamq.limiter import StreamLimits


def gate(platform: list[tuple[int, int]] | None = None, now: float = 1000.0) -> Gate:
    clock = channel.ServerClock(lambda: now)
    limits = StreamLimits(platform=platform or [], account=[(1, 1000)])
    redis: Any = None  # the decisions tested here send nothing
    return Gate(redis, "s", "c", limits, clock)


def job(account: str | None) -> Job:
    env = codec.Envelope(id="s:1", payload=None, enqueued_at_ms=1, account=account)
    return Job("s", "normal", env, 1, b"1-0")


def test_a_platform_hold_lasts_until_its_time_by_the_server_clock() -> None:
    held = gate(now=1000.0)  # 1,000,000 ms
    assert held.platform_wait_ms() == 0
    held.hold_platform(1_000_250)
    held.hold_platform(1_000_100)  # an earlier end never shortens it
    assert held.platform_wait_ms() == 250
    held.clock.saw(1_000_300)  # the server's clock moved past it
    assert held.platform_wait_ms() == 0
    assert held.platform_paused_until_ms == 0


def test_only_jobs_a_limit_concerns_go_through_admission() -> None:
    with_account, without = job("acme"), job(None)
    assert gate().gated([with_account, without]) == ([with_account], [without])
    assert gate().gated([without]) == ([], [without])
    platform = gate(platform=[(1, 1000)])
    assert platform.gated([with_account, without]) == ([with_account, without], [])


def test_a_pause_settles_once_recorded_and_no_admission_is_on_its_way() -> None:
    pausing = gate()
    pausing.pause("acme", "token revoked")
    assert pausing.pausing_accounts == {"acme": "token revoked"}
    parked = codec.Parked("s:1", "", 1, 5, "{}", "token revoked", "acme", 1, 2, "1-0")
    assert pausing.settle() == []  # not recorded yet
    with pausing.admitting():
        pausing.recorded([parked, codec.Done("s:2", "", 1, 5, "")])
        assert pausing.settle() == []  # an admission begun before it may still let one in
    assert pausing.settle() == [("acme", "token revoked")]
    assert pausing.pausing_accounts == {}
    assert pausing.settle() == []


def test_only_admitted_jobs_give_their_start_back() -> None:
    starts = gate()
    never_admitted, admitted = job("acme"), job("acme")
    admitted._admitted_ms = 7
    starts.not_started(never_admitted)
    starts.not_started(admitted)
    assert starts._unstarted == [admitted]

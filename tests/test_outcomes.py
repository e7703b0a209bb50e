"""What a run means, without a server: streamq.outcomes and the rows codec lays out for the
scripts (their bytes are the scripts' contract, so they are pinned here)."""

from __future__ import annotations

import logging

import msgspec
import orjson
import pytest

from streamq import codec, outcomes
from streamq.config import Backoff, StreamConfig
from streamq.errors import Fail, NotPublished, RateLimited, Retry
from streamq.job import Job

NOW = 1_000_000
OPTIONS = StreamConfig(max_attempts=3, backoff=Backoff(base=2.0, factor=2.0, max=60.0, jitter=0))


def job(**fields: object) -> Job:
    env = codec.Envelope(id="s:1", payload={"n": 1}, enqueued_at_ms=900_000, **fields)  # type: ignore[arg-type]
    return Job("s", "normal", env, 1, b"5-0")


def test_done_carries_the_result_as_json_and_no_entry() -> None:
    assert outcomes.done(job(key="k"), 7, {"ok": [1]}) == codec.Done("s:1", "k", 1, 7, '{"ok":[1]}')
    assert outcomes.done(job(), 7, None).result == ""
    # A value JSON cannot hold is stored by its repr, never refused after the job ran.
    assert outcomes.done(job(), 7, object()).result.startswith('"<object object at')


def test_a_failure_before_the_last_attempt_is_retried_after_the_backoff() -> None:
    outcome = outcomes.failure(
        job(attempt=2), ValueError("boom"), OPTIONS, started_ms=5, now_ms=NOW
    )
    assert isinstance(outcome, codec.Retried)
    assert (outcome.attempt, outcome.delay_ms, outcome.reason) == (3, 4000, "ValueError: boom")
    assert (outcome.lane, outcome.entry, outcome.started_ms) == (2, "5-0", 5)
    again = codec.decode(outcome.envelope.encode())
    assert (again.attempt, again.run_at_ms) == (3, NOW + 4000)


def test_retry_after_overrides_the_backoff() -> None:
    outcome = outcomes.failure(job(), Retry(after=0.25), OPTIONS, started_ms=5, now_ms=NOW)
    assert isinstance(outcome, codec.Retried)
    assert outcome.delay_ms == 250


def test_the_last_attempt_and_fail_are_dead(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "streamq.worker"):
        last = outcomes.failure(job(attempt=3), KeyError("x"), OPTIONS, started_ms=5, now_ms=NOW)
    assert isinstance(last, codec.Dead)
    assert last.reason == "gave up after 3 attempts: KeyError: 'x'"
    assert "is dead" in caplog.text
    own_limit = outcomes.failure(
        job(attempt=3, max_attempts=5), KeyError("x"), OPTIONS, started_ms=5, now_ms=NOW
    )
    assert isinstance(own_limit, codec.Retried)
    failed = outcomes.failure(job(), Fail("bad token"), OPTIONS, started_ms=5, now_ms=NOW)
    assert isinstance(failed, codec.Dead)
    assert failed.reason == "bad token"


def test_rate_limited_defers_without_an_attempt_and_names_what_to_hold() -> None:
    account = outcomes.failure(
        job(account="acme"), RateLimited(1.5), OPTIONS, started_ms=5, now_ms=NOW
    )
    assert isinstance(account, codec.Deferred)
    assert (account.attempt, account.delay_ms, account.hold) == (1, 1500, "a:acme")
    platform = outcomes.failure(
        job(account="acme"), RateLimited(2, scope="platform"), OPTIONS, started_ms=5, now_ms=NOW
    )
    assert isinstance(platform, codec.Deferred)
    assert platform.hold == "platform"
    alone = outcomes.failure(job(), RateLimited(2), OPTIONS, started_ms=5, now_ms=NOW)
    assert isinstance(alone, codec.Deferred)
    assert alone.hold == ""


def test_pause_account_parks_only_a_job_with_an_account() -> None:
    signal = Fail("revoked", pause_account=True)
    parked = outcomes.failure(job(account="acme"), signal, OPTIONS, started_ms=5, now_ms=NOW)
    assert parked == codec.Parked(
        "s:1", "", 1, 5, parked.envelope, "revoked", "acme", 900_000, 2, "5-0"
    )
    assert isinstance(
        outcomes.failure(job(), signal, OPTIONS, started_ms=5, now_ms=NOW), codec.Dead
    )


def test_a_job_cancelled_while_it_ran_ends_cancelled_unless_rate_limited() -> None:
    cancelled = job()
    cancelled.cancelled = True
    outcome = outcomes.failure(cancelled, ValueError(), OPTIONS, started_ms=5, now_ms=NOW)
    assert isinstance(outcome, codec.Cancelled)
    assert outcome.started_ms == 5
    limited = outcomes.failure(cancelled, RateLimited(1), OPTIONS, started_ms=5, now_ms=NOW)
    assert isinstance(limited, codec.Deferred)  # the script ends it as cancelled


def test_expiry_counts_from_the_due_time() -> None:
    assert not outcomes.is_expired(job().envelope, OPTIONS, NOW)
    own = job(expire_after_ms=100_000).envelope
    assert not outcomes.is_expired(own, OPTIONS, 1_000_000)
    assert outcomes.is_expired(own, OPTIONS, 1_000_001)
    scheduled = job(expire_after_ms=100_000, run_at_ms=950_000).envelope
    assert not outcomes.is_expired(scheduled, OPTIONS, 1_000_001)
    stream_wide = msgspec.structs.replace(OPTIONS, expire_after=1.0)
    assert outcomes.is_expired(job().envelope, stream_wide, 901_001)


def test_timeouts_prefer_the_jobs_own() -> None:
    assert outcomes.timeout_of(job().envelope, OPTIONS) == 600.0
    assert outcomes.timeout_of(job(job_timeout_ms=1500).envelope, OPTIONS) == 1.5
    no_limit = msgspec.structs.replace(OPTIONS, job_timeout=None)
    assert outcomes.timeout_of(job().envelope, no_limit) == float("inf")


def test_hooks_get_the_result_or_the_error() -> None:
    assert outcomes.hook_calls(outcomes.done(job(), 1, [1])) == [("on_done", ([1],))]
    dead = outcomes.failure(job(), Fail("no"), OPTIONS, started_ms=1, now_ms=NOW)
    assert outcomes.hook_calls(dead) == [("on_failed", ("no",)), ("on_dead", ("no",))]
    assert outcomes.hook_calls(outcomes.expired(job())) == [("on_expired", ())]
    assert outcomes.hook_calls(outcomes.held_back(job(), NOW, 10)) == []


def test_rows_are_as_compact_as_the_tuples_the_scripts_read() -> None:
    """The Lua headers define positions; a Struct must pack to exactly the old tuple."""
    env = '{"id":"s:1"}'
    e = "1-0"
    pairs: list[tuple[codec.Outcome | codec.EnqueueRow | codec.AdmitRow, tuple[object, ...]]] = [
        (codec.Done("i", "k", 1, 5, "", "~1"), ("d", "i", "k", 1, 5, "", "~1")),
        (codec.Retried("i", "", 2, 5, env, 50, "e", "", 2, e), ("r", "i", "", 2, 5, env, 50, "e", "", 2, e)),  # noqa: E501
        (codec.Deferred("i", "", 1, 0, env, 9, "r", "h", 1, e), ("l", "i", "", 1, 0, env, 9, "r", "h", 1, e)),  # noqa: E501
        (codec.Parked("i", "", 1, 5, env, "r", "a", 7, 3, e), ("p", "i", "", 1, 5, env, "r", "a", 7, 3, e)),  # noqa: E501
        (codec.Dead("i", "", 1, 5, env, "r", "", 1, e), ("x", "i", "", 1, 5, env, "r", "", 1, e)),
        (codec.Expired("i", "", 1, 0, env, 1, e), ("e", "i", "", 1, 0, env, 1, e)),
        (codec.Cancelled("i", "", 1, 0, env, 1, e), ("c", "i", "", 1, 0, env, 1, e)),
        (codec.EnqueueRow("i", "", env, 0), ("i", "", env, 0)),
        (codec.AccountEnqueueRow("i", "", env, 0, "a"), ("i", "", env, 0, "a")),
        (codec.AdmitRow(2, e, "i", "", 5), (2, e, "i", "", 5)),
        (codec.ReclaimedAdmitRow(2, e, "i", "a", 5, env), (2, e, "i", "a", 5, env)),
    ]  # fmt: skip
    for row, wire in pairs:
        assert codec.pack_rows([row]) == msgspec.msgpack.encode([wire])
    assert set(_leaves(codec.Outcome)) == set(codec.OUTCOME_NAMES)
    assert orjson.loads(codec.envelope_text(job().envelope))["id"] == "s:1"


def _leaves(kind: type[codec.Outcome]) -> list[type[codec.Outcome]]:
    below = kind.__subclasses__()
    return [leaf for sub in below for leaf in _leaves(sub)] if below else [kind]


# -- publish once: the verify run (issue 29) --------------------------------------------------


def marked(**fields: object) -> Job:
    """A job whose "may have been sent" mark is set."""
    found = job(**fields)
    found._mark_ms = 123
    return found


def test_a_job_whose_post_may_exist_is_verified_instead_of_dead() -> None:
    for exc, attempt in ((ValueError("timed out"), 3), (Fail("refused"), 1)):
        outcome = outcomes.failure(marked(attempt=attempt), exc, OPTIONS, started_ms=5, now_ms=NOW)
        assert isinstance(outcome, codec.Retried)
        again = codec.decode(outcome.envelope.encode())
        assert again.attempt == attempt + 1
        assert again.verify is not None
        assert again.verify.startswith(("gave up after 3 attempts", "refused"))
        assert "a post may exist" in outcome.reason
    # Without the mark, the same failures are dead as before.
    assert isinstance(
        outcomes.failure(job(attempt=3), ValueError("x"), OPTIONS, started_ms=5, now_ms=NOW),
        codec.Dead,
    )


def test_a_verify_run_ends_done_recovered_or_dead_with_its_reason() -> None:
    verifying = job(attempt=4, verify="gave up after 3 attempts: ValueError: timed out")
    assert verifying.verify_only
    done = outcomes.done(verifying, 7, {"post_id": "p1"})
    assert orjson.loads(done.result) == {"post_id": "p1", "recovered": True}
    dead = outcomes.failure(verifying, NotPublished(), OPTIONS, started_ms=5, now_ms=NOW)
    assert isinstance(dead, codec.Dead)
    assert dead.reason == "gave up after 3 attempts: ValueError: timed out"
    assert codec.decode(dead.envelope.encode()).verify is None  # replayed as an ordinary run
    # A lookup that failed without an answer (a 502) says nothing of the post: looked up again,
    # up to VERIFY_RUNS lookups; then dead, saying a post may exist.
    for failed_before in range(outcomes.VERIFY_RUNS - 1):
        looking = job(
            attempt=4 + failed_before,
            verify="gave up after 3 attempts: ValueError: timed out",
            lookups_failed=failed_before,
        )
        again = outcomes.failure(looking, ValueError("502"), OPTIONS, started_ms=5, now_ms=NOW)
        assert isinstance(again, codec.Retried)
        next_run = codec.decode(again.envelope.encode())
        assert (next_run.verify, next_run.lookups_failed) == (
            looking.envelope.verify,
            failed_before + 1,
        )
        assert next_run.attempt == looking.attempt + 1
    last = job(
        attempt=4 + outcomes.VERIFY_RUNS - 1,
        verify="gave up after 3 attempts: ValueError: timed out",
        lookups_failed=outcomes.VERIFY_RUNS - 1,
    )
    failed = outcomes.failure(last, ValueError("502"), OPTIONS, started_ms=5, now_ms=NOW)
    assert isinstance(failed, codec.Dead)
    assert failed.reason == (
        "gave up after 3 attempts: ValueError: timed out; a post may exist: its lookup failed "
        "(ValueError: 502)"
    )
    replayed_as = codec.decode(failed.envelope.encode())
    assert (replayed_as.verify, replayed_as.lookups_failed) == (None, 0)
    # A lookup that answered it cannot tell (Fail: a listing past its bound) is not asked again.
    told = outcomes.failure(verifying, Fail("cannot tell"), OPTIONS, started_ms=5, now_ms=NOW)
    assert isinstance(told, codec.Dead)


def test_a_reclaimed_job_spends_its_budget_on_runs_not_deliveries() -> None:
    options = msgspec.structs.replace(OPTIONS, max_attempts=10, max_deliveries=3)
    env = codec.Envelope(id="s:1", payload=1, enqueued_at_ms=0)

    def reclaim(runs: int | None, deliveries: int, sent: bool) -> tuple[codec.Envelope, str | None]:
        return outcomes.reclaimed(
            env, runs=runs, deliveries=deliveries, may_have_sent=sent, options=options
        )

    # Held, never started, by ten workers that died: it runs, attempt 1.
    assert reclaim(0, 10, False) == (env, None)
    # Two runs cut short: attempt 3.
    assert reclaim(2, 10, False)[0].attempt == 3
    # Three runs cut short: dead, or verified first when its post may exist.
    assert reclaim(3, 4, False)[1] == "ran 3 times without finishing (max_deliveries=3)"
    verifying, reason = reclaim(3, 4, True)
    assert reason is None
    assert verifying.verify == "ran 3 times without finishing (max_deliveries=3)"
    assert reclaim(3 + outcomes.VERIFY_RUNS - 1, 9, True)[1] is None
    last = reclaim(3 + outcomes.VERIFY_RUNS, 9, True)[1]
    assert last is not None
    assert last.endswith(
        "a post may exist: its lookup did not finish (the worker running it stopped)"
    )
    # No record (an entry written by hand): its deliveries count, as before.
    assert reclaim(None, 4, False)[1] == (
        "delivered 4 times without being acknowledged (max_deliveries=3)"
    )
    # A verify run's own entry whose workers die: VERIFY_RUNS tries.
    verify_env = msgspec.structs.replace(env, verify="gave up")
    assert outcomes.reclaimed(
        verify_env, runs=1, deliveries=2, may_have_sent=True, options=options
    ) == (verify_env, None)
    gone = outcomes.reclaimed(
        verify_env, runs=outcomes.VERIFY_RUNS, deliveries=9, may_have_sent=True, options=options
    )[1]
    assert gone is not None
    assert gone.startswith("gave up; a post may exist")

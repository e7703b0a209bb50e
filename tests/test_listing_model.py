"""A stateful hypothesis test of the listings against a model, on a real server.

Rules enqueue jobs (now or later, with or without an account), promote, deliver one to a worker
(it is then running), admit it under a platform limit that binds (it runs, waits for its turn
or is held behind its account's waiting job), finish it (done, retry, dead, expired, or pause
its account), cancel, reschedule, resume an account and replay dead or cancelled jobs, all
through the scripts workers and producers use. After every step, every state's listing, paged
two at a time, holds exactly the jobs the model has in that state (and, filtered by account,
exactly that account's), each once, the scheduled and retrying ones in due-time order.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from contextlib import ExitStack
from typing import Any

import msgspec
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from redis.exceptions import ResponseError

import streamq
from streamq import codec, keys, limiter, listing, scripts
from streamq.config import Limit
from streamq.errors import InvalidJobState

pytestmark = pytest.mark.cluster

ACCOUNTS = (None, "acme", "zeta")
CONSUMER = "model-worker"
LANE = keys.lane  # every job here is on the normal lane
NORMAL = keys.LANES.index("normal") + 1  # admit_jobs' lane number
ONE_AN_HOUR = limiter.limits_for("any", (Limit(scope="platform", max=1, per=3600.0),)).packed()


class ModelJob(msgspec.Struct):
    state: str
    account: str | None
    entry: str | None = None
    cancel_requested: bool = False
    admitted: bool = False
    """Started under the platform limit in this delivery (a worker asks once per delivery)."""
    waits_for_platform: bool = False
    """Deferred or held by the limit: admission may move it on its own (held to the lane,
    waiting to held), so the model follows its record while it waits."""


class Listings(RuleBasedStateMachine):
    url: str = ""

    def __init__(self) -> None:
        super().__init__()
        self.stack = ExitStack()
        self.portal: BlockingPortal = self.stack.enter_context(
            start_blocking_portal("asyncio", {"use_uvloop": True})
        )
        self.stream = f"l{uuid.uuid4().hex[:10]}"
        self.queue: streamq.Queue = self.portal.call(self._open)
        self.jobs: dict[str, ModelJob] = {}

    async def _open(self) -> streamq.Queue:
        return await streamq.connect(self.url).__aenter__()

    def teardown(self) -> None:
        try:
            self.portal.call(self.queue.close)
        finally:
            self.stack.close()

    def _in(self, *states: str) -> list[str]:
        return sorted(job_id for job_id, job in self.jobs.items() if job.state in states)

    # -- rules ----------------------------------------------------------------------------------

    @initialize()
    def seed(self) -> None:
        """A job of each account waiting now, and two more of acme's (so a few workers' steps
        under the platform limit reach a job waiting for it and one held behind it), so short
        runs reach the later states too."""
        for account in (*ACCOUNTS, "acme", "acme"):
            self.enqueue(later=False, account=account, hours=1)

    @rule(later=st.booleans(), account=st.sampled_from(ACCOUNTS), hours=st.integers(1, 5))
    def enqueue(self, later: bool, account: str | None, hours: int) -> None:
        job_id = self.portal.call(
            lambda: self.queue.enqueue(
                self.stream,
                {"n": len(self.jobs)},
                account=account,
                delay=hours * 3600 if later else None,
            )
        )
        self.jobs[job_id] = ModelJob("scheduled" if later else "queued", account)
        if not later:
            self.jobs[job_id].entry = self._entry(job_id)

    def _entry(self, job_id: str) -> str:
        raw: Any = self.portal.call(
            lambda: self.queue.redis.hget(keys.job(self.stream, job_id), "entry")
        )
        return str(raw.decode())

    @precondition(lambda self: self._in("scheduled", "retrying"))
    @rule(data=st.data())
    def promote(self, data: st.DataObject) -> None:
        """Its time comes: moved to now, then promoted by the workers' script."""
        job_id = data.draw(st.sampled_from(self._in("scheduled", "retrying")))

        async def go() -> None:
            await self.queue.reschedule(job_id, delay=0)
            await scripts.promote_due(self.queue.redis, self.stream, [job_id], retention_ms=60_000)

        self.portal.call(go)
        self.jobs[job_id].state = "queued"
        self.jobs[job_id].entry = self._entry(job_id)

    @precondition(lambda self: self._in("scheduled", "retrying"))
    @rule(data=st.data(), minutes=st.integers(1, 600))
    def reschedule(self, data: st.DataObject, minutes: int) -> None:
        job_id = data.draw(st.sampled_from(self._in("scheduled", "retrying")))
        self.portal.call(lambda: self.queue.reschedule(job_id, delay=minutes * 60))

    @precondition(lambda self: self._in("queued"))
    @rule()
    def deliver(self) -> None:
        """A worker reads the lane's next entry: that job is running."""
        self._deliver()

    def _deliver(self) -> str:
        lane = LANE(self.stream, "normal")

        async def go() -> Any:
            with contextlib.suppress(ResponseError):  # BUSYGROUP: an earlier step made it
                await self.queue.redis.xgroup_create(lane, keys.GROUP, id="0", mkstream=True)
            return await self.queue.redis.xreadgroup(keys.GROUP, CONSUMER, {lane: ">"}, count=1)

        reply = self.portal.call(go)
        rows = next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1]
        if rows and isinstance(rows[0], list) and isinstance(rows[0][0], list | tuple):
            rows = rows[0]  # RESP3 nests the entries once more
        [(entry, fields)] = rows
        job_id = codec.decode(fields[b"j"]).id
        assert self.jobs[job_id].state == "queued", (job_id, self.jobs[job_id])
        assert self.jobs[job_id].entry == entry.decode()
        self.jobs[job_id].state = "running"
        self.jobs[job_id].admitted = False
        return job_id

    @precondition(lambda self: self._in("queued"))
    @rule()
    def work(self) -> None:
        """What a worker under a platform limit does: read the next job, then ask the limit
        if the job has an account."""
        job_id = self._deliver()
        if self.jobs[job_id].account is not None:
            self._admit(job_id)

    @precondition(lambda self: self._running_with_account())
    @rule(data=st.data())
    def admit(self, data: st.DataObject) -> None:
        """Before its handler runs, the worker asks the platform's limit (one start an hour):
        the first start takes the hour, a later job waits for its turn (scheduled), and while
        one of its account's jobs waits, the account's next ones are held aside (held); a
        paused account's job is parked (paused)."""
        self._admit(data.draw(st.sampled_from(self._running_with_account())))

    def _admit(self, job_id: str) -> None:
        job = self.jobs[job_id]
        entry = job.entry
        assert entry is not None
        assert job.account is not None

        async def go() -> scripts.Admission:
            raw: Any = await self.queue.redis.xrange(LANE(self.stream, "normal"), entry, entry)
            envelope = codec.decode(raw[0][1][b"j"])
            row = codec.AdmitRow(NORMAL, entry, job_id, str(job.account), envelope.enqueued_at_ms)
            return await scripts.admit_jobs(
                self.queue.redis, self.stream, CONSUMER, [row], limits=ONE_AN_HOUR
            )

        [verdict] = self.portal.call(go).verdicts
        if verdict:
            job.admitted = True
        else:  # left the worker's hands: waiting for its turn, held aside, or parked
            state = self._recorded(job_id)
            assert state in ("scheduled", "held", "paused"), (job_id, state)
            job.state, job.entry = state, None
            job.waits_for_platform = state != "paused"

    def _follow_the_platform_queue(self) -> None:
        """Jobs the limit deferred or held move on as admission decides (a start sends the
        account's next held job back to the lane): the model takes their recorded state."""
        for job_id, job in self.jobs.items():
            if not job.waits_for_platform:
                continue
            if job.state not in ("scheduled", "held"):
                job.waits_for_platform = False
                continue
            recorded = self._recorded(job_id)
            if recorded != job.state:
                assert recorded in ("queued", "scheduled", "held"), (job_id, recorded)
                job.state = recorded
                job.entry = self._entry(job_id) if recorded == "queued" else None

    def _running_with_account(self) -> list[str]:
        return [
            j
            for j in self._in("running")
            if self.jobs[j].account is not None and not self.jobs[j].admitted
        ]

    def _recorded(self, job_id: str) -> str:
        raw: Any = self.portal.call(
            lambda: self.queue.redis.hget(keys.job(self.stream, job_id), "state")
        )
        return str(raw.decode())

    @precondition(lambda self: self._in("running"))
    @rule(data=st.data(), outcome=st.sampled_from(["done", "retry", "dead", "pause", "expire"]))
    def finish(self, data: st.DataObject, outcome: str) -> None:
        """The handler returns, fails (retried), fails for good, or pauses its account; or the
        worker finds the job came due too long ago and expires it unrun."""
        job_id = data.draw(st.sampled_from(self._in("running")))
        job = self.jobs[job_id]
        if outcome == "pause" and job.account is None:
            outcome = "dead"
        entry = job.entry
        assert entry is not None

        async def go() -> None:
            raw: Any = await self.queue.redis.xrange(LANE(self.stream, "normal"), entry, entry)
            envelope = codec.decode(raw[0][1][b"j"])
            text = codec.envelope_text(envelope)
            started = envelope.enqueued_at_ms
            row: codec.Outcome
            if outcome == "done":
                row = codec.Done(job_id, "", 1, started, "")
            elif outcome == "retry":
                later = msgspec.structs.replace(envelope, attempt=envelope.attempt + 1)
                row = codec.Retried(
                    job_id, "", later.attempt, started, codec.envelope_text(later), 3_600_000,
                    "boom", "", 2, entry,
                )  # fmt: skip
            elif outcome == "dead":
                row = codec.Dead(job_id, "", 1, started, text, "no good", "", 2, entry)
            elif outcome == "expire":
                row = codec.Expired(job_id, "", 1, 0, text, 2, entry)
            else:
                row = codec.Parked(
                    job_id, "", 1, started, text, "revoked", str(job.account),
                    envelope.enqueued_at_ms, 2, entry,
                )  # fmt: skip
            await scripts.finish_jobs(
                self.queue.redis,
                self.stream,
                [[], [entry.encode()], []],
                [row],
                retention_ms=600_000,
            )

        self.portal.call(go)
        job.entry = None
        if job.cancel_requested and outcome in ("retry", "pause"):
            job.state = "cancelled"
        else:
            job.state = {
                "done": "done",
                "retry": "retrying",
                "dead": "dead",
                "expire": "expired",
            }.get(outcome, "paused")

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.jobs)))
        job = self.jobs[job_id]

        async def go() -> str | None:
            try:
                return await self.queue.cancel(job_id)
            except InvalidJobState:
                return None

        outcome = self.portal.call(go)
        if job.state in ("done", "dead", "cancelled", "expired"):
            assert outcome is None
        elif job.state == "running":
            assert outcome == "cancelling"
            job.cancel_requested = True
        else:
            assert outcome == "cancelled", (job, outcome)
            job.state, job.entry = "cancelled", None

    @precondition(lambda self: self._in("paused"))
    @rule(data=st.data())
    def resume(self, data: st.DataObject) -> None:
        account = data.draw(
            st.sampled_from(sorted({str(self.jobs[j].account) for j in self._in("paused")}))
        )
        self.portal.call(lambda: self.queue.resume_account(account, self.stream))
        for job_id, job in self.jobs.items():
            if job.state == "paused" and job.account == account:
                job.state = "queued"
                job.entry = self._entry(job_id)

    @precondition(lambda self: self._in("dead", "cancelled"))
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(self._in("dead", "cancelled")))
        self.portal.call(lambda: self.queue.retry(job_id))
        job = self.jobs[job_id]
        job.state, job.cancel_requested = "queued", False
        job.entry = self._entry(job_id)

    # -- the check ------------------------------------------------------------------------------

    @invariant()
    def every_listing_matches_the_model(self) -> None:
        self._follow_the_platform_queue()
        for state in sorted(self.portal.call(self._check)):
            event(f"listed {state}")  # --hypothesis-show-statistics: the states runs reach

    async def _check(self) -> set[str]:
        reached: set[str] = set()
        for state in listing.STATES:
            for account in ACCOUNTS:
                listed = await self._listed(state, account)
                ids = [info.id for info in listed]
                assert len(ids) == len(set(ids)), (state, account, ids)
                expected = sorted(
                    job_id
                    for job_id, job in self.jobs.items()
                    if job.state == state and (account is None or job.account == account)
                )
                assert sorted(ids) == expected, (state, account, ids, expected)
                if ids:
                    reached.add(state)
                if state in ("scheduled", "retrying"):
                    order = [(info.run_at_ms, info.id) for info in listed]
                    assert order == sorted(order), (state, order)
                if state == "running":
                    assert {info.consumer for info in listed} <= {CONSUMER}
        return reached

    async def _listed(self, state: str, account: str | None) -> list[Any]:
        found = []
        cursor = None
        for _ in range(100):
            page = await self.queue.jobs(
                self.stream, state, account=account, limit=2, cursor=cursor
            )
            assert all(info.state == state for info in page.jobs)
            found += page.jobs
            if page.cursor is None:
                return found
            cursor = page.cursor
        raise AssertionError("the listing never ended")


@pytest.fixture
def machine(redis_url: str) -> type[Listings]:
    class OnThisServer(Listings):
        url = redis_url

    return OnThisServer


def test_listings_against_a_model(machine: type[Listings]) -> None:
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=int(os.environ.get("STREAMQ_LISTING_EXAMPLES", "12")),
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )

"""A stateful hypothesis test of the job lifecycle against a model, on a real server.

Rules enqueue jobs (now or later, some that fail a few times, some that fail for good), cancel,
reschedule, run a worker for a while, crash one mid-job (no acknowledgement, no clean stop) and
replay dead letters. Whatever the interleaving, at the end:
  - every job reaches exactly one terminal state, the one the model expects;
  - a job whose cancellation returned "cancelled" never started;
  - no job started before its due time (by the server's clock).
"""

from __future__ import annotations

import os
import uuid
from contextlib import ExitStack

import anyio
import msgspec
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
    run_state_machine_as_test,
)
from redis.asyncio import Redis

import streamq
from streamq import channel, connection
from streamq.config import Backoff
from streamq.errors import Fail, InvalidJobState
from streamq.job import Job
from streamq.worker import Worker, WorkerOptions

TERMINAL = {"done", "dead", "cancelled", "expired"}
OPTIONS = WorkerOptions(
    visibility_timeout=1.0,
    block_seconds=0.2,
    max_attempts=3,
    backoff=Backoff(base=0.02, factor=2, max=0.1, jitter=0.5),
    concurrency=4,
)


class Plan(msgspec.Struct):
    """What the handler does with a job, carried in its payload."""

    fail_times: int = 0
    """Raise on the first N attempts, then succeed."""
    fatal: bool = False
    """Raise Fail on every attempt."""
    slow: bool = False


class ModelJob(msgspec.Struct):
    plan: Plan
    dues: list[tuple[int, int]]
    """(index into starts, due ms): starts from that index on must not precede that due time
    (a reschedule opens a new window; starts before it answered to the old due time)."""
    cancelled: bool = False
    """cancel() said 'cancelled': it must never start again."""
    starts_before_cancel: int = 0
    """How many starts (of any job) had been seen when it was cancelled."""
    cancelling: bool = False
    """cancel() said it was running: it must not be retried afterwards."""
    replayed: bool = False


class Lifecycle(RuleBasedStateMachine):
    url: str = ""
    jobs = Bundle("jobs")

    def __init__(self) -> None:
        super().__init__()
        self.stack = ExitStack()
        self.portal: BlockingPortal = self.stack.enter_context(
            start_blocking_portal("asyncio", {"use_uvloop": True})
        )
        self.stream = f"m{uuid.uuid4().hex[:10]}"
        self.redis: Redis = connection.client(self.url)
        self.queue = self.portal.call(self._open)
        self.model: dict[str, ModelJob] = {}
        self.starts: list[tuple[str, int, int]] = []  # (job id, attempt, server ms)
        self.healed: set[str] = set()  # replayed jobs, which succeed from then on

    async def _open(self) -> streamq.Queue:
        return await streamq.connect(self.url).__aenter__()

    async def _server_ms(self) -> int:
        return await channel.server_ms(self.redis)

    async def _handler(self, job: Job) -> str:
        self.starts.append((job.id, job.attempt, await self._server_ms()))
        if job.id in self.healed:
            return "ok"
        plan = msgspec.convert(job.payload, Plan)
        if plan.slow:
            await anyio.sleep(0.3)
        if plan.fatal:
            raise Fail("fatal")
        if job.attempt <= plan.fail_times:
            raise RuntimeError(f"failure {job.attempt}")
        return "ok"

    # -- rules ----------------------------------------------------------------------------------

    @rule(
        target=jobs,
        plan=st.builds(Plan, fail_times=st.integers(0, 4), fatal=st.booleans(), slow=st.booleans()),
        delay=st.sampled_from([None, 0.05, 0.3]),
    )
    def enqueue(self, plan: Plan, delay: float | None) -> str:
        async def go() -> tuple[str, int]:
            before = await self._server_ms()
            job_id = await self.queue.enqueue(self.stream, msgspec.to_builtins(plan), delay=delay)
            after = await self._server_ms()
            # The producer counts the delay from its estimate of the server's clock, which may
            # trail it by a reply's latency (or lead it by a millisecond or so: both clocks are
            # rounded to whole ms): the job's own due time is what no start may precede.
            if delay is None:  # due at once: at least not before it was enqueued
                return job_id, before
            due = (await self.queue.job(job_id)).run_at_ms
            wanted = round(delay * 1000)
            assert due is not None
            assert before + wanted - 1000 <= due <= after + wanted + 10, (
                job_id,
                before,
                due,
                after,
            )
            return job_id, due

        job_id, due = self.portal.call(go)
        self.model[job_id] = ModelJob(plan=plan, dues=[(len(self.starts), due)])
        return job_id

    @rule(job_id=jobs)
    def cancel(self, job_id: str) -> None:
        model = self.model[job_id]

        async def go() -> str | None:
            try:
                return await self.queue.cancel(job_id)
            except InvalidJobState:
                return None

        seen = len(self.starts)
        outcome = self.portal.call(go)
        if outcome == "cancelled":
            model.cancelled = True
            model.starts_before_cancel = seen
        elif outcome == "cancelling":
            model.cancelling = True

    @rule(job_id=jobs, delay=st.sampled_from([0.05, 0.2]))
    def reschedule(self, job_id: str, delay: float) -> None:
        async def go() -> int | None:
            try:
                return await self.queue.reschedule(job_id, delay=delay)
            except InvalidJobState:
                return None

        seen = len(self.starts)
        due = self.portal.call(go)
        if due is not None:
            self.model[job_id].dues.append((seen, due))

    @rule(seconds=st.sampled_from([0.1, 0.4]))
    def run_worker(self, seconds: float) -> None:
        async def go() -> None:
            worker = Worker(self.redis, self.stream, self._handler, OPTIONS)
            async with anyio.create_task_group() as tg:
                tg.start_soon(worker.run)
                await anyio.sleep(seconds)
                worker.stop()

        self.portal.call(go)

    @rule()
    def crash_worker(self) -> None:
        """A worker dies mid-job: its task is torn down with nothing acknowledged."""

        async def go() -> None:
            worker = Worker(self.redis, self.stream, self._handler, OPTIONS)
            with anyio.move_on_after(0.15):
                await worker.run()

        self.portal.call(go)

    @rule(job_id=consumes(jobs))
    def replay_if_dead(self, job_id: str) -> None:
        async def go() -> bool:
            info = await self.queue.job(job_id)
            if info.state != "dead":
                return False
            await self.queue.retry(job_id)
            return True

        self.healed.add(job_id)  # "the platform is back": it succeeds from now on
        if self.portal.call(go):
            self.model[job_id].replayed = True
        else:
            self.healed.discard(job_id)

    @invariant()
    def no_start_before_due_time_and_no_cancelled_start(self) -> None:
        for index, (job_id, _attempt, started) in enumerate(self.starts):
            model = self.model[job_id]
            due = [d for since, d in model.dues if since <= index][-1]  # the latest in force
            assert started >= due or model.replayed, (job_id, started, due)
            if model.cancelled:
                assert index < model.starts_before_cancel, f"{job_id} started after its cancel"

    def teardown(self) -> None:
        try:
            self.portal.call(self._drain)
            self.portal.call(self._check_final_states)
        finally:
            self.portal.call(self.queue.close)
            self.portal.call(self.redis.aclose)
            self.stack.close()

    async def _drain(self) -> None:
        """Run a worker until every job is terminal (crashed entries come back after 1 s)."""
        worker = Worker(self.redis, self.stream, self._handler, OPTIONS)
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            with anyio.fail_after(30):
                while not await self._all_terminal():  # noqa: ASYNC110 - polling Redis state
                    await anyio.sleep(0.05)
            worker.stop()

    async def _all_terminal(self) -> bool:
        for job_id in self.model:
            if (await self.queue.job(job_id)).state not in TERMINAL:
                return False
        return True

    async def _check_final_states(self) -> None:
        for job_id, model in self.model.items():
            info = await self.queue.job(job_id)
            expected = self._expected(model)
            crash_looped = info.state == "dead" and "delivered" in (info.error or "")
            assert info.state in expected or crash_looped, (job_id, info.state, expected, model)
            runs = [a for j, a, _ in self.starts if j == job_id]
            if info.state == "done" and not model.replayed:
                # Ran up to the attempt that succeeds (crash redeliveries add attempts).
                assert max(runs) >= model.plan.fail_times + 1, (job_id, runs)

    @staticmethod
    def _expected(model: ModelJob) -> set[str]:
        if model.cancelled:
            return {"cancelled"}
        if model.cancelling:  # it was running: it finishes, fails for good, or ends cancelled
            return {"cancelled", "done", "dead"}
        if model.replayed:
            return {"done"}
        if model.plan.fatal or model.plan.fail_times >= OPTIONS.max_attempts:
            return {"dead"}
        return {"done"}


@pytest.fixture
def machine(redis_url: str) -> type[Lifecycle]:
    class OnThisServer(Lifecycle):
        url = redis_url

    return OnThisServer


@pytest.mark.timeout(900)  # STREAMQ_MODEL_EXAMPLES raises the example count for longer runs
def test_job_lifecycle_against_a_model(machine: type[Lifecycle]) -> None:
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=int(os.environ.get("STREAMQ_MODEL_EXAMPLES", "10")),
            stateful_step_count=10,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )

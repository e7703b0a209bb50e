"""A stateful hypothesis test of flows against a model, on real servers and real workers.

Rules add flows with random DAGs (up to 8 steps on three streams, random `after`, failure
policies, outcomes and an optional on_complete step), some cancelled before any step runs, some
with one first step's job cancelled on its own (the rest moved to now by reschedule_flow), and
make workers "die" between finishing a step and telling its flow, or part way through telling
it (after the outcome is written; after the released steps are enqueued): only the outbox and
the other workers' sweeps are left. At the end, every flow must have ended as the model says:
  - each step ran at most once, never before every step it is after had finished;
  - dependents of a failed step obey its policy; cancelled steps never ran;
  - a step saw exactly the results of the steps it ran after;
  - the flow's final state is the model's, and on_complete ran exactly once.
On Valkey, Redis 7 and the cluster (the three streams and the flows on different shards).
"""

from __future__ import annotations

import contextvars
import os
import uuid
from collections.abc import Sequence
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test

import streamq
from streamq import connection, flows, keys, scripts
from streamq.errors import Fail
from streamq.job import Job
from streamq.worker import Worker, WorkerOptions

pytestmark = pytest.mark.cluster

OPTIONS = WorkerOptions(visibility_timeout=3.0, block_seconds=0.2, max_attempts=1, concurrency=4)
POLICIES = ("fail_flow", "continue", "ignore")
DEATHS = ("before_telling", "after_advance", "before_marking_released")
"""Where a worker dies while it tells a flow: before it starts (only the outbox member is left);
right after advance_flow wrote the outcome (before the end event and any release); after the
released steps were enqueued, before the flow marks them released. Each leaves the outbox
member for another worker's sweep."""
DYING: contextvars.ContextVar[str] = contextvars.ContextVar("DYING", default="")


class PlannedStep(msgspec.Struct, frozen=True):
    after: tuple[int, ...]
    policy: str
    succeeds: bool
    stream: int
    dies: str
    """Where this step's worker "dies" after recording it: "" (it does not), or one of DEATHS."""


@st.composite
def dags(draw: Any) -> list[PlannedStep]:
    count = draw(st.integers(1, 8))
    steps = []
    for i in range(count):
        after = draw(st.lists(st.integers(0, i - 1), unique=True, max_size=3)) if i else []
        steps.append(
            PlannedStep(
                after=tuple(sorted(after)),
                policy=draw(st.sampled_from(POLICIES)),
                succeeds=draw(st.booleans().map(lambda b: b or draw(st.booleans()))),
                stream=draw(st.integers(0, 2)),
                dies=draw(st.sampled_from(("", *DEATHS))),
            )
        )
    return steps


def expected(
    plan: Sequence[PlannedStep], cancelled: bool, cancelled_steps: frozenset[int] = frozenset()
) -> tuple[dict[str, str], str]:
    """The model: each step's final state and the flow's (``cancelled``: the whole flow before
    any step ran; ``cancelled_steps``: those steps' jobs cancelled on their own before they
    ran)."""
    states: dict[str, str] = {}
    for i, step in enumerate(plan):
        stopped = (
            cancelled
            or i in cancelled_steps
            or any(
                states[f"s{a}"] == "cancelled"
                or (states[f"s{a}"] == "failed" and plan[a].policy == "fail_flow")
                for a in step.after
            )
        )
        states[f"s{i}"] = "cancelled" if stopped else ("done" if step.succeeds else "failed")
    if cancelled:
        return states, "cancelled"
    flow_state = "done"
    for i, step in enumerate(plan):
        state = states[f"s{i}"]
        if state == "failed" and step.policy == "fail_flow":
            return states, "failed"
        if state == "cancelled" or (state == "failed" and step.policy == "continue"):
            flow_state = "partially_done"
    return states, flow_state


class Flows(RuleBasedStateMachine):
    url: str = ""

    def __init__(self) -> None:
        super().__init__()
        self.stack = ExitStack()
        self.portal: BlockingPortal = self.stack.enter_context(
            start_blocking_portal("asyncio", {"use_uvloop": True})
        )
        tag = uuid.uuid4().hex[:8]
        self.streams = [f"fm{tag}-{i}" for i in range(3)]
        self.flows: dict[str, tuple[list[PlannedStep], bool, bool, frozenset[int]]] = {}
        self.events: list[tuple[str, str, str, Any]] = []  # (flow, step, start|end, seen)
        self.queue = self.portal.call(self._start)
        self.workers = []
        for stream in self.streams:
            worker = Worker(self.redis, stream, self._handler, OPTIONS)
            self.workers.append((worker, self.portal.start_task_soon(worker.run)))

    async def _start(self) -> streamq.Queue:
        queue = await streamq.connect(self.url).__aenter__()
        self.redis = connection.client(self.url)
        await connection.check(self.redis, self.url)
        return queue

    async def _handler(self, job: Job) -> Any:
        assert job.flow is not None
        seen = (dict(job.flow.results), dict(job.flow.errors))
        self.events.append((job.flow.id, job.flow.step, "start", seen))
        await anyio.lowlevel.checkpoint()
        self.events.append((job.flow.id, job.flow.step, "end", None))
        if not job.payload["succeeds"]:
            raise Fail(f"{job.flow.step} failed")
        return {"from": job.flow.step}

    # -- rules ----------------------------------------------------------------------------------

    def _steps(self, plan: list[PlannedStep]) -> list[flows.Step]:
        return [
            flows.Step(
                name=f"s{i}",
                stream=self.streams[step.stream],
                payload={"succeeds": step.succeeds, "dies": step.dies},
                after=[f"s{a}" for a in step.after],
                on_failure=step.policy,  # type: ignore[arg-type]
            )
            for i, step in enumerate(plan)
        ]

    @rule(plan=dags(), with_on_complete=st.booleans())
    def add_flow(self, plan: list[PlannedStep], with_on_complete: bool) -> None:
        last = flows.Step(
            name="end", stream=self.streams[0], payload={"succeeds": True, "dies": ""}
        )
        flow = self.portal.call(
            lambda: self.queue.enqueue_flow(
                self._steps(plan), on_complete=last if with_on_complete else None
            )
        )
        self.flows[flow.id] = (plan, with_on_complete, False, frozenset())

    @rule(plan=dags())
    def add_and_cancel_a_flow(self, plan: list[PlannedStep]) -> None:
        async def go() -> str:
            later = datetime.now(UTC) + timedelta(hours=1)
            last = flows.Step(name="end", stream=self.streams[1], payload={"succeeds": True})
            flow = await self.queue.enqueue_flow(self._steps(plan), later, on_complete=last)
            assert await self.queue.cancel_flow(flow.id) == "cancelled"
            return flow.id

        self.flows[self.portal.call(go)] = (plan, True, True, frozenset())

    @rule(plan=dags(), pick=st.integers(0, 7))
    def add_a_flow_and_cancel_one_step(self, plan: list[PlannedStep], pick: int) -> None:
        """One first step's job cancelled on its own (q.cancel) while the flow waits for its
        run_at, then the rest of the flow moved to now (q.reschedule_flow)."""
        roots = [i for i, step in enumerate(plan) if not step.after]
        target = roots[pick % len(roots)]

        async def go() -> str:
            later = datetime.now(UTC) + timedelta(hours=1)
            flow = await self.queue.enqueue_flow(self._steps(plan), later)
            assert await self.queue.cancel(flow.jobs[f"s{target}"]) == "cancelled"
            moved = await self.queue.reschedule_flow(flow.id, datetime.now(UTC))
            assert moved == len(roots) - 1
            return flow.id

        self.flows[self.portal.call(go)] = (plan, False, False, frozenset({target}))

    # -- the end --------------------------------------------------------------------------------

    def teardown(self) -> None:
        try:
            self.portal.call(self._check)
        finally:
            for worker, _ in self.workers:
                self.portal.call(worker.stop)
            for _, running in self.workers:
                running.result(timeout=30)
            self.portal.call(self.queue.close)
            self.portal.call(self.redis.aclose)
            self.stack.close()

    async def _flow_events(self) -> dict[str, list[str]]:
        """The types of the flow events written, by flow id."""
        found: dict[str, list[str]] = {}
        for stream in self.streams:
            async for event in self.queue.events(stream, wait=False):
                if event.type.startswith("flow."):
                    found.setdefault(event.job, []).append(event.type)
        return found

    async def _outboxes_empty(self) -> bool:
        return not sum([await self.redis.zcard(keys.flow_outbox(s)) for s in self.streams])

    async def _check(self) -> None:
        infos: dict[str, flows.FlowInfo] = {}
        with anyio.fail_after(30):
            for flow_id in self.flows:
                while True:
                    info = await self.queue.flow(flow_id)
                    ended = [s.state in flows.FINAL for s in info.steps.values()]
                    if info.state not in ("scheduled", "running") and all(ended):
                        infos[flow_id] = info
                        break
                    await anyio.sleep(0.05)
            # A flow can end in a tell that died before its end event (after_advance): the
            # event is written by the sweep that finishes that tell, which empties the outbox.
            while True:
                if await self._outboxes_empty():
                    break
                await anyio.sleep(0.05)
        told = await self._flow_events()
        for flow_id, (plan, with_end, cancelled, cancelled_steps) in self.flows.items():
            info = infos[flow_id]
            states, flow_state = expected(plan, cancelled, cancelled_steps)
            assert info.state == flow_state, (plan, cancelled, info)
            assert told.get(flow_id) == [f"flow.{flow_state}"], (plan, told.get(flow_id))
            got = {name: step.state for name, step in info.steps.items() if name != "end"}
            assert got == states, (plan, info)
            mine = [(step, kind, seen) for f, step, kind, seen in self.events if f == flow_id]
            starts = [step for step, kind, _ in mine if kind == "start"]
            ran = sorted(name for name, state in states.items() if state != "cancelled")
            assert sorted(s for s in starts if s != "end") == ran, (plan, mine)
            assert starts.count("end") == (1 if with_end else 0)
            if with_end:
                assert info.steps["end"].state == "done"
            ends_before: set[str] = set()
            for step, kind, seen in mine:
                if kind == "end":
                    ends_before.add(step)
                    continue
                if step == "end":
                    assert ends_before >= set(ran)
                    continue
                befores = [f"s{a}" for a in plan[int(step[1:])].after]
                assert set(befores) <= ends_before, (step, plan, mine)
                results = {b: {"from": b} if states[b] == "done" else None for b in befores}
                errors = {b: f"{b} failed" for b in befores if states[b] == "failed"}
                assert seen == (results, errors), (step, plan)


@pytest.fixture
def machine(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> type[Flows]:
    class OnThisServer(Flows):
        url = redis_url

    real_tell = flows.tell_jobs

    async def some_die_while_telling(redis: Any, jobs: Sequence[Job]) -> None:
        """The steps marked so are left to the outbox, as if their worker died before telling
        the flow, or part way through (the script it reaches there raises)."""
        await real_tell(redis, [job for job in jobs if not job.payload.get("dies")])
        for death in DEATHS[1:]:
            dying = [job for job in jobs if job.payload.get("dies") == death]
            if dying:
                DYING.set(death)
                try:
                    await real_tell(redis, dying)
                finally:
                    DYING.set("")

    def dies_at(name: str, deaths: tuple[str, ...]) -> None:
        real = getattr(scripts, name)

        async def maybe(*args: Any, **kwargs: Any) -> Any:
            if DYING.get() in deaths:
                raise RuntimeError(f"the worker died at {name}")
            return await real(*args, **kwargs)

        monkeypatch.setattr(scripts, name, maybe)

    dies_at("announce_flow", ("after_advance",))
    dies_at("enqueue_jobs", ("after_advance",))
    dies_at("mark_flow_released", DEATHS[1:])
    monkeypatch.setattr(flows, "tell_jobs", some_die_while_telling)
    monkeypatch.setattr(flows, "OUTBOX_GRACE_MS", 100)
    return OnThisServer


def test_flows_against_a_model(machine: type[Flows]) -> None:
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=int(os.environ.get("STREAMQ_MODEL_EXAMPLES", "6")),
            stateful_step_count=6,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )

"""The order the docs promise: an account's jobs start in enqueue order within a lane, on every
path a job can wait on (pauses, platform and account limits, bulk enqueues sharing a
millisecond), and no job read ahead starts while a higher lane has held a ready job for longer
than one fetch round trip."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import streamq
from streamq import codec, keys
from streamq.config import Config, Limit, StreamConfig
from streamq.job import Job
from streamq.server import LocalCluster, LocalServer
from streamq.worker import Worker, WorkerOptions

pytestmark = [pytest.mark.cluster]

EXAMPLES = int(os.environ.get("STREAMQ_ORDER_EXAMPLES", "6"))
PRIORITY_BOUND = 0.05
"""How long a higher lane's ready job may wait while a lower lane's job starts: one fetch round
trip and the worker's LANE_NEWS_SECONDS, with room for a loaded machine."""

ACCOUNTS = ["a", "b"]
LIMITS: dict[str, tuple[Limit, ...]] = {
    "none": (),
    "platform": (Limit(scope="platform", min_interval=0.02),),
    "account": (Limit(scope="account", max=2, per=0.1),),
}

Op = tuple[Any, ...]
ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("bulk"),
            st.lists(st.sampled_from(ACCOUNTS), min_size=2, max_size=6),
            st.sampled_from(["high", "normal"]),
        ),
        st.tuples(st.just("one"), st.sampled_from(ACCOUNTS), st.sampled_from(["high", "normal"])),
        st.tuples(st.just("pause"), st.sampled_from(ACCOUNTS)),
        st.tuples(st.just("resume"), st.sampled_from(ACCOUNTS)),
        st.tuples(st.just("wait"), st.sampled_from([0.005, 0.03])),
    ),
    min_size=1,
    max_size=8,
)


class Starts:
    """What the handler saw: job ids in the order they started, with when."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.at: dict[str, float] = {}
        self._changed = anyio.Event()

    def note(self, job: Job) -> None:
        self.at[job.id] = time.monotonic()
        self.order.append(job.id)
        self._changed.set()
        self._changed = anyio.Event()

    async def until(self, condition: Callable[[], bool], seconds: float = 30) -> None:
        with anyio.fail_after(seconds):
            while not condition():
                with anyio.move_on_after(0.05):
                    await self._changed.wait()


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    plan=ops,
    limits=st.sampled_from(sorted(LIMITS)),
    concurrency=st.sampled_from([1, 3]),
)
# The cases: six jobs of one bulk call parked, then resumed; ten of one bulk call held
# for a platform's minimum interval.
@example(plan=[("pause", "a"), ("bulk", ["a"] * 6, "normal")], limits="none", concurrency=1)
@example(plan=[("bulk", ["a"] * 10, "normal")], limits="platform", concurrency=1)
# A resume while the account's jobs are still unread or on their way to being parked.
@example(
    plan=[
        ("pause", "a"),
        ("one", "a", "normal"),
        ("wait", 0.03),
        ("bulk", ["a"] * 3, "normal"),
        ("resume", "a"),
    ],
    limits="none",
    concurrency=1,
)
# Found by this test: a job still unread at the final resume took its account's turn on the
# platform while waiting behind a resumed one, which was then held behind it (both stuck).
@example(
    plan=[
        ("one", "b", "high"),
        ("bulk", ["a", "b"], "normal"),
        ("bulk", ["a", "b", "a", "a", "b", "b"], "normal"),
        ("pause", "b"),
        ("wait", 0.005),
        ("one", "b", "normal"),
        ("one", "a", "normal"),
        ("one", "b", "normal"),
    ],
    limits="platform",
    concurrency=3,
)
# Found by this test: a job deferred again by its account's limit, overtaken by a later one.
@example(
    plan=[
        ("bulk", ["b", "a", "a", "a"], "high"),
        ("bulk", ["a", "a", "a", "a"], "normal"),
        ("bulk", ["a", "b", "a", "a"], "normal"),
    ],
    limits="account",
    concurrency=1,
)
def test_an_accounts_jobs_start_in_enqueue_order_within_a_lane(
    server: LocalServer | LocalCluster, plan: list[Op], limits: str, concurrency: int
) -> None:
    stream = f"o{os.urandom(6).hex()}"
    config = Config(streams={stream: StreamConfig(limits=LIMITS[limits])})
    starts = Starts()
    enqueued: dict[tuple[str, str], list[str]] = {}
    account_of: dict[str, str] = {}

    async def handler(job: Job) -> None:
        starts.note(job)

    async def main() -> None:
        async with streamq.connect(server.url, config=config) as q:
            options = WorkerOptions(
                limits=LIMITS[limits], concurrency=concurrency, block_seconds=0.5
            )
            worker = Worker(q.redis, stream, handler, options)
            paused: set[str] = set()
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(worker.run)
                for op in plan:
                    if op[0] == "bulk":
                        ids = await q.enqueue_many(
                            stream, list(range(len(op[1]))), accounts=op[1], priority=op[2]
                        )
                        for job_id, account in zip(ids, op[1], strict=True):
                            enqueued.setdefault((account, op[2]), []).append(job_id)
                            account_of[job_id] = account
                    elif op[0] == "one":
                        job_id = await q.enqueue(stream, 0, account=op[1], priority=op[2])
                        enqueued.setdefault((op[1], op[2]), []).append(job_id)
                        account_of[job_id] = op[1]
                    elif op[0] == "pause":
                        await q.pause_account(op[1], stream)
                        paused.add(op[1])
                    elif op[0] == "resume":
                        # At once, even while jobs of the account enqueued before it are still
                        # unread in the lane: they must wait behind the parked ones.
                        await q.resume_account(op[1], stream)
                        paused.discard(op[1])
                    else:
                        await anyio.sleep(op[1])
                for account in sorted(paused):
                    await q.resume_account(account, stream)
                await starts.until(lambda: len(starts.at) == len(account_of))
                worker.stop()

    anyio.run(main, backend="asyncio")
    for (account, lane), ids in enqueued.items():
        started = [job_id for job_id in starts.order if job_id in set(ids)]
        assert started == ids, f"account {account}, lane {lane}: started out of enqueue order"


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    concurrency=st.sampled_from([1, 2, 4]),
    prefetch=st.sampled_from([None, 8]),
    batches=st.lists(
        st.tuples(
            st.sampled_from(["high", "normal", "low"]),
            st.integers(1, 6),
            st.sampled_from([0.0, 0.02]),
        ),
        max_size=4,
    ),
)
# The case: a worker at concurrency 1 busy while 4 low, 4 normal and 4 high jobs come.
@example(
    concurrency=1,
    prefetch=None,
    batches=[("low", 4, 0.0), ("normal", 4, 0.0), ("high", 4, 0.0)],
)
def test_no_job_read_ahead_starts_while_a_higher_lane_holds_a_ready_job(
    server: LocalServer | LocalCluster,
    concurrency: int,
    prefetch: int | None,
    batches: list[tuple[str, int, float]],
) -> None:
    stream = f"o{os.urandom(6).hex()}"
    starts = Starts()
    ready: dict[str, float] = {}
    lane_of: dict[str, int] = {}
    rank = {"high": 0, "normal": 1, "low": 2}

    async def handler(job: Job) -> None:
        starts.note(job)
        await anyio.sleep(job.payload)

    async def main() -> None:
        async with streamq.connect(server.url) as q:
            options = WorkerOptions(concurrency=concurrency, prefetch=prefetch, block_seconds=0.5)
            worker = Worker(q.redis, stream, handler, options)
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(worker.run)
                # Keep every slot busy, let the worker read low jobs ahead, then send the rest.
                busy = await q.enqueue_many(stream, [0.4] * concurrency, priority="low")
                await starts.until(lambda: all(job_id in starts.at for job_id in busy))
                plan = [("low", 2 * concurrency + 8, 0.03), *batches, ("high", 2, 0.0)]
                for lane, count, pause in plan:
                    accounts = [ACCOUNTS[i % 2] for i in range(count)]
                    ids = await q.enqueue_many(
                        stream, [0.01] * count, accounts=accounts, priority=lane
                    )
                    now = time.monotonic()
                    for job_id in ids:
                        ready[job_id], lane_of[job_id] = now, rank[lane]
                    await anyio.sleep(pause)
                await starts.until(lambda: all(job_id in starts.at for job_id in ready))
                worker.stop()

    anyio.run(main, backend="asyncio")
    at = starts.at
    for job_id, lane in lane_of.items():
        began = at[job_id]
        waiting = [
            other
            for other, higher in lane_of.items()
            if higher < lane and ready[other] < began - PRIORITY_BOUND and at[other] > began
        ]
        assert not waiting, (
            f"a lane-{lane} job started while {len(waiting)} higher-lane jobs had been ready "
            f"for {max(began - ready[w] for w in waiting):.3f}s"
        )


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(calls=st.lists(st.integers(1, 5), min_size=2, max_size=5))
def test_jobs_due_at_the_same_millisecond_start_in_enqueue_order(
    server: LocalServer | LocalCluster, calls: list[int]
) -> None:
    stream = f"o{os.urandom(6).hex()}"
    starts = Starts()
    enqueued: list[str] = []

    async def handler(job: Job) -> None:
        starts.note(job)

    async def main() -> None:
        async with streamq.connect(server.url) as q:
            due = datetime.now(UTC) + timedelta(seconds=0.8)
            for size in calls:  # bulk and single calls, all due at one millisecond
                if size == 1:
                    enqueued.append(await q.enqueue(stream, 0, run_at=due))
                else:
                    enqueued.extend(await q.enqueue_many(stream, [0] * size, run_at=due))
            options = WorkerOptions(concurrency=1, block_seconds=0.5)
            worker = Worker(q.redis, stream, handler, options)
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(worker.run)
                await starts.until(lambda: len(starts.at) == len(enqueued))
                worker.stop()

    anyio.run(main, backend="asyncio")
    assert starts.order == enqueued


def _previous_job_id(stream: str, at_ms: int | None = None) -> str:
    """A job id as the previous version made them: ``<stream>:<ms hex 11>-<random hex 12>``."""
    ms = codec.now_ms() if at_ms is None else at_ms
    return f"{stream}:{ms:011x}-{os.urandom(6).hex()}"


def test_jobs_with_ids_of_the_previous_version_run_and_keep_their_place(
    server: LocalServer | LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = f"o{os.urandom(6).hex()}"
    starts = Starts()
    enqueued: list[str] = []

    async def handler(job: Job) -> None:
        starts.note(job)

    async def main() -> None:
        async with streamq.connect(server.url) as q:
            await q.pause_account("a", stream)
            with monkeypatch.context() as patch:
                patch.setattr(codec, "new_job_id", _previous_job_id)
                for _ in range(3):  # parked before an upgrade, a millisecond apart
                    enqueued.append(await q.enqueue(stream, 0, account="a"))
                    await anyio.sleep(0.002)
            enqueued.extend(await q.enqueue_many(stream, [0] * 3, accounts=["a"] * 3))
            assert all(len(job_id) == len(stream) + 25 for job_id in enqueued[:3])
            options = WorkerOptions(concurrency=1, block_seconds=0.5)
            worker = Worker(q.redis, stream, handler, options)
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(worker.run)
                with anyio.fail_after(30):
                    while await q.redis.zcard(keys.parked(stream, "a")) < len(enqueued):  # noqa: ASYNC110
                        await anyio.sleep(0.01)
                await q.resume_account("a", stream)
                await starts.until(lambda: len(starts.at) == len(enqueued))
                worker.stop()
            assert {(await q.job(job_id)).state for job_id in enqueued} == {"done"}

    anyio.run(main, backend="asyncio")
    assert starts.order == enqueued


@pytest.mark.parametrize("limits", sorted(LIMITS))
def test_a_resumed_accounts_parked_jobs_start_before_its_later_ones_still_in_the_lane(
    server: LocalServer | LocalCluster, limits: str
) -> None:
    # The race a resume used to lose: the account's first job was read and parked, its next
    # ones were not read yet when the account was resumed, so the parked one went back to the
    # lane behind them.
    stream = f"o{os.urandom(6).hex()}"
    config = Config(streams={stream: StreamConfig(limits=LIMITS[limits])})
    starts = Starts()
    enqueued: list[str] = []

    async def handler(job: Job) -> None:
        starts.note(job)

    async def main() -> None:
        async with streamq.connect(server.url, config=config) as q:
            options = WorkerOptions(limits=LIMITS[limits], concurrency=1, block_seconds=0.2)
            await q.pause_account("a", stream)
            enqueued.append(await q.enqueue(stream, 0, account="a"))
            async with anyio.create_task_group() as tasks:
                worker = Worker(q.redis, stream, handler, options)
                tasks.start_soon(worker.run)
                with anyio.fail_after(30):  # the first job parked, then no worker reads
                    while (await q.job(enqueued[0])).state != "paused":  # noqa: ASYNC110
                        await anyio.sleep(0.01)
                worker.stop()
            enqueued.extend(await q.enqueue_many(stream, [0] * 2, accounts=["a"] * 2))
            await q.resume_account("a", stream)
            async with anyio.create_task_group() as tasks:
                worker = Worker(q.redis, stream, handler, options)
                tasks.start_soon(worker.run)
                await starts.until(lambda: len(starts.at) == len(enqueued))
                worker.stop()

    anyio.run(main, backend="asyncio")
    assert starts.order == enqueued

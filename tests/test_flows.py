"""Flows (streamq.flows) against real servers and real workers: steps on several streams that
wait for each other, their results handed on, failure policies, on_complete once, a flow key,
cancelling, refusals before anything is enqueued, and a worker that dies between finishing a
step and telling its flow. On the cluster, a flow's steps sit on different shards."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

import streamq
from streamq import channel, codec, flows, keys, scripts
from streamq.errors import ConfigError, Fail, FlowError, FlowNotFound, PayloadError
from streamq.job import Job
from streamq.worker import Worker
from tests.test_events import options as burst_options
from tests.test_lifecycle import Running, options
from tests.test_worker import poll

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]

Runs = list[tuple[str, str, Any]]
"""(stream, step, what the step's job.flow saw): every run of every handler."""


def recording(runs: Runs, fail: set[str] = frozenset()) -> Callable[[Job], Any]:  # type: ignore[assignment]
    async def handler(job: Job) -> Any:
        assert job.flow is not None
        runs.append((job.stream, job.flow.step, (dict(job.flow.results), dict(job.flow.errors))))
        if job.flow.step in fail:
            raise Fail(f"{job.flow.step} refused")
        return {"id": f"{job.flow.step}-1", "payload": job.payload}

    return handler


@contextlib.asynccontextmanager
async def workers(
    redis: Redis, streams: list[str], handler: Callable[[Job], Any], **changes: Any
) -> AsyncIterator[None]:
    async with contextlib.AsyncExitStack() as stack:
        for stream in streams:
            await stack.enter_async_context(
                Running(Worker(redis, stream, handler, options(**changes)))
            )
        yield


async def flow_events(q: streamq.Queue, streams: list[str], flow_id: str) -> list[streamq.Event]:
    found = []
    for stream in streams:  # one at a time: on a cluster each is on a slot of its own
        async for event in q.events(stream, wait=False):
            if event.job == flow_id and event.type.startswith("flow."):
                found.append(event)
    return found


async def ended(q: streamq.Queue, flow_id: str) -> flows.FlowInfo:
    async def final() -> bool:
        info = await q.flow(flow_id)
        return info.state not in ("scheduled", "running") and all(
            step.state in flows.FINAL for step in info.steps.values()
        )

    await poll(final)
    return await q.flow(flow_id)


def streams_of(stream: str, n: int) -> list[str]:
    return [f"{stream}-{i}" for i in range(n)]


async def test_a_cross_post_runs_one_step_per_platform_and_ends_done(
    redis_url: str, redis: Redis, stream: str
) -> None:
    platforms = streams_of(stream, 3)
    runs: Runs = []
    async with streamq.connect(redis_url) as q:
        flow = await q.cross_post({"text": "hi"}, platforms, account="acme")
        assert set(flow.jobs) == set(platforms)
        assert [keys.stream_of_job(flow.jobs[p]) for p in platforms] == platforms
        async with workers(redis, platforms, recording(runs)):
            info = await ended(q, flow.id)
        assert info.state == "done"
        assert sorted((s, step) for s, step, _ in runs) == [(p, p) for p in platforms]
        for platform in platforms:
            step = info.steps[platform]
            assert (step.state, step.job) == ("done", flow.jobs[platform])
            assert step.result == {"id": f"{platform}-1", "payload": {"text": "hi"}}
            assert (await q.job(flow.jobs[platform])).account == "acme"
        [ended_event] = await flow_events(q, platforms, flow.id)
        assert ended_event.type == "flow.done"
        assert ended_event.result == dict.fromkeys(platforms, "done")


async def test_steps_run_after_the_steps_they_are_after_and_see_their_results(
    redis_url: str, redis: Redis, stream: str
) -> None:
    upload, publish, comment = streams_of(stream, 3)
    runs: Runs = []
    steps = [
        streamq.Step(name="upload", stream=upload, payload="video"),
        streamq.Step(name="publish", stream=publish, payload="post", after=["upload"]),
        streamq.Step(name="comment", stream=comment, payload="#tags", after=["publish"]),
    ]
    done = streamq.Step(name="notify", stream=upload, payload="tell the app")
    async with streamq.connect(redis_url) as q:
        flow = await q.enqueue_flow(steps, on_complete=done)
        before = await q.flow(flow.id)
        assert before.steps["publish"].state == "held"
        assert before.steps["notify"].state == "held"
        async with workers(redis, [upload, publish, comment], recording(runs)):
            info = await ended(q, flow.id)
    assert info.state == "done"
    order = [step for _, step, _ in runs]
    assert order == ["upload", "publish", "comment", "notify"]
    seen = {step: flow_view for _, step, flow_view in runs}
    assert seen["upload"] == ({}, {})
    assert seen["publish"] == ({"upload": {"id": "upload-1", "payload": "video"}}, {})
    assert seen["comment"][0]["publish"]["id"] == "publish-1"
    assert set(seen["notify"][0]) == {"upload", "publish", "comment"}
    assert info.steps["notify"].state == "done"


async def test_a_failed_step_cancels_its_dependents_and_fails_the_flow_and_on_complete_runs_once(
    redis_url: str, redis: Redis, stream: str
) -> None:
    a, b, c = streams_of(stream, 3)
    runs: Runs = []
    steps = [
        streamq.Step(name="publish", stream=a, payload=1),
        streamq.Step(name="comment", stream=b, payload=2, after=["publish"]),
        streamq.Step(name="pin", stream=b, payload=3, after=["comment"]),
        streamq.Step(name="other", stream=c, payload=4),
    ]
    async with streamq.connect(redis_url) as q:
        flow = await q.enqueue_flow(steps, on_complete=streamq.Step(name="end", stream=c))
        async with workers(redis, [a, b, c], recording(runs, fail={"publish"})):
            info = await ended(q, flow.id)
            # on_complete ran once, and nothing else runs later.
            await poll(lambda: sum(step == "end" for _, step, _ in runs) == 1)
    assert info.state == "failed"
    async with streamq.connect(redis_url) as q:
        events = await flow_events(q, [a, b, c], flow.id)
    assert [(ev.type, ev.job) for ev in events] == [("flow.failed", flow.id)]
    states = {name: step.state for name, step in info.steps.items()}
    assert states == {
        "publish": "failed",
        "comment": "cancelled",
        "pin": "cancelled",
        "other": "done",
        "end": "done",
    }
    assert info.steps["publish"].error == "publish refused"
    assert info.steps["comment"].error == "not run: step publish failed"
    assert sorted(step for _, step, _ in runs) == ["end", "other", "publish"]
    end_results, end_errors = next(view for _, step, view in runs if step == "end")
    assert end_results["other"]["id"] == "other-1"
    assert end_errors["publish"] == "publish refused"


@pytest.mark.parametrize(
    ("policy", "flow_state"), [("continue", "partially_done"), ("ignore", "done")]
)
async def test_continue_and_ignore_let_dependents_run_and_see_the_error(
    redis_url: str, redis: Redis, stream: str, policy: str, flow_state: str
) -> None:
    a, b = streams_of(stream, 2)
    runs: Runs = []
    steps = [
        streamq.Step(name="thumbnail", stream=a, on_failure=policy),  # type: ignore[arg-type]
        streamq.Step(name="publish", stream=b, after=["thumbnail"]),
    ]
    async with streamq.connect(redis_url) as q:
        flow = await q.enqueue_flow(steps)
        async with workers(redis, [a, b], recording(runs, fail={"thumbnail"})):
            info = await ended(q, flow.id)
    assert info.state == flow_state
    assert info.steps["publish"].state == "done"
    seen = next(view for _, step, view in runs if step == "publish")
    assert seen == ({"thumbnail": None}, {"thumbnail": "thumbnail refused"})


async def test_bad_flows_are_refused_before_anything_is_enqueued(
    redis_url: str, redis: Redis, stream: str
) -> None:
    def step(name: str, *after: str, **kw: Any) -> streamq.Step:
        return streamq.Step(name=name, stream=kw.pop("on", stream), after=list(after), **kw)

    cases: list[tuple[list[streamq.Step], type[Exception], str]] = [
        ([step("a", "b"), step("b", "a")], FlowError, "the steps' 'after' make a cycle"),
        ([step("a", "nope")], FlowError, "step 'a' is after unknown step 'nope'"),
        ([step("a"), step("a")], FlowError, "duplicate step name 'a'"),
        ([step("a b")], FlowError, "invalid step name 'a b'"),
        ([step("a", on_failure="shrug")], FlowError, "step 'a': unknown on_failure 'shrug'"),
        ([step("a"), step("b", on="bad stream")], ConfigError, "step 'b': invalid stream name"),
        (
            [step("a"), step("post", on="instagram", payload={"text": "no picture"})],
            PayloadError,
            "step 'post': instagram post refused",
        ),
        ([step("a"), step("b", payload={1, 2})], PayloadError, "step 'b': payload cannot"),
    ]
    async with streamq.connect(redis_url) as q:
        for steps, error, message in cases:
            with pytest.raises(error) as refused:
                await q.enqueue_flow(steps)
            assert str(refused.value).startswith(message), refused.value
            assert "\n" not in str(refused.value)
        assert await redis.exists(*keys.lanes(stream), keys.delayed(stream)) == 0
        with pytest.raises(FlowError, match="on_complete step runs after every step"):
            await q.enqueue_flow([step("a")], on_complete=step("z", "a"))
        with pytest.raises(FlowNotFound):
            await q.flow("flow:0-0")


async def test_a_flow_key_returns_the_running_flow_and_is_free_once_it_ended(
    redis_url: str, redis: Redis, stream: str
) -> None:
    steps = [streamq.Step(name="only", stream=stream, payload=1)]
    async with streamq.connect(redis_url) as q:
        first = await q.enqueue_flow(steps, key=f"post-{stream}")
        again = await q.enqueue_flow(steps, key=f"post-{stream}")
        assert again == first
        assert await redis.xlen(keys.lane(stream, "normal")) == 1
        async with workers(redis, [stream], recording([])):
            await ended(q, first.id)
        later = await q.enqueue_flow(steps, key=f"post-{stream}")
        assert later.id != first.id


async def test_cancel_flow_cancels_steps_not_started_and_reschedule_moves_scheduled_ones(
    redis_url: str, redis: Redis, stream: str
) -> None:
    from datetime import UTC, datetime, timedelta

    a, b = streams_of(stream, 2)
    run_at = datetime.now(UTC) + timedelta(hours=1)
    steps = [
        streamq.Step(name="first", stream=a),
        streamq.Step(name="second", stream=b, after=["first"]),
    ]
    async with streamq.connect(redis_url) as q:
        flow = await q.enqueue_flow(
            steps, run_at=run_at, on_complete=streamq.Step(name="end", stream=b)
        )
        info = await q.flow(flow.id)
        assert (info.state, info.steps["first"].state) == ("scheduled", "scheduled")
        assert await q.reschedule_flow(flow.id, run_at + timedelta(hours=1)) == 1
        moved_to = datetime.fromisoformat(str((await q.job(flow.jobs["first"])).run_at))
        assert abs(moved_to - (run_at + timedelta(hours=1))) < timedelta(milliseconds=1)
        assert await q.cancel_flow(flow.id) == "cancelled"
        info = await q.flow(flow.id)
        assert info.steps["first"].state == "cancelled"
        assert info.steps["second"].state == "cancelled"
        assert (await q.job(flow.jobs["first"])).state == "cancelled"
        runs: Runs = []
        async with workers(redis, [a, b], recording(runs)):
            await poll(lambda: len(runs) == 1)
            info = await ended(q, flow.id)
        assert [step for _, step, _ in runs] == ["end"]
        assert info.state == "cancelled"
        assert [ev.type for ev in await flow_events(q, [a, b], flow.id)] == ["flow.cancelled"]


async def test_a_cancel_landing_while_a_step_is_being_released_still_stops_it(
    redis_url: str, redis: Redis, stream: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cancel_flow runs between a drain's read of a step as 'releasing' and its mark: the
    flow counts the step cancelled while the drain has just enqueued its job. The drain then
    cancels that job, as q.cancel would: it never starts, or its handler sees job.cancelled
    (this one waits for that, and ends the run when it does)."""
    a, b = streams_of(stream, 2)
    steps = [
        streamq.Step(name="first", stream=a),
        streamq.Step(name="second", stream=b, after=["first"]),
    ]
    mark = scripts.mark_flow_released

    async def cancelled_meanwhile(redis: Redis, flow_id: str, names: list[str]) -> list[str]:
        if "second" in names:
            await scripts.cancel_flow(redis, flow_id, retention_ms=flows.RETENTION_MS)
        return await mark(redis, flow_id, names)

    runs: Runs = []
    record = recording(runs)

    async def handler(job: Job) -> Any:
        if job.flow is not None and job.flow.step == "second":
            with contextlib.suppress(TimeoutError):
                await poll(lambda: job.cancelled, within=5)
            if job.cancelled:
                raise Fail("told it was cancelled")
        return await record(job)

    monkeypatch.setattr(scripts, "mark_flow_released", cancelled_meanwhile)
    async with streamq.connect(redis_url) as q:
        flow = await q.enqueue_flow(steps)
        async with workers(redis, [a, b], handler):
            info = await ended(q, flow.id)
            second = flow.jobs["second"]
            await poll(lambda: _job_state_is(q, second, ("cancelled", "done")))
        assert (await q.job(second)).state == "cancelled"
        assert [step for _, step, _ in runs] == ["first"]
        assert info.state == "cancelled"
        assert info.steps["second"].state == "cancelled"


async def _job_state_is(q: streamq.Queue, job_id: str, states: tuple[str, ...]) -> bool:
    return (await q.job(job_id)).state in states


async def test_a_worker_dying_before_it_tells_the_flow_loses_and_doubles_nothing(
    redis_url: str, redis: Redis, stream: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first worker records its steps' outcomes (and the outbox members, in the same step)
    but never tells the flows, as if it died right after finish_jobs; a later worker's sweep
    tells them, once."""
    a, b = streams_of(stream, 2)
    runs: Runs = []
    steps = [
        streamq.Step(name="publish", stream=a),
        streamq.Step(name="comment", stream=b, after=["publish"]),
    ]
    async with streamq.connect(redis_url) as q:
        created = [
            await q.enqueue_flow(steps, on_complete=streamq.Step(name="end", stream=b))
            for _ in range(5)
        ]

        async def dies_before_telling(redis: Redis, jobs: Any) -> None:
            return None

        with monkeypatch.context() as patch:
            patch.setattr(flows, "tell_jobs", dies_before_telling)
            patch.setattr(flows, "OUTBOX_GRACE_MS", 10**9)  # nor sweeps
            async with workers(redis, [a], recording(runs)):
                await poll(lambda: len(runs) == 5)
                await poll(lambda: redis.zcard(keys.flow_outbox(a)), within=5)
                await poll(lambda: _outbox_is(redis, a, 5))
        for flow in created:
            assert (await q.flow(flow.id)).steps["comment"].state == "held"
        # The stream's next worker sweeps what the first one left; the flows go on.
        async with workers(redis, [a, b], recording(runs)):
            infos = [await ended(q, flow.id) for flow in created]
            await poll(lambda: sum(step == "end" for _, step, _ in runs) == 5)
        assert all(info.state == "done" for info in infos)
        assert (
            sorted(step for _, step, _ in runs) == ["comment"] * 5 + ["end"] * 5 + ["publish"] * 5
        )
        assert await redis.zcard(keys.flow_outbox(a)) == 0
        assert await redis.zcard(keys.flow_outbox(b)) == 0
        # Telling again (a sweeper racing the worker) changes nothing and enqueues nothing.
        flow = created[0]
        for name in ("publish", "comment", "end"):
            member = f"{flow.jobs[name]} {flow.id} {name}"
            await flows.tell(redis, member)
        assert await flows.drain(redis, flow.id) == []
        assert (await q.flow(flow.id)).state == "done"


async def _outbox_is(redis: Redis, stream: str, n: int) -> bool:
    return int(await redis.zcard(keys.flow_outbox(stream))) == n


async def test_a_job_of_no_flow_leaves_no_outbox(redis_url: str, redis: Redis, stream: str) -> None:
    async with streamq.connect(redis_url) as q:
        job_id = await q.enqueue(stream, "plain")
        await Worker(redis, stream, recording_plain, burst_options()).run()
        assert (await q.job(job_id)).state == "done"
    assert await redis.exists(keys.flow_outbox(stream)) == 0


async def recording_plain(job: Job) -> Any:
    assert job.flow is None
    return "ok"


async def test_a_step_cancelled_on_its_own_or_expired_still_tells_its_flow(
    redis_url: str, redis: Redis, stream: str
) -> None:
    """Ended without a worker's finish (cancel_job; promotion's expiry): the scripts put the
    step in the outbox, and a worker's sweep tells the flow."""
    from datetime import UTC, datetime, timedelta

    a, b = streams_of(stream, 2)
    runs: Runs = []
    async with streamq.connect(redis_url) as q:
        soon = datetime.now(UTC) + timedelta(milliseconds=300)
        cancelled = await q.enqueue_flow(
            [
                streamq.Step(name="post", stream=a),
                streamq.Step(name="pin", stream=b, after=["post"]),
            ],
            run_at=soon + timedelta(hours=1),
        )
        expired = await q.enqueue_flow(
            [
                streamq.Step(name="post", stream=a, expire_after="1ms", on_failure="continue"),
                streamq.Step(name="pin", stream=b, after=["post"]),
            ],
            run_at=soon,
        )
        assert await q.cancel(cancelled.jobs["post"]) == "cancelled"
        await poll(lambda: redis.zcard(keys.flow_outbox(a)))
        due_ms = round(soon.timestamp() * 1000)
        # Past the due time and its 1 ms grace, by the server's clock: it expires unrun.
        await poll(lambda: _server_ms_past(redis, due_ms + 5))
        async with workers(redis, [a, b], recording(runs)):
            first = await ended(q, cancelled.id)
            second = await ended(q, expired.id)
    assert (first.state, first.steps["post"].state, first.steps["pin"].state) == (
        "partially_done",
        "cancelled",
        "cancelled",
    )
    assert (second.state, second.steps["post"].state) == ("partially_done", "failed")
    assert second.steps["post"].error == "expired: it came due too long ago to run"
    assert [step for _, step, _ in runs] == ["pin"]


async def _server_ms_past(redis: Redis, ms: int) -> bool:
    return await channel.server_ms(redis) > ms


async def test_steps_on_a_partitioned_stream_go_to_their_accounts_partition(
    redis_url: str, redis: Redis, stream: str
) -> None:
    from streamq.config import Config, StreamConfig

    config = Config(streams={stream: StreamConfig(partitions=3)})
    runs: Runs = []
    async with streamq.connect(redis_url, config=config) as q:
        flow = await q.enqueue_flow(
            [
                streamq.Step(name="post", stream=stream, account="acme"),
                streamq.Step(name="comment", stream=stream, account="acme", after=["post"]),
                streamq.Step(name="other", stream=stream),
            ]
        )
        home = q.partition_of(stream, "acme")
        assert keys.stream_of_job(flow.jobs["post"]) == home
        assert keys.stream_of_job(flow.jobs["other"]) in keys.partitions(stream, 3)
        async with workers(redis, keys.partitions(stream, 3), recording(runs)):
            info = await ended(q, flow.id)
        assert info.state == "done"
        assert keys.stream_of_job(flow.jobs["comment"]) == home
        assert (await q.job(flow.jobs["comment"])).stream == home
        assert sorted(step for _, step, _ in runs) == ["comment", "other", "post"]


async def test_cross_post_checks_the_post_for_every_platform_first(redis_url: str) -> None:
    async with streamq.connect(redis_url) as q:
        with pytest.raises(PayloadError) as refused:
            await q.cross_post({"text": "no picture"}, ["x", "instagram"], account="acme")
        assert str(refused.value).startswith("step 'instagram': instagram post refused")
        with pytest.raises(FlowError, match="needs at least one platform"):
            await q.cross_post({"text": "hi"}, [])
        with pytest.raises(FlowError, match="duplicate step name 'x'"):
            await q.cross_post({"text": "hi"}, ["x", "x"])
        # One string is a sequence of one-letter "platforms" (seven streams b, l, u, ...):
        # refused before anything is enqueued.
        with pytest.raises(FlowError, match=r"platforms=\['bluesky'\]"):
            await q.cross_post({"text": "hi"}, "bluesky")


async def test_a_bad_outbox_member_does_not_stop_a_worker(
    redis_url: str, redis: Redis, stream: str, caplog: pytest.LogCaptureFixture
) -> None:
    await redis.zadd(keys.flow_outbox(stream), {"not a member at all": 0})
    async with streamq.connect(redis_url) as q:
        flow = await q.enqueue_flow([streamq.Step(name="only", stream=stream)])
        async with workers(redis, [stream], recording([])):
            # The sweep met it (and left it), and the worker goes on.
            await poll(lambda: "'not a member at all'" in caplog.text)
            info = await ended(q, flow.id)
    assert info.state == "done"
    assert await redis.zrange(keys.flow_outbox(stream), 0, -1) == [b"not a member at all"]


async def test_a_failed_step_run_again_by_replay_leaves_its_ended_flow_as_it_ended(
    redis_url: str, redis: Redis, stream: str
) -> None:
    """A flow counts each step's outcome once, as a BullMQ parent failed by its child or a
    Celery chord does: replaying the failed step's dead letter runs its job again (the post
    can still go out), but the flow stays failed, the steps it cancelled stay unrun, on_complete
    does not run again, no second end event is written, and nothing is left in the outboxes."""
    a, b = streams_of(stream, 2)
    runs: Runs = []
    steps = [
        streamq.Step(name="publish", stream=a, payload=1),
        streamq.Step(name="comment", stream=b, payload=2, after=["publish"]),
    ]
    async with streamq.connect(redis_url) as q:
        flow = await q.enqueue_flow(steps, on_complete=streamq.Step(name="end", stream=b))
        async with workers(redis, [a, b], recording(runs, fail={"publish"})):
            before = await ended(q, flow.id)
            await poll(lambda: sum(step == "end" for _, step, _ in runs) == 1)
        assert before.state == "failed"
        assert await q.replay(a, [flow.jobs["publish"]]) == 1
        async with workers(redis, [a, b], recording(runs)):
            await poll(lambda: _job_is(q, flow.jobs["publish"], "done"))
            await poll(lambda: _outbox_is(redis, a, 0))
        after = await q.flow(flow.id)
        events = await flow_events(q, [a, b], flow.id)
    assert [step for _, step, _ in runs] == ["publish", "end", "publish"]
    assert after.state == "failed"
    assert {name: step.state for name, step in after.steps.items()} == {
        "publish": "failed",
        "comment": "cancelled",
        "end": "done",
    }
    assert after.finished_at_ms == before.finished_at_ms
    assert [ev.type for ev in events] == ["flow.failed"]
    assert await redis.zcard(keys.flow_outbox(b)) == 0


async def _job_is(q: streamq.Queue, job_id: str, state: str) -> bool:
    return (await q.job(job_id)).state == state


def test_the_names_other_checks_rely_on() -> None:
    """Issue 24's spellings: Step's fields, enqueue_flow's and cross_post's parameters."""
    import inspect

    step = streamq.Step(
        name="a", stream="s", payload=1, after=["b"], on_failure="continue", account="acme"
    )
    assert (step.name, step.after, step.on_failure, step.account) == (
        "a",
        ["b"],
        "continue",
        "acme",
    )
    enqueue = inspect.signature(streamq.Queue.enqueue_flow).parameters
    assert list(enqueue)[:4] == ["self", "steps", "run_at", "on_complete"]
    assert enqueue["run_at"].default is None
    assert enqueue["on_complete"].default is None
    cross = inspect.signature(streamq.Queue.cross_post).parameters
    assert list(cross)[:3] == ["self", "post", "platforms"]
    assert {"account", "run_at"} <= set(cross)
    assert set(streamq.Flow.__struct_fields__) == {"id", "jobs"}
    assert {"state", "steps"} <= set(streamq.FlowInfo.__struct_fields__)
    assert {"id", "step", "results"} <= set(codec.FlowRef.__struct_fields__)

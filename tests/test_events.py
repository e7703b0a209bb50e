"""Lifecycle events on a real server: exactly the expected events, in order, per job; a
follower that stops and resumes misses nothing and sees nothing twice; group followers split
the events; and the stream's settings (off, capped) reach every writer."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis

import streamq
from streamq import codec, events, keys
from streamq.config import EventsConfig
from streamq.errors import ConfigError
from streamq.job import Job
from streamq.worker import Worker
from tests.conftest import entries, finish_late, run_cli
from tests.test_cli import one_line_error
from tests.test_lifecycle import QUICK, Running, state
from tests.test_worker import FAST, poll

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]


def options(**changes: Any) -> Any:
    return msgspec.structs.replace(FAST, **{"burst": True, "backoff": QUICK, **changes})


async def every_event(redis: Redis, stream: str, **kw: Any) -> list[events.Event]:
    return [ev async for ev in events.follow(redis, [stream], wait=False, **kw)]


async def test_a_workload_produces_exactly_the_expected_events_in_order_per_job(
    redis_url: str, redis: Redis, stream: str
) -> None:
    async def handler(job: Job) -> Any:
        if job.payload == "bad" or (job.payload == "flaky" and job.attempt == 1):
            raise RuntimeError(f"{job.payload} attempt {job.attempt}")
        return {"posted": job.payload}

    async with streamq.connect(redis_url) as q:
        ok = await q.enqueue(stream, "ok", key="post-1", account="acme")
        flaky = await q.enqueue(stream, "flaky")
        bad = await q.enqueue(stream, "bad", max_attempts=2)
        later = await q.enqueue(stream, "later", delay="1h")
        await q.cancel(later)
        # skip = [] asks for every type: `started` too, which the default spares.
        every_type = options(burst=False, events=EventsConfig(skip=()))
        async with Running(Worker(redis, stream, handler, every_type)):
            for job_id, final in ((ok, "done"), (flaky, "done"), (bad, "dead")):
                await poll(lambda job_id=job_id, final=final: _is(q, job_id, final))
    by_job: dict[str, list[events.Event]] = defaultdict(list)
    for event in await every_event(redis, stream):
        by_job[event.job].append(event)

    def story(job_id: str) -> list[tuple[str, int]]:
        return [(ev.type, ev.attempt) for ev in by_job[job_id]]

    assert story(ok) == [("queued", 1), ("started", 1), ("done", 1)]
    assert story(flaky) == [
        ("queued", 1), ("started", 1), ("retried", 1), ("queued", 2), ("started", 2), ("done", 2)
    ]  # fmt: skip
    assert story(bad) == [
        ("queued", 1), ("started", 1), ("retried", 1), ("queued", 2), ("started", 2), ("dead", 2)
    ]  # fmt: skip
    assert story(later) == [("scheduled", 1), ("cancelled", 1)]
    done = by_job[ok][-1]
    assert (done.key, done.account, done.result) == ("post-1", "acme", {"posted": "ok"})
    retried = by_job[flaky][2]
    assert "flaky attempt 1" in (retried.error or "")
    assert (retried.run_at_ms or 0) >= retried.at_ms
    assert "bad attempt 2" in (by_job[bad][-1].error or "")
    started, finished = by_job[ok][1], by_job[ok][2]
    assert started.at_ms <= finished.at_ms  # started carries the time the handler started
    assert finished.started_at_ms == started.at_ms  # and so does the run's final event
    assert by_job[later][0].run_at_ms is not None


async def _is(q: streamq.Queue, job_id: str, wanted: str) -> bool:
    return await state(q, job_id) == wanted


async def test_a_follower_that_stops_and_resumes_misses_nothing_and_sees_nothing_twice(
    redis_url: str, redis: Redis, stream: str
) -> None:
    async with streamq.connect(redis_url) as q:
        first = await q.enqueue_many(stream, list(range(50)))
        seen: list[events.Event] = []
        async for event in q.events(stream, wait=False):
            seen.append(event)
            if len(seen) == 20:
                break  # the follower stops midway
        resume = {stream: seen[-1].id}
        second = await q.enqueue_many(stream, list(range(30)))
        seen += [ev async for ev in q.events(stream, since=resume, wait=False)]
    ids = [ev.id for ev in seen]
    assert len(ids) == len(set(ids)) == 80
    assert [ev.job for ev in seen] == first + second  # in order, each once


async def test_group_followers_split_the_events_and_get_back_what_they_dropped(
    redis_url: str, redis: Redis, stream: str
) -> None:
    async with streamq.connect(redis_url) as q:
        jobs = await q.enqueue_many(stream, list(range(100)))
        a = q.events(stream, group="sync", consumer="a", wait=False, count=10)
        b = q.events(stream, group="sync", consumer="b", wait=False, count=10)
        got: dict[str, list[str]] = {"a": [], "b": []}
        open_readers = {"a": a, "b": b}
        while open_readers:  # take turns, so both read batches
            for name, reader in list(open_readers.items()):
                try:
                    got[name].append((await anext(reader)).job)
                except StopAsyncIteration:
                    del open_readers[name]
        assert got["a"]
        assert got["b"]
        assert not set(got["a"]) & set(got["b"])
        assert sorted(got["a"] + got["b"]) == sorted(jobs)
        # An instance that stops while holding an event gets it again when it comes back.
        await q.enqueue(stream, "one more")
        async for event in q.events(stream, group="sync", consumer="a", wait=False):
            dropped = event.id
            break
        again = [ev async for ev in q.events(stream, group="sync", consumer="a", wait=False)]
        assert [ev.id for ev in again] == [dropped]
        assert [ev async for ev in q.events(stream, group="sync", consumer="b", wait=False)] == []


async def test_since_a_time_or_a_duration_and_types(
    redis_url: str, redis: Redis, stream: str
) -> None:
    async with streamq.connect(redis_url) as q:
        await q.enqueue(stream, "old")
        [old] = await every_event(redis, stream)
        await q.enqueue(stream, "later", delay="1h")
        after_old = [ev.type for ev in await every_event(redis, stream, since=old.id)]
        assert after_old == ["scheduled"]
        from_its_time = await every_event(redis, stream, since=old.at_ms)  # from that ms on
        assert [ev.type for ev in from_its_time] == ["queued", "scheduled"]
        assert len(await every_event(redis, stream, since="1h")) == 2
        assert await every_event(redis, stream, since="now") == []
        only = await every_event(redis, stream, types=["scheduled"])
        assert [ev.type for ev in only] == ["scheduled"]
    with pytest.raises(ConfigError, match="since must be"):
        events.position("yesterday-ish", 0)
    with pytest.raises(ConfigError, match="unknown event type"):
        await every_event(redis, stream, types=["exploded"])


async def test_the_streams_settings_reach_every_writer(
    redis_url: str, redis: Redis, stream: str
) -> None:
    async def handler(job: Job) -> None:
        return None

    quiet = options(events=EventsConfig(enabled=False))
    await Worker(redis, stream, handler, quiet).run()  # publishes: no events
    async with streamq.connect(redis_url) as q:  # a producer without that config
        await q.enqueue_many(stream, list(range(10)))
    assert await redis.xlen(keys.events(stream)) == 0
    small = options(events=EventsConfig(max_len=50))
    await Worker(redis, stream, handler, small).run()
    async with streamq.connect(redis_url) as q:
        await q.enqueue_many(stream, list(range(1000)))
    # MAXLEN ~ trims whole nodes (100 entries by default): near the cap, never far past it.
    assert 50 <= await redis.xlen(keys.events(stream)) < 250
    assert msgspec.to_builtins(EventsConfig())["max_len"] == _lua_default_cap()


async def test_by_default_a_run_writes_one_event_that_carries_its_start(
    redis_url: str, redis: Redis, stream: str
) -> None:
    async def handler(job: Job) -> None:
        if job.attempt == 1:
            raise RuntimeError("once")

    await Worker(redis, stream, handler, options()).run()  # publishes the settings
    async with streamq.connect(redis_url) as q:
        job_id = await q.enqueue(stream, "x")
        async with Running(Worker(redis, stream, handler, options(burst=False))):
            await poll(lambda: _is(q, job_id, "done"))
    story = await every_event(redis, stream)
    assert [(ev.type, ev.attempt) for ev in story] == [
        ("queued", 1), ("retried", 1), ("queued", 2), ("done", 2)
    ]  # fmt: skip
    for ended in (story[1], story[3]):
        assert ended.started_at_ms is not None
        assert ended.started_at_ms <= ended.at_ms
    assert story[0].started_at_ms is None
    record = await redis.hget(keys.job(stream, job_id), "started_at")
    assert story[3].started_at_ms == int(record or 0)


def test_a_webhook_that_asks_for_started_events_gets_them() -> None:
    from streamq.config import StreamConfig, Webhook

    assert EventsConfig().skipped == ("started",)
    hook = Webhook(url="https://app.example/hook", events=("started", "done"))
    assert StreamConfig(webhooks=(hook,)).events.skipped == ()
    chosen = StreamConfig(webhooks=(hook,), events=EventsConfig(skip=("queued",)))
    assert chosen.events.skipped == ("queued",)


async def test_skipped_types_are_not_recorded(redis_url: str, redis: Redis, stream: str) -> None:
    async def handler(job: Job) -> None:
        return None

    lean = options(events=EventsConfig(skip=("started", "queued")))
    await Worker(redis, stream, handler, lean).run()  # publishes the settings
    async with streamq.connect(redis_url) as q:
        await q.enqueue_many(stream, list(range(5)))
    await Worker(redis, stream, handler, lean).run()
    assert [ev.type for ev in await every_event(redis, stream)] == ["done"] * 5
    with pytest.raises(ConfigError, match="unknown event type"):
        EventsConfig(skip=("begun",))


def _lua_default_cap() -> int:
    """The cap the scripts assume before any worker published one (emit_event.lua)."""
    source = (Path(streamq.__file__).parent / "lua" / "include" / "emit_event.lua").read_text()
    return int(source.split("s[1] or '")[1].split("'")[0])


def test_streamq_events_prints_json_lines_and_refuses_a_bad_since(
    redis_url: str, stream: str
) -> None:
    added = run_cli("enqueue", "--redis-url", redis_url, "--stream", stream, "--payload", "1",
                    "--account", "acme")  # fmt: skip
    assert added.returncode == 0, added.stderr
    shown = run_cli("events", "--redis-url", redis_url, "--stream", stream, "--json")
    assert shown.returncode == 0, shown.stderr
    [line] = shown.stdout.splitlines()
    event = json.loads(line)
    assert (event["type"], event["job"], event["account"]) == (
        "queued",
        added.stdout.strip(),
        "acme",
    )
    text = run_cli("events", "--redis-url", redis_url, "--stream", stream)
    assert f"queued  {added.stdout.strip()}  attempt 1  account acme" in text.stdout
    bad = run_cli("events", "--redis-url", redis_url, "--stream", stream, "--since", "soonish")
    one_line_error(bad, "since must be")


async def test_a_late_second_done_writes_no_second_event_nor_count(
    redis_url: str, redis: Redis, stream: str
) -> None:
    async def handler(job: Job) -> str:
        return "once"

    async with streamq.connect(redis_url) as q:
        job_id = await q.enqueue(stream, "x")
        [(entry_id, _)] = await entries(redis, keys.lane(stream, "normal"))
        await Worker(redis, stream, handler, options()).run()
    late = codec.Done(job_id, "", 1, 1, '"twice"')  # a stalled worker's done, after the takeover
    await finish_late(redis, stream, job_id, entry_id, late)
    kinds = [ev.type for ev in await every_event(redis, stream)]
    assert kinds == ["queued", "done"]
    assert await redis.hget(keys.counts(stream), "done") == b"1"
    assert await redis.hget(keys.job(stream, job_id), "result") == b'"once"'


async def test_a_group_member_that_is_gone_leaves_its_events_to_the_others(
    redis_url: str, redis: Redis, stream: str
) -> None:
    async with streamq.connect(redis_url) as q:
        job = await q.enqueue(stream, "x")
        async for _ in q.events(stream, group="sync", consumer="gone", wait=False):
            break  # read, never acknowledged: that process died
    taken = [
        ev async for ev in events.follow(
            redis, [stream], group="sync", consumer="alive", wait=False, abandoned_after_ms=0
        )
    ]  # fmt: skip
    assert [ev.job for ev in taken] == [job]
    pending: Any = await redis.xpending(keys.events(stream), "sync")
    assert pending["pending"] == 0

"""Who is working: live workers' cards, the gone ones with what was reclaimed from them, and
dead consumers dropped from the group once they own nothing (never before)."""

from __future__ import annotations

import os
from functools import partial
from typing import Any

import anyio
import httpx
import msgspec
import pytest
from redis.asyncio import Redis

import streamq
from streamq import channel, keys, scripts, workers
from streamq.config import Config, StreamConfig
from streamq.errors import StreamNotFound
from streamq.job import Job
from streamq.producer import Producer
from streamq.worker import Worker
from tests.conftest import ADMIN_TOKEN, AdminServer, run_cli
from tests.test_lifecycle import Running
from tests.test_scripts import add, read
from tests.test_worker import options, poll

pytestmark = [pytest.mark.anyio]


async def group_consumers(redis: Redis, stream: str) -> set[str]:
    names: set[str] = set()
    for lane in keys.lanes(stream):
        found: Any = await redis.xinfo_consumers(lane, keys.GROUP)
        names |= {c["name"].decode() for c in found}
    return names


@pytest.mark.cluster
async def test_a_live_worker_shows_its_card_and_the_jobs_it_holds(
    redis_url: str, redis: Redis, stream: str
) -> None:
    release = anyio.Event()
    started = anyio.Event()

    async def handler(job: Job) -> None:
        started.set()
        await release.wait()

    job_id = await Producer(redis).enqueue(stream, "slow")
    worker = Worker(redis, stream, handler, options(burst=False, concurrency=3))
    async with Running(worker):
        await started.wait()
        await poll(lambda: _holding(redis, stream, job_id))
        found = await workers.of_streams(redis, Config(), [stream])
        [card] = found.live
        assert (card.consumer, card.pid, card.streams) == (worker.consumer, os.getpid(), [stream])
        assert (card.concurrency, card.holding, card.done) == (3, [job_id], 0)
        now = await channel.server_ms(redis)
        assert card.started_at_ms <= card.heartbeat_at_ms <= now
        assert found.server_time_ms is not None
        assert card.uptime_ms == found.server_time_ms - card.started_at_ms  # the dashboard's
        cli = await anyio.to_thread.run_sync(
            lambda: run_cli("workers", "--stream", stream, "--json", "--redis-url", redis_url)
        )
        assert cli.returncode == 0, cli.stderr
        [line] = cli.stdout.splitlines()
        shown = msgspec.json.decode(line)
        assert (shown["consumer"], shown["pid"], shown["streams"]) == (
            worker.consumer,
            os.getpid(),
            [stream],
        )
        release.set()
    # A worker that stopped cleanly leaves the group and takes its card with it.
    assert (await workers.of_streams(redis, Config(), [stream])).live == []
    assert not await redis.hexists(keys.workers(stream), worker.consumer)
    assert worker.consumer not in await group_consumers(redis, stream)


async def _holding(redis: Redis, stream: str, job_id: str) -> bool:
    found = await workers.of_streams(redis, Config(), [stream])
    return any(job_id in card.holding for card in found.live)


async def test_a_dead_worker_is_reclaimed_then_dropped_and_listed_as_gone(
    redis: Redis, stream: str
) -> None:
    ids = await Producer(redis).enqueue_many(stream, list(range(3)))
    for lane in keys.lanes(stream):
        await redis.xgroup_create(lane, keys.GROUP, id="0", mkstream=True)
    # A worker publishes its card, takes every entry and dies without acknowledging.
    now = await channel.server_ms(redis)
    ghost = workers.card(
        consumer="ghost", stream=stream, concurrency=5, started_at_ms=now - 60_000,
        now_ms=now - 30_000, done=7, failed=1, holding=ids,
    )  # fmt: skip
    await workers.publish(redis, stream, ghost)
    await redis.xreadgroup(keys.GROUP, "ghost", {keys.lane(stream, "normal"): ">"}, count=100)
    assert "ghost" in await group_consumers(redis, stream)
    seen: list[str] = []

    async def handler(job: Job) -> None:
        seen.append(job.id)

    async with Running(Worker(redis, stream, handler, options(burst=False))):
        await poll(lambda: len(seen) == 3)
    assert "ghost" not in await group_consumers(redis, stream)
    found = await workers.of_streams(redis, Config(), [stream])
    [gone] = found.gone
    assert (gone.consumer, gone.stream) == ("ghost", stream)
    assert gone.dropped_at_ms is not None
    assert gone.card is not None
    assert (gone.card.pid, gone.card.done) == (ghost.pid, 7)
    assert sorted(job for r in gone.reclaimed for job in r.jobs) == sorted(ids)


async def test_a_consumer_that_owns_entries_is_never_dropped(redis: Redis, stream: str) -> None:
    await add(redis, stream, 2)
    held = await read(redis, stream, "holder")
    await redis.xgroup_createconsumer(keys.lane(stream, "high"), keys.GROUP, "empty")
    # A heartbeat-only reclaim (nothing claimed) by another consumer, every idle time passed.
    await scripts.reclaim_jobs(
        redis, stream, "live", min_idle_ms=0, count=0, cursors=["0-0"] * 3, gap_ms=1000
    )
    # "empty" owned nothing and went; "live" is listed too where a claim of nothing adds it.
    assert await group_consumers(redis, stream) - {"live"} == {"holder"}
    pending: Any = await redis.xpending(keys.lane(stream, "normal"), keys.GROUP)
    assert pending["pending"] == len(held) == 2
    # Once its entries are taken over it owns nothing, and goes.
    await scripts.reclaim_jobs(
        redis, stream, "live", min_idle_ms=0, count=5, cursors=["0-0"] * 3, gap_ms=1000
    )
    assert await group_consumers(redis, stream) == {"live"}
    pending = await redis.xpending(keys.lane(stream, "normal"), keys.GROUP)
    assert pending["pending"] == 2
    gone: Any = await redis.xrange(keys.workers_gone(stream))
    kinds = [
        (fields[b"kind"], fields.get(b"from") or fields.get(b"consumer")) for _, fields in gone
    ]
    assert kinds == [(b"gone", b"empty"), (b"reclaimed", b"holder"), (b"gone", b"holder")]
    assert sorted(gone[1][1][b"jobs"].decode().split()) == sorted(job.id for job in held)


async def test_an_idle_consumer_whose_heartbeat_is_ahead_is_not_dropped(
    redis: Redis, stream: str
) -> None:
    # An empty stream leaves a live worker idle (before Redis 7.2, only a delivering read
    # resets a consumer's idle time): its heartbeat, not its idleness, says whether it is gone.
    for lane in keys.LANES:
        await redis.xgroup_create(keys.lane(stream, lane), keys.GROUP, id="0", mkstream=True)
    await redis.xgroup_createconsumer(keys.lane(stream, "normal"), keys.GROUP, "quiet")
    now = await channel.server_ms(redis)
    await redis.hset(keys.liveness(stream), "alive:quiet", now + 60_000)

    async def reclaim() -> None:
        await scripts.reclaim_jobs(
            redis, stream, "live", min_idle_ms=0, count=0, cursors=["0-0"] * 3, gap_ms=1000
        )

    await reclaim()
    assert "quiet" in await group_consumers(redis, stream)
    await redis.hset(keys.liveness(stream), "alive:quiet", now - 1)  # its heartbeat stopped
    await reclaim()
    assert "quiet" not in await group_consumers(redis, stream)
    assert not await redis.hexists(keys.liveness(stream), "alive:quiet")


async def test_an_unknown_stream_is_an_error_in_every_interface(
    redis_url: str, admin_server: AdminServer, stream: str
) -> None:
    async with streamq.connect(redis_url) as q:
        for ask in (q.stats([stream]), q.dead(stream), q.purge_dead(stream)):
            with pytest.raises(StreamNotFound, match=f"no stream '{stream}'"):
                await ask
        with pytest.raises(StreamNotFound):
            await workers.of_streams(q.redis, q.config, [stream])
    for args in (["stats", "--stream", stream], ["dead", "list", "--stream", stream],
                 ["workers", "--stream", stream]):  # fmt: skip
        cli = await anyio.to_thread.run_sync(partial(run_cli, *args, "--redis-url", redis_url))
        assert cli.returncode == 1
        assert cli.stderr.strip() == (
            f"streamq: error: no stream '{stream}': it is not configured and no job was ever "
            "enqueued on it"
        )
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx.AsyncClient(base_url=admin_server.url, headers=auth, timeout=10) as http:
        for path in (f"/api/stats?stream={stream}", f"/api/streams/{stream}/dead",
                     f"/api/workers?stream={stream}"):  # fmt: skip
            answer = await http.get(path)
            assert answer.status_code == 404
            assert answer.json()["error"].startswith(f"no stream '{stream}'")


async def test_a_configured_stream_with_no_keys_yet_is_known(redis_url: str, stream: str) -> None:
    config = Config(streams={stream: StreamConfig()})
    async with streamq.connect(redis_url, config=config) as q:
        assert await q.dead(stream) == []
        assert (await workers.of_streams(q.redis, config, [stream])).live == []

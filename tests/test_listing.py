"""Job listings (streamq.listing, ``q.jobs``): each state from its own structure, pages that
merge partitions in order, cursors, and bad input refused in one line."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import anyio
import httpx
import pytest

import streamq
from streamq import channel, keys
from streamq.config import Config, Limit, StreamConfig
from streamq.errors import Fail, ListingError, StreamNotFound
from streamq.job import Job
from streamq.worker import Worker, WorkerOptions
from tests.conftest import ADMIN_TOKEN, AdminServer, run_cli

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]


async def _all(
    q: streamq.Queue, stream: str, state: str, limit: int = 3, **filters: object
) -> list[str]:
    """Every id of a listing, paged ``limit`` at a time, checking no page repeats a job."""
    seen: list[str] = []
    cursor = None
    while True:
        page = await q.jobs(stream, state, limit=limit, cursor=cursor, **filters)  # type: ignore[arg-type]
        assert len(page.jobs) <= limit
        seen += [info.id for info in page.jobs]
        assert all(info.state == state for info in page.jobs)
        if page.cursor is None:
            break
        cursor = page.cursor
    assert len(seen) == len(set(seen)), seen
    return seen


async def test_scheduled_by_due_time_and_by_account(redis_url: str, stream: str) -> None:
    async with streamq.connect(redis_url) as q:
        later = [
            await q.enqueue(
                stream, {"n": n}, delay=3600 - n * 60, account="acme" if n % 2 else "zeta"
            )
            for n in range(7)
        ]
        now = await q.enqueue(stream, {"n": "now"})
        by_due = list(reversed(later))
        assert await _all(q, stream, "scheduled") == by_due
        assert await _all(q, stream, "scheduled", account="acme") == [
            j for j in by_due if later.index(j) % 2
        ]
        assert await _all(q, stream, "queued") == [now]
        page = await q.jobs(stream, "scheduled", account="acme", limit=1)
        assert page.jobs[0].account == "acme"
        assert page.jobs[0].run_at_ms is not None
        # A time range bounds the due time.
        soon = datetime.now(UTC) + timedelta(seconds=3600 - 3 * 60 + 30)
        assert await _all(q, stream, "scheduled", until=soon) == by_due[:4]
        assert await _all(q, stream, "scheduled", since=soon) == by_due[4:]
        # Cancelled and rescheduled jobs leave or move in the account's index too.
        await q.cancel(later[1])
        await q.reschedule(later[3], delay=10)
        assert await _all(q, stream, "scheduled", account="acme") == [later[3], later[5]]
        assert await _all(q, stream, "cancelled") == [later[1]]


async def test_jobs_due_at_one_time_page_through_once_each(redis_url: str, stream: str) -> None:
    """Jobs due at the same time share a score: the cursor carries the job id with it, so a
    page resumes just after the last job listed (not from the first of the ties), even when
    that job has since left the set or moved in it."""
    at = datetime.now(UTC) + timedelta(hours=1)
    count = 1200
    async with streamq.connect(redis_url) as q:
        ids = await q.enqueue_many(
            stream, [{"n": n} for n in range(count)], accounts=["acme"] * count, run_at=at
        )
        # Ids made by one process in one ms sort in the order made: the ties' order.
        assert await _all(q, stream, "scheduled", limit=100) == ids
        assert await _all(q, stream, "scheduled", limit=100, account="acme") == ids
        assert [info.id async for info in q.iter_jobs(stream, "scheduled", page_size=7)] == ids
        for account in (None, "acme"):
            first = await q.jobs(stream, "scheduled", account=account, limit=10)
            assert [info.id for info in first.jobs] == ids[:10]
            assert first.cursor is not None
            cursors = [first.cursor]
            # The cursor's job leaves (cancelled) or moves later (rescheduled): its neighbours
            # stay where they were.
            gone = ids.pop(9)
            await q.cancel(gone)
            after = await q.jobs(stream, "scheduled", account=account, limit=10, cursor=cursors[0])
            assert [info.id for info in after.jobs] == ids[9:19]
            assert after.cursor is not None
            moved = ids.pop(18)
            await q.reschedule(moved, run_at=at + timedelta(minutes=1))
            ids.append(moved)
            again = await q.jobs(
                stream, "scheduled", account=account, limit=10, cursor=after.cursor
            )
            assert [info.id for info in again.jobs] == ids[18:28]


async def _retrying_and_dead(q: streamq.Queue, stream: str, flaky: str) -> bool:
    return await _all(q, stream, "retrying") == [flaky] and bool(await _all(q, stream, "dead"))


async def test_running_retrying_dead_done(redis_url: str, stream: str) -> None:
    release = anyio.Event()
    started = anyio.Event()

    async def handler(job: Job) -> str:
        if job.payload == "slow":
            started.set()
            await release.wait()
        if job.payload == "flaky":
            raise RuntimeError("try again")
        if job.payload == "bad":
            raise Fail("no good")
        return "ok"

    options = WorkerOptions(burst=False, block_seconds=0.1, max_attempts=5, concurrency=4)
    async with streamq.connect(redis_url) as q:
        slow = await q.enqueue(stream, "slow")
        worker = Worker(q.redis, stream, handler, options)
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            await started.wait()
            [running] = (await q.jobs(stream, "running")).jobs
            assert (running.id, running.consumer) == (slow, worker.consumer)
            # No start is written while a handler runs: its delivery, by the server's clock.
            assert running.enqueued_at_ms is not None
            assert running.started_at_ms is not None
            now_ms = await channel.server_ms(q.redis)
            assert running.enqueued_at_ms <= running.started_at_ms <= now_ms
            flaky = await q.enqueue(stream, "flaky", account="acme")
            bad = await q.enqueue(stream, "bad")
            with anyio.fail_after(10):
                while not await _retrying_and_dead(q, stream, flaky):  # noqa: ASYNC110
                    await anyio.sleep(0.02)
            [retrying] = (await q.jobs(stream, "retrying", account="acme")).jobs
            assert retrying.error
            assert "try again" in retrying.error
            assert await _all(q, stream, "dead") == [bad]
            release.set()
            with anyio.fail_after(10):
                while await _all(q, stream, "done") != [slow]:  # noqa: ASYNC110
                    await anyio.sleep(0.02)
            assert await _all(q, stream, "running") == []
            await q.cancel(flaky)
            worker.stop()


async def test_jobs_held_behind_their_accounts_turn_are_listed_held(
    redis_url: str, stream: str
) -> None:
    """A platform limit that binds: the account's next job waits for the platform (in the
    delayed set, listed scheduled) and the ones after it are held aside (listed held)."""
    platform = Limit(scope="platform", max=1, per=60.0)
    config = Config(streams={stream: StreamConfig(limits=(platform,))})
    ran: list[str] = []

    async def handler(job: Job) -> None:
        ran.append(job.id)

    options = WorkerOptions(limits=(platform,), block_seconds=0.1, concurrency=4)
    async with streamq.connect(redis_url, config=config) as q:
        ids = await q.enqueue_many(stream, [1, 2, 3, 4], accounts=["acme"] * 4)
        other = await q.enqueue(stream, 5, account="zeta")
        worker = Worker(q.redis, stream, handler, options)
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            with anyio.fail_after(10):
                while len(await _all(q, stream, "held")) < 2:  # noqa: ASYNC110
                    await anyio.sleep(0.02)
            worker.stop()
        assert ran == ids[:1]
        assert await _all(q, stream, "held") == ids[2:]
        assert await _all(q, stream, "held", account="acme") == ids[2:]
        assert await _all(q, stream, "held", account="zeta") == []
        [held] = (await q.jobs(stream, "held", limit=1)).jobs
        assert (held.state, held.account, held.id) == ("held", "acme", ids[2])
        assert (await q.job(ids[2])).state == "held"
        # Waiting for the platform: the account's next job and the other account's.
        assert sorted(await _all(q, stream, "scheduled")) == sorted([ids[1], other])
        assert await _all(q, stream, "scheduled", account="acme") == [ids[1]]


async def test_paused_and_partitions_merge_in_order(redis_url: str, stream: str) -> None:
    config = Config(streams={stream: StreamConfig(partitions=3)})
    async with streamq.connect(redis_url, config=config) as q:
        accounts = [f"a{n}" for n in range(9)]
        ids = [await q.enqueue(stream, n, account=accounts[n], delay=100 + n) for n in range(9)]
        assert len({keys.stream_of_job(i) for i in ids}) > 1
        assert await _all(q, stream, "scheduled", limit=2) == ids
        assert await _all(q, stream, "scheduled", limit=100) == ids
        queued = [await q.enqueue(stream, n, account=accounts[n]) for n in range(9)]
        assert sorted(await _all(q, stream, "queued", limit=4)) == sorted(queued)
        await q.pause_account("a4", stream)

        async def handler(job: Job) -> None:
            return None

        for part in await q.partitions(stream):
            await Worker(q.redis, part, handler, WorkerOptions(burst=True, block_seconds=0.1)).run()
        assert await _all(q, stream, "paused") == [queued[4]]
        assert await _all(q, stream, "paused", account="a4") == [queued[4]]
        assert await _all(q, stream, "paused", account="a3") == []
        assert len(await _all(q, stream, "done", limit=5)) == 8


@pytest.mark.any_engine
async def test_bad_input_is_a_value_error(redis_url: str, stream: str) -> None:
    async with streamq.connect(redis_url) as q:
        await q.enqueue(stream, 1)
        for call, message in [
            (q.jobs(stream, "sleeping"), "unknown state 'sleeping'"),
            (q.jobs(stream, "queued", limit=1001), "limit must be a whole number from 1 to 1000"),
            (q.jobs(stream, "queued", limit=0), "limit must be"),
            (q.jobs(stream, "queued", cursor="not a cursor!"), "bad cursor"),
            (
                q.jobs(
                    stream,
                    "queued",
                    since=datetime(2026, 2, 1, tzinfo=UTC),
                    until=datetime(2026, 1, 1, tzinfo=UTC),
                ),
                "inverted time range",
            ),
            (q.jobs(stream, "queued", since=datetime(2026, 1, 1)), "aware datetime"),
        ]:
            with pytest.raises(ValueError, match=message):
                await call
        page = await q.jobs(stream, "scheduled", limit=1)
        other = await q.jobs(stream, "queued", limit=1)
        assert page.cursor is None
        assert other.cursor is None
        await q.enqueue(stream, 2)
        cursor = (await q.jobs(stream, "queued", limit=1)).cursor
        assert cursor is not None
        with pytest.raises(ListingError, match="belongs to a listing of queued jobs"):
            await q.jobs(stream, "scheduled", cursor=cursor)
        # An unknown stream: the error stats, dead and the admin API give it.
        with pytest.raises(StreamNotFound, match=f"no stream '{stream}x'"):
            await q.jobs(stream + "x", "queued")
        with pytest.raises(StreamNotFound):
            [info async for info in q.iter_jobs(stream + "x", "queued")]


def test_cli_lists_jobs_as_json_lines_and_refuses_bad_input(redis_url: str, stream: str) -> None:
    assert (
        run_cli(
            "enqueue",
            "--redis-url",
            redis_url,
            "--stream",
            stream,
            "--payload",
            "{}",
            "--account",
            "acme",
            "--delay",
            "1h",
        ).returncode
        == 0
    )
    done = run_cli(
        "jobs",
        "--redis-url",
        redis_url,
        "--stream",
        stream,
        "--state",
        "scheduled",
        "--account",
        "acme",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    [line] = done.stdout.splitlines()
    row = json.loads(line)
    assert row["state"] == "scheduled"
    assert row["account"] == "acme"
    assert row["run_at"]
    assert row["id"].startswith(stream + ":")
    for args, message in [
        (["--state", "asleep"], "invalid choice: 'asleep'"),
        (["--state", "queued", "--cursor", "zzz"], "bad cursor"),
        (["--state", "queued", "--limit", "1001"], "limit must be"),
        (
            ["--state", "queued", "--since", "2026-02-01T00:00Z", "--until", "2026-01-01T00:00Z"],
            "inverted time range",
        ),
        (["--state", "queued", "--since", "yesterday"], "--since"),
    ]:
        bad = run_cli("jobs", "--redis-url", redis_url, "--stream", stream, *args)
        assert bad.returncode == 2, (args, bad.stderr)
        assert message in bad.stderr, bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    unknown = run_cli(
        "jobs", "--redis-url", redis_url, "--stream", stream + "x", "--state", "queued"
    )
    assert unknown.returncode == 1
    assert unknown.stdout == ""
    assert unknown.stderr.strip().splitlines() == [
        f"streamq: error: no stream '{stream}x': it is not configured and no job was ever "
        "enqueued on it"
    ]


async def test_admin_api_lists_jobs_and_answers_bad_input_with_400(
    admin_server: AdminServer, redis_url: str, stream: str
) -> None:
    async with streamq.connect(redis_url) as q:
        ids = [await q.enqueue(stream, n, account="acme", delay=600 + n) for n in range(3)]
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx.AsyncClient(base_url=admin_server.url, headers=headers) as http:
        path = f"/api/streams/{stream}/jobs"
        seen: list[str] = []
        params: dict[str, str] = {"state": "scheduled", "account": "acme", "limit": "2"}
        for _ in range(3):
            answer = await http.get(path, params=params)
            assert answer.status_code == 200, answer.text
            page = answer.json()
            seen += [job["id"] for job in page["jobs"]]
            if page["cursor"] is None:
                break
            params["cursor"] = page["cursor"]
        assert seen == ids
        for query, message in [
            ({}, "state is required"),
            ({"state": "asleep"}, "unknown state 'asleep'"),
            ({"state": "queued", "cursor": "zzz"}, "bad cursor"),
            ({"state": "queued", "limit": "1001"}, "limit must be"),
            (
                {"state": "queued", "since": "2026-02-01T00:00Z", "until": "2026-01-01T00:00Z"},
                "inverted time range",
            ),
            ({"state": "queued", "since": "noon"}, "since must be an ISO 8601 time"),
        ]:
            answer = await http.get(path, params=query)
            assert answer.status_code == 400, (query, answer.text)
            assert message in answer.json()["error"]
        # An unknown stream is the one rule's answer for every route (docs): 404, one line.
        unknown = await http.get(f"/api/streams/{stream}x/jobs", params={"state": "queued"})
        assert unknown.status_code == 404
        assert unknown.json() == {
            "error": f"no stream '{stream}x': it is not configured and no job was ever "
            "enqueued on it"
        }

"""The admin API's dashboard routes over real HTTP against a real Redis: who the token is,
read-only tokens refused every write, the per-minute series, a stream's accounts, pausing and
resuming an account, rescheduling and promoting a job; after each write, the server's state
and the audit event that says who did it."""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from redis.asyncio import Redis

import streamq
from streamq import admin, channel, events, health, keys, limiter, series, tokens
from streamq.config import Backoff, Config, Limit, StreamConfig
from streamq.errors import ConfigError
from streamq.metrics import LATENESS_BUCKETS
from streamq.tokenstore import REAUTH_REQUIRED
from streamq.worker import Worker
from tests.conftest import ADMIN_TOKEN, ROOT, VIEWER_TOKEN, run_cli
from tests.test_admin import error_of, fail_on_bad
from tests.test_worker import FAST, options

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
VIEWER = {"Authorization": f"Bearer {VIEWER_TOKEN}"}


@pytest.fixture
def anyio_backend() -> str:
    """The client's event loop does not matter here: the server runs on its own."""
    return "asyncio"


async def audit_events(redis: Redis, stream: str) -> list[events.Event]:
    return [e async for e in events.follow(redis, [stream], wait=False, types=["admin"])]


# -- tokens and roles ---------------------------------------------------------------------


@pytest.mark.any_engine
async def test_me_names_the_token_and_a_read_only_one_can_change_nothing(
    http: httpx.AsyncClient, redis: Redis, redis_url: str, stream: str
) -> None:
    assert (await http.get("/api/me")).json() == {"name": "admin", "role": "read-write"}
    me = await http.get("/api/me", headers=VIEWER)
    assert me.json() == {"name": "viewer", "role": "read-only"}
    async with streamq.connect(redis_url) as q:
        scheduled = await q.enqueue(stream, "later", delay=3600, account="acme")
        before = await q.job(scheduled)
    writes = [
        (f"/api/jobs/{scheduled}/cancel", None),
        (f"/api/jobs/{scheduled}/retry", None),
        (f"/api/jobs/{scheduled}/promote", None),
        (f"/api/jobs/{scheduled}/reschedule", {"run_at": 0}),
        (f"/api/streams/{stream}/dead/replay", {"all": True}),
        (f"/api/streams/{stream}/dead/purge", None),
        (f"/api/streams/{stream}/finished/purge", None),
        (f"/api/accounts/{stream}/acme/pause", None),
        (f"/api/accounts/{stream}/acme/resume", None),
    ]
    for path, body in writes:
        refused = await http.post(path, json=body, headers=VIEWER)
        assert refused.status_code == 403, path
        assert error_of(refused) == "token 'viewer' is read-only: it cannot change anything"
    # Reads are allowed, and nothing changed.
    assert (await http.get(f"/api/jobs/{scheduled}", headers=VIEWER)).status_code == 200
    async with streamq.connect(redis_url) as q:
        assert await q.job(scheduled) == before
        report = await q.limits(stream, "acme")
    assert report.pauses == []
    assert await audit_events(redis, stream) == []


def test_tokens_come_from_the_env_a_file_and_the_single_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(admin.TOKEN_ENV, raising=False)
    monkeypatch.delenv(admin.TOKENS_ENV, raising=False)
    with pytest.raises(ConfigError, match="no admin token"):
        admin.load_tokens()
    file = tmp_path / "tokens.toml"
    file.write_text(
        '[tokens.ops]\ntoken = "s3cret-ops"\nrole = "read-write"\n'
        '[tokens.board]\ntoken = "s3cret-board"\n'  # no role: read-only
    )
    monkeypatch.setenv(
        admin.TOKENS_ENV, "ci:read-only:s3cret:with:colons, bot:read-write:s3cret-bot"
    )
    monkeypatch.setenv(admin.TOKEN_ENV, "s3cret-single")
    found = admin.load_tokens(None, str(file))
    assert [(t.name, t.role, t.value) for t in found] == [
        ("ops", "read-write", b"s3cret-ops"),
        ("board", "read-only", b"s3cret-board"),
        ("ci", "read-only", b"s3cret:with:colons"),
        ("bot", "read-write", b"s3cret-bot"),
        ("admin", "read-write", b"s3cret-single"),
    ]
    assert "s3cret" not in repr(found)  # a token logged by mistake shows no secret
    bad_files = {
        '[tokens.x]\ntoken = "a"\nrole = "admin"\n': "role must be read-only or read-write",
        '[tokens.x]\nrole = "read-only"\n': "needs token",
        '[tokens.x]\ntoken = "a"\nscope = "all"\n': "unknown key 'scope'",
        'token = "a"\n': "must hold [tokens.<name>] tables only",
        '[tokens."bad name"]\ntoken = "a"\n': "invalid token name",
        "[tokens.x\n": "does not parse",
    }
    monkeypatch.delenv(admin.TOKENS_ENV)
    monkeypatch.delenv(admin.TOKEN_ENV)
    for text, message in bad_files.items():
        file.write_text(text)
        with pytest.raises(ConfigError, match=re.escape(message)) as refused:
            admin.load_tokens(None, str(file))
        assert "\n" not in str(refused.value)
    file.write_text('[tokens.admin]\ntoken = "one"\n')
    monkeypatch.setenv(admin.TOKEN_ENV, "two")
    with pytest.raises(ConfigError, match="two admin tokens are named 'admin'"):
        admin.load_tokens(None, str(file))
    monkeypatch.setenv(admin.TOKENS_ENV, "a:read-only:same,b:read-write:same")
    monkeypatch.delenv(admin.TOKEN_ENV)
    with pytest.raises(ConfigError, match="same value"):
        admin.load_tokens()
    monkeypatch.setenv(admin.TOKENS_ENV, "just-a-token")
    with pytest.raises(ConfigError, match="name:role:token"):
        admin.load_tokens()


def test_the_documented_tokens_file_loads_as_it_says(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/admin-api.md includes examples/admin-tokens.toml: one read-write, one read-only."""
    monkeypatch.delenv(admin.TOKENS_ENV, raising=False)
    monkeypatch.delenv(admin.TOKEN_ENV, raising=False)
    found = admin.load_tokens(None, str(ROOT / "examples" / "admin-tokens.toml"))
    assert [(t.name, t.role) for t in found] == [("ops", "read-write"), ("support", "read-only")]


def test_streamq_admin_serves_a_tokens_file_with_roles(tmp_path: Path, redis_url: str) -> None:
    file = tmp_path / "tokens.toml"
    file.write_text(
        '[tokens.ops]\ntoken = "ops-token"\nrole = "read-write"\n'
        '[tokens.board]\ntoken = "board-token"\nrole = "read-only"\n'
    )
    env = {k: v for k, v in os.environ.items() if k not in (admin.TOKEN_ENV, admin.TOKENS_ENV)}
    process = subprocess.Popen(
        [sys.executable, "-m", "streamq", "admin", "--port", "0", "--redis-url", redis_url,
         "--tokens-file", str(file)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        url = process.stdout.readline().split()[-1]
        with httpx.Client(base_url=url, timeout=10) as client:

            def me(token: str) -> httpx.Response:
                return client.get("/api/me", headers={"Authorization": f"Bearer {token}"})

            assert me("ops-token").json() == {"name": "ops", "role": "read-write"}
            assert me("board-token").json() == {"name": "board", "role": "read-only"}
            assert me("nope").status_code == 401
            purge = client.post(
                "/api/streams/never-used/dead/purge",
                headers={"Authorization": "Bearer board-token"},
            )
            assert purge.status_code == 403
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.stderr is not None
    logged = process.stderr.read()
    assert "ops-token" not in logged
    assert "board-token" not in logged


# -- reschedule and promote -----------------------------------------------------------------


async def test_reschedule_and_promote_move_the_job_and_say_who(
    http: httpx.AsyncClient, redis: Redis, redis_url: str, stream: str
) -> None:
    async with streamq.connect(redis_url) as q:
        job_id = await q.enqueue(stream, "later", delay=3600, account="acme")
        queued = await q.enqueue(stream, "now")
    when = datetime.now(UTC).replace(microsecond=0) + timedelta(days=2)
    # Given with an offset other than UTC's: the same instant.
    text = when.astimezone(timezone(timedelta(hours=2))).isoformat()
    assert text.endswith("+02:00")
    moved = await http.post(f"/api/jobs/{job_id}/reschedule", json={"run_at": text})
    assert moved.status_code == 200, moved.text
    assert moved.json()["id"] == job_id
    assert moved.json()["run_at_ms"] == int(when.timestamp() * 1000)
    async with streamq.connect(redis_url) as q:
        info = await q.job(job_id)
    assert (info.state, info.run_at_ms) == ("scheduled", int(when.timestamp() * 1000))
    assert await redis.zscore(keys.delayed(stream), job_id) == when.timestamp() * 1000
    as_ms = await http.post(f"/api/jobs/{job_id}/reschedule", json={"run_at": 4102444800000})
    assert as_ms.json()["run_at_ms"] == 4102444800000  # 2100-01-01, in ms
    long_ago = {"run_at": "0016-03-11T14:22:14Z"}  # before the epoch: due at once, not refused
    assert (await http.post(f"/api/jobs/{job_id}/reschedule", json=long_ago)).json()[
        "run_at_ms"
    ] == 0
    await http.post(f"/api/jobs/{job_id}/reschedule", json={"run_at": 4102444800000})

    before = await channel.server_ms(redis)
    promoted = await http.post(f"/api/jobs/{job_id}/promote")
    assert promoted.status_code == 200
    async with streamq.connect(redis_url) as q:
        info = await q.job(job_id)
    assert info.run_at_ms is not None
    assert before <= info.run_at_ms <= await channel.server_ms(redis)
    assert promoted.json()["run_at_ms"] == info.run_at_ms

    for path in (f"/api/jobs/{queued}/promote", f"/api/jobs/{queued}/reschedule"):
        refused = await http.post(path, json={"run_at": 4102444800000})
        assert refused.status_code == 409, path
        assert f"job {queued} is queued" in error_of(refused)
    for body in ({"run_at": "tomorrow"}, {"run_at": "2026-12-01T09:00:00"}, {}, {"at": 1}):
        bad = await http.post(f"/api/jobs/{job_id}/reschedule", json=body)
        assert bad.status_code == 400, body
        error_of(bad)
    missing = await http.post(f"/api/jobs/{stream}:nope/promote")
    assert missing.status_code == 404

    audit = await audit_events(redis, stream)
    assert [(e.by, e.action, e.target, e.job) for e in audit] == [
        ("admin", "reschedule", job_id, job_id),
        ("admin", "reschedule", job_id, job_id),
        ("admin", "reschedule", job_id, job_id),
        ("admin", "reschedule", job_id, job_id),
        ("admin", "promote", job_id, job_id),
    ]
    assert audit[1].detail == "run_at 4102444800000"
    assert ADMIN_TOKEN not in str(audit)


async def test_a_jobs_events_are_its_timeline_with_who_acted_found_in_a_bounded_read(
    http: httpx.AsyncClient, redis: Redis, redis_url: str, stream: str
) -> None:
    async with streamq.connect(redis_url) as q:
        job_id = await q.enqueue(stream, "later", delay=3600, account="acme")
        others = await q.enqueue_many(stream, ["a", "b", "c"])
    target = {"run_at": 4102444800000}
    assert (await http.post(f"/api/jobs/{job_id}/reschedule", json=target)).status_code == 200
    assert (await http.post(f"/api/jobs/{job_id}/cancel")).json()["outcome"] == "cancelled"

    answer = await http.get(f"/api/jobs/{job_id}/events")
    assert answer.status_code == 200, answer.text
    found = answer.json()
    assert (found["job"], found["complete"]) == (job_id, True)
    timeline = [(e["type"], e["action"], e["by"]) for e in found["events"]]
    assert timeline == [
        ("scheduled", None, None),
        ("scheduled", None, None),
        ("admin", "reschedule", "admin"),
        ("cancelled", None, None),
        ("admin", "cancel", "admin"),
    ]
    assert {e["job"] for e in found["events"]} == {job_id}  # not the others' queued events
    assert found["events"][1]["run_at_ms"] == 4102444800000
    at = [e["at_ms"] for e in found["events"]]
    assert at == sorted(at)
    assert found["scanned"] >= len(others) + len(timeline)
    assert ADMIN_TOKEN not in answer.text

    # The read is bounded: stopped short of the job's first events, it says so.
    async with streamq.connect(redis_url) as q:
        await q.enqueue_many(stream, ["d", "e", "f"])
    info_ms = (await http.get(f"/api/jobs/{job_id}")).json()["enqueued_at_ms"]
    short = await events.of_job(redis, job_id, info_ms, most=4)
    assert (short.scanned, short.complete) == (4, False)
    assert [e.type for e in short.events] == ["admin"]  # the newest of its own: the cancel
    whole = await events.of_job(redis, job_id, info_ms, most=found["scanned"] + 3)
    assert (whole.scanned, whole.complete) == (found["scanned"] + 3, True)  # none left: complete
    assert len(whole.events) == len(timeline)

    missing = await http.get(f"/api/jobs/{stream}:nope/events")
    assert missing.status_code == 404
    assert (await http.get(f"/api/jobs/{job_id}/events", headers=VIEWER)).status_code == 200


async def test_existing_writes_are_audited_too(
    http: httpx.AsyncClient, redis: Redis, redis_url: str, stream: str
) -> None:
    async with streamq.connect(redis_url) as q:
        job_id = await q.enqueue(stream, "bad", max_attempts=1)
        later = await q.enqueue(stream, "later", delay=3600)
    await Worker(redis, stream, fail_on_bad, FAST).run()
    assert (await http.post(f"/api/jobs/{later}/cancel")).json()["outcome"] == "cancelled"
    assert (await http.post(f"/api/jobs/{job_id}/retry")).status_code == 200
    await Worker(redis, stream, fail_on_bad, FAST).run()
    assert (await http.post(f"/api/streams/{stream}/dead/replay", json={"all": True})).json() == {
        "replayed": 1,
        "skipped": 0,
    }
    await Worker(redis, stream, fail_on_bad, FAST).run()
    assert (await http.post(f"/api/streams/{stream}/dead/purge")).json() == {"purged": 1}
    assert (await http.post(f"/api/streams/{stream}/finished/purge")).status_code == 200
    audit = await audit_events(redis, stream)
    assert [(e.by, e.action, e.target) for e in audit] == [
        ("admin", "cancel", later),
        ("admin", "retry", job_id),
        ("admin", "replay", stream),
        ("admin", "purge-dead", stream),
        ("admin", "purge-finished", stream),
    ]
    assert audit[0].detail == "cancelled"
    assert audit[2].detail == "1 replayed, 0 skipped"
    shown = await anyio.to_thread.run_sync(
        lambda: run_cli("events", "--stream", stream, "--type", "admin", "--redis-url", redis_url)
    )
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert len(lines) == 5
    assert lines[0].endswith(f"  {stream}  admin  admin: cancel  {later}  (cancelled)")


# -- accounts -------------------------------------------------------------------------------


async def test_pause_and_resume_an_account_as_the_cli_does(
    http: httpx.AsyncClient, redis: Redis, redis_url: str, stream: str
) -> None:
    async with streamq.connect(redis_url) as q:
        await q.enqueue(stream, "post", account="acme")
    paused = await http.post(f"/api/accounts/{stream}/acme/pause", json={"reason": "brand review"})
    assert paused.status_code == 200, paused.text
    assert paused.json() == {"account": "acme", "streams": [stream], "paused": True, "released": 0}
    async with streamq.connect(redis_url) as q:
        report = await q.limits(stream, "acme")
    assert [(p.scope, p.until_ms, p.reason) for p in report.pauses] == [
        ("acme", None, "brand review")
    ]
    listed = (await http.get(f"/api/streams/{stream}/accounts")).json()
    assert listed["stream"] == stream
    assert listed["next_cursor"] is None
    [row] = listed["accounts"]
    assert row["account"] == "acme"
    assert (row["paused"], row["reason"], row["reauth_required"]) == (True, "brand review", False)
    # No body: the CLI's default reason.
    assert (await http.post(f"/api/accounts/{stream}/other/pause")).status_code == 200
    async with streamq.connect(redis_url) as q:
        report = await q.limits(stream, "other")
    assert [p.reason for p in report.pauses] == ["paused by an operator"]

    resumed = await http.post(f"/api/accounts/{stream}/acme/resume")
    assert resumed.json()["paused"] is False
    again = await http.post(f"/api/accounts/{stream}/acme/resume")
    assert again.json() == {"account": "acme", "streams": [stream], "paused": False, "released": 0}
    async with streamq.connect(redis_url) as q:
        assert (await q.limits(stream, "acme")).pauses == []
    one = (await http.get(f"/api/streams/{stream}/accounts", params={"account": "acme"})).json()
    assert [(a["account"], a["paused"], a["reason"]) for a in one["accounts"]] == [
        ("acme", False, None)
    ]
    audit = await audit_events(redis, stream)
    assert [(e.by, e.action, e.target, e.account, e.detail) for e in audit] == [
        ("admin", "pause-account", f"{stream}/acme", "acme", "brand review"),
        ("admin", "pause-account", f"{stream}/other", "other", "paused by an operator"),
        ("admin", "resume-account", f"{stream}/acme", "acme", "0 released"),
        ("admin", "resume-account", f"{stream}/acme", "acme", "was not paused"),
    ]
    for path in (f"/api/accounts/{stream}-never/acme/pause", "/api/accounts/nope/acme/resume"):
        missing = await http.post(path)
        assert missing.status_code == 404, path
        error_of(missing)
    bad = await http.post(f"/api/accounts/{stream}/acme/pause", json={"reason": ""})
    assert bad.status_code == 400
    unknown = await http.get(f"/api/streams/{stream}-never/accounts")
    assert unknown.status_code == 404


async def test_a_streams_accounts_page_with_windows_used_against_limits(
    redis: Redis, redis_url: str, stream: str
) -> None:
    config = Config(
        streams={
            stream: StreamConfig(
                limits=(
                    Limit(scope="account", max=5, per=3600.0),
                    Limit(scope="platform", max=100, per=86400.0),
                )
            )
        }
    )
    async with streamq.connect(redis_url, config=config) as q:
        await q.enqueue_many(stream, ["a", "b", "c"], accounts=["acme", "acme", "zed"])
        for name in ("bob", "carol", "dave"):
            await q.pause_account(name, stream, reason=f"why {name}")
    await Worker(redis, stream, _noop, options(limits=config.stream(stream).limits)).run()
    parts = [stream]
    first = await tokens.stream_accounts(redis, config, stream, parts, limit=2)
    assert [a.account for a in first.accounts] == ["bob", "carol"]
    assert first.next_cursor == "carol"
    rest = await tokens.stream_accounts(redis, config, stream, parts, cursor="carol", limit=2)
    assert [a.account for a in rest.accounts] == ["dave"]
    assert rest.next_cursor is None
    assert [(w.name, w.used, w.limit, w.period_ms) for w in rest.platform_windows] == [
        ("100 per 24h", 3, 100, 86_400_000)
    ]
    [acme] = (await tokens.stream_accounts(redis, config, stream, parts, account="acme")).accounts
    assert [(w.name, w.used, w.limit, w.period_ms) for w in acme.windows] == [
        ("5 per 1h", 2, 5, 3_600_000)
    ]
    assert not acme.paused


async def _noop(job: Any) -> None:
    return None


# -- the series -----------------------------------------------------------------------------


async def test_the_series_counts_each_minutes_runs_depth_and_lateness(
    http: httpx.AsyncClient, redis: Redis, redis_url: str, stream: str
) -> None:
    async with streamq.connect(redis_url) as q:
        await q.enqueue_many(stream, ["ok", "ok", "ok"])
        await q.enqueue(stream, "bad", max_attempts=1)
        # Fails once and is retried in an hour: a retried run, not a dead one.
        await q.enqueue(stream, "flaky", max_attempts=2, backoff=Backoff(base=3600, jitter=0))
    now = await channel.server_ms(redis)
    # The minute's first report copies the counts and depth; lateness comes from every report.
    lateness = [0] * (len(LATENESS_BUCKETS) + 1)
    lateness[5] = 10
    assert await series.record(redis, stream, now, lateness)
    assert not await series.record(redis, stream, now, [0, 1])

    async def handler(job: Any) -> None:
        if job.payload == "flaky":
            raise RuntimeError("try again")
        await fail_on_bad(job)

    await Worker(redis, stream, handler, FAST).run()
    answer = await http.get(f"/api/streams/{stream}/series", params={"minutes": 3})
    assert answer.status_code == 200
    found = answer.json()
    assert (found["stream"], found["bucket_seconds"]) == (stream, 60)
    points = found["points"]
    assert len(points) == 3
    assert [p["t"] % 60_000 for p in points] == [0, 0, 0]
    assert [b["t"] - a["t"] for a, b in itertools.pairwise(points)] == [60_000] * 2
    # The copy is in the minute of `now`, the last or (if a minute began since) the one before.
    [copied] = [p for p in points if p["sampled"]]
    assert copied["t"] == series.minute_of(now)
    assert (copied["done"], copied["failed"], copied["retried"], copied["dead"]) == (3, 2, 1, 1)
    assert copied["depth"] == 5
    assert copied["lateness_p99_ms"] == round(LATENESS_BUCKETS[5] * 1000)
    for point in points:
        if not point["sampled"]:
            assert (point["done"], point["failed"], point["depth"]) == (0, 0, 0)
            assert point["lateness_p99_ms"] is None
    ttl = await redis.pttl(keys.series(stream, series.minute_of(now)))
    assert 24 * 3600 * 1000 < ttl <= series.KEPT_MS
    day = (await http.get(f"/api/streams/{stream}/series", params={"minutes": 1440})).json()
    assert len(day["points"]) == 1440
    assert len((await http.get(f"/api/streams/{stream}/series")).json()["points"]) == 60
    for bad in ("0", "1441", "x"):
        refused = await http.get(f"/api/streams/{stream}/series", params={"minutes": bad})
        assert refused.status_code == 400
    assert (await http.get(f"/api/streams/{stream}-never/series")).status_code == 404


async def test_a_workers_health_report_feeds_the_series(redis: Redis, stream: str) -> None:
    now = await channel.server_ms(redis)
    since_last = [0] * (len(LATENESS_BUCKETS) + 1)
    since_last[-1] = 2  # two starts over an hour late
    await health.report(redis, stream, "w1", since_last, now, since_last=since_last)
    parts = [stream]
    got = await series.read(redis, stream, parts, 2)
    [copied] = [p for p in got.points if p.sampled]
    assert copied.lateness_p99_ms == round(LATENESS_BUCKETS[-1] * 1000)


async def test_a_partitioned_streams_series_sums_its_partitions(redis: Redis, stream: str) -> None:
    parts = keys.partitions(stream, 2)
    now = await channel.server_ms(redis)
    buckets = len(LATENESS_BUCKETS) + 1
    for index, part in enumerate(parts):
        lateness = [0] * buckets
        lateness[index] = 50  # partition 0 in the first bucket, 1 in the second
        assert await series.record(redis, part, now, lateness)
        await redis.hincrby(keys.counts(part), "done", 10 * (index + 1))  # runs after the copy
    got = await series.read(redis, stream, parts, 2)
    [copied] = [p for p in got.points if p.sampled]
    assert (copied.done, copied.failed) == (30, 0)
    assert copied.lateness_p99_ms == round(LATENESS_BUCKETS[1] * 1000)


async def test_an_account_waiting_for_a_sign_in_is_flagged(redis: Redis, stream: str) -> None:
    await limiter.pause_account(redis, stream, "acme", REAUTH_REQUIRED)
    page = await tokens.stream_accounts(redis, Config(), stream, [stream])
    [acme] = page.accounts
    assert (acme.account, acme.paused, acme.reauth_required) == ("acme", True, True)
    assert acme.reason == REAUTH_REQUIRED

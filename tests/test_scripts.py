"""Every Lua script, called through its typed function in streamq.scripts, right after SCRIPT
FLUSH (so each call goes through the NOSCRIPT path), on every engine and on the cluster: its
reply decoded, and each refusal raised as the exception errors.SCRIPT_CODES names."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis

from streamq import channel, codec, connection, keys, limiter, scripts
from streamq.errors import SCRIPT_CODES, InvalidJobState, JobNotFound, RecordChanged
from streamq.job import Job

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]

FAR = 4_000_000_000_000  # a due time far ahead (year 2096)


async def add(
    redis: Redis,
    stream: str,
    n: int = 1,
    *,
    key: str | None = None,
    due_ms: int = 0,
    account: str | None = None,
) -> list[str]:
    """Enqueue ``n`` jobs through enqueue_jobs alone; returns their ids."""
    ids, rows = [], []
    for _ in range(n):
        job_id = codec.new_job_id(stream)
        env = codec.Envelope(id=job_id, payload={"n": 1}, enqueued_at_ms=codec.now_ms(), key=key)
        env = msgspec.structs.replace(env, run_at_ms=due_ms or None, account=account)
        text = codec.envelope_text(env)
        ids.append(job_id)
        if account is None:
            rows.append(codec.EnqueueRow(job_id, key or "", text, due_ms))
        else:
            rows.append(codec.AccountEnqueueRow(job_id, key or "", text, due_ms, account))
    taken = await scripts.enqueue_jobs(
        redis, stream, "normal", [(ids, codec.pack_rows(rows))], expire_after_ms=None
    )
    assert taken == [[]]
    return ids


async def read(redis: Redis, stream: str, consumer: str = "c1") -> list[Job]:
    """Make the groups, and read what the normal lane holds as ``consumer``."""
    for lane in keys.lanes(stream):
        await redis.xgroup_create(lane, keys.GROUP, id="0", mkstream=True)
    reply: Any = await redis.xreadgroup(
        keys.GROUP, consumer, {keys.lane(stream, "normal"): ">"}, count=100
    )
    return [
        Job(stream, "normal", codec.decode_fields(fields), 1, entry)
        for entry, fields in reply[0][1]
    ]


async def state(redis: Redis, stream: str, job_id: str) -> str:
    raw: Any = await redis.hget(keys.job(stream, job_id), "state")
    return codec.text(raw)


def test_the_code_table_names_an_exception_for_every_refusal() -> None:
    assert {
        "missing": JobNotFound,
        "unchanged": InvalidJobState,
        "changed": RecordChanged,
    } == SCRIPT_CODES
    assert issubclass(RecordChanged, InvalidJobState)


def test_every_lua_file_has_a_typed_function() -> None:
    for name in scripts.names():
        assert callable(getattr(scripts, name)), name
        header = scripts.load(name).source.decode().splitlines()[0]
        assert header.startswith(f"--[[ {name}: "), header


async def test_enqueue_replace_and_promote(redis: Redis, stream: str) -> None:
    await redis.script_flush()
    [first] = await add(redis, stream, key="k", due_ms=FAR)
    # A second job with the same key is refused, naming the holder.
    job_id = codec.new_job_id(stream)
    env = codec.Envelope(id=job_id, payload=2, enqueued_at_ms=codec.now_ms(), key="k")
    row = codec.EnqueueRow(job_id, "k", codec.envelope_text(env), 0)
    taken = await scripts.enqueue_jobs(
        redis, stream, "normal", [([job_id], codec.pack_rows([row]))], expire_after_ms=None
    )
    assert taken == [[(0, first)]]
    await redis.script_flush()
    replaced = codec.encode(codec.Envelope(id=first, payload=3, enqueued_at_ms=1, key="k"))
    assert await scripts.replace_job(
        redis, first, key="k", envelope=replaced, due_ms=1, account=None
    )
    assert not await scripts.replace_job(
        redis, first, key="other", envelope=replaced, due_ms=1, account=None
    )
    await redis.script_flush()
    promotion = await scripts.promote_due(redis, stream, [first], retention_ms=60_000)
    assert (promotion.promoted, promotion.expired, promotion.next_due_ms) == (1, 0, None)
    assert promotion.now_ms > FAR // 4000
    assert await redis.xlen(keys.lane(stream, "normal")) == 1


async def test_cancel_reschedule_and_revive_and_their_refusals(redis: Redis, stream: str) -> None:
    [scheduled] = await add(redis, stream, due_ms=FAR)
    await redis.script_flush()
    envelope: Any = await redis.hget(keys.job(stream, scheduled), "env")
    # The record keeps the envelope without the id its key names (issue 28).
    stored = codec.record_envelope(envelope, scheduled)
    moved = codec.encode(msgspec.structs.replace(stored, run_at_ms=FAR + 1))
    await scripts.reschedule_job(redis, scheduled, due_ms=FAR + 1, envelope=moved, read=envelope)
    assert await redis.zscore(keys.delayed(stream), scheduled) == FAR + 1
    with pytest.raises(RecordChanged):  # the envelope read before is no longer the record's
        await scripts.reschedule_job(redis, scheduled, due_ms=1, envelope=b"{}", read=envelope)
    await redis.script_flush()
    assert await scripts.cancel_job(redis, scheduled, retention_ms=60_000) == "cancelled"
    with pytest.raises(InvalidJobState, match="already cancelled"):
        await scripts.cancel_job(redis, scheduled, retention_ms=60_000)
    with pytest.raises(InvalidJobState, match="only scheduled jobs move"):
        await scripts.reschedule_job(redis, scheduled, due_ms=1, envelope=b"{}", read=b"{}")
    missing = codec.new_job_id(stream)
    with pytest.raises(JobNotFound):
        await scripts.cancel_job(redis, missing, retention_ms=60_000)
    with pytest.raises(JobNotFound):
        await scripts.reschedule_job(redis, missing, due_ms=1, envelope=b"{}", read=b"{}")
    await redis.script_flush()
    fresh = msgspec.structs.replace(codec.decode(moved), attempt=1, run_at_ms=codec.now_ms())
    entry = await scripts.revive_job(redis, fresh, lane="high", dead_entry="")
    assert await redis.xlen(keys.lane(stream, "high")) == 1
    assert entry.count("-") == 1
    with pytest.raises(InvalidJobState, match="is queued: it cannot be retried"):
        await scripts.revive_job(redis, fresh, lane="high", dead_entry="")


async def test_finish_dead_letter_and_purge(redis: Redis, stream: str) -> None:
    await add(redis, stream, 3)
    done, failed, foreign = await read(redis, stream)
    await redis.script_flush()
    outcomes = [
        codec.Done(done.id, "", 1, 5, '"ok"'),
        codec.Dead(failed.id, "", 1, 5, "{}", "no", "", 2, failed._entry.decode()),
    ]
    acked = await scripts.finish_jobs(
        redis, stream, [[], [done._entry, failed._entry], []], outcomes, retention_ms=60_000
    )
    assert acked == 2
    assert await state(redis, stream, done.id) == "done"
    assert await state(redis, stream, failed.id) == "dead"
    await redis.script_flush()
    reject = scripts.Reject(foreign._entry, "not ours", None)
    assert await scripts.dead_letter(redis, stream, "normal", [reject], retention_ms=1) == 1
    assert await redis.xlen(keys.dead(stream)) == 2
    await redis.script_flush()
    records = [keys.job(stream, done.id), keys.job(stream, failed.id)]
    assert await scripts.purge_records(redis, records, keep_ms=0, states=["done"]) == 1
    assert not await redis.exists(keys.job(stream, done.id))


async def test_a_done_record_keeps_the_envelope_its_worker_sends(redis: Redis, stream: str) -> None:
    # The worker sends the entry's envelope as the record keeps it (no XRANGE on the server);
    # a row without one (an older caller) has it copied from the entry.
    await add(redis, stream, 2)
    sent, copied = await read(redis, stream)
    await redis.script_flush()
    outcomes = [
        codec.Done(sent.id, "", 1, 5, "", '~{"sent":1}'),
        codec.Done(copied.id, "", 1, 5, ""),
    ]
    entries = [[], [sent._entry, copied._entry], []]
    assert await scripts.finish_jobs(redis, stream, entries, outcomes, retention_ms=60_000) == 2
    assert await redis.hget(keys.job(stream, sent.id), "env") == b'~{"sent":1}'
    raw: Any = await redis.hget(keys.job(stream, copied.id), "env")
    assert codec.record_envelope(raw, copied.id) == copied.envelope


async def test_start_and_finish_send_no_key_a_job(redis: Redis, stream: str) -> None:
    # Each job's record is named in the script from the stream's prefix and the job's id: a
    # call for 40 jobs sends the keys a call for one does (start_jobs one, finish_jobs ten), as
    # the server's slowlog shows each EVALSHA's arguments; every record is still found.
    if connection.is_cluster_client(redis):
        pytest.skip("the slowlog is per node; the cluster runs these calls in the other tests")
    await add(redis, stream, 40)
    jobs = await read(redis, stream)
    assert len(jobs) == 40
    settings = ("slowlog-log-slower-than", "slowlog-max-len")
    before: Any = await redis.config_get("slowlog-*")
    await redis.config_set("slowlog-log-slower-than", 0)
    await redis.config_set("slowlog-max-len", 4096)  # the scripts' own commands are logged too
    try:
        await redis.slowlog_reset()
        ids, entries = [job.id for job in jobs], [job._entry for job in jobs]
        assert await scripts.start_jobs(redis, stream, ids, entries) == 40
        outcomes = [codec.Done(job.id, "", 1, 5, "") for job in jobs]
        lanes = [[], entries, []]
        assert await scripts.finish_jobs(redis, stream, lanes, outcomes, retention_ms=60_000) == 40
        log: Any = await redis.slowlog_get(4096)
    finally:
        for setting in settings:
            await redis.config_set(setting, before[setting])
    numkeys = [
        entry["command"].split()[2] for entry in log if entry["command"].startswith(b"EVALSHA ")
    ]
    assert set(numkeys) == {b"1", b"10"}  # twice each where the server answered NOSCRIPT first
    assert {await state(redis, stream, job_id) for job_id in ids} == {"done"}


async def test_a_batch_of_more_than_500_outcomes_indexes_every_finished_job(
    redis: Redis, stream: str
) -> None:
    # The finished indexes take a batch's jobs in one ZADD per 500 (unpack's bound).
    ids = await add(redis, stream, 1203)
    jobs: list[Job] = []
    for lane in keys.lanes(stream):
        await redis.xgroup_create(lane, keys.GROUP, id="0", mkstream=True)
    while len(jobs) < len(ids):
        reply: Any = await redis.xreadgroup(
            keys.GROUP, "c1", {keys.lane(stream, "normal"): ">"}, count=1000
        )
        jobs += [Job(stream, "normal", codec.decode_fields(f), 1, e) for e, f in reply[0][1]]
    cancelled = jobs.pop()
    outcomes: list[codec.Outcome] = [codec.Done(job.id, "", 1, 5, "") for job in jobs]
    outcomes.append(codec.Cancelled(cancelled.id, "", 1, 0, "{}", 2, cancelled._entry.decode()))
    entries = [[], [job._entry for job in [*jobs, cancelled]], []]
    assert await scripts.finish_jobs(redis, stream, entries, outcomes, retention_ms=60_000) == 1203
    assert await redis.zcard(keys.finished(stream, "done")) == 1202
    assert await redis.zrange(keys.finished(stream, "cancelled"), 0, -1) == [cancelled.id.encode()]


async def test_a_start_folded_into_a_stale_outcome_is_counted_on_its_entry(
    redis: Redis, stream: str
) -> None:
    # A worker fenced after its heartbeat lapsed, its entries taken over by c2, sends outcomes
    # carrying starts it never sent (streamq.starts): the entries live on, c2's, so those runs
    # count against them (max_deliveries); an outcome recorded counts none (its entry is gone).
    await add(redis, stream, 3)
    done, retried, recorded = await read(redis, stream)
    lane = keys.lane(stream, "normal")
    await redis.xclaim(lane, keys.GROUP, "c2", 0, [done._entry, retried._entry])
    await redis.hset(keys.liveness(stream), "fenced:c1", 1)
    await redis.script_flush()
    outcomes = [
        codec.Done(done.id, "", 1, 5, ""),
        codec.Retried(retried.id, "", 2, 5, "{}", 10, "e", "", 2, retried._entry.decode()),
        codec.Done(recorded.id, "", 1, 5, ""),
    ]
    entries = [[], [done._entry, retried._entry, recorded._entry], []]
    acked = await scripts.finish_jobs(
        redis, stream, entries, outcomes, retention_ms=60_000, consumer="c1", folded="111"
    )
    assert acked == 1
    for job in (done, retried):
        record: Any = await redis.hmget(keys.job(stream, job.id), "state", "runs", "run_entry")
        assert record == [b"queued", b"1", job._entry]
    record = await redis.hmget(keys.job(stream, recorded.id), "state", "runs")
    assert record == [b"done", None]
    # A start that reaches the server after its outcome (sent on another connection) counts
    # for an entry that outcome deleted: nothing.
    assert await scripts.start_jobs(redis, stream, [recorded.id], [recorded._entry]) == 0
    assert await redis.hget(keys.job(stream, recorded.id), "runs") is None


async def test_a_start_after_the_outcome_is_clamped_alike_in_record_and_event(
    redis: Redis, stream: str
) -> None:
    # A worker's estimate of the server's clock may lead it: the start it sends can be later
    # than the server's now. The record, the run history and the event must agree on one start.
    await add(redis, stream, 1)
    (job,) = await read(redis, stream)
    ahead = await channel.server_ms(redis) + 600_000
    acked = await scripts.finish_jobs(
        redis, stream, [[], [job._entry], []], [codec.Done(job.id, "", 1, ahead, "")],
        retention_ms=60_000,
    )  # fmt: skip
    assert acked == 1
    record: Any = await redis.hmget(keys.job(stream, job.id), "started_at", "finished_at")
    started, finished = (int(v) for v in record)
    assert started == finished < ahead
    events: Any = await redis.xrange(keys.events(stream))
    [(_, fields)] = [e for e in events if e[1][b"type"] == b"done"]
    assert int(fields[b"started_at"]) == started


async def test_claims_reclaim_refresh_release_and_retire(
    redis: Redis, redis_url: str, stream: str
) -> None:
    await add(redis, stream, 2)
    first, second = await read(redis, stream, "gone")
    await redis.script_flush()
    claims = await scripts.reclaim_jobs(
        redis, stream, "c2", min_idle_ms=0, count=1, cursors=["0-0"] * 3, gap_ms=1000
    )
    assert [len(lane.entries) for lane in claims] == [0, 1, 0]
    assert claims[1].deliveries == [2]
    await redis.script_flush()
    lost = await scripts.refresh_claims(
        redis, stream, "c2", [[], [first._entry, second._entry], []]
    )
    assert lost == [second._entry]  # still "gone"'s
    await redis.script_flush()
    twin = connection.sync_twin(redis, keys.lane(stream, "normal"))
    try:
        refreshed = scripts.refresh_pending(
            twin, stream, "c2", [[], [first._entry], []], stalled_ms=10
        )
    finally:
        twin.close()
    assert refreshed == 1
    await redis.script_flush()
    released = await scripts.release_jobs(
        redis, stream, "normal", "gone", [(second._entry, second.id)]
    )
    assert released == 1
    await redis.script_flush()
    # "gone" holds nothing now: removed from every lane; c2 still holds the first job.
    assert await scripts.retire_consumer(redis, stream, "gone") == 3
    assert await scripts.retire_consumer(redis, stream, "c2") == 2


async def test_admit_and_resume_account(redis: Redis, stream: str) -> None:
    await add(redis, stream, 2, account="acme")
    jobs = await read(redis, stream)
    limits = limiter.StreamLimits(platform=[(1, 60_000)], account=[]).packed()
    rows = [
        codec.AdmitRow(2, job._entry.decode(), job.id, "acme", job.envelope.enqueued_at_ms)
        for job in jobs
    ]
    await redis.script_flush()
    admission = await scripts.admit_jobs(redis, stream, "c1", rows, limits=limits)
    assert admission.verdicts == [1, 0]  # one start a minute: the second waits
    assert admission.platform_paused_until_ms == 0
    assert admission.now_ms > 0
    await limiter.pause_account(redis, stream, "acme")
    await redis.script_flush()
    assert await scripts.resume_account(redis, stream, "acme") == (True, 0)
    assert await scripts.resume_account(redis, stream, "acme") == (False, 0)


async def test_sample_counts_and_leadership(redis: Redis, stream: str) -> None:
    await redis.script_flush()
    assert await scripts.sample_counts(redis, stream, every_ms=60_000, keep_ms=60_000)
    assert not await scripts.sample_counts(redis, stream, every_ms=60_000, keep_ms=60_000)
    lock = keys.counts(stream) + ":lock"  # any key of the stream's slot
    await redis.set(lock, "me", px=60_000)
    await redis.script_flush()
    assert await scripts.renew_leadership(redis, lock, "me", ttl_ms=120_000)
    assert await redis.pttl(lock) > 60_000
    assert not await scripts.renew_leadership(redis, lock, "other", ttl_ms=1)
    assert not await scripts.release_leadership(redis, lock, "other")
    await redis.script_flush()
    assert await scripts.release_leadership(redis, lock, "me")
    assert not await redis.exists(lock)


async def test_page_members_resumes_after_the_cursors_member_at_its_score(
    redis: Redis, stream: str
) -> None:
    """Ties in byte order (b-10 before b-9), bounds, and a cursor member that has left."""
    members = {"a": 1.0, "b-10": 2.0, "b-2": 2.0, "b-9": 2.0, "c": 3.0, "d": 4.5}
    ordered = ["a", "b-10", "b-2", "b-9", "c", "d"]
    index = keys.due(stream, "acme")
    await redis.zadd(index, members)

    async def page(low: float, high: float, after: tuple[float, str] | None, n: int) -> list[str]:
        await redis.script_flush()
        got = await scripts.page_members(redis, index, low=low, high=high, after=after, count=n)
        assert all(members[m] == score for m, score in got)
        return [m for m, _ in got]

    inf = float("inf")
    assert await page(-inf, inf, None, 10) == ordered
    assert await page(2.0, 3.0, None, 10) == ordered[1:5]
    assert await page(-inf, inf, (2.0, "b-10"), 2) == ["b-2", "b-9"]
    assert await page(-inf, 2.0, (2.0, "b-2"), 10) == ["b-9"]
    assert await page(3.0, inf, (2.0, "b-2"), 10) == ["c", "d"]  # cursor before since
    assert await page(-inf, 1.5, (2.0, "b-2"), 10) == []  # cursor past until
    await redis.zrem(index, "b-2")  # the cursor's member has left: the next tie after it
    assert await page(-inf, inf, (2.0, "b-2"), 10) == ["b-9", "c", "d"]
    assert await page(-inf, inf, (2.0, "b-1"), 1) == ["b-10"]
    assert await page(-inf, inf, (2.0, "z"), 10) == ["c", "d"]
    members["b-9"] = 4.0
    await redis.zadd(index, {"b-9": 4.0})  # moved: its old place is found by the search
    assert await page(-inf, inf, (2.0, "b-9"), 10) == ["c", "b-9", "d"]


async def test_token_lease_and_write_keep_one_refresher_and_the_newest_token(
    redis: Redis, stream: str
) -> None:
    account = stream  # unique per test
    await redis.script_flush()
    assert await scripts.lease_token(redis, "x", account, seen_version=0, lease_ms=5_000) == (
        "missing",
        0,
    )
    await redis.script_flush()
    written, version = await scripts.write_token(
        redis, "x", account, fence=0, fields=["state", "active"]
    )
    assert (written, version) == (True, 1)
    await redis.script_flush()
    answer, fence = await scripts.lease_token(redis, "x", account, seen_version=1, lease_ms=5_000)
    assert answer == "granted"
    # While it runs, another worker is told to wait; one that read an older version uses the new.
    busy, left_ms = await scripts.lease_token(redis, "x", account, seen_version=1, lease_ms=5_000)
    assert busy == "busy"
    assert 0 < left_ms <= 5_000
    assert await scripts.lease_token(redis, "x", account, seen_version=0, lease_ms=5_000) == (
        "newer",
        1,
    )
    # An app's put meanwhile wins: the refresh's answer under the old fence is discarded.
    assert await scripts.write_token(redis, "x", account, fence=0, fields=["a", "1"]) == (True, 2)
    await redis.script_flush()
    assert await scripts.write_token(redis, "x", account, fence=fence, fields=["a", "0"]) == (
        False,
        2,
    )
    assert await redis.hget(keys.token_record("x", account), "a") == b"1"
    await scripts.write_token(redis, "x", account, fence=0, fields=["state", "reauth_required"])
    assert await scripts.lease_token(redis, "x", account, seen_version=3, lease_ms=5_000) == (
        "reauth",
        3,
    )

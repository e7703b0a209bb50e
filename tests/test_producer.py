from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from redis.asyncio import Redis

from streamq import keys
from streamq.config import parse_config
from streamq.errors import ConfigError, PayloadError
from streamq.producer import Producer
from tests.conftest import entries, run_cli
from tests.test_cli import one_line_error

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]


async def test_enqueue_adds_one_entry_to_the_chosen_lane(redis: Redis, stream: str) -> None:
    producer = Producer(redis)
    job_id = await producer.enqueue(stream, {"text": "hi"}, priority="high")
    assert job_id.startswith(f"{stream}:")
    assert await redis.xlen(keys.lane(stream, "high")) == 1
    assert await redis.xlen(keys.lane(stream, "normal")) == 0
    assert await redis.sismember(keys.STREAM_REGISTRY, stream)


async def test_enqueue_many_returns_ids_in_order(redis: Redis, stream: str) -> None:
    producer = Producer(redis)
    ids = await producer.enqueue_many(stream, [{"i": i} for i in range(1_234)])
    assert len(ids) == len(set(ids)) == 1_234
    found = await entries(redis, keys.lane(stream, "normal"))
    assert [e[1][b"j"].count(b'"i":') for e in found] == [1] * 1_234
    assert ids[0].encode() in found[0][1][b"j"]
    assert ids[-1].encode() in found[-1][1][b"j"]


async def test_a_live_key_returns_the_existing_job(redis: Redis, stream: str) -> None:
    producer = Producer(redis)
    first = await producer.enqueue(stream, {"v": 1}, key="post-42")
    second = await producer.enqueue(stream, {"v": 2}, key="post-42", priority="high")
    assert second == first
    assert await redis.xlen(keys.lane(stream, "normal")) == 1
    assert await redis.xlen(keys.lane(stream, "high")) == 0


async def test_a_key_repeated_in_one_batch_is_added_once(redis: Redis, stream: str) -> None:
    ids = await Producer(redis).enqueue_many(stream, [1, 2, 3], keys=["a", None, "a"])
    assert ids[2] == ids[0] != ids[1]
    assert await redis.xlen(keys.lane(stream, "normal")) == 2


async def test_concurrent_producers_with_one_key_add_one_job(redis_url: str, stream: str) -> None:
    from streamq import connection

    results: list[str] = []

    async def produce() -> None:
        client = connection.client(redis_url)
        try:
            results.append(await Producer(client).enqueue(stream, {"x": 1}, key="same"))
        finally:
            await client.aclose()

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(produce)
    assert len(set(results)) == 1
    client = connection.client(redis_url)
    assert await client.xlen(keys.lane(stream, "normal")) == 1
    await client.aclose()


@pytest.mark.any_engine
async def test_unknown_priority_and_bad_stream_are_refused(redis: Redis, stream: str) -> None:
    producer = Producer(redis)
    with pytest.raises(ConfigError, match="unknown priority 'urgent'"):
        await producer.enqueue(stream, {}, priority="urgent")
    with pytest.raises(ConfigError, match="invalid stream name"):
        await producer.enqueue("bad:name", {})
    with pytest.raises(ConfigError, match="one entry per payload"):
        await producer.enqueue_many(stream, [1, 2], keys=["a"])


async def test_enqueue_survives_script_flush(redis: Redis, stream: str) -> None:
    producer = Producer(redis)
    await producer.enqueue(stream, 1)
    await redis.script_flush()
    await producer.enqueue_many(stream, list(range(1_200)))
    await redis.script_flush()
    assert await redis.xlen(keys.lane(stream, "normal")) == 1_201
    # (Every other script after a flush: tests/test_scripts.py.)


@pytest.mark.any_engine
async def test_a_payload_over_the_limit_is_refused_naming_it_and_the_limit(
    redis: Redis, stream: str
) -> None:
    config = parse_config({"streams": {stream: {"max_payload_bytes": 1000}}})
    producer = Producer(redis, config)
    payloads = ["x" * 100, "y" * 2000, "z"]
    with pytest.raises(PayloadError, match=r"payload 2 is \d+ bytes encoded, over .* of 1000"):
        await producer.enqueue_many(stream, payloads)
    big = "w" * (1 << 20)  # the default limit is 1 MiB
    with pytest.raises(PayloadError, match="max_payload_bytes of 1048576"):
        await Producer(redis).enqueue(stream, big)
    assert await Producer(redis).enqueue(stream, "w" * 1000)


@pytest.mark.any_engine
async def test_a_bad_dedup_key_is_refused(redis: Redis, stream: str) -> None:
    producer = Producer(redis)
    for key in ("", "k" * 513, "tab\tkey"):
        with pytest.raises(ConfigError, match="invalid job key"):
            await producer.enqueue(stream, 1, key=key)
    assert await redis.xlen(keys.lane(stream, "normal")) == 0


@pytest.mark.any_engine
def test_the_cli_refuses_an_oversized_payload_in_one_line(
    redis_url: str, stream: str, tmp_path: Path
) -> None:
    post = tmp_path / "post.json"
    post.write_text(json.dumps("x" * (1 << 20)))
    result = run_cli("enqueue", "--redis-url", redis_url, "--stream", stream,
                     "--payload", f"@{post}")  # fmt: skip
    one_line_error(result, "over the stream's max_payload_bytes of 1048576")

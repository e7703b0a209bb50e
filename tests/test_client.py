"""The Python API: ``async with streamq.connect(url) as q``."""

from __future__ import annotations

import pytest

import streamq
from streamq import keys
from streamq.server import LocalServer

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]


async def test_connect_enqueue_and_stats(redis_url: str, stream: str) -> None:
    async with streamq.connect(redis_url) as q:
        job_id = await q.enqueue(stream, {"text": "hi"}, key="post-1", priority="high")
        ids = await q.enqueue_many(stream, [{"n": i} for i in range(100)])
        assert await q.enqueue(stream, {"text": "edited"}, key="post-1") == job_id
        [s] = (await q.stats([stream])).streams
    assert len(set(ids)) == 100
    assert (s.depth, s.waiting, s.pending) == (101, 101, 0)
    assert [lane.length for lane in s.lanes] == [1, 100, 0]


@pytest.mark.any_engine
async def test_using_a_queue_outside_its_context_is_a_clear_error(stream: str) -> None:
    q = streamq.connect("redis://127.0.0.1:1")
    with pytest.raises(RuntimeError, match=r"async with streamq\.connect"):
        await q.enqueue(stream, 1)


@pytest.mark.any_engine
async def test_unreachable_and_wrong_scheme_are_connection_failures() -> None:
    with pytest.raises(streamq.ConnectionFailed, match="cannot reach Redis"):
        async with streamq.connect("redis://127.0.0.1:1"):
            pass
    with pytest.raises(streamq.ConnectionFailed, match="unsupported Redis URL"):
        async with streamq.connect("http://127.0.0.1:1"):
            pass


@pytest.mark.any_engine
async def test_acl_user_and_password_from_the_url(stream: str) -> None:
    with LocalServer() as srv:
        admin = f"redis://127.0.0.1:{srv.port}/0"
        async with streamq.connect(admin) as q:
            await q.redis.execute_command(  # type: ignore[no-untyped-call]
                "ACL", "SETUSER", "poster", "on", ">s3cret", "~streamq:*", "+@all"
            )
        async with streamq.connect(f"redis://poster:s3cret@127.0.0.1:{srv.port}/0") as q:
            await q.enqueue(stream, {"text": "as poster"})
            assert await q.redis.xlen(keys.lane(stream, "normal")) == 1
        with pytest.raises(streamq.ConnectionFailed, match="refused the credentials") as info:
            async with streamq.connect(f"redis://poster:wrong@127.0.0.1:{srv.port}/0"):
                pass
        assert "wrong" not in str(info.value)

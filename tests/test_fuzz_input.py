"""Generated payloads, job keys and stream names against a real server: each one is accepted and
comes back exactly as given (the handler sees the same value, a lookup finds the job), or it is
refused at enqueue with one clear line. Examples are few: every one runs a worker."""

from __future__ import annotations

import math
import string
import uuid
from datetime import UTC, datetime
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import streamq
from streamq import codec, connection, keys
from streamq.config import Config, StreamConfig
from streamq.errors import ConfigError, PayloadError
from streamq.job import Job
from streamq.server import LocalServer
from streamq.worker import Worker, WorkerOptions
from tests.conftest import run_cli
from tests.test_cli import one_line_error

SERVER_SETTINGS = settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
BURST = WorkerOptions(burst=True, visibility_timeout=1.0, block_seconds=0.2, concurrency=4)

json_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()  # big ones too: JSON numbers have no size
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),  # any code point but lone surrogates (no UTF-8 for them: refused below)
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=25,
)


def new_stream() -> str:
    return f"f{uuid.uuid4().hex[:12]}"


async def run_to_end(url: str, stream: str) -> dict[str, Any]:
    """Run a burst worker over the stream; the payload each job's handler saw, by job id."""
    seen: dict[str, Any] = {}

    async def handler(job: Job) -> None:
        seen[job.id] = job.payload

    client = connection.client(url)
    try:
        with anyio.fail_after(30):
            await Worker(client, stream, handler, BURST).run()
    finally:
        await client.aclose()
    return seen


@SERVER_SETTINGS
@given(payloads=st.lists(json_values, min_size=1, max_size=8))
def test_any_json_payload_reaches_the_handler_exactly(
    server: LocalServer, payloads: list[Any]
) -> None:
    stream = new_stream()

    async def scenario() -> None:
        async with streamq.connect(server.url) as q:
            ids = await q.enqueue_many(stream, payloads)
            one = await q.enqueue(stream, payloads[0])
        seen = await run_to_end(server.url, stream)
        assert [seen[job_id] for job_id in ids] == payloads
        assert seen[one] == payloads[0]
        # The types as well as the values: 1 == 1.0 == True in Python, not in JSON.
        assert repr([seen[job_id] for job_id in ids]) == repr(payloads)

    anyio.run(scenario)


UNFAITHFUL = [
    (b"bytes", "$ is a bytes"),
    ((1, 2), "$ is a tuple (use a list)"),
    ({"a": {1, 2}}, "$.a is a set (use a list)"),
    ({1: "one"}, "$ has a key of type int"),
    ({"when": datetime(2026, 1, 1, tzinfo=UTC)}, "$.when is a datetime"),
    ([1.0, math.nan], "$[1] is nan"),
    ({"x": [math.inf]}, "$.x[0] is inf"),
    (uuid.UUID(int=1), "$ is a UUID"),
    (object(), "cannot be encoded as JSON"),
    ("\ud800", "cannot be encoded as JSON"),
    ({None: 1}, "cannot be encoded as JSON"),
]


@pytest.mark.any_engine
@pytest.mark.parametrize(("payload", "fragment"), UNFAITHFUL)
@pytest.mark.anyio
async def test_a_payload_json_would_change_is_refused_at_enqueue(
    redis_url: str, stream: str, payload: Any, fragment: str
) -> None:
    async with streamq.connect(redis_url) as q:
        with pytest.raises(PayloadError) as caught:
            await q.enqueue(stream, payload)
        assert fragment in str(caught.value)
        assert "\n" not in str(caught.value)
        with pytest.raises(PayloadError, match=r"^payload 2: "):
            await q.enqueue_many(stream, ["fine", payload])
        with pytest.raises(PayloadError):
            await q.schedule_recurring("r", stream, cron="* * * * *", payload=payload)
        assert await q.redis.xlen(keys.lane(stream, "normal")) == 0


@pytest.mark.any_engine
@pytest.mark.anyio
async def test_the_payload_limit_is_configurable_and_named_in_the_error(
    redis_url: str, stream: str
) -> None:
    small = Config(streams={stream: StreamConfig(max_payload_bytes=200)})
    async with streamq.connect(redis_url, config=small) as q:
        assert await q.enqueue(stream, "x" * 50)
        with pytest.raises(PayloadError, match="over the stream's max_payload_bytes of 200"):
            await q.enqueue(stream, "x" * 300)
    with pytest.raises(ConfigError, match="max_payload_bytes must be from 1 to"):
        StreamConfig(max_payload_bytes=0)


key_texts = st.text(min_size=0, max_size=600)


@SERVER_SETTINGS
@given(key=key_texts | st.text(st.characters(codec="utf-8"), min_size=1, max_size=20))
def test_a_job_key_is_accepted_and_deduplicates_or_is_refused(
    server: LocalServer, key: str
) -> None:
    stream = new_stream()
    valid = 1 <= len(key) <= keys.MAX_KEY_LENGTH and key.isprintable()

    async def scenario() -> None:
        async with streamq.connect(server.url) as q:
            if not valid:
                with pytest.raises(ConfigError, match="invalid job key") as caught:
                    await q.enqueue(stream, 1, key=key)
                assert "\n" not in str(caught.value)
                return
            first = await q.enqueue(stream, {"n": 1}, key=key)
            again = await q.enqueue(stream, {"n": 2}, key=key)
            assert again == first  # the live job holding the key
            info = await q.job(first)
            assert (info.key, info.payload) == (key, {"n": 1})
        assert await run_to_end(server.url, stream) == {first: {"n": 1}}
        async with streamq.connect(server.url) as q:
            assert (await q.job(first)).state == "done"
            assert await q.enqueue(stream, {"n": 3}, key=key) != first  # freed once done

    anyio.run(scenario)


stream_names = st.text(max_size=70) | st.from_regex(
    r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,70}", fullmatch=True
)


@SERVER_SETTINGS
@given(name=stream_names)
def test_a_stream_name_round_trips_or_is_refused_in_one_line(
    server: LocalServer, name: str
) -> None:
    try:
        keys.check_stream_name(name)
    except ValueError as exc:
        message = str(exc)
        assert message.startswith("invalid stream name")
        assert "\n" not in message
        allowed = set(string.ascii_letters + string.digits + "_.-")
        assert not (0 < len(name) <= 64 and set(name) <= allowed and name[0] not in "_.-")

        async def refused() -> None:
            async with streamq.connect(server.url) as q:
                with pytest.raises(ConfigError, match="invalid stream name"):
                    await q.enqueue(name, 1)

        anyio.run(refused)
        return
    # A valid name of this test alone: a random suffix keeps parallel runs apart.
    stream = (name[:50] + uuid.uuid4().hex[:12])[:64]

    async def accepted() -> None:
        async with streamq.connect(server.url) as q:
            job_id = await q.enqueue(stream, name)
            assert keys.stream_of_job(job_id) == stream
            assert (await q.job(job_id)).payload == name
        assert await run_to_end(server.url, stream) == {job_id: name}
        async with streamq.connect(server.url) as q:
            assert (await q.job(job_id)).state == "done"
            assert stream in {s.stream for s in (await q.stats([stream])).streams}

    anyio.run(accepted)


@pytest.mark.any_engine
@pytest.mark.parametrize(
    "name", ["", "a" * 65, "-lead", "has space", "a:b", "a{b}", "ünï", "tab\t", "new\nline"]
)
def test_the_cli_refuses_a_bad_stream_name_in_one_line(redis_url: str, name: str) -> None:
    result = run_cli("enqueue", "--redis-url", redis_url, f"--stream={name}", "--payload", "1")
    one_line_error(result, "invalid stream name")


@pytest.mark.any_engine
@pytest.mark.anyio
async def test_out_of_range_job_options_are_refused_at_enqueue(redis_url: str, stream: str) -> None:
    async with streamq.connect(redis_url) as q:
        with pytest.raises(ConfigError, match="max_attempts must be from 1 to"):
            await q.enqueue(stream, 1, max_attempts=2**64)
        for too_long in ("9" * 400 + "s", 1e300, "99999999d"):
            with pytest.raises(ConfigError, match="at most 100 years"):
                await q.enqueue(stream, 1, job_timeout=too_long)
        assert await q.redis.xlen(keys.lane(stream, "normal")) == 0


@pytest.mark.any_engine
def test_a_key_refused_by_the_cli_is_one_line(redis_url: str, stream: str) -> None:
    result = run_cli("enqueue", "--redis-url", redis_url, "--stream", stream, "--payload", "1",
                     "--key", "k" * 513)  # fmt: skip
    one_line_error(result, "invalid job key")


def test_every_refused_payload_kind_names_where_json_changes_it() -> None:
    for payload, fragment in UNFAITHFUL:
        with pytest.raises(PayloadError, match=r"^payload cannot be") as caught:
            codec.check_payload(payload)
        assert fragment in str(caught.value)
    codec.check_payload({"ok": [1, 2.5, None, True, "ü", 2**80, {"": []}]})

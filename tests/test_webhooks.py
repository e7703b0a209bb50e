"""Webhooks against a local HTTP receiver over real sockets, and in-process hooks.

The receiver is a threaded http.server on a free loopback port. Deliveries run exactly as
``streamq consume`` runs them: streamq.webhooks.Deliveries beside the stream's worker."""

from __future__ import annotations

import importlib.util
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import msgspec
import pytest
from redis.asyncio import Redis

import streamq
from streamq import keys
from streamq.config import Config, parse_config
from streamq.errors import Fail
from streamq.handler import Hooks
from streamq.job import Job
from streamq.webhooks import Deliveries, delivery_stream
from streamq.worker import Worker
from tests.conftest import ROOT, free_port
from tests.test_events import options
from tests.test_lifecycle import Running, state
from tests.test_worker import poll

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]

SECRET = "whsec-test-0123456789"


def load_verify() -> Callable[[str, dict[str, str], bytes], bool]:
    """The receiver's check exactly as the docs show it (examples/webhook_verify.py), so the
    snippet a reader copies is the one held to real deliveries here."""
    spec = importlib.util.spec_from_file_location(
        "webhook_verify", ROOT / "examples" / "webhook_verify.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    check: Callable[[str, dict[str, str], bytes], bool] = module.verify
    return check


verify = load_verify()


class Receiver:
    """Answers each delivery's first ``fail_first`` tries with 503, then 200; records all."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.tries: Counter[str] = Counter()
        self.accepted: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handle(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = dict(self.headers.items())
                with receiver.lock:
                    event_id = headers["Streamq-Event-Id"]
                    receiver.tries[event_id] += 1
                    ok = receiver.tries[event_id] > receiver.fail_first
                    if ok:
                        receiver.accepted.append((headers, body))
                self.send_response(200 if ok else 503)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handle)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver(fail_first=2) as running:
        yield running


def config_for(stream: str, url: str, **webhook: Any) -> Config:
    delivery = delivery_stream(stream)
    return parse_config(
        {
            "streams": {
                stream: {"webhooks": {"url": url, **webhook}},
                delivery: {"backoff": {"base": 0.05, "factor": 1, "max": 0.05, "jitter": 0}},
            }
        }
    )


async def noop(job: Job) -> Any:
    return {"ok": job.payload}


async def test_every_event_arrives_signed_and_once_per_successful_delivery(
    redis_url: str, redis: Redis, stream: str, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_WEBHOOK_SECRET", SECRET)
    config = config_for(stream, receiver.url, events=["done"], secret_env="TEST_WEBHOOK_SECRET")
    deliveries = Deliveries(redis, stream, config, "test-consumer")
    async with streamq.connect(redis_url) as q, anyio.create_task_group() as tasks:
        tasks.start_soon(deliveries.run)
        jobs = await q.enqueue_many(stream, list(range(20)))
        async with Running(Worker(redis, stream, noop, options(burst=False))):
            await poll(lambda: len(receiver.accepted) == 20, within=30)
        deliveries.stop()
    delivered = [json.loads(body) for _, body in receiver.accepted]
    assert sorted(event["job"] for event in delivered) == sorted(jobs)  # each job's done, once
    assert {event["type"] for event in delivered} == {"done"}
    assert len({headers["Streamq-Event-Id"] for headers, _ in receiver.accepted}) == 20
    assert all(verify(SECRET, headers, body) for headers, body in receiver.accepted)
    assert not verify("another secret", *receiver.accepted[0])
    assert set(receiver.tries.values()) == {3}  # two refusals, then accepted: no extra sends
    assert delivered[0]["result"] == {"ok": delivered[0]["result"]["ok"]}


async def test_a_flows_end_reaches_its_webhook_once_with_each_steps_outcome(
    redis_url: str, redis: Redis, stream: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """flow.done, flow.failed and flow.cancelled, asked for by a webhook of the stream of the
    flows' first step, are delivered once each, signed, with each step's final state; the
    steps' own events are not (the hook did not ask for them)."""
    monkeypatch.setenv("TEST_WEBHOOK_SECRET", SECRET)
    other = f"{stream}-b"
    wanted = ["flow.done", "flow.failed", "flow.cancelled"]
    with Receiver() as hook:
        config = config_for(stream, hook.url, events=wanted, secret_env="TEST_WEBHOOK_SECRET")
        deliveries = Deliveries(redis, stream, config, "test-consumer")

        async def handler(job: Job) -> Any:
            if job.payload == "refused":
                raise Fail("the platform refused it")
            return {"id": job.payload}

        def steps(first: str) -> list[streamq.Step]:
            return [
                streamq.Step(name="publish", stream=stream, payload=first),
                streamq.Step(name="comment", stream=other, payload="c", after=["publish"]),
            ]

        async with streamq.connect(redis_url) as q, anyio.create_task_group() as tasks:
            tasks.start_soon(deliveries.run)
            done = await q.enqueue_flow(steps("p"))
            failed = await q.enqueue_flow(steps("refused"))
            later = datetime.now(UTC) + timedelta(hours=1)
            cancelled = await q.enqueue_flow(steps("p"), run_at=later)
            assert await q.cancel_flow(cancelled.id) == "cancelled"
            async with (
                Running(Worker(redis, stream, handler, options(burst=False))),
                Running(Worker(redis, other, handler, options(burst=False))),
            ):
                await poll(lambda: len(hook.accepted) == 3, within=30)
            deliveries.stop()
    delivered = {json.loads(body)["job"]: json.loads(body) for _, body in hook.accepted}
    assert {flow: event["type"] for flow, event in delivered.items()} == {
        done.id: "flow.done",
        failed.id: "flow.failed",
        cancelled.id: "flow.cancelled",
    }
    assert delivered[done.id]["result"] == {"publish": "done", "comment": "done"}
    assert delivered[failed.id]["result"] == {"publish": "failed", "comment": "cancelled"}
    assert delivered[cancelled.id]["result"] == {"publish": "cancelled", "comment": "cancelled"}
    assert all(verify(SECRET, headers, body) for headers, body in hook.accepted)
    assert all(n == 1 for n in hook.tries.values())


async def test_a_receiver_down_for_good_ends_in_the_dead_letters_and_publishing_goes_on(
    redis_url: str, redis: Redis, stream: str
) -> None:
    gone = f"http://127.0.0.1:{free_port()}/nobody-listens"
    config = config_for(stream, gone, events=["done"], max_attempts=3)
    slow_retries = {"backoff": {"base": 1, "factor": 1, "max": 1, "jitter": 0}}
    config = msgspec.structs.replace(
        config,
        streams={**config.streams, delivery_stream(stream): parse_config(
            {"streams": {"x": slow_retries}}).stream("x")},
    )  # fmt: skip
    deliveries = Deliveries(redis, stream, config, "test-consumer")
    dead = keys.dead(delivery_stream(stream))
    async with streamq.connect(redis_url) as q, anyio.create_task_group() as tasks:
        tasks.start_soon(deliveries.run)
        jobs = await q.enqueue_many(stream, list(range(50)))
        async with Running(Worker(redis, stream, noop, options(burst=False))):
            await poll(lambda: _all_done(q, jobs), within=30)
            # Publishing finished while every delivery was still being retried.
            assert await redis.xlen(dead) < 50
            await poll(lambda: _length_is(redis, dead, 50), within=60)
        deliveries.stop()
    letters = await q_dead(redis_url, delivery_stream(stream))
    assert len(letters) == 50
    assert all("ConnectError" in (letter.reason or "") for letter in letters)


async def _all_done(q: streamq.Queue, jobs: list[str]) -> bool:
    return all([await state(q, job) == "done" for job in jobs])


async def _length_is(redis: Redis, key: str, length: int) -> bool:
    return int(await redis.xlen(key)) == length


async def q_dead(redis_url: str, stream: str) -> list[Any]:
    async with streamq.connect(redis_url) as q:
        return await q.dead(stream)


async def test_hooks_see_outcomes_and_their_failures_change_nothing(
    redis_url: str, redis: Redis, stream: str
) -> None:
    seen: list[tuple[str, str]] = []

    async def on_done(job: Job, result: Any) -> None:
        seen.append(("done", job.payload))
        raise RuntimeError("the app's database is down")  # logged, the job stays done

    def on_failed(job: Job, error: str) -> None:  # plain functions work too
        seen.append(("failed", job.payload))

    async def on_dead(job: Job, reason: str) -> None:
        seen.append(("dead", job.payload))

    async def handler(job: Job) -> Any:
        if job.payload == "bad":
            raise ValueError("nope")
        return job.payload

    hooks = Hooks(on_done=on_done, on_failed=on_failed, on_dead=on_dead)
    async with streamq.connect(redis_url) as q:
        good = await q.enqueue(stream, "good")
        bad = await q.enqueue(stream, "bad", max_attempts=1)
        await Worker(redis, stream, handler, options(), hooks=hooks).run()
        assert (await state(q, good), await state(q, bad)) == ("done", "dead")
    assert sorted(seen) == [("dead", "bad"), ("done", "good"), ("failed", "bad")]


async def test_an_event_too_large_to_deliver_is_a_dead_letter_and_the_rest_go_out(
    redis_url: str, redis: Redis, stream: str, receiver: Receiver
) -> None:
    config = config_for(stream, receiver.url, events=["done"])
    tight = msgspec.structs.replace(config.streams[delivery_stream(stream)], max_payload_bytes=600)
    config = msgspec.structs.replace(
        config, streams={**config.streams, delivery_stream(stream): tight}
    )
    deliveries = Deliveries(redis, stream, config, "test-consumer")

    async def echo(job: Job) -> Any:
        return job.payload  # the result is in the event, and so in the delivery

    async with streamq.connect(redis_url) as q, anyio.create_task_group() as tasks:
        tasks.start_soon(deliveries.run)
        small = await q.enqueue(stream, "small")
        await q.enqueue(stream, "x" * 2000)
        async with Running(Worker(redis, stream, echo, options(burst=False))):
            await poll(lambda: len(receiver.accepted) == 1, within=30)
            await poll(lambda: _length_is(redis, keys.dead(delivery_stream(stream)), 1))
        deliveries.stop()
    assert json.loads(receiver.accepted[0][1])["job"] == small
    letters: Any = await redis.xrange(keys.dead(delivery_stream(stream)))
    [(_, letter)] = letters
    assert b"max_payload_bytes" in letter[b"_reason"]
    assert json.loads(letter[b"j"])["event"]["result"] == "x" * 2000  # kept whole


async def test_events_a_dead_relay_read_are_taken_over_by_another(
    redis_url: str, redis: Redis, stream: str, receiver: Receiver
) -> None:
    config = config_for(stream, receiver.url, events=["queued"])
    async with streamq.connect(redis_url) as q:
        job = await q.enqueue(stream, "orphan")
    source = keys.events(stream)
    await redis.xgroup_create(source, "webhooks", id="0")
    await redis.xreadgroup("webhooks", "dead-relay", {source: ">"})  # read, never acknowledged
    deliveries = Deliveries(redis, stream, config, "live-relay")
    deliveries.abandoned_after_ms = 0
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(deliveries.run)
        await poll(lambda: len(receiver.accepted) == 1, within=30)
        deliveries.stop()
    assert json.loads(receiver.accepted[0][1])["job"] == job

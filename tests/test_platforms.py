"""Every built-in publisher against the simulator, over real sockets, through a real worker.

Each case runs one post through a Worker on a real server, a publisher on a real httpx client
and the simulator on a loopback port, with one scripted fault; it checks the job's end (state,
attempt, error) and the simulator's record (how many posts that job made).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import msgspec
import pytest
from redis.asyncio import Redis

from streamq import Step, stats
from streamq.client import Queue
from streamq.config import Config, StreamConfig
from streamq.control import JobInfo
from streamq.errors import PayloadError
from streamq.platforms.client import Session
from streamq.server import LocalServer
from streamq.simulator import Fault, SimOptions, Simulator
from streamq.worker import Worker
from tests.platform_helpers import (
    PLATFORMS,
    credentials,
    new_token,
    post_for,
    publisher_worker_options,
    run_publisher_until,
    settings_for,
)
from tests.test_worker import poll

# Every case brings its own simulator and the module its own Valkey: the engine's tests cover
# the engines, so both engine ids would run the very same thing.
pytestmark = [pytest.mark.anyio, pytest.mark.any_engine]

FINAL = ("done", "dead", "paused", "expired")


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    # Publishers run on uvloop in workers; the engine's tests cover plain asyncio.
    return ("asyncio", {"use_uvloop": True})


@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    # One engine: what publishers do does not depend on it (the engine's tests run on both).
    with LocalServer() as srv:
        yield srv


@dataclass
class Rig:
    """A simulator, a queue whose stream runs a publisher, and a way to run its worker."""

    sim: Simulator
    q: Queue
    session: Session
    stream: str
    platform: str
    token: str

    def post(self, text: str = "hello") -> dict[str, Any]:
        return post_for(self.platform, self.sim.url, text)

    async def run(self, job_ids: list[str], until: tuple[str, ...] = FINAL) -> list[JobInfo]:
        """Run a worker until every job's state is in ``until``."""
        return await run_publisher_until(
            self.q, self.session, self.stream, self.platform, job_ids, until
        )

    def posts_of(self, job_id: str) -> int:
        return len(self.sim.posts_for(job_id))


async def open_rig(
    redis_url: str,
    stream: str,
    platform: str,
    *,
    client_timeout: float = 5.0,
    lookup: bool = True,
    sim_options: SimOptions | None = None,
) -> AsyncIterator[Rig]:
    sim = Simulator(sim_options or SimOptions(processing=0.05))
    async with sim.serve() as url:
        config = Config(streams={stream: StreamConfig(publisher=platform, limits=())})
        token = new_token(platform)
        settings = {platform: settings_for(platform, url, timeout=client_timeout, lookup=lookup)}
        async with (
            Queue(redis_url, config=config) as q,
            Session(config, credentials=credentials({platform: token}), settings=settings) as s,
        ):
            yield Rig(sim, q, s, stream, platform, token)


@pytest.fixture(params=PLATFORMS)
def platform(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
async def rig(redis_url: str, stream: str, platform: str) -> AsyncIterator[Rig]:
    async for made in open_rig(redis_url, stream, platform):
        yield made


# -- success and each error class -------------------------------------------------------------


async def test_a_post_is_published_once_and_its_id_recorded(rig: Rig) -> None:
    job_id = await rig.q.enqueue(rig.stream, rig.post("first post"), account="acme")
    [info] = await rig.run([job_id])
    assert info.state == "done", info.error
    assert info.attempt == 1
    [post] = rig.sim.posts_for(job_id)
    assert post.platform == rig.platform
    assert info.result == {"platform": rig.platform, "post_id": post.id}
    assert "first post" in post.text


async def test_a_transient_error_is_retried_and_published_once(rig: Rig) -> None:
    rig.sim.add_fault(Fault(kind="transient", platform=rig.platform))
    job_id = await rig.q.enqueue(rig.stream, rig.post(), account="acme")
    [info] = await rig.run([job_id])
    assert (info.state, info.attempt) == ("done", 2)
    assert rig.posts_of(job_id) == 1
    assert rig.sim.counts.transient == 1


async def test_a_429_defers_without_using_an_attempt(rig: Rig) -> None:
    rig.sim.add_fault(Fault(kind="rate_limit", platform=rig.platform, seconds=1))
    job_id = await rig.q.enqueue(rig.stream, rig.post(), account="acme")
    started = time.monotonic()
    [info] = await rig.run([job_id])
    assert (info.state, info.attempt) == ("done", 1)
    assert time.monotonic() - started >= 0.9  # it waited for Retry-After
    assert rig.posts_of(job_id) == 1
    [figures] = (await stats.snapshot(rig.q.redis, [rig.stream])).streams
    assert figures.throttled == 1


async def test_the_platforms_own_rate_limit_code_defers_the_job(rig: Rig) -> None:
    rig.sim.add_fault(Fault(kind="platform_limit", platform=rig.platform))
    job_id = await rig.q.enqueue(rig.stream, rig.post(), account="acme")
    [info] = await rig.run([job_id], until=("scheduled",))
    assert info.error is not None
    assert f"{rig.platform}: rate limited" in info.error
    assert info.attempt == 1
    assert info.run_at_ms is not None
    assert info.run_at_ms - time.time() * 1000 > 30_000  # the platform said nothing: a while
    assert rig.posts_of(job_id) == 0


async def test_an_expired_token_pauses_the_account(rig: Rig) -> None:
    rig.sim.add_fault(Fault(kind="token_expired", platform=rig.platform))
    job_id = await rig.q.enqueue(rig.stream, rig.post(), account="acme")
    second = await rig.q.enqueue(rig.stream, rig.post("second"), account="acme")
    infos = await rig.run([job_id, second], until=("paused",))
    assert {info.state for info in infos} == {"paused"}
    assert infos[0].error is not None
    assert f"{rig.platform}: token:" in infos[0].error
    assert rig.posts_of(job_id) == rig.posts_of(second) == 0
    report = await rig.q.limits(rig.stream, "acme")
    assert [pause.scope for pause in report.pauses] == ["acme"]


@pytest.mark.parametrize(
    ("kind", "words"),
    [("permission", "permission"), ("policy", "content policy"), ("invalid", "refused")],
)
async def test_a_refusal_fails_the_job_with_the_platforms_message(
    rig: Rig, kind: Any, words: str
) -> None:
    rig.sim.add_fault(Fault(kind=kind, platform=rig.platform))
    job_id = await rig.q.enqueue(rig.stream, rig.post(), account="acme")
    [info] = await rig.run([job_id])
    assert (info.state, info.attempt) == ("dead", 1)
    assert info.error is not None
    assert info.error.startswith(f"{rig.platform}: {words}: "), info.error
    assert "HTTP 4" in info.error
    assert rig.posts_of(job_id) == 0
    [letter] = await rig.q.dead(rig.stream)
    assert letter.reason == info.error


async def test_missing_credentials_pause_the_account(rig: Rig) -> None:
    job_id = await rig.q.enqueue(rig.stream, rig.post(), account="nobody")
    rig.session.credentials = credentials({})
    [info] = await rig.run([job_id])
    assert info.state == "paused"
    assert info.error == f"{rig.platform}: token: no credentials for account 'nobody'"


# -- publish once -----------------------------------------------------------------------------


async def test_a_lost_answer_is_found_by_lookup_not_sent_again(rig: Rig) -> None:
    rig.sim.add_fault(Fault(kind="lost_answer", platform=rig.platform))
    job_id = await rig.q.enqueue(rig.stream, rig.post(), account="acme")
    [info] = await rig.run([job_id])
    assert (info.state, info.attempt) == ("done", 2)
    [post] = rig.sim.posts_for(job_id)
    assert info.result == {"platform": rig.platform, "post_id": post.id, "recovered": True}


async def test_a_timeout_after_send_publishes_once(
    redis_url: str, stream: str, platform: str
) -> None:
    async for rig in open_rig(redis_url, stream, platform, client_timeout=0.5):
        # Accepted at once, answered only after the client gave up waiting.
        rig.sim.add_fault(Fault(kind="hang", platform=platform, seconds=2.0))
        job_id = await rig.q.enqueue(stream, rig.post(), account="acme")
        [info] = await rig.run([job_id])
        assert info.state == "done"
        assert info.attempt >= 2  # 2, unless a loaded machine also timed the lookup out
        assert info.error is not None
        assert "no answer within 0.5s" in info.error  # the first attempt's
        [post] = rig.sim.posts_for(job_id)
        assert info.result == {"platform": platform, "post_id": post.id, "recovered": True}


@pytest.mark.parametrize("platform", ["x", "linkedin"])
async def test_without_lookup_x_and_linkedin_refuse_the_resend_as_a_duplicate(
    redis_url: str, stream: str, platform: str
) -> None:
    async for rig in open_rig(redis_url, stream, platform, lookup=False):
        rig.sim.add_fault(Fault(kind="lost_answer", platform=platform))
        job_id = await rig.q.enqueue(stream, rig.post(), account="acme")
        [info] = await rig.run([job_id])
        assert (info.state, info.attempt) == ("done", 2)
        [post] = rig.sim.posts_for(job_id)
        expected = post.id if platform == "linkedin" else None  # X does not say which
        assert info.result == {"platform": platform, "post_id": expected, "recovered": True}


@pytest.mark.parametrize("platform", ["facebook"])
async def test_without_lookup_a_lost_answer_can_post_twice(
    redis_url: str, stream: str, platform: str
) -> None:
    """What the docs say of real platforms that cannot be asked: at least once."""
    async for rig in open_rig(redis_url, stream, platform, lookup=False):
        rig.sim.add_fault(Fault(kind="lost_answer", platform=platform))
        job_id = await rig.q.enqueue(stream, rig.post(), account="acme")
        [info] = await rig.run([job_id])
        assert (info.state, info.attempt) == ("done", 2)
        assert rig.posts_of(job_id) == 2


async def test_a_first_attempt_duplicate_of_someone_elses_post_fails(
    redis_url: str, stream: str
) -> None:
    async for rig in open_rig(redis_url, stream, "x"):
        first = await rig.q.enqueue(stream, {"text": "same words"}, account="acme")
        second = await rig.q.enqueue(stream, {"text": "same words"}, account="acme")
        infos = await rig.run([first, second])
        assert sorted(info.state for info in infos) == ["dead", "done"]
        dead = next(info for info in infos if info.state == "dead")
        assert dead.error is not None
        assert "duplicate content" in dead.error


# -- platform specifics -----------------------------------------------------------------------


async def test_instagram_waits_for_the_container_and_publishes_a_carousel(
    redis_url: str, stream: str
) -> None:
    async for rig in open_rig(
        redis_url, stream, "instagram", sim_options=SimOptions(processing=0.3)
    ):
        media = f"{rig.sim.url}/_sim/media"
        payload = {
            "text": "three pictures #one #two",
            "children": [
                {"image_url": f"{media}/1.jpg"},
                {"video_url": f"{media}/2.mp4"},
                {"image_url": f"{media}/3.jpg"},
            ],
        }
        job_id = await rig.q.enqueue(stream, payload, account="acme")
        started = time.monotonic()
        [info] = await rig.run([job_id])
        assert info.state == "done", info.error
        assert time.monotonic() - started >= 0.3  # it waited until the container was FINISHED
        [post] = rig.sim.posts_for(job_id)
        assert len(post.media) == 3  # the children's containers


async def test_youtube_fails_a_video_url_that_is_not_there(redis_url: str, stream: str) -> None:
    async for rig in open_rig(redis_url, stream, "youtube"):
        payload = {"title": "gone", "video_url": f"{rig.sim.url}/nowhere/video.mp4"}
        job_id = await rig.q.enqueue(stream, payload, account="acme")
        [info] = await rig.run([job_id])
        assert info.state == "dead"
        assert info.error is not None
        assert "answered HTTP 404" in info.error
        assert rig.posts_of(job_id) == 0


async def test_rate_limit_of_the_simulator_sends_retry_after(redis_url: str, stream: str) -> None:
    options = SimOptions(processing=0.05, rate_limit=(2, 1.0))
    async for rig in open_rig(redis_url, stream, "x", sim_options=options):
        ids = [
            await rig.q.enqueue(stream, {"text": f"burst {i}"}, account="acme") for i in range(5)
        ]
        infos = await rig.run(ids)
        assert {info.state for info in infos} == {"done"}
        assert {info.attempt for info in infos} == {1}
        assert rig.sim.counts.rate_limited >= 3
        assert sorted(len(rig.sim.posts_for(i)) for i in ids) == [1] * 5


# -- secrets ----------------------------------------------------------------------------------


async def test_tokens_appear_in_no_log_error_record_or_metric(
    redis_url: str, stream: str, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async for rig in open_rig(redis_url, stream, "facebook", client_timeout=0.3):
        rig.sim.add_fault(Fault(kind="hang", platform="facebook", seconds=1, match="slow"))
        rig.sim.add_fault(Fault(kind="policy", platform="facebook", match="bad"))
        rig.sim.add_fault(Fault(kind="token_expired", platform="facebook", match="late"))
        ids = [
            await rig.q.enqueue(stream, {"text": text}, account="acme")
            for text in ("fine", "slow", "bad")
        ]
        ids.append(await rig.q.enqueue(stream, {"text": "late"}, account="late"))
        infos = await rig.run(ids)
        assert sorted(info.state for info in infos) == ["dead", "done", "done", "paused"]
        secret = rig.token
        texts = [record.getMessage() for record in caplog.records]
        texts += [repr(record.args) for record in caplog.records]
        texts += [msgspec.json.encode(info).decode() for info in infos]
        texts += [msgspec.json.encode(await rig.q.dead(stream)).decode()]
        texts += [stats.to_json(await rig.q.stats([stream])).decode()]
        texts += [msgspec.json.encode(await rig.q.limits(stream, "late")).decode()]
        async for key in redis.scan_iter(match=f"*{{{stream}}}*"):
            texts.append(repr(await redis.dump(key)))
        texts.append(repr(await rig.session.credentials_for("facebook", "acme")))
        assert caplog.records, "nothing was logged: the check would prove nothing"
        assert not [text for text in texts if secret in text]


async def test_instagram_publishes_then_adds_the_first_comment_once_on_that_media(
    redis_url: str, stream: str
) -> None:
    async for rig in open_rig(redis_url, stream, "instagram"):
        # The comment's answer is lost after the simulator took it: the retry finds it among
        # the media's comments instead of commenting again.
        rig.sim.add_fault(Fault(kind="lost_answer", platform="instagram", step="comment"))
        flow = await rig.q.enqueue_flow(
            [
                Step(name="publish", stream=stream, payload=rig.post("launch day"), account="a"),
                Step(
                    name="first_comment",
                    stream=stream,
                    payload={"comment": "#launch #spring"},
                    after=["publish"],
                    account="a",
                ),
            ]
        )
        worker = Worker(
            rig.q.redis,
            stream,
            rig.session.publisher("instagram"),
            publisher_worker_options("instagram"),
        )
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(worker.run)

            await poll(lambda: _flow_ended(rig.q, flow.id), within=20)  # noqa: B023
            worker.stop()
        info = await rig.q.flow(flow.id)
        assert info.state == "done", info.steps
        [post] = rig.sim.posts_for(flow.jobs["publish"])
        [comment] = rig.sim.comments
        assert (comment.media_id, comment.text) == (post.id, "#launch #spring")
        assert comment.key == flow.jobs["first_comment"]
        result = info.steps["first_comment"].result
        assert result == {"platform": "instagram", "post_id": comment.id, "recovered": True}
        assert rig.sim.summary()["comments"] == 1
        assert rig.sim.summary()["duplicates"] == 0

        # A comment on a media Instagram does not know is refused as Graph refuses it; a
        # comment with a picture is refused at enqueue.
        job_id = await rig.q.enqueue(stream, {"comment": "hi", "media_id": "999"}, account="a")
        [dead] = await rig.run([job_id])
        assert dead.state == "dead"
        assert dead.error is not None
        assert "Object with ID '999' does not exist" in dead.error
        assert len(rig.sim.comments) == 1
        with pytest.raises(PayloadError, match="an instagram comment takes comment"):
            await rig.q.enqueue(stream, {"comment": "hi", "image_url": "https://a.b/c.jpg"})
        # A comment in no flow and with no media_id has nothing to go on.
        job_id = await rig.q.enqueue(stream, {"comment": "hi"}, account="a")
        [dead] = await rig.run([job_id])
        assert dead.state == "dead"
        assert dead.error is not None
        assert "a comment needs media_id" in dead.error


async def _flow_ended(q: Queue, flow_id: str) -> bool:
    return (await q.flow(flow_id)).state not in ("scheduled", "running")

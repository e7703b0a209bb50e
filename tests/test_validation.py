"""A post the platform would refuse is refused at enqueue, before it is queued."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis
from redis.asyncio import Redis

from streamq import keys, platforms
from streamq.client import Queue
from streamq.config import Config, StreamConfig
from streamq.errors import ConfigError, PayloadError
from tests.conftest import run_cli
from tests.test_cli import one_line_error

MEDIA = "https://cdn.example.com/a.jpg"
VIDEO = "https://cdn.example.com/v.mp4"


@pytest.mark.parametrize(
    ("platform", "payload", "fragment"),
    [
        ("x", {"text": "x" * 281}, "x allows 280"),
        ("x", {"text": "日本語" * 47}, "282 characters as x counts them"),
        ("x", {}, "needs text or media_ids"),
        ("x", {"text": "hi", "media_ids": ["1", "2", "3", "4", "5"]}, "at most 4 items"),
        ("instagram", {"text": "no picture"}, "exactly one of image_url, video_url, children"),
        ("instagram", {"image_url": MEDIA, "text": "#a " * 31}, "31 hashtags"),
        ("instagram", {"image_url": MEDIA, "video_url": VIDEO}, "exactly one of"),
        ("instagram", {"children": [{"image_url": MEDIA}]}, "at least 2 items"),
        ("instagram", {"image_url": "file:///etc/passwd"}, "image_url: does not match"),
        ("instagram", {"image_url": MEDIA, "text": "c" * 2201}, "at most 2200 characters"),
        ("facebook", {"text": ""}, "needs text or a link"),
        ("linkedin", {"text": "l" * 3001}, "at most 3000 characters"),
        ("linkedin", {"text": "hi", "link": MEDIA}, "needs a link_title"),
        ("tiktok", {"text": "no video"}, "missing field 'video_url'"),
        ("tiktok", {"video_url": VIDEO, "privacy_level": "EVERYONE"}, "privacy_level: 'EVERYONE'"),
        ("youtube", {"video_url": VIDEO, "title": "t" * 101}, "at most 100 characters"),
        ("youtube", {"video_url": VIDEO, "title": "<b>bold</b>"}, "< or > in the title"),
        ("youtube", {"video_url": VIDEO, "title": "ok", "colour": "red"}, "unknown field"),
        ("facebook", ["not", "an", "object"], "must be an object, not a list"),
    ],
)
def test_each_platform_refuses_what_it_would_refuse(
    platform: str, payload: Any, fragment: str
) -> None:
    check = platforms.validator(platform)
    with pytest.raises(PayloadError) as caught:
        check([payload])
    message = str(caught.value)
    assert message.startswith(f"{platform} post refused: ")
    assert fragment in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("platform", "payload"),
    [
        ("x", {"text": "a link https://example.com/" + "p" * 300 + " counts as 23"}),
        ("x", {"text": "🙂" * 140}),
        ("instagram", {"video_url": VIDEO}),
        ("instagram", {"children": [{"image_url": MEDIA}, {"video_url": VIDEO}]}),
        ("facebook", {"link": MEDIA, "meta": {"campaign": 7}}),
        ("linkedin", {"text": "hi", "visibility": "CONNECTIONS"}),
        ("tiktok", {"video_url": VIDEO, "privacy_level": "SELF_ONLY"}),
        ("youtube", {"video_url": VIDEO, "title": "ok", "tags": ["a b", "c"]}),
    ],
)
def test_valid_posts_pass(platform: str, payload: Any) -> None:
    platforms.validator(platform)([payload])


def test_which_streams_are_checked() -> None:
    assert platforms.publisher_for("instagram", StreamConfig()) == "instagram"
    assert platforms.publisher_for("news", StreamConfig()) is None
    assert platforms.publisher_for("news", StreamConfig(publisher="x")) == "x"
    # A handler of your own takes the stream: nothing built in runs or checks it.
    assert platforms.publisher_for("instagram", StreamConfig(handler="m:f")) is None
    assert platforms.publisher_for("instagram", StreamConfig(), handler="m:f") is None
    assert platforms.publisher_for("news", StreamConfig(), publisher="tiktok") == "tiktok"
    with pytest.raises(ConfigError, match="not both"):
        platforms.publisher_for("news", StreamConfig(), publisher="x", handler="m:f")
    with pytest.raises(ConfigError, match="unknown publisher 'myspace'"):
        platforms.publisher_for("news", StreamConfig(publisher="myspace"))


@pytest.mark.any_engine
@pytest.mark.anyio
async def test_python_enqueue_refuses_a_bad_post_and_queues_nothing(
    redis_url: str, redis: Redis, stream: str
) -> None:
    config = Config(streams={stream: StreamConfig(publisher="x")})
    async with Queue(redis_url, config=config) as q:
        with pytest.raises(PayloadError, match=r"^x post refused: text is 281 characters"):
            await q.enqueue(stream, {"text": "y" * 281})
        with pytest.raises(PayloadError, match=r"^payload 2 of 3: x post refused"):
            await q.enqueue_many(stream, [{"text": "a"}, {"text": ""}, {"text": "c"}])
        with pytest.raises(PayloadError):
            await q.schedule_recurring("daily", stream, cron="0 9 * * *", payload={})
        assert await redis.xlen(keys.lane(stream, "normal")) == 0
        assert await redis.zcard(keys.delayed(stream)) == 0
        assert await q.enqueue(stream, {"text": "fine"})
    # Without a publisher, a stream takes any JSON, as before.
    async with Queue(redis_url, config=Config()) as q:
        assert await q.enqueue(stream, {"text": "y" * 281})


@pytest.mark.any_engine
def test_cli_enqueue_refuses_a_bad_post_in_one_line(redis_url: str, tmp_path: Path) -> None:
    client = sync_redis.Redis.from_url(redis_url)
    before = client.xlen(keys.lane("instagram", "normal"))
    result = run_cli(
        "enqueue", "--redis-url", redis_url, "--stream", "instagram",
        "--payload", '{"text": "a caption without a picture"}',
    )  # fmt: skip
    one_line_error(result, "instagram post refused", "exactly one of image_url")
    assert result.stdout == ""
    assert client.xlen(keys.lane("instagram", "normal")) == before


@pytest.mark.any_engine
def test_cli_bulk_enqueue_refuses_the_batch_with_a_bad_line(
    redis_url: str, stream: str, tmp_path: Path
) -> None:
    config = tmp_path / "streamq.toml"
    config.write_text(f'[streams.{stream}]\npublisher = "linkedin"\n')
    lines = "".join(json.dumps({"text": f"post {i}"}) + "\n" for i in range(5))
    lines += json.dumps({"text": "z" * 3001}) + "\n"
    result = run_cli(
        "enqueue", "--redis-url", redis_url, "--config", str(config), "--stream", stream,
        "--payload", "-", input=lines,
    )  # fmt: skip
    one_line_error(result, "payload 6 of 6: linkedin post refused", "at most 3000 characters")
    client = sync_redis.Redis.from_url(redis_url)
    assert client.xlen(keys.lane(stream, "normal")) == 0

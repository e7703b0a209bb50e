"""The simulator over HTTP and as a command, and ``streamq demo`` end to end."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import anyio
import httpx
import pytest

from streamq.errors import ConfigError
from streamq.simulator import Fault, SimOptions, Simulator, ThreadedSimulator, parse_rate
from tests.conftest import ROOT


@pytest.fixture
def sim_process() -> Iterator[tuple[subprocess.Popen[str], str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "streamq", "simulate", "--port", "0", "--rate-limit", "2/10s"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("simulating facebook, instagram"), process.stderr
        url = first.split(" at ")[-1].strip()
        assert process.stdout.readline().strip() == f"export STREAMQ_PLATFORM_URL={url}"
        yield process, url
    finally:
        process.kill()
        process.communicate()


def test_simulate_serves_posts_faults_and_its_record_over_http(
    sim_process: tuple[subprocess.Popen[str], str],
) -> None:
    process, url = sim_process
    auth = {"Authorization": "Bearer t1"}
    with httpx.Client(base_url=url, timeout=5) as http:
        made = http.post(
            "/x/2/tweets", json={"text": "hello"}, headers={**auth, "Idempotency-Key": "k1"}
        )
        assert made.status_code == 201
        post_id = made.json()["data"]["id"]
        assert http.get("/x/_sim/lookup", params={"key": "k1"}, headers=auth).json() == {
            "id": post_id,
            "count": 1,
        }
        assert http.get("/x/_sim/lookup", params={"key": "k2"}, headers=auth).status_code == 404
        # Refused: same text again (X refuses duplicates), then past the 2/10s rate limit.
        assert http.post("/x/2/tweets", json={"text": "hello"}, headers=auth).status_code == 403
        limited = http.post("/x/2/tweets", json={"text": "other"}, headers=auth)
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["retry-after"]) <= 10
        assert int(limited.headers["x-rate-limit-reset"]) > time.time()
        fault = {"kind": "policy", "platform": "facebook", "match": "spam"}
        assert http.post("/_sim/faults", json=fault).status_code == 200
        refused = http.post("/facebook/v21.0/123/feed", data={"message": "spam spam"}, headers=auth)
        assert refused.status_code == 400
        assert refused.json()["error"]["code"] == 368
        assert http.post("/_sim/tokens/expire", json={"token": "t1"}).status_code == 200
        expired = http.post("/facebook/v21.0/123/feed", data={"message": "hi"}, headers=auth)
        assert expired.json()["error"]["code"] == 190
        posts = http.get("/_sim/posts").json()["posts"]
        assert [(p["platform"], p["key"], p["text"]) for p in posts] == [("x", "k1", "hello")]
        summary = http.get("/_sim/summary").json()
        assert (summary["posts"], summary["duplicates"], summary["rate_limited"]) == (1, 0, 1)
        assert summary["key_lookups"] == 2  # the two asks of _sim/lookup above
    process.send_signal(signal.SIGTERM)
    assert process.wait(10) == 0


def test_tokens_expire_after_their_ttl_and_answers_take_the_latency() -> None:
    options = SimOptions(token_ttl=0.3, latency=0.1)
    with ThreadedSimulator(options) as sim, httpx.Client(base_url=sim.url, timeout=5) as http:
        auth = {"Authorization": "Bearer short-lived"}
        started = time.monotonic()
        assert http.post("/x/2/tweets", json={"text": "a"}, headers=auth).status_code == 201
        assert time.monotonic() - started >= 0.05
        time.sleep(0.35)
        late = http.post("/x/2/tweets", json={"text": "b"}, headers=auth)
        assert late.status_code == 401


def test_a_post_sent_twice_is_recorded_twice() -> None:
    """The simulator counts duplicates; it never hides them by deduplicating itself."""
    with ThreadedSimulator() as sim, httpx.Client(base_url=sim.url, timeout=5) as http:
        headers = {"Authorization": "Bearer t", "Idempotency-Key": "job-1"}
        for _ in range(2):
            made = http.post("/facebook/v21.0/9/feed", data={"message": "m"}, headers=headers)
            assert made.status_code == 200
        assert sim.duplicates() == {"job-1": 2}
        assert sim.summary()["duplicates"] == 1


def test_scripted_faults_match_by_text_or_key_and_run_out() -> None:
    with ThreadedSimulator() as sim, httpx.Client(base_url=sim.url, timeout=5) as http:
        sim.add_fault(Fault(kind="transient", match="flaky", times=2))
        headers = {"Authorization": "Bearer t"}
        codes = [
            http.post("/x/2/tweets", json={"text": f"flaky {i}"}, headers=headers).status_code
            for i in range(3)
        ]
        assert codes == [503, 503, 201]
        assert sim.faults == []


def test_the_simulator_listens_on_loopback_only() -> None:
    async def serve() -> None:
        async with Simulator().serve(host="0.0.0.0"):
            pass

    with pytest.raises(ConfigError, match="loopback only"):
        anyio.run(serve)


def test_rates_parse() -> None:
    assert parse_rate("10/1s") == (10, 1.0)
    assert parse_rate("3/500ms") == (3, 0.5)
    for bad in ("10", "0/1s", "x/1s", "5/-1s"):
        with pytest.raises(ConfigError):
            parse_rate(bad)


def test_a_post_is_taken_though_its_sender_gave_up_during_the_answers_latency() -> None:
    """The platform commits first; the latency is the answer's: a sender that times out (or
    dies) meanwhile leaves the post made."""
    with ThreadedSimulator(SimOptions(latency=0.6)) as sim:
        with httpx.Client(base_url=sim.url, timeout=0.1) as http, pytest.raises(httpx.ReadTimeout):
            http.post(
                "/facebook/v21.0/9/feed",
                data={"message": "m"},
                headers={"Authorization": "Bearer t"},
            )
        assert [post.text for post in sim.posts] == ["m"]


def test_random_faults_after_the_post_was_taken() -> None:
    auth = {"Authorization": "Bearer t"}
    with (
        ThreadedSimulator(SimOptions(drop_rate=1.0)) as sim,
        httpx.Client(base_url=sim.url, timeout=5) as http,
    ):
        with pytest.raises(httpx.RemoteProtocolError):
            http.post("/x/2/tweets", json={"text": "cut"}, headers=auth)
        assert [post.text for post in sim.posts] == ["cut"]
        assert sim.summary()["dropped"] == 1
    with (
        ThreadedSimulator(SimOptions(slow_rate=1.0, slow_seconds=1.0)) as sim,
        httpx.Client(base_url=sim.url, timeout=0.2) as http,
    ):
        with pytest.raises(httpx.ReadTimeout):
            http.post("/x/2/tweets", json={"text": "slow"}, headers=auth)
        assert [post.text for post in sim.posts] == ["slow"]
    with (
        ThreadedSimulator(SimOptions(lost_answer_rate=1.0)) as sim,
        httpx.Client(base_url=sim.url, timeout=5) as http,
    ):
        assert http.post("/x/2/tweets", json={"text": "502"}, headers=auth).status_code == 502
        assert [post.text for post in sim.posts] == ["502"]


def test_status_and_listing_endpoints_answer_as_the_platforms_do() -> None:
    auth = {"Authorization": "Bearer t"}
    with (
        ThreadedSimulator(SimOptions(processing=0.0)) as sim,
        httpx.Client(base_url=sim.url, timeout=5, headers=auth) as http,
    ):
        since = int(time.time()) - 1
        # Instagram: a container's status_code, and a container publishes once.
        media = f"{sim.url}/_sim/media/a.jpg"
        made = http.post("/instagram/v21.0/17/media", data={"image_url": media, "caption": "c"})
        container = made.json()["id"]
        status = http.get(f"/instagram/v21.0/{container}", params={"fields": "status_code"})
        assert status.json()["status_code"] == "FINISHED"
        published = http.post("/instagram/v21.0/17/media_publish", data={"creation_id": container})
        media_id = published.json()["id"]
        status = http.get(f"/instagram/v21.0/{container}", params={"fields": "status_code"})
        assert status.json()["status_code"] == "PUBLISHED"
        again = http.post("/instagram/v21.0/17/media_publish", data={"creation_id": container})
        assert again.status_code == 400
        listed = http.get("/instagram/v21.0/17/media", params={"since": since}).json()["data"]
        assert [(m["id"], m["caption"]) for m in listed] == [(media_id, "c")]
        # YouTube: the session's status, 308 before the bytes, the video after.
        session = http.post(
            "/youtube/upload/youtube/v3/videos",
            params={"uploadType": "resumable", "part": "snippet"},
            json={"snippet": {"title": "t"}},
        ).headers["location"]
        assert http.put(session, headers={"Content-Range": "bytes */*"}).status_code == 308
        video = http.put(session, content=b"\0" * 100).json()["id"]
        asked = http.put(session, headers={"Content-Range": "bytes */100"})
        assert (asked.status_code, asked.json()["id"]) == (200, video)
        # TikTok: the publish's status names the post; the video list has it.
        init = http.post(
            "/tiktok/v2/post/publish/video/init/",
            json={"post_info": {"title": "tt"}, "source_info": {"source": "PULL_FROM_URL",
                                                                "video_url": media}},
        )  # fmt: skip
        publish_id = init.json()["data"]["publish_id"]
        fetched = http.post(
            "/tiktok/v2/post/publish/status/fetch/", json={"publish_id": publish_id}
        )
        data = fetched.json()["data"]
        assert data["status"] == "PUBLISH_COMPLETE"
        [post_id] = data["publicaly_available_post_id"]
        videos = http.post("/tiktok/v2/video/list/", json={"max_count": 20}).json()["data"]
        assert [(v["id"], v["title"]) for v in videos["videos"]] == [(post_id, "tt")]
        # Facebook: the Page's feed since a time; X: the user's timeline since a time.
        fb = http.post("/facebook/v21.0/9/feed", data={"message": "f", "link": media}).json()
        feed = http.get("/facebook/v21.0/9/feed", params={"since": since}).json()["data"]
        assert [(p["id"], p["message"], p["link"]) for p in feed] == [(fb["id"], "f", media)]
        later = http.get("/facebook/v21.0/9/posts", params={"since": int(time.time()) + 60})
        assert later.json()["data"] == []
        tweet = http.post("/x/2/tweets", json={"text": "x"}).json()["data"]["id"]
        me = http.get("/x/2/users/me").json()["data"]["id"]
        start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since))
        timeline = http.get(f"/x/2/users/{me}/tweets", params={"start_time": start}).json()
        assert [(t["id"], t["text"]) for t in timeline["data"]] == [(tweet, "x")]
        # LinkedIn: the author's posts.
        author = "urn:li:organization:1"
        http.post(
            "/linkedin/rest/posts",
            json={"author": author, "commentary": "l"},
            headers={"LinkedIn-Version": "202411"},
        )
        found = http.get("/linkedin/rest/posts", params={"q": "author", "author": author}).json()
        assert [p["commentary"] for p in found["elements"]] == ["l"]
        assert sim.duplicates() == {}

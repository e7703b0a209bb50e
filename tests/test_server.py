"""The embedded server and LocalServer, against real server processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from streamq import server
from streamq.errors import ServerError

REPO = Path(__file__).resolve().parent.parent


def _alive(pid: int) -> bool:
    # The embedded server is daemonized and reparented, so it can linger as a zombie that
    # os.kill(pid, 0) still finds; /proc tells the two apart.
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _servers_on(sock: Path) -> list[int]:
    """Pids of live valkey-servers listening on sock (their title names the socket)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"valkey-server" in cmdline and os.fsencode(sock) in cmdline and _alive(int(entry.name)):
            pids.append(int(entry.name))
    return pids


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    # Short on purpose: pytest's tmp_path can push the socket past the unix path limit.
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix="sq"))
    monkeypatch.setenv("STREAMQ_HOME", str(path))
    try:
        yield path
    finally:
        server.stop(path)
        shutil.rmtree(path, ignore_errors=True)


def test_ensure_running_persists_across_restart(home: Path) -> None:
    url = server.ensure_running()
    assert url == f"unix://{home / 'valkey.sock'}"
    st = server.status()
    assert st.running
    assert st.pid is not None
    assert st.home == home
    assert st.version is not None
    with redis.Redis.from_url(url) as client:
        assert client.ping()
        client.set("survivor", "yes")

    assert server.stop() is True
    assert _wait_gone(st.pid)
    assert not server.status().running

    with redis.Redis.from_url(server.ensure_running()) as client:
        assert client.get("survivor") == b"yes"
    assert server.stop() is True
    assert server.stop() is False


def test_concurrent_ensure_running_starts_one_server(home: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    code = "from streamq import server; print(server.ensure_running())"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True, cwd=REPO
        )
        for _ in range(4)
    ]
    outputs = [proc.communicate(timeout=30)[0].strip() for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    assert set(outputs) == {server.url_for(home)}

    before = server.status().pid
    assert before is not None
    assert int((home / "valkey.pid").read_text()) == before
    assert server.ensure_running() == server.url_for(home)
    assert server.status().pid == before
    if Path("/proc").is_dir():
        assert _servers_on(server.socket_path(home)) == [before]


def test_stale_pid_file_is_ignored(home: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (home / "valkey.pid").write_text(f"{dead.pid}\n")

    st = server.status()
    assert not st.running
    assert st.pid is None

    server.ensure_running()
    st = server.status()
    assert st.running
    assert st.pid not in (None, dead.pid)


def test_too_long_home_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    base = Path(tempfile.mkdtemp(dir="/tmp", prefix="sq"))
    try:
        monkeypatch.setenv("STREAMQ_HOME", str(base / ("x" * 120)))
        with pytest.raises(ServerError, match="STREAMQ_HOME"):
            server.ensure_running()
        assert not server.socket_path(server.home_dir()).exists()
    finally:
        shutil.rmtree(base, ignore_errors=True)


BINARIES = [
    pytest.param(None, id="valkey"),
    pytest.param(
        shutil.which("redis-server"),
        id="redis",
        marks=pytest.mark.skipif(
            shutil.which("redis-server") is None, reason="redis-server not installed"
        ),
    ),
]


@pytest.mark.parametrize("binary", BINARIES)
def test_local_server_starts_and_dies(binary: str | None) -> None:
    with server.LocalServer(binary) as local:
        assert local.url == f"redis://127.0.0.1:{local.port}/0"
        assert local.version
        assert local.dir is not None
        assert local.dir.is_dir()
        with redis.Redis.from_url(local.url) as client:
            assert client.ping()
        pid = local.pid
        local.kill()
        assert not _alive(pid)
    assert not local.dir.exists()
    local.stop()  # idempotent


@pytest.mark.parametrize("binary", BINARIES)
def test_local_server_persistence_survives_kill(binary: str | None) -> None:
    with server.LocalServer(binary, persistence=True) as local:
        port, directory = local.port, local.dir
        with redis.Redis.from_url(local.url) as client:
            # fsync on every write, so the key is on disk before SIGKILL arrives.
            client.config_set("appendfsync", "always")
            client.set("survivor", "yes")
        first = local.pid
        local.kill()
        assert not _alive(first)

        local.restart()
        assert (local.port, local.dir) == (port, directory)
        assert local.pid != first
        with redis.Redis.from_url(local.url) as client:
            assert client.get("survivor") == b"yes"

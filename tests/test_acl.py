"""Producers, workers and the autoscaler run under exactly the least-privilege ACL users the
README gives (streamq.acl.ROLES), on each engine, and nothing more is allowed to them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis

from streamq import acl
from streamq.server import LocalServer
from tests.conftest import ROOT, run_cli


def users(server: LocalServer) -> dict[str, str]:
    """One fresh user per role on the test's server; role -> URL."""
    admin = sync_redis.Redis(port=server.port)
    urls = {}
    for role, rules in acl.ROLES.items():
        name = f"{role}-{uuid.uuid4().hex[:8]}"
        admin.execute_command(  # type: ignore[no-untyped-call]
            "ACL", "SETUSER", name, "reset", "on", f">pw-{name}", *rules.split()
        )
        urls[role] = f"redis://{name}:pw-{name}@127.0.0.1:{server.port}/0"
    admin.close()
    return urls


def denials(server: LocalServer, urls: dict[str, str]) -> list[Any]:
    names = {url.split("//")[1].split(":")[0].encode() for url in urls.values()}
    log: Any = sync_redis.Redis(port=server.port).execute_command(  # type: ignore[no-untyped-call]
        "ACL", "LOG", "128"
    )
    return [(e[b"username"], e[b"object"]) for e in log if e[b"username"] in names]


def test_every_role_does_its_work_with_exactly_its_rules(
    server: LocalServer, stream: str, tmp_path: Path
) -> None:
    urls = users(server)
    config = tmp_path / "streamq.toml"
    config.write_text(f'[[streams.{stream}.limits]]\nscope = "account"\nmax = 1\nper = "1s"\n')

    def as_role(role: str, *args: str) -> str:
        result = run_cli(*args, "--redis-url", urls[role], "--config", str(config))
        assert result.returncode == 0, (role, args, result.stderr)
        return result.stdout.strip()

    as_role("producer", "enqueue", "--stream", stream, "--payload", "1", "--account", "acme")
    as_role("producer", "enqueue", "--stream", stream, "--payload", "2", "--account", "acme")
    later = as_role("producer", "enqueue", "--stream", stream, "--payload", "3", "--delay", "1h",
                    "--key", "k1")  # fmt: skip
    as_role("producer", "enqueue", "--stream", stream, "--payload", "4", "--delay", "1h",
            "--key", "k1", "--replace")  # fmt: skip
    for action in (["show", later], ["reschedule", later, "--delay", "2h"], ["cancel", later],
                   ["retry", later]):  # fmt: skip
        as_role("producer", "job", *action)
    as_role("worker", "consume", "--stream", stream, "--burst",
            "--handler", "tests.handlers:noop")  # fmt: skip
    for args in (["stats"], ["events", "--stream", stream], ["dead", "list", "--stream", stream],
                 ["limits", "show", "--stream", stream, "--account", "acme"],
                 ["account", "pause", "acme", "--stream", stream],
                 ["account", "resume", "acme", "--stream", stream],
                 ["dead", "purge", "--stream", stream]):  # fmt: skip
        as_role("producer", *args)
    scaler = subprocess.Popen(
        [sys.executable, "-m", "streamq", "autoscale", "--stream", stream, "--dry-run",
         "--interval", "0.2", "--redis-url", urls["autoscaler"], "--log-level", "INFO"],
        cwd=ROOT, env=os.environ.copy(), stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert scaler.stderr is not None
    try:
        for line in scaler.stderr:  # two ticks: it leads, observes and decides
            if "leading the autoscaling" in line:
                break
        else:
            pytest.fail("the autoscaler stopped")
    finally:
        scaler.send_signal(signal.SIGTERM)
        scaler.wait(30)
        scaler.stderr.close()
    assert scaler.returncode == 0
    assert denials(server, urls) == []


def test_the_roles_allow_nothing_beyond_streamqs_keys(server: LocalServer) -> None:
    urls = users(server)
    for url in urls.values():
        client = sync_redis.Redis.from_url(url)
        with pytest.raises(sync_redis.exceptions.NoPermissionError):
            client.set("someone-elses-key", 1)
        with pytest.raises(sync_redis.exceptions.NoPermissionError):
            client.flushall()
        with pytest.raises(sync_redis.exceptions.NoPermissionError):
            client.config_set("appendonly", "no")
        client.close()
    worker = sync_redis.Redis.from_url(urls["autoscaler"])
    with pytest.raises(sync_redis.exceptions.NoPermissionError):
        worker.xadd("streamq:{x}:lane:normal", {"j": "{}"})  # the autoscaler writes no jobs
    worker.close()

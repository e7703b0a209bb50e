"""Producers, workers and the autoscaler run under exactly the least-privilege ACL users the
docs give (docs/security.md; streamq.acl.ROLES), on each engine and a cluster, and nothing more
is allowed to them."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis as sync_redis

from autoscaler import controller
from autoscaler.observe import StreamWatch
from streamq import acl, connection, limiter
from streamq.config import Config
from streamq.server import LocalCluster, LocalServer
from tests.conftest import ROOT, run_cli


def ports(server: LocalServer | LocalCluster) -> list[int]:
    """Every node: users live in each node's own ACL (a cluster does not share them)."""
    if isinstance(server, LocalCluster):
        return [node.port for node in server.nodes]
    return [server.port]


def users(server: LocalServer | LocalCluster) -> dict[str, str]:
    """One fresh user per role on the test's server (every node of a cluster); role -> URL."""
    names = {role: f"{role}-{uuid.uuid4().hex[:8]}" for role in acl.ROLES}
    for port in ports(server):
        admin = sync_redis.Redis(port=port)
        for role, rules in acl.ROLES.items():
            name = names[role]
            admin.execute_command(  # type: ignore[no-untyped-call]
                "ACL", "SETUSER", name, "reset", "on", f">pw-{name}", *rules.split()
            )
        admin.close()
    scheme, _, hosts = server.url.partition("://")
    return {role: f"{scheme}://{name}:pw-{name}@{hosts}" for role, name in names.items()}


def denials(server: LocalServer | LocalCluster, urls: dict[str, str]) -> list[Any]:
    names = {url.split("//")[1].split(":")[0].encode() for url in urls.values()}
    found = []
    for port in ports(server):
        log: Any = sync_redis.Redis(port=port).execute_command(  # type: ignore[no-untyped-call]
            "ACL", "LOG", "128"
        )
        found += [(e[b"username"], e[b"object"]) for e in log if e[b"username"] in names]
    return found


@pytest.mark.cluster
def test_every_role_does_its_work_with_exactly_its_rules(
    server: LocalServer | LocalCluster, stream: str, tmp_path: Path
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
    anyio.run(_autoscaler_round, urls["autoscaler"], stream)
    anyio.run(_token_round, urls["producer"], urls["worker"], stream)
    assert denials(server, urls) == []


async def _token_round(producer_url: str, worker_url: str, account: str) -> None:
    """The token store: an app puts tokens and reads an account's state; a worker reads them,
    takes the refresh lease, stores a refresh, and records a refused one."""
    from streamq.platforms.credentials import Secret
    from streamq.tokens import account_status
    from streamq.tokenstore import Keyring, TokenSet, TokenStore

    keyring = Keyring.parse(Keyring.generate("k1"))
    producer, worker = connection.client(producer_url), connection.client(worker_url)
    try:
        tokens = TokenSet(access_token=Secret("a"), refresh_token=Secret("r"))
        version = await TokenStore(producer, keyring).put("x", account, tokens)
        await account_status(producer, Config(), "x", account)
        store = TokenStore(worker, keyring)
        assert await store.get("x", account) is not None
        lease = await store.lease("x", account, version, 5000)
        assert lease.outcome == "granted"
        assert await store.lease("x", account, version, 5000) is not None  # busy: PTTL
        assert await store.write_refreshed("x", account, lease.fence, tokens, 1) is not None
        again = await store.lease("x", account, version + 1, 5000)
        assert await store.mark_reauth("x", account, again.fence, "refused") is not None
    finally:
        await producer.aclose()
        await worker.aclose()


async def _autoscaler_round(url: str, stream: str) -> None:
    """What `streamq autoscale --target kubernetes` asks of Redis: lead, observe, let go."""
    redis = connection.client(url)
    try:
        leadership = controller.RedisLeadership(redis, [stream], ttl_seconds=5)
        assert await leadership.hold()
        assert await leadership.hold()  # renewed
        assert await leadership.still_leading()
        watch = StreamWatch(redis, stream, limiter.limits_for(stream, None), lead_seconds=60)
        seen = await watch.observe(0)
        assert seen.backlog >= 0
        await leadership.release()
    finally:
        await redis.aclose()


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


def test_the_docs_give_exactly_these_rules() -> None:
    page = (ROOT / "docs" / "security.md").read_text()
    given = {}
    for line in page.splitlines():
        if line.startswith("ACL SETUSER streamq-"):
            user, _, rules = line.removeprefix("ACL SETUSER streamq-").partition(
                " reset on >PASSWORD "
            )
            given[user] = rules
    assert given == acl.ROLES

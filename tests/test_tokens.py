"""The token store and the keeper that refreshes tokens, on a real server and the simulator.

Every refresh goes over a real socket to the simulator's token endpoints, which rotate and
revoke refresh tokens as the platforms do and count every refresh per account.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from redis.asyncio import Redis

from streamq import events, keys, scripts
from streamq.client import Queue
from streamq.config import Config, StreamConfig, TokensConfig
from streamq.control import JobInfo
from streamq.errors import ConfigError, RateLimited
from streamq.platforms.client import Session
from streamq.platforms.credentials import Credentials, Secret
from streamq.platforms.keeper import ReauthRequired, TokenKeeper
from streamq.platforms.refresh import Client
from streamq.simulator import SimOptions, Simulator
from streamq.tokenstore import Keyring, TokenSet, TokenStore
from tests.platform_helpers import (
    PLATFORMS,
    USER_IDS,
    post_for,
    run_publisher_until,
    settings_for,
)

pytestmark = pytest.mark.anyio

KEYRING = Keyring.parse(Keyring.generate("k1"))
CLIENTS = {p: Client(f"client-{p}", Secret(f"client-secret-{p}-0123456789")) for p in PLATFORMS}


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    return ("asyncio", {"use_uvloop": True})


def tokens_of(answer: dict[str, Any]) -> TokenSet:
    found = TokenSet.from_answer(answer)
    return TokenSet(
        access_token=found.access_token,
        refresh_token=found.refresh_token,
        expires_at_ms=found.expires_at_ms,
        user_id=answer.get("user_id"),
        issued_at_ms=found.issued_at_ms,
    )


def user_of(platform: str, account: str) -> str:
    return USER_IDS.get(platform, f"{platform}-{account}")


# -- the store ----------------------------------------------------------------------------------


@pytest.mark.any_engine
@pytest.mark.cluster
async def test_tokens_are_sealed_at_rest_and_read_back(redis: Redis, stream: str) -> None:
    store = TokenStore(redis, KEYRING)
    account = f"acme-{stream}"
    tokens = TokenSet(
        access_token=Secret("access-sekrit-1"),
        refresh_token=Secret("refresh-sekrit-1"),
        expires_at_ms=int(time.time() * 1000) + 60_000,
        scopes=("tweet.write",),
        user_id="u1",
    )
    version = await store.put("x", account, tokens)
    raw: dict[bytes, bytes] = await redis.hgetall(keys.token_record("x", account))  # type: ignore[assignment]
    everything = b" ".join(k + b"=" + v for k, v in raw.items())
    assert b"sekrit" not in everything
    assert raw[b"sealed"].startswith(b"k1.")
    found = await store.get("x", account)
    assert found is not None
    assert found.access_token == Secret("access-sekrit-1")
    assert found.refresh_token == Secret("refresh-sekrit-1")
    assert (found.version, found.scopes, found.user_id) == (version, ("tweet.write",), "u1")
    assert "sekrit" not in repr(found) + repr(await store.status("x", account))
    assert ("x", account) in await store.accounts()


@pytest.mark.any_engine
async def test_without_a_key_the_store_holds_no_token(redis: Redis, stream: str) -> None:
    store = TokenStore(redis, None)
    with pytest.raises(ConfigError, match="STREAMQ_TOKEN_KEYS"):
        await store.put("x", stream, TokenSet(access_token=Secret("a"), refresh_token=Secret("r")))
    assert not await redis.exists(keys.token_record("x", stream))


@pytest.mark.any_engine
async def test_a_rotated_key_still_opens_old_tokens_and_seals_new_ones(
    redis: Redis, stream: str
) -> None:
    old = Keyring.generate("old")
    await TokenStore(redis, Keyring.parse(old)).put(
        "x", stream, TokenSet(access_token=Secret("a1"))
    )
    rotated = TokenStore(redis, Keyring.parse(f"{Keyring.generate('new')},{old}"))
    found = await rotated.get("x", stream)
    assert found is not None
    assert (found.access_token, found.key_id) == (Secret("a1"), "old")
    await rotated.put("x", stream, TokenSet(access_token=Secret("a2")))
    found = await rotated.get("x", stream)
    assert found is not None
    assert found.key_id == "new"
    with pytest.raises(ConfigError, match="'new'"):
        await TokenStore(redis, Keyring.parse(old)).get("x", stream)


@pytest.mark.any_engine
async def test_a_sealed_token_does_not_open_on_another_account(redis: Redis, stream: str) -> None:
    store = TokenStore(redis, KEYRING)
    await store.put("x", f"a-{stream}", TokenSet(access_token=Secret("a")))
    await store.put("x", f"b-{stream}", TokenSet(access_token=Secret("b")))
    sealed = await redis.hget(keys.token_record("x", f"a-{stream}"), "sealed")
    await redis.hset(keys.token_record("x", f"b-{stream}"), "sealed", sealed)
    with pytest.raises(ConfigError, match="does not open"):
        await store.get("x", f"b-{stream}")


@pytest.mark.cluster
@pytest.mark.parametrize("flush", [False, True])
async def test_the_lease_is_single_and_a_stale_fence_never_overwrites(
    redis: Redis, stream: str, flush: bool
) -> None:
    store = TokenStore(redis, KEYRING)
    version = await store.put("x", stream, TokenSet(access_token=Secret("v1")))
    if flush:
        await redis.script_flush()
    first = await store.lease("x", stream, version, 60_000)
    assert first.outcome == "granted"
    second = await store.lease("x", stream, version, 60_000)
    assert second.outcome == "busy"
    assert 0 < second.wait_ms <= 60_000
    # The lease runs out (its holder is slow or dead) and another worker takes it.
    await redis.delete(keys.token_lease("x", stream))
    third = await store.lease("x", stream, version, 60_000)
    assert third.outcome == "granted"
    assert third.fence > first.fence
    late = TokenSet(access_token=Secret("from-the-late-holder"))
    assert await store.write_refreshed("x", stream, first.fence, late, 1) is None
    newer = await store.write_refreshed(
        "x", stream, third.fence, TokenSet(access_token=Secret("v2")), 1
    )
    assert newer == version + 1
    found = await store.get("x", stream)
    assert found is not None
    assert found.access_token == Secret("v2")
    assert (await store.lease("x", stream, version, 60_000)).outcome == "newer"
    # An app's put ends any refresh under way: its later write is discarded.
    fourth = await store.lease("x", stream, newer, 60_000)
    assert fourth.outcome == "granted"
    await store.put("x", stream, TokenSet(access_token=Secret("from-sign-in")))
    gone = await store.write_refreshed(
        "x", stream, fourth.fence, TokenSet(access_token=Secret("stale")), 2
    )
    assert gone is None
    found = await store.get("x", stream)
    assert found is not None
    assert found.access_token == Secret("from-sign-in")


async def test_a_token_store_account_lives_in_one_slot() -> None:
    def tag(key: str) -> str:
        return key[key.index("{") + 1 : key.index("}")]

    for account in ("acme", "a}b", "{x}"):
        assert tag(keys.token_record("x", account)) == tag(keys.token_lease("x", account))
    assert scripts.load("lease_token").source.startswith(b"--[[ lease_token:")
    assert scripts.load("write_token").source.startswith(b"--[[ write_token:")


# -- the keeper against the simulator --------------------------------------------------------


@dataclass
class Rig:
    sim: Simulator
    q: Queue
    keeper: TokenKeeper
    session: Session
    stream: str
    platform: str

    async def sign_in(self, account: str) -> TokenSet:
        tokens = tokens_of(self.sim.oauth.sign_in(self.platform, user_of(self.platform, account)))
        await self.keeper.store.put(self.platform, account, tokens)
        return tokens

    async def run(
        self, job_ids: list[str], until: tuple[str, ...], limit: float = 20
    ) -> list[JobInfo]:
        return await run_publisher_until(
            self.q, self.session, self.stream, self.platform, job_ids, until, limit
        )


async def open_rig(
    redis_url: str, stream: str, platform: str, options: SimOptions
) -> AsyncIterator[Rig]:
    sim = Simulator(options)
    async with sim.serve() as url:
        config = Config(streams={stream: StreamConfig(publisher=platform, limits=())})
        settings = {platform: settings_for(platform, url)}
        async with Queue(redis_url, config=config) as q:
            keeper = TokenKeeper(
                TokenStore(q.redis, KEYRING),
                config=TokensConfig(lease=2.0, wait=5.0),
                clients=CLIENTS,
            )
            async with Session(config, credentials=keeper, settings=settings) as session:
                yield Rig(sim, q, keeper, session, stream, platform)


@pytest.fixture(params=PLATFORMS)
async def rig(redis_url: str, stream: str, request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    # Tokens live 4 s: the last 10 % of their life is 0.4 s.
    options = SimOptions(processing=0.05, access_ttl=4.0, ig_min_age=0.0)
    async for made in open_rig(redis_url, stream, request.param, options):
        yield made


async def age(rig: Rig, account: str, *, issued_ago_ms: int, expires_in_ms: int) -> None:
    """Make the stored token look old: issued long ago, expiring soon (the simulator's own
    clock for it is moved the same way)."""
    now = int(time.time() * 1000)
    await rig.q.redis.hset(
        keys.token_record(rig.platform, account),
        mapping={"issued_at_ms": now - issued_ago_ms, "expires_at_ms": now + expires_in_ms},
    )
    for issued in rig.sim.oauth.issued.values():
        if issued.user == user_of(rig.platform, account):
            issued.issued_at = time.monotonic() - issued_ago_ms / 1000
            issued.expires_at = time.monotonic() + expires_in_ms / 1000


async def test_a_due_token_is_refreshed_once_before_the_post(rig: Rig) -> None:
    account = "acme"
    signed = await rig.sign_in(account)
    await age(rig, account, issued_ago_ms=25 * 3600 * 1000, expires_in_ms=1500)
    job_id = await rig.q.enqueue(
        rig.stream, post_for(rig.platform, rig.sim.url, "hi"), account=account
    )
    [info] = await rig.run([job_id], until=("done", "dead", "paused"))
    assert (info.state, info.attempt) == ("done", 1), info.error
    summary = rig.sim.summary()
    assert summary["refreshes_by_account"] == {
        f"{rig.platform}/{user_of(rig.platform, account)}": 1
    }
    assert summary["revoked_refresh_presented"] == 0
    stored = await rig.keeper.store.get(rig.platform, account)
    assert stored is not None
    assert stored.access_token != signed.access_token
    assert stored.refreshes == 1
    if rig.platform in ("x", "tiktok"):  # rotated: the signed-in refresh token is spent
        assert stored.refresh_token != signed.refresh_token
        assert rig.sim.oauth.grants[signed.refresh_token.reveal()].revoked  # type: ignore[union-attr]
    elif rig.platform in ("youtube", "linkedin"):
        assert stored.refresh_token == signed.refresh_token
    [post] = rig.sim.posts_for(job_id)
    assert post.user == user_of(rig.platform, account)


async def test_a_token_expired_at_the_platform_is_refreshed_within_the_attempt(rig: Rig) -> None:
    account = "acme"
    signed = await rig.sign_in(account)
    await age(rig, account, issued_ago_ms=1000, expires_in_ms=3000)
    rig.sim.expire_token(signed.access_token.reveal())  # the store still thinks it is good
    job_id = await rig.q.enqueue(
        rig.stream, post_for(rig.platform, rig.sim.url, "hi"), account=account
    )
    [info] = await rig.run([job_id], until=("done", "dead", "paused"))
    assert (info.state, info.attempt) == ("done", 1), info.error
    assert rig.sim.summary()["refreshes"] == 1
    assert rig.sim.counts.token_errors >= 1
    assert len(rig.sim.posts_for(job_id)) == 1


@pytest.mark.cluster
async def test_many_callers_one_refresh(rig: Rig) -> None:
    account = "acme"
    await rig.sign_in(account)
    # Meta's tokens cannot be renewed once expired: those are asked for just before.
    meta = rig.platform in ("facebook", "instagram")
    await age(rig, account, issued_ago_ms=25 * 3600 * 1000, expires_in_ms=1500 if meta else -10)
    results: list[Credentials | None] = []

    async def ask() -> None:
        results.append(
            await rig.keeper.credentials(
                rig.platform, account, None, rig.session.settings(rig.platform)
            )
        )

    async with anyio.create_task_group() as tasks:
        for _ in range(20):
            tasks.start_soon(ask)
    assert rig.sim.summary()["refreshes"] == 1
    if not meta:  # every caller waited for the one new token
        assert len({c.token.reveal() for c in results if c is not None}) == 1
    assert rig.sim.summary()["revoked_refresh_presented"] == 0


@pytest.mark.cluster
async def test_a_refused_refresh_pauses_the_account_until_fresh_tokens_are_put(rig: Rig) -> None:
    account = "acme"
    await rig.sign_in(account)
    await age(rig, account, issued_ago_ms=25 * 3600 * 1000, expires_in_ms=-10)
    if rig.platform == "instagram":  # no refresh token: an expired long-lived token is final
        pass
    else:
        rig.sim.oauth.revoke(rig.platform, user_of(rig.platform, account))
    post = post_for(rig.platform, rig.sim.url, "kept")
    first = await rig.q.enqueue(rig.stream, post, account=account)
    second = await rig.q.enqueue(
        rig.stream, post_for(rig.platform, rig.sim.url, "two"), account=account
    )
    infos = await rig.run([first, second], until=("paused",))
    assert {i.state for i in infos} == {"paused"}
    assert {i.attempt for i in infos} == {1}
    report = await rig.q.limits(rig.stream, account)
    assert [(p.scope, p.reason) for p in report.pauses] == [(account, "reauth_required")]
    stored = await rig.keeper.store.get(rig.platform, account)
    assert stored is not None
    assert stored.state == "reauth_required"
    assert stored.reason
    found = [
        e
        async for e in events.follow(rig.q.redis, [rig.stream], wait=False)
        if e.type == "account.reauth_required"
    ]
    assert len(found) == 1
    assert found[0].account == account
    assert rig.sim.posts == []
    # The app signs the user in again and puts the tokens: the account resumes.
    from streamq.tokens import put_tokens

    fresh = tokens_of(rig.sim.oauth.sign_in(rig.platform, user_of(rig.platform, account)))
    resumed = await put_tokens(rig.q, rig.keeper.store, rig.platform, account, fresh)
    assert resumed == 2
    infos = await rig.run([first, second], until=("done", "dead"))
    assert [(i.state, i.attempt) for i in infos] == [("done", 1), ("done", 1)]


async def test_a_sign_in_between_a_refused_refresh_and_its_pause_still_resumes(
    x_rig: Rig,
) -> None:
    """The refresh is refused and recorded (reauth_required), then the user signs in again
    before the worker has recorded the account's pause: put_tokens finds nothing paused yet.
    The worker, recording the pause, sees the fresh tokens and lifts it: the post goes out."""
    from streamq.tokens import put_tokens

    rig, account = x_rig, "acme"
    await rig.sign_in(account)
    await age(rig, account, issued_ago_ms=25 * 3600 * 1000, expires_in_ms=-10)
    rig.sim.oauth.revoke(rig.platform, user_of(rig.platform, account))
    store = rig.keeper.store
    mark_reauth = store.mark_reauth
    resumed_by_put: list[int] = []

    async def mark_then_sign_in(*args: Any, **kwargs: Any) -> int | None:
        written = await mark_reauth(*args, **kwargs)
        fresh = tokens_of(rig.sim.oauth.sign_in(rig.platform, user_of(rig.platform, account)))
        resumed_by_put.append(await put_tokens(rig.q, store, rig.platform, account, fresh))
        return written

    store.mark_reauth = mark_then_sign_in  # type: ignore[method-assign]
    job_id = await rig.q.enqueue(
        rig.stream, post_for(rig.platform, rig.sim.url, "signed in meanwhile"), account=account
    )
    [info] = await rig.run([job_id], until=("done", "dead"), limit=15)
    assert resumed_by_put == [0]  # the pause was not recorded yet when the tokens were put
    assert info.state == "done", info.error
    assert (await rig.q.limits(rig.stream, account)).pauses == []
    assert len(rig.sim.posts_for(job_id)) == 1


async def test_jobs_parked_once_the_pause_is_in_force_are_released_when_signed_in_meanwhile(
    redis_url: str, stream: str
) -> None:
    """One worker, one job at a time, an account's five jobs read at once. The first finds its
    account needing a sign-in (ReauthRequired) just as the user signs in again (a put that
    finds nothing paused yet); the worker parks it and the four others it has read, and each
    parked outcome pauses the account. The worker checks every batch with a parked job
    against the tokens, finds them fresh, and lifts the pause: all five go out."""
    from streamq.job import Job
    from streamq.worker import Worker
    from tests.test_lifecycle import Running, options
    from tests.test_worker import poll

    account = "acme"
    ran: list[str] = []
    async with Queue(redis_url) as q:
        store = TokenStore(q.redis, KEYRING)
        job_ids = [await q.enqueue(stream, {"n": n}, account=account) for n in range(5)]

        async def handler(job: Job) -> str:
            if job.id == job_ids[0] and job.id not in ran:
                ran.append(job.id)
                await store.put("x", account, TokenSet(access_token=Secret("fresh")))
                raise ReauthRequired("refused, and signed in again meanwhile")
            ran.append(job.id)
            return "posted"

        worker = Worker(
            q.redis, stream, handler, options(publisher="x", concurrency=1, prefetch=10)
        )
        async with Running(worker):
            await poll(lambda: all_done(q, job_ids), within=15)
        assert (await q.limits(stream, account)).pauses == []


async def all_done(q: Queue, job_ids: list[str]) -> bool:
    return [(await q.job(job_id)).state for job_id in job_ids] == ["done"] * len(job_ids)


async def test_an_outage_of_the_token_endpoint_defers_without_an_attempt(rig: Rig) -> None:
    account = "acme"
    await rig.sign_in(account)
    await age(rig, account, issued_ago_ms=25 * 3600 * 1000, expires_in_ms=-10)
    rig.sim.oauth.failures_left[rig.platform] = 1
    if rig.platform in ("facebook", "instagram"):
        pytest.skip("an expired Meta token cannot be refreshed at all")
    with pytest.raises(RateLimited):
        await rig.keeper.credentials(
            rig.platform, account, None, rig.session.settings(rig.platform)
        )
    await rig.q.redis.delete(keys.token_lease(rig.platform, account))
    job_id = await rig.q.enqueue(
        rig.stream, post_for(rig.platform, rig.sim.url, "x"), account=account
    )
    [info] = await rig.run([job_id], until=("done", "dead", "paused"))
    assert (info.state, info.attempt) == ("done", 1)


async def test_reauth_is_raised_without_calling_the_platform_again(rig: Rig) -> None:
    account = "acme"
    await rig.sign_in(account)
    await rig.q.redis.hset(
        keys.token_record(rig.platform, account), mapping={"state": "reauth_required"}
    )
    with pytest.raises(ReauthRequired):
        await rig.keeper.credentials(
            rig.platform, account, None, rig.session.settings(rig.platform)
        )
    assert rig.sim.summary()["refreshes"] == rig.sim.oauth.refused == 0


@pytest.fixture
async def x_rig(redis_url: str, stream: str) -> AsyncIterator[Rig]:
    """X only (its refresh tokens rotate), with a lease of 2 s."""
    options = SimOptions(processing=0.0, access_ttl=4.0)
    async for made in open_rig(redis_url, stream, "x", options):
        yield made


async def test_a_refresh_answered_while_its_job_is_cancelled_is_still_stored(x_rig: Rig) -> None:
    """The platform rotated the refresh token and is answering; the job that asked is
    cancelled meanwhile (a worker stopping, a job timeout). The answer is stored all the same,
    so no worker ever presents the spent refresh token."""
    rig = x_rig
    account = f"acme-{rig.stream}"  # the server outlives the test
    await rig.sign_in(account)
    await age(rig, account, issued_ago_ms=3600_000, expires_in_ms=-10)
    rig.sim.oauth.hold = 0.5  # the answer waits after the rotation
    settings = rig.session.settings("x")
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(rig.keeper.credentials, "x", account, None, settings)
            with anyio.fail_after(5):
                while True:  # a poll with a deadline: the simulator runs in this loop
                    if rig.sim.oauth.refreshes[f"x/x-{account}"]:
                        break
                    await anyio.sleep(0.01)
            scope.cancel()  # the job is cancelled after the rotation, before the answer
    stored = await rig.keeper.store.get("x", account)
    assert stored is not None
    assert stored.refreshes == 1  # the answer was stored under its lease
    rig.sim.oauth.hold = 0.0
    await age(rig, account, issued_ago_ms=3600_000, expires_in_ms=-10)
    assert await rig.keeper.credentials("x", account, None, settings) is not None
    summary = rig.sim.summary()
    assert (summary["refreshes"], summary["revoked_refresh_presented"]) == (2, 0)


async def test_a_refresh_ends_before_its_lease_and_a_late_holder_does_not_ask(x_rig: Rig) -> None:
    """The asking must end within the lease (less the part kept for storing), or another
    worker could take the lease and present the same refresh token; a holder with no lease
    left does not ask at all."""
    rig = x_rig
    account = f"acme-{rig.stream}"  # the server outlives the test
    await rig.sign_in(account)
    await age(rig, account, issued_ago_ms=3600_000, expires_in_ms=-10)
    rig.sim.oauth.hold = 5.0  # slower than the lease (2 s)
    settings = rig.session.settings("x")
    began = time.monotonic()
    with pytest.raises(RateLimited, match="may be spent"):
        await rig.keeper.credentials("x", account, None, settings)
    assert time.monotonic() - began < 2.0 * (1 - 0.25) + 0.3
    assert await rig.q.redis.pttl(keys.token_lease("x", account)) > 0  # still the holder's
    stored = await rig.keeper.store.get("x", account)
    assert stored is not None
    asked = rig.sim.counts.requests
    with pytest.raises(RateLimited, match="lease ran out"):
        await rig.keeper._refresh(stored, 1, time.monotonic(), None, settings, forced=True)
    assert rig.sim.counts.requests == asked


async def test_an_imported_account_refreshes_without_a_new_sign_in(
    x_rig: Rig, tmp_path: Path
) -> None:
    """``tokens import`` from a file provider brings the refresh token, expiry and scopes
    along: once the token is due, the keeper refreshes it, and the post goes out on the first
    attempt, with no sign-in after the one the file came from."""
    from streamq.platforms.credentials import FileCredentials
    from streamq.tokens import Tokens

    rig = x_rig
    account = f"imp-{rig.stream}"  # the server outlives the test
    answer = rig.sim.oauth.sign_in("x", user_of("x", account))
    expires = int(time.time()) + 3600
    source = tmp_path / "tokens.toml"
    source.write_text(
        f'[x."{account}"]\ntoken = "{answer["access_token"]}"\n'
        f'refresh_token = "{answer["refresh_token"]}"\n'
        f"expires_at = {expires}\n"
        'scopes = ["tweet.write", "offline.access"]\n'
    )
    copied = await Tokens(rig.q, KEYRING).import_from(FileCredentials(source), [("x", account)])
    assert copied == [("x", account)]
    stored = await rig.keeper.store.get("x", account)
    assert stored is not None
    assert stored.refresh_token == Secret(answer["refresh_token"])
    assert (stored.expires_at_ms, stored.scopes) == (
        expires * 1000,
        ("tweet.write", "offline.access"),
    )
    grants_before = len(rig.sim.oauth.grants)
    await age(rig, account, issued_ago_ms=3600_000, expires_in_ms=-10)  # expired meanwhile
    job_id = await rig.q.enqueue(rig.stream, {"text": "hi"}, account=account)
    [info] = await rig.run([job_id], until=("done", "dead", "paused"))
    assert (info.state, info.attempt) == ("done", 1), info.error
    summary = rig.sim.summary()
    assert summary["refreshes_by_account"] == {f"x/{user_of('x', account)}": 1}
    assert summary["revoked_refresh_presented"] == 0
    assert len(rig.sim.oauth.grants) == grants_before + 1  # the rotation's, not a sign-in's
    refreshed = await rig.keeper.store.get("x", account)
    assert refreshed is not None
    assert (refreshed.refreshes, refreshed.state) == (1, "active")


async def test_client_credentials_come_from_the_clients_file(x_rig: Rig, tmp_path: Path) -> None:
    """A keeper given no clients finds X's in STREAMQ_OAUTH_CLIENTS_FILE (the simulator, as X,
    refuses a refresh without them); the environment's win over the file's; a file that does
    not parse is named, never quoted, and stops a worker before it starts."""
    rig = x_rig
    account = f"cf-{rig.stream}"
    clients = tmp_path / "clients.toml"
    clients.write_text('[x]\nclient_id = "from-file"\nclient_secret = "file-sekrit-0123456789"\n')
    environ = {"STREAMQ_OAUTH_CLIENTS_FILE": str(clients)}
    keeper = TokenKeeper(TokenStore(rig.q.redis, KEYRING), environ=environ)
    try:
        await rig.sign_in(account)
        await age(rig, account, issued_ago_ms=3600_000, expires_in_ms=-10)
        found = await keeper.credentials("x", account, None, rig.session.settings("x"))
        assert found is not None
        assert rig.sim.summary()["refreshes"] == 1
    finally:
        await keeper.aclose()
    chosen = keeper.client("x")
    assert chosen is not None
    assert (chosen.client_id, chosen.client_secret) == (
        "from-file",
        Secret("file-sekrit-0123456789"),
    )
    assert "sekrit" not in repr(chosen)
    by_env = TokenKeeper(
        keeper.store, environ={**environ, "STREAMQ_X_CLIENT_ID": "from-env"}
    ).client("x")
    assert by_env is not None
    assert by_env.client_id == "from-env"
    assert TokenKeeper(keeper.store, environ=environ).client("youtube") is None
    clients.write_text('[x]\nclient_id = "from-file"\nclient_secret = "leaky-sekrit\n')
    with pytest.raises(ConfigError) as broken:
        TokenKeeper.from_env(
            rig.q.redis, environ={**environ, "STREAMQ_TOKEN_KEYS": Keyring.generate("k1")}
        )
    assert str(clients) in str(broken.value)
    assert "sekrit" not in str(broken.value)


async def test_more_jobs_at_once_than_the_store_has_connections_all_get_their_token(
    redis_url: str, stream: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker runs partitions x concurrency jobs at once, each asking the store for its
    token through the session's small pool: they wait for a connection, none fails for want
    of one (which, for a refresh's answer, would lose a rotated refresh token)."""
    monkeypatch.setenv("STREAMQ_TOKEN_KEYS", Keyring.generate("k1"))
    monkeypatch.delenv("STREAMQ_CREDENTIALS", raising=False)
    async with Session(Config(credentials="store"), redis_url=redis_url) as session:
        keeper = session.credentials
        assert isinstance(keeper, TokenKeeper)
        await keeper.store.put("x", stream, TokenSet(access_token=Secret("t")))
        found: list[Credentials | None] = []

        async def ask() -> None:
            found.append(await keeper("x", stream))

        async with anyio.create_task_group() as tasks:
            for _ in range(64):
                tasks.start_soon(ask)
    assert len(found) == 64
    assert all(c is not None and c.token == Secret("t") for c in found)


def test_token_set_hides_itself() -> None:
    tokens = TokenSet(access_token=Secret("sekrit"), refresh_token=Secret("sekrit2"))
    assert "sekrit" not in repr(tokens) + str(tokens)
    with pytest.raises(TypeError):
        msgspec.json.encode(tokens)


# -- the command line ---------------------------------------------------------------------------


def test_the_command_line_puts_imports_and_shows_tokens_without_showing_them(
    redis_url: str, stream: str
) -> None:
    from tests.conftest import run_cli

    key = Keyring.generate("k1")
    env = {
        "STREAMQ_TOKEN_KEYS": key,
        f"STREAMQ_X_{stream.upper()}_TOKEN": "imported-sekrit-token",
        f"STREAMQ_X_{stream.upper()}_REFRESH": "imported-sekrit-refresh",
        f"STREAMQ_X_{stream.upper()}_EXPIRES_AT": "2100-01-01T00:00:00Z",
        f"STREAMQ_X_{stream.upper()}_SCOPES": "tweet.write offline.access",
    }
    made = run_cli("tokens", "keygen")
    assert made.returncode == 0
    Keyring.parse(made.stdout.strip())  # a key that parses
    answer = '{"access_token": "put-sekrit-1", "refresh_token": "put-sekrit-2", "expires_in": 7200}'
    put = run_cli("tokens", "put", "x", "acme", "--redis-url", redis_url, input=answer, env=env)
    assert put.returncode == 0, put.stderr
    imported = run_cli(
        "tokens", "import", "x", stream, "--from", "env", "--redis-url", redis_url, env=env
    )
    assert imported.returncode == 0, imported.stderr
    assert f"x/{stream}: imported" in imported.stdout
    status = run_cli("account", "status", "x", "acme", "--json", "--redis-url", redis_url, env=env)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["state"] == "active"
    assert report["token"]["has_refresh_token"] is True
    assert 7000 < report["token"]["expires_in_seconds"] <= 7200
    brought = run_cli("account", "status", "x", stream, "--json", "--redis-url", redis_url, env=env)
    assert brought.returncode == 0, brought.stderr
    carried = json.loads(brought.stdout)["token"]  # the env provider's refresh token came too
    assert carried["has_refresh_token"] is True
    assert carried["expires_at_ms"] == 4102444800000
    assert carried["scopes"] == ["tweet.write", "offline.access"]
    listed = run_cli("tokens", "list", "--redis-url", redis_url, env=env)
    everything = put.stdout + put.stderr + imported.stdout + status.stdout + listed.stdout
    everything += brought.stdout
    assert "sekrit" not in everything
    nokey = run_cli("tokens", "put", "x", "acme", "--redis-url", redis_url, input=answer)
    assert nokey.returncode == 2  # a usage error: the configuration lacks the key
    assert "STREAMQ_TOKEN_KEYS" in nokey.stderr
    assert "sekrit" not in nokey.stderr


def test_the_admin_api_shows_an_account_waiting_for_a_sign_in(
    admin_server: Any, redis_url: str, stream: str
) -> None:
    import httpx

    from tests.conftest import ADMIN_TOKEN

    async def setup() -> None:
        async with Queue(redis_url) as q:
            store = TokenStore(q.redis, KEYRING)
            await store.put(
                "x", stream, TokenSet(access_token=Secret("sekrit"), refresh_token=Secret("r"))
            )
            await q.redis.hset(
                keys.token_record("x", stream),
                mapping={"state": "reauth_required", "reason": "x: refresh refused"},
            )

    anyio.run(setup)
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    answer = httpx.get(f"{admin_server.url}/api/accounts/x/{stream}", headers=headers)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["state"] == "reauth_required"
    assert body["token"]["reason"] == "x: refresh refused"
    assert body["token"]["has_refresh_token"] is True
    assert "sekrit" not in answer.text
    bad = httpx.get(f"{admin_server.url}/api/accounts/myspace/{stream}", headers=headers)
    assert bad.status_code == 400


def test_the_tokens_table_takes_durations_and_refuses_nonsense() -> None:
    from streamq.config import parse_config

    config = parse_config({"tokens": {"lease": "20s", "sweep": "5m", "refresh_before": 0.2}})
    assert (config.tokens.lease, config.tokens.sweep, config.tokens.refresh_before) == (
        20.0,
        300.0,
        0.2,
    )
    with pytest.raises(ConfigError, match="refresh_before"):
        parse_config({"tokens": {"refresh_before": 1.5}})


def test_a_worker_on_the_store_without_its_key_refuses_to_start(redis_url: str) -> None:
    from tests.conftest import run_cli

    started = run_cli(
        "consume", "--redis-url", redis_url, "--stream", "x", "--burst",
        env={"STREAMQ_CREDENTIALS": "store", "STREAMQ_TOKEN_KEYS": ""},
    )  # fmt: skip
    assert started.returncode == 2  # a usage error: the configuration lacks the key
    assert "STREAMQ_TOKEN_KEYS" in started.stderr
    assert started.stderr.count("\n") == 1


async def test_account_reauth_required_reaches_the_webhooks_by_default(
    redis_url: str, redis: Redis, stream: str
) -> None:
    """Once per lost sign-in, with the platform's reason, to a webhook with default events."""
    from types import SimpleNamespace

    from streamq.config import parse_config
    from streamq.webhooks import Deliveries, delivery_stream
    from tests.test_webhooks import Receiver

    with Receiver() as receiver:
        config = parse_config(
            {
                "streams": {
                    stream: {"webhooks": {"url": receiver.url}},
                    delivery_stream(stream): {"backoff": {"base": 0.05, "jitter": 0}},
                }
            }
        )
        store = TokenStore(redis, KEYRING)
        await store.put("x", "acme", TokenSet(access_token=Secret("a")))
        keeper = TokenKeeper(store)
        job: Any = SimpleNamespace(stream=stream, id=f"{stream}:j1", attempt=1)
        deliveries = Deliveries(redis, stream, config, "test-consumer")
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(deliveries.run)
            await keeper._tell(job, "x", "acme", "x: refresh refused: invalid_request")
            await keeper._tell(job, "x", "acme", "told once: this one is not sent")
            with anyio.fail_after(20):
                while not receiver.accepted:  # noqa: ASYNC110 - another thread fills it
                    await anyio.sleep(0.05)
            await anyio.sleep(0.3)
            deliveries.stop()
    [(_, body)] = receiver.accepted
    event = json.loads(body)
    assert (event["type"], event["account"]) == ("account.reauth_required", "acme")
    assert event["error"] == "x: refresh refused: invalid_request"

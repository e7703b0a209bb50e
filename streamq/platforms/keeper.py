"""The credentials provider that keeps every account's token alive: ``credentials = "store"``.

Publishers ask it for an account's token; it reads the token store (streamq.tokenstore) and

- hands out the stored token while it is young;
- in the last part of its life (``tokens.refresh_before``, default the last 10 %), refreshes it
  first: proactively, so a post rarely meets an expired token;
- when a platform refuses a token as expired anyway, refreshes it on demand (reactive) and the
  publisher sends again in the same attempt.

Single flight: of all workers in all processes, one refreshes an account at a time. It takes
the account's lease (lease_token.lua), which bumps a fence; it writes the platform's answer
under that fence (write_token.lua), and a write whose fence is no longer the latest (an app
put fresh tokens meanwhile) is discarded. The lease never runs out while its holder may still
ask or write: the whole exchange with the platform must end within the lease less its last
quarter (kept for storing the answer), a holder past that does not ask at all, and the asking
and storing are shielded from the cancelling of the job that started them. The
others use the token they have while it still works, or wait (``tokens.wait``) for the new
version; past that the job is deferred without using an attempt.

When refresh is impossible (``invalid_grant``, revoked consent, a refresh token past its
life), the record's state becomes ``reauth_required`` (once: under the lease), an
``account.reauth_required`` event is written to the job's stream, and every job of the account
pauses its account with the reason ``reauth_required``, until an app puts fresh tokens
(``streamq tokens put``), which resumes it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import anyio
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streamq import channel, keys
from streamq.config import TokensConfig
from streamq.errors import ConfigError, Fail, RateLimited
from streamq.platforms import refresh as flows
from streamq.platforms.base import PlatformSettings
from streamq.platforms.credentials import Credentials, CredentialsProvider
from streamq.tokenstore import REAUTH_REQUIRED, Keyring, StoredToken, TokenSet, TokenStore

if TYPE_CHECKING:
    from streamq.job import Job

log = logging.getLogger("streamq.tokens")

REAUTH_EVENT: Final = "account.reauth_required"
POLL_SECONDS: Final = 0.05
STORE_TRIES: Final = 5
"""Tries to store a refresh's answer when the server fails (0.2 s, 0.4 s, ... apart)."""
LEASE_KEPT_TO_STORE: Final = 0.25
"""The last part of a lease kept for storing the platform's answer: the refresh's request
must be answered before it (else it is given up), so the answer is stored while the lease is
still the holder's and no other worker can present the same refresh token meanwhile."""
DEFER_SECONDS: Final = 1.0
"""How long a job waits (deferred, no attempt used) when its token cannot be had right now."""


class ReauthRequired(Fail):
    """Refresh is impossible: the account pauses with the reason ``reauth_required``."""

    def __init__(self, detail: str) -> None:
        super().__init__(REAUTH_REQUIRED, pause_account=True)
        self.detail = detail


def _now_ms() -> int:
    return int(time.time() * 1000)


class TokenKeeper:
    """A credentials provider on the token store that refreshes tokens (module docstring)."""

    def __init__(
        self,
        store: TokenStore,
        *,
        config: TokensConfig | None = None,
        clients: Mapping[str, flows.Client] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.store = store
        self.config = config or TokensConfig()
        self._clients = dict(clients or {})
        self._environ = environ
        self.refreshes = 0
        """Refreshes this process made (for the demo and tests)."""
        self._http: dict[str, Any] = {}

    async def aclose(self) -> None:
        """Close the token endpoints' HTTP clients."""
        for http in self._http.values():
            await http.aclose()
        self._http.clear()

    @classmethod
    def from_env(
        cls,
        redis: Redis,
        config: TokensConfig | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> TokenKeeper:
        keyring = Keyring.from_env(environ)
        if keyring is None:  # a worker that could read no token: refuse to start
            raise ConfigError(
                'credentials "store" needs the encryption key: set STREAMQ_TOKEN_KEYS '
                "(or STREAMQ_TOKEN_KEYS_FILE); 'streamq tokens keygen' makes one"
            )
        env = os.environ if environ is None else environ
        if env.get(flows.CLIENTS_FILE_ENV):  # a file that will not do stops the worker now
            flows.clients_from_file(env[flows.CLIENTS_FILE_ENV])
        return cls(TokenStore(redis, keyring), config=config, environ=environ)

    def client(self, platform: str) -> flows.Client | None:
        if platform not in self._clients:
            found = flows.client_from_env(platform, self._environ)
            if found is None:
                return None
            self._clients[platform] = found
        return self._clients[platform]

    # -- the provider ---------------------------------------------------------------------------

    async def __call__(self, platform: str, account: str | None) -> Credentials | None:
        return await self.credentials(platform, account, None)

    async def credentials(
        self,
        platform: str,
        account: str | None,
        job: Job | None,
        settings: PlatformSettings | None = None,
    ) -> Credentials | None:
        """The account's token, refreshed first when it is due."""
        stored = await self.store.get(platform, account)
        if stored is None or stored.access_token is None:
            return None
        if stored.state == REAUTH_REQUIRED:
            await self._tell(job, stored.platform, stored.account, stored.reason)
            raise ReauthRequired(stored.reason or "a new sign-in is needed")
        now = _now_ms()
        if not stored.due(now, self.config.refresh_before):
            return stored.credentials()
        if flows.can_refresh(stored, now, round(self.config.instagram_min_age * 1000)) == "young":
            return stored.credentials()
        return await self._renew(stored, job, settings, forced=False)

    async def refreshed(
        self,
        platform: str,
        account: str | None,
        stale: Credentials,
        job: Job | None,
        settings: PlatformSettings | None = None,
    ) -> Credentials | None:
        """A token for one the platform just refused: the newer one if another worker already
        refreshed, else a refresh now. None when the store does not hold this account."""
        stored = await self.store.get(platform, account)
        if stored is None or stored.access_token is None or stale.version is None:
            return None
        if stored.state == REAUTH_REQUIRED:
            await self._tell(job, stored.platform, stored.account, stored.reason)
            raise ReauthRequired(stored.reason or "a new sign-in is needed")
        if stored.version != stale.version:
            return stored.credentials()
        return await self._renew(stored, job, settings, forced=True)

    # -- single flight --------------------------------------------------------------------------

    async def _renew(
        self,
        stored: StoredToken,
        job: Job | None,
        settings: PlatformSettings | None,
        *,
        forced: bool,
    ) -> Credentials | None:
        platform, account = stored.platform, stored.account
        deadline = time.monotonic() + self.config.wait
        lease_ms = round(self.config.lease * 1000)
        while True:
            asked = time.monotonic()  # the lease, if granted, ends no sooner than this + lease
            lease = await self.store.lease(platform, account, stored.version, lease_ms)
            if lease.outcome == "granted":
                return await self._refresh(
                    stored, lease.fence, asked + self.config.lease, job, settings, forced=forced
                )
            if lease.outcome == "missing":
                return None
            if lease.outcome == "reauth":
                found = await self.store.get(platform, account)
                reason = (found.reason if found else None) or "a new sign-in is needed"
                await self._tell(job, platform, account, reason)
                raise ReauthRequired(reason)
            if lease.outcome == "newer":
                found = await self.store.get(platform, account)
                if found is None or found.access_token is None:
                    return None
                if found.state == REAUTH_REQUIRED:
                    raise ReauthRequired(found.reason or "a new sign-in is needed")
                return found.credentials()
            # busy: another worker is refreshing. A token that still works is used meanwhile;
            # an expired or refused one waits for the new version, within tokens.wait.
            if not forced and not stored.expired(_now_ms()):
                return stored.credentials()
            if time.monotonic() >= deadline:
                raise RateLimited(
                    DEFER_SECONDS,
                    f"{platform}: token: waiting for another worker's refresh",
                    scope="account",
                )
            await anyio.sleep(min(POLL_SECONDS, lease.wait_ms / 1000))

    async def _refresh(
        self,
        stored: StoredToken,
        fence: int,
        lease_ends: float,
        job: Job | None,
        settings: PlatformSettings | None,
        *,
        forced: bool,
    ) -> Credentials | None:
        platform, account = stored.platform, stored.account
        now = _now_ms()
        why = flows.can_refresh(stored, now, round(self.config.instagram_min_age * 1000))
        try:
            if why is not None and why != "young":
                raise flows.RefreshRefused(why)
            # Shielded: a job cancelled meanwhile (a worker stopping, a job timeout) must not
            # drop an answer the platform has given, since for X and TikTok the refresh token
            # it was asked with is spent by then. Bounded all the same, by the lease.
            with anyio.CancelScope(shield=True):
                tokens = await self._ask(stored, lease_ends, settings)
                version = await self._store_answer(stored, fence, tokens)
        except flows.RefreshRefused as refused:
            written = await self.store.mark_reauth(platform, account, fence, str(refused))
            if written is None:  # fresh tokens were put meanwhile: use them
                found = await self.store.get(platform, account)
                return None if found is None else found.credentials()
            log.warning("%s/%s: reauth_required: %s", platform, account, refused)
            await self._tell(job, platform, account, str(refused))
            raise ReauthRequired(str(refused)) from None
        except flows.RefreshUnavailable as unavailable:
            log.warning("%s/%s: token refresh failed: %s", platform, account, unavailable)
            # The lease runs out by itself; until then others keep using a working token.
            if not forced and not stored.expired(_now_ms()):
                return stored.credentials()
            raise RateLimited(
                DEFER_SECONDS, f"{platform}: token: refresh failed: {unavailable}", scope="account"
            ) from None
        self.refreshes += 1
        if version is None:
            # A newer write won (an app's put meanwhile): ours is discarded.
            log.info("%s/%s: a newer token was stored; refresh discarded", platform, account)
            found = await self.store.get(platform, account)
            return None if found is None else found.credentials()
        log.info("%s/%s: token refreshed (version %d)", platform, account, version)
        return Credentials(tokens.access_token, tokens.user_id, version=version)

    async def _ask(
        self, stored: StoredToken, lease_ends: float, settings: PlatformSettings | None
    ) -> TokenSet:
        """The platform's answer, asked for only while the lease has time left for the asking
        and the storing: once the lease runs out, another worker may take it and present the
        same refresh token, which a rotating platform has revoked if this one got through."""
        from streamq.platforms.client import resolve_settings

        platform = stored.platform
        chosen = settings or resolve_settings(platform)
        budget = min(
            chosen.timeout, lease_ends - self.config.lease * LEASE_KEPT_TO_STORE - time.monotonic()
        )
        if budget <= 0:
            raise flows.RefreshUnavailable(f"{platform}: the lease ran out before the refresh")
        client = self.client(platform)
        if platform not in self._http:
            self._http[platform] = flows.oauth_client(platform, client, budget)
        try:
            # The whole exchange, not each of its reads and writes (httpx's timeout), ends
            # within the budget.
            with anyio.fail_after(budget):
                return await flows.refresh(
                    platform,
                    flows.token_url(platform, chosen),
                    client,
                    stored,
                    http=self._http[platform],
                    api_version=chosen.api_version,
                    timeout=budget,
                )
        except TimeoutError:
            spent = " (the refresh token may be spent)" if flows.FLOWS[platform].rotates else ""
            raise flows.RefreshUnavailable(
                f"{platform}: no answer from the token endpoint within {budget:.1f}s{spent}"
            ) from None

    async def _store_answer(self, stored: StoredToken, fence: int, tokens: TokenSet) -> int | None:
        """Write the platform's answer, retrying a server that fails for a moment: for X and
        TikTok the old refresh token is already spent, so this answer is the account's only
        way on without a new sign-in."""
        for attempt in range(STORE_TRIES):
            try:
                return await self.store.write_refreshed(
                    stored.platform, stored.account, fence, tokens, stored.refreshes + 1
                )
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                if attempt == STORE_TRIES - 1:
                    raise
                log.warning("%s/%s: storing the refresh: %s; again", stored.platform,
                            stored.account, exc)  # fmt: skip
                await anyio.sleep(0.2 * 2**attempt)
        return None

    async def keep_alive(
        self, settings: Mapping[str, PlatformSettings], interval: float | None = None
    ) -> None:
        """Refresh, in the background, the due tokens of these platforms' accounts, so that
        an account that posts rarely still has a live token (Instagram's and Facebook's
        cannot be renewed once expired). Runs until cancelled; every worker process may run
        it, the lease keeps it to one refresh per account."""
        every = self.config.sweep if interval is None else interval
        while True:
            for platform, account in await self.store.accounts():
                if platform not in settings:
                    continue
                try:
                    stored = await self.store.get(platform, account)
                    if stored is None or stored.state == REAUTH_REQUIRED:
                        continue
                    if stored.access_token is None:
                        continue
                    if stored.due(_now_ms(), self.config.refresh_before):
                        await self._renew(stored, None, settings[platform], forced=False)
                except (Fail, RateLimited) as exc:
                    log.info("%s/%s: background refresh: %s", platform, account, exc)
                except Exception as exc:  # never let one account stop the others'
                    log.warning("%s/%s: background refresh failed: %r", platform, account, exc)
            await anyio.sleep(every)

    async def _tell(self, job: Job | None, platform: str, account: str, detail: str | None) -> None:
        """The ``account.reauth_required`` event, once per lost sign-in (the record's 'told'
        flag; a put clears it), in the stream of the job that found out (and so to its
        webhooks), with the stream's events settings honoured."""
        if job is None:
            return  # the next job of the account tells
        redis = self.store.redis
        first: Any = await redis.hsetnx(keys.token_record(platform, account), "told", 1)
        if not first:
            return
        detail = detail or "a new sign-in is needed"
        meta: Any = await redis.hmget(keys.meta(job.stream), ["events_cap", "events_skip"])
        cap = int(meta[0] or 100_000)
        skipped = (meta[1] or b"").decode().split(",")
        if cap == 0 or REAUTH_EVENT in skipped:
            return
        now_ms = await channel.server_ms(redis)
        await redis.xadd(
            keys.events(job.stream),
            {
                "type": REAUTH_EVENT,
                "job": job.id,
                "at": now_ms,
                "attempt": job.attempt,
                "account": account,
                "error": detail,
            },
            maxlen=cap,
            approximate=True,
        )


def is_keeper(provider: CredentialsProvider) -> bool:
    return isinstance(provider, TokenKeeper)

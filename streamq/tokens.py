"""What an app does with the token store: put tokens after a sign-in, import them from another
provider, and see an account's state (``q.tokens``, ``streamq tokens ...``,
``streamq account status``).

Putting fresh tokens for an account that was paused with ``reauth_required`` resumes it on
every stream its platform's publisher runs: its parked posts go out again (within their
expiry), attempts unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec
from redis.asyncio import Redis

from streamq import keys, limiter, platforms, stats
from streamq.config import Config
from streamq.errors import ConfigError
from streamq.platforms.credentials import CredentialsProvider, Secret
from streamq.tokenstore import (
    REAUTH_REQUIRED,
    Keyring,
    TokenSet,
    TokenStatus,
    TokenStore,
    account_name,
)

if TYPE_CHECKING:
    from streamq.client import Queue


async def platform_streams(redis: Redis, config: Config, platform: str) -> list[str]:
    """Every stream (partitions one by one) whose jobs ``platform``'s publisher runs."""
    found = []
    for name in await stats.known_streams(redis):
        base = keys.base_stream(name)
        try:
            runs = platforms.publisher_for(base, config.stream(base))
        except Exception:  # a stream whose config names no valid publisher
            continue
        if runs == platform:
            found.append(name)
    return sorted(found)


async def resume_reauth(q: Queue, platform: str, account: str) -> int:
    """Resume ``account`` wherever it waits for a new sign-in; returns jobs sent back."""
    released = 0
    for stream in await platform_streams(q.redis, q.config, platform):
        reason: Any = await q.redis.hget(keys.pause_reasons(stream), keys.pause_field(account))
        if reason is not None and reason.decode() == REAUTH_REQUIRED:
            _, count = await limiter.resume_account(q.redis, stream, account)
            released += count
    return released


async def put_tokens(
    q: Queue, store: TokenStore, platform: str, account: str | None, tokens: TokenSet
) -> int:
    """Store ``tokens`` and resume the account if it waited for them; returns jobs resumed."""
    platforms.check_publisher(platform)
    await store.put(platform, account, tokens)
    return await resume_reauth(q, platform, account_name(account))


class Tokens:
    """``q.tokens``: the token store seen from an app."""

    def __init__(self, q: Queue, keyring: Keyring | None = None) -> None:
        self.q = q
        self.store = TokenStore(q.redis, keyring if keyring is not None else Keyring.from_env())

    async def put(
        self,
        platform: str,
        account: str | None,
        access_token: str | Secret,
        *,
        refresh_token: str | Secret | None = None,
        expires_in: float | None = None,
        refresh_expires_in: float | None = None,
        scopes: Sequence[str] = (),
        user_id: str | None = None,
    ) -> int:
        """Store an account's tokens as the platform gave them at sign-in (``expires_in``
        seconds from now); resumes the account if it waited for a new sign-in. Returns the
        number of jobs resumed."""
        now = int(time.time() * 1000)
        tokens = TokenSet(
            access_token=_secret(access_token),
            refresh_token=None if refresh_token is None else _secret(refresh_token),
            expires_at_ms=None if expires_in is None else now + round(expires_in * 1000),
            refresh_expires_at_ms=(
                None if refresh_expires_in is None else now + round(refresh_expires_in * 1000)
            ),
            scopes=tuple(scopes),
            user_id=user_id,
            issued_at_ms=now,
        )
        return await put_tokens(self.q, self.store, platform, account, tokens)

    async def status(self, platform: str, account: str | None) -> TokenStatus | None:
        """The account's token state, without any token; None when none is stored."""
        return await self.store.status(platform, account)

    async def import_from(
        self, provider: CredentialsProvider, pairs: Iterable[tuple[str, str | None]]
    ) -> list[tuple[str, str]]:
        """Copy the tokens another provider (env, file, your function) holds for these
        (platform, account) pairs into the store; returns the pairs copied. The refresh token,
        expiry and scopes come along where the provider has them, so the store refreshes the
        account without a new sign-in; a token without them is used until the platform
        refuses it, then the account waits for a sign-in (``reauth_required``)."""
        copied = []
        for platform, account in pairs:
            found = await provider(platform, account)
            if found is None:
                continue
            # The provider does not say when the token was issued: its life is counted from
            # now, so "the last 10 % of its life" is the last 10 % of what is left.
            tokens = TokenSet(
                access_token=found.token,
                refresh_token=found.refresh_token,
                expires_at_ms=found.expires_at_ms,
                scopes=found.scopes,
                user_id=found.user_id,
            )
            await put_tokens(self.q, self.store, platform, account, tokens)
            copied.append((platform, account_name(account)))
        return copied


class AccountPause(msgspec.Struct, frozen=True):
    stream: str
    until_ms: int | None
    """None: until resumed."""
    reason: str | None


class AccountStatus(msgspec.Struct, frozen=True, kw_only=True):
    """``streamq account status`` and ``GET /api/accounts/{platform}/{account}``."""

    platform: str
    account: str
    state: str
    """'active', 'reauth_required' (a person must sign in again) or 'no token stored'."""
    token: TokenStatus | None
    pauses: list[AccountPause]
    """The account's pauses on its platform's streams."""


async def account_status(
    redis: Redis, config: Config, platform: str, account: str
) -> AccountStatus:
    """The account's token state and its pauses, read without the encryption key."""
    platforms.check_publisher(platform)
    if not 0 < len(account) <= keys.MAX_ACCOUNT_LENGTH:
        raise ConfigError(f"an account name has 1-{keys.MAX_ACCOUNT_LENGTH} characters")
    token = await TokenStore(redis, None).status(platform, account)
    pauses = []
    for stream in await platform_streams(redis, config, platform):
        field = keys.pause_field(account)
        until: Any = await redis.hget(keys.paused(stream), field)
        if until is None:
            continue
        why: Any = await redis.hget(keys.pause_reasons(stream), field)
        pauses.append(
            AccountPause(
                stream,
                None if int(until) < 0 else int(until),
                None if why is None else why.decode(),
            )
        )
    state = token.state if token is not None else "no token stored"
    if any(pause.reason == REAUTH_REQUIRED for pause in pauses):
        state = REAUTH_REQUIRED
    return AccountStatus(
        platform=platform, account=account, state=state, token=token, pauses=pauses
    )


def _secret(value: str | Secret) -> Secret:
    return value if isinstance(value, Secret) else Secret(value)

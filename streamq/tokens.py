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

from streamq import channel, keys, limiter, platforms, stats
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


async def lift_reauth_pauses(
    redis: Redis, stream: str, platform: str, accounts: Iterable[str]
) -> int:
    """Lift ``stream``'s reauth_required pauses of ``accounts`` whose tokens are fresh again;
    returns jobs sent back.

    A sign-in can land between a refused refresh and the pause it leads to (which the worker
    records with the job's outcome): put_tokens then finds nothing paused to resume. The
    worker calls this once such a pause is recorded, so one of the two always sees the other:
    the put stores tokens before it reads the pauses, the worker records the pause before it
    reads the tokens."""
    released = 0
    for account in accounts:
        state: Any = await redis.hget(keys.token_record(platform, account), "state")
        if state is None or state.decode() == REAUTH_REQUIRED:
            continue  # still waiting for a sign-in (or no tokens at all)
        reason: Any = await redis.hget(keys.pause_reasons(stream), keys.pause_field(account))
        if reason is not None and reason.decode() == REAUTH_REQUIRED:
            _, count = await limiter.resume_account(redis, stream, account)
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


# -- the accounts of a stream (the dashboard's accounts page) -------------------------------

MAX_ACCOUNTS_PAGE = 500


class AccountWindow(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    """The limit as a person reads it: '50 per 24h'."""
    used: int
    """Starts within the window now."""
    limit: int
    period_ms: int


class StreamAccount(msgspec.Struct, frozen=True, kw_only=True):
    account: str
    paused: bool
    reason: str | None
    """Why it is paused (null when it is not)."""
    paused_until_ms: int | None
    """null: until resumed (or not paused)."""
    reauth_required: bool
    """Paused until a person signs the account in again (its token was refused)."""
    parked: int
    """Its jobs held while it is paused."""
    windows: list[AccountWindow]
    """Its own rate-limit windows, used against their limits."""


class StreamAccounts(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /api/streams/{stream}/accounts``: a page of the stream's known accounts."""

    stream: str
    accounts: list[StreamAccount]
    platform_windows: list[AccountWindow]
    """The stream's platform-wide windows (every account's starts together)."""
    next_cursor: str | None
    """Pass as ``cursor`` for the next page; null on the last page."""


def _window_name(count: int, window_ms: int) -> str:
    seconds = window_ms / 1000
    if seconds % 3600 == 0:
        span = f"{seconds / 3600:g}h"
    elif seconds % 60 == 0:
        span = f"{seconds / 60:g}m"
    else:
        span = f"{seconds:g}s"
    return f"{count} per {span}"


async def known_accounts(redis: Redis, config: Config, stream: str, parts: list[str]) -> set[str]:
    """The accounts streamq can name for a stream without scanning the keyspace: those paused
    (or once paused) on it, those with jobs held behind the platform's plan, and those with a
    token stored for the platform its publisher posts to. An account that only ever ran
    within its limits is in none of these; ask for it by name."""
    found: set[str] = set()
    async with redis.pipeline(transaction=False) as pipe:
        for part in parts:
            pipe.hkeys(keys.paused(part))
            pipe.zrange(keys.holding(part), 0, -1)
        replies: list[Any] = await pipe.execute()
    for index in range(0, len(replies), 2):
        found |= {f.decode().removeprefix("a:") for f in replies[index] if f.startswith(b"a:")}
        found |= {a.decode() for a in replies[index + 1]}
    try:
        platform = platforms.publisher_for(stream, config.stream(stream))
    except Exception:  # a stream whose config names no valid publisher has no tokens
        platform = None
    if platform is not None:
        members: Any = await redis.smembers(keys.TOKEN_REGISTRY)
        prefix = f"{platform}:"
        found |= {m.decode().removeprefix(prefix) for m in members if m.decode().startswith(prefix)}
    return found


async def stream_accounts(
    redis: Redis,
    config: Config,
    stream: str,
    parts: list[str],
    *,
    cursor: str | None = None,
    limit: int = 100,
    account: str | None = None,
) -> StreamAccounts:
    """A page of ``stream``'s accounts (``known_accounts``, or only ``account``), by name,
    after ``cursor``; each with its pause and its windows' use, summed over ``parts``."""
    names = (
        {limiter.check_account(account)}
        if account
        else await known_accounts(redis, config, stream, parts)
    )
    ordered = sorted(n for n in names if cursor is None or n > cursor)
    page, more = ordered[:limit], len(ordered) > limit
    limits = limiter.limits_for(stream, config.stream(stream).limits)
    now = await channel.server_ms(redis)
    async with redis.pipeline(transaction=False) as pipe:
        for part in parts:
            for _, window_ms in limits.platform:
                pipe.zcount(keys.rate_log(part), f"({now - window_ms}", "+inf")
        for name in page:
            field = keys.pause_field(name)
            for part in parts:
                pipe.hget(keys.paused(part), field)
                pipe.hget(keys.pause_reasons(part), field)
                pipe.zcard(keys.parked(part, name))
                for _, window_ms in limits.account:
                    pipe.zcount(keys.rate_log(part, name), f"({now - window_ms}", "+inf")
        replies: list[Any] = await pipe.execute()
    position = 0

    def take() -> Any:
        nonlocal position
        position += 1
        return replies[position - 1]

    platform_used = [0] * len(limits.platform)
    for _ in parts:
        for w in range(len(limits.platform)):
            platform_used[w] += int(take())
    rows = []
    for name in page:
        paused, reason, until, parked = False, None, None, 0
        used = [0] * len(limits.account)
        for _ in parts:
            raw_until, raw_reason, raw_parked = take(), take(), take()
            parked += int(raw_parked)
            for w in range(len(limits.account)):
                used[w] += int(take())
            if raw_until is None:
                continue
            ends = int(raw_until)
            if ends == -1 or ends > now:
                paused = True
                until = None if ends == -1 else max(until or 0, ends)
                reason = None if raw_reason is None else raw_reason.decode()
        rows.append(
            StreamAccount(
                account=name,
                paused=paused,
                reason=reason,
                paused_until_ms=until,
                reauth_required=paused and reason == REAUTH_REQUIRED,
                parked=parked,
                windows=[
                    AccountWindow(
                        name=_window_name(count, window_ms),
                        used=used[w],
                        limit=count,
                        period_ms=window_ms,
                    )
                    for w, (count, window_ms) in enumerate(limits.account)
                ],
            )
        )
    return StreamAccounts(
        stream=stream,
        accounts=rows,
        platform_windows=[
            AccountWindow(
                name=_window_name(count, window_ms),
                used=platform_used[w],
                limit=count,
                period_ms=window_ms,
            )
            for w, (count, window_ms) in enumerate(limits.platform)
        ],
        next_cursor=page[-1] if more and page else None,
    )

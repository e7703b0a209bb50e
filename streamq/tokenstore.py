"""The token store: each account's OAuth tokens in Redis, the one source of truth for workers.

One hash per (platform, account), ``streamq:{token:<P>:<A>}:record`` (streamq.keys):

    sealed            the access and refresh tokens, encrypted (AES-256-GCM, see Keyring)
    expires_at_ms     when the access token stops working (absent: the platform did not say)
    issued_at_ms      when it was obtained: life = expires_at - issued_at
    refresh_expires_at_ms, scopes, user_id, refreshes, refreshed_at_ms
    state             'active' or 'reauth_required' (refresh impossible: a person must sign in)
    reason            why, when reauth_required
    version           +1 on every write; fence: +1 on every lease and every put

Every write is one script (write_token.lua), so a reader sees a whole token or the one
before; a refresh is single-flight through a lease with a fencing number (lease_token.lua).

Tokens are sealed with a key from ``STREAMQ_TOKEN_KEYS`` (or the file named by
``STREAMQ_TOKEN_KEYS_FILE``): ``kid:base64key[,kid:base64key...]``, 32-byte keys, the first
one seals, every one unseals (rotation: put the new key first and keep the old ones; each
token is sealed again with the new key at its next refresh or put). Without a key the store
refuses to hold tokens at all: it never keeps one in the clear.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgspec
import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from redis.asyncio import Redis

from streamq import keys, scripts
from streamq.errors import ConfigError
from streamq.platforms.credentials import DEFAULT_ACCOUNT, Credentials, Secret

KEYS_ENV: Final = "STREAMQ_TOKEN_KEYS"
KEYS_FILE_ENV: Final = "STREAMQ_TOKEN_KEYS_FILE"
ACTIVE: Final = "active"
REAUTH_REQUIRED: Final = "reauth_required"
NONCE_BYTES: Final = 12


class Keyring:
    """AES-256-GCM keys by id: the first seals, all unseal. A sealed value is
    ``<kid>.<base64(nonce + ciphertext)>``, bound to its (platform, account) as associated data
    so a sealed token copied onto another account's record does not open."""

    def __init__(self, keys_by_id: Mapping[str, bytes]) -> None:
        if not keys_by_id:
            raise ConfigError("a keyring needs at least one key")
        self._aead: dict[str, AESGCM] = {}
        for kid, key in keys_by_id.items():
            if not kid.isalnum() or len(kid) > 32:
                raise ConfigError(f"token key id {kid!r}: use 1-32 letters or digits")
            if len(key) != 32:
                raise ConfigError(f"token key {kid!r} must be 32 bytes (base64 of 32 bytes)")
            self._aead[kid] = AESGCM(key)
        self.primary = next(iter(keys_by_id))

    def __repr__(self) -> str:
        return f"Keyring(ids={list(self._aead)!r})"

    @classmethod
    def parse(cls, text: str) -> Keyring:
        """``kid:base64key`` entries separated by commas or newlines, the sealing key first."""
        found: dict[str, bytes] = {}
        for entry in text.replace("\n", ",").split(","):
            entry = entry.strip()
            if not entry or entry.startswith("#"):
                continue
            kid, sep, encoded = entry.partition(":")
            if not sep:
                raise ConfigError("token keys must look like 'kid:base64key' (the key not shown)")
            try:
                found[kid.strip()] = base64.b64decode(encoded.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise ConfigError(f"token key {kid.strip()!r} is not valid base64") from None
        return cls(found)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Keyring | None:
        env = os.environ if environ is None else environ
        text = env.get(KEYS_ENV)
        path = env.get(KEYS_FILE_ENV)
        if not text and path:
            try:
                text = Path(path).read_text()
            except OSError as exc:
                raise ConfigError(f"token keys file {path}: {exc.strerror}") from None
        return cls.parse(text) if text else None

    @staticmethod
    def generate(kid: str = "k1") -> str:
        """A new ``kid:base64key`` entry."""
        return f"{kid}:{base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()}"

    def seal(self, plain: bytes, bound_to: str) -> str:
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._aead[self.primary].encrypt(nonce, plain, bound_to.encode())
        return f"{self.primary}.{base64.b64encode(nonce + sealed).decode()}"

    def unseal(self, text: str, bound_to: str) -> bytes:
        kid, _, encoded = text.partition(".")
        aead = self._aead.get(kid)
        if aead is None:
            raise ConfigError(f"a stored token is sealed with key {kid!r}, which is not configured")
        raw = base64.b64decode(encoded)
        try:
            return aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], bound_to.encode())
        except InvalidTag:
            raise ConfigError(f"a stored token does not open with key {kid!r}") from None

    def key_id_of(self, text: str) -> str:
        return text.partition(".")[0]


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenSet:
    """Tokens as an app obtained them at sign-in, or as a platform answered a refresh."""

    access_token: Secret
    refresh_token: Secret | None = None
    expires_at_ms: int | None = None
    refresh_expires_at_ms: int | None = None
    scopes: tuple[str, ...] = ()
    user_id: str | None = None
    issued_at_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    @classmethod
    def from_answer(cls, answer: Mapping[str, Any], *, now_ms: int | None = None) -> TokenSet:
        """A token endpoint's JSON answer (``access_token``, ``expires_in``, ...)."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        access = answer.get("access_token")
        if not isinstance(access, str) or not access:
            raise ValueError("the answer has no access_token")
        refresh = answer.get("refresh_token")
        expires_in = answer.get("expires_in")
        refresh_in = answer.get("refresh_expires_in") or answer.get("refresh_token_expires_in")
        scope = answer.get("scope") or ""
        scopes = scope.replace(",", " ").split() if isinstance(scope, str) else list(scope)
        return cls(
            access_token=Secret(access),
            refresh_token=Secret(refresh) if isinstance(refresh, str) and refresh else None,
            expires_at_ms=None if expires_in is None else now + round(float(expires_in) * 1000),
            refresh_expires_at_ms=(
                None if refresh_in is None else now + round(float(refresh_in) * 1000)
            ),
            scopes=tuple(scopes),
            issued_at_ms=now,
        )

    def __repr__(self) -> str:
        return f"TokenSet(access_token=***, expires_at_ms={self.expires_at_ms})"


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredToken:
    """An account's record as read: the tokens unsealed, each in a Secret."""

    platform: str
    account: str
    access_token: Secret | None
    refresh_token: Secret | None
    expires_at_ms: int | None
    issued_at_ms: int
    refresh_expires_at_ms: int | None
    scopes: tuple[str, ...]
    user_id: str | None
    state: str
    reason: str | None
    version: int
    refreshes: int
    refreshed_at_ms: int | None
    key_id: str | None

    def due(self, now_ms: int, fraction: float) -> bool:
        """In the last ``fraction`` of its life (or past it): time to refresh."""
        if self.expires_at_ms is None:
            return False
        life = max(0, self.expires_at_ms - self.issued_at_ms)
        return now_ms >= self.expires_at_ms - life * fraction

    def expired(self, now_ms: int) -> bool:
        return self.expires_at_ms is not None and now_ms >= self.expires_at_ms

    def credentials(self) -> Credentials:
        if self.access_token is None:
            raise ValueError("no access token")
        return Credentials(self.access_token, self.user_id, version=self.version)


class TokenStatus(msgspec.Struct, frozen=True, kw_only=True):
    """An account's token as it may be shown (``streamq account status``, the admin API):
    never a token, only whether there is one. Read without the encryption key."""

    platform: str
    account: str
    state: str
    """'active' or 'reauth_required'."""
    reason: str | None
    expires_at_ms: int | None
    expires_in_seconds: float | None
    has_refresh_token: bool
    refresh_expires_at_ms: int | None
    scopes: list[str]
    user_id: str | None
    version: int
    refreshes: int
    refreshed_at_ms: int | None
    key_id: str | None
    """Which encryption key sealed it (rotation)."""


@dataclass(frozen=True, slots=True)
class Lease:
    """lease_token's answer: ``granted`` with a fence, ``newer``, ``busy`` (for ``wait_ms``),
    ``missing`` or ``reauth``."""

    outcome: str
    fence: int = 0
    version: int = 0
    wait_ms: int = 0


def account_name(account: str | None) -> str:
    return account or DEFAULT_ACCOUNT


class TokenStore:
    """Reads and writes account tokens; every write is atomic and versioned."""

    def __init__(self, redis: Redis, keyring: Keyring | None) -> None:
        self.redis = redis
        self.keyring = keyring

    def _need_keyring(self) -> Keyring:
        if self.keyring is None:
            raise ConfigError(
                f"the token store holds no token without an encryption key: set {KEYS_ENV} "
                f"(or {KEYS_FILE_ENV}); 'streamq tokens keygen' makes one"
            )
        return self.keyring

    def _sealed_fields(self, platform: str, account: str, tokens: TokenSet) -> list[str | int]:
        keyring = self._need_keyring()
        plain = {"a": tokens.access_token.reveal()}
        if tokens.refresh_token is not None:
            plain["r"] = tokens.refresh_token.reveal()
        fields: list[str | int] = [
            "sealed",
            keyring.seal(orjson.dumps(plain), keys.token_member(platform, account)),
            "issued_at_ms",
            tokens.issued_at_ms,
            "expires_at_ms",
            -1 if tokens.expires_at_ms is None else tokens.expires_at_ms,
            "refresh_expires_at_ms",
            -1 if tokens.refresh_expires_at_ms is None else tokens.refresh_expires_at_ms,
            "scopes",
            " ".join(tokens.scopes),
            "state",
            ACTIVE,
        ]
        fields += ["has_refresh", int(tokens.refresh_token is not None)]
        if tokens.user_id is not None:
            fields += ["user_id", tokens.user_id]
        return fields

    async def put(self, platform: str, account: str | None, tokens: TokenSet) -> int:
        """Store tokens an app obtained (sign-in, import): always lands, ends any
        reauth_required state, and makes any refresh still under way discard its answer.
        Returns the new version."""
        name = account_name(account)
        keys.check_account(name)
        fields = self._sealed_fields(platform, name, tokens)
        _, version = await scripts.write_token(self.redis, platform, name, fence=0, fields=fields)
        await self.redis.sadd(keys.TOKEN_REGISTRY, keys.token_member(platform, name))
        return int(version)

    async def get(self, platform: str, account: str | None) -> StoredToken | None:
        name = account_name(account)
        raw: Any = await self.redis.hgetall(keys.token_record(platform, name))
        if not raw or b"version" not in raw:
            return None
        return self._decode(platform, name, raw)

    def _decode(self, platform: str, account: str, raw: dict[bytes, bytes]) -> StoredToken:
        def text(name: str) -> str | None:
            value = raw.get(name.encode())
            return None if value is None else value.decode()

        def number(name: str) -> int | None:
            value = text(name)
            return None if value is None or int(value) < 0 else int(value)

        access = refresh = None
        sealed = text("sealed")
        if sealed:
            plain = orjson.loads(
                self._need_keyring().unseal(sealed, keys.token_member(platform, account))
            )
            access = Secret(plain["a"])
            refresh = Secret(plain["r"]) if plain.get("r") else None
        return StoredToken(
            platform=platform,
            account=account,
            access_token=access,
            refresh_token=refresh,
            expires_at_ms=number("expires_at_ms"),
            issued_at_ms=number("issued_at_ms") or 0,
            refresh_expires_at_ms=number("refresh_expires_at_ms"),
            scopes=tuple((text("scopes") or "").split()),
            user_id=text("user_id"),
            state=text("state") or ACTIVE,
            reason=text("reason"),
            version=number("version") or 0,
            refreshes=number("refreshes") or 0,
            refreshed_at_ms=number("refreshed_at_ms"),
            key_id=None if not sealed else sealed.partition(".")[0],
        )

    async def status(self, platform: str, account: str | None) -> TokenStatus | None:
        """The account's token state, read without unsealing anything."""
        name = account_name(account)
        raw: Any = await self.redis.hgetall(keys.token_record(platform, name))
        if not raw or b"version" not in raw:
            return None

        def text(field: str) -> str | None:
            value = raw.get(field.encode())
            return None if value is None else value.decode()

        def number(field: str) -> int | None:
            value = text(field)
            return None if value is None or int(value) < 0 else int(value)

        expires = number("expires_at_ms")
        now = int(time.time() * 1000)
        sealed = text("sealed")
        return TokenStatus(
            platform=platform,
            account=name,
            state=text("state") or ACTIVE,
            reason=text("reason"),
            expires_at_ms=expires,
            expires_in_seconds=None if expires is None else round((expires - now) / 1000, 1),
            has_refresh_token=text("has_refresh") == "1",
            refresh_expires_at_ms=number("refresh_expires_at_ms"),
            scopes=(text("scopes") or "").split(),
            user_id=text("user_id"),
            version=number("version") or 0,
            refreshes=number("refreshes") or 0,
            refreshed_at_ms=number("refreshed_at_ms"),
            key_id=None if not sealed else sealed.partition(".")[0],
        )

    async def version(self, platform: str, account: str | None) -> int | None:
        found: Any = await self.redis.hget(
            keys.token_record(platform, account_name(account)), "version"
        )
        return None if found is None else int(found)

    async def lease(self, platform: str, account: str | None, seen: int, lease_ms: int) -> Lease:
        """Ask to be the one worker that refreshes (lease_token.lua)."""
        name = account_name(account)
        outcome, value = await scripts.lease_token(
            self.redis, platform, name, seen_version=seen, lease_ms=lease_ms
        )
        if outcome == "granted":
            return Lease(outcome, fence=int(value), version=seen)
        if outcome == "busy":
            return Lease(outcome, version=seen, wait_ms=int(value))
        return Lease(outcome, version=int(value))

    async def write_refreshed(
        self, platform: str, account: str | None, fence: int, tokens: TokenSet, refreshes: int
    ) -> int | None:
        """Store a refresh's answer under its lease's fence; None when a newer write won."""
        name = account_name(account)
        fields = self._sealed_fields(platform, name, tokens)
        fields += ["refreshes", refreshes, "refreshed_at_ms", int(time.time() * 1000)]
        written, version = await scripts.write_token(
            self.redis, platform, name, fence=fence, fields=fields
        )
        return int(version) if written else None

    async def mark_reauth(
        self, platform: str, account: str | None, fence: int, reason: str
    ) -> int | None:
        """Record that refresh is impossible (under the lease's fence); None when a newer
        write won (a put of fresh tokens meanwhile)."""
        name = account_name(account)
        written, version = await scripts.write_token(
            self.redis,
            platform,
            name,
            fence=fence,
            fields=["state", REAUTH_REQUIRED, "reason", reason],
        )
        return int(version) if written else None

    async def accounts(self) -> list[tuple[str, str]]:
        members: Any = await self.redis.smembers(keys.TOKEN_REGISTRY)
        pairs = [m.decode().split(":", 1) for m in members]
        return sorted((p, a) for p, a in pairs)

    async def delete(self, platform: str, account: str | None) -> bool:
        name = account_name(account)
        removed = await self.redis.delete(
            keys.token_record(platform, name), keys.token_lease(platform, name)
        )
        await self.redis.srem(keys.TOKEN_REGISTRY, keys.token_member(platform, name))
        return bool(removed)

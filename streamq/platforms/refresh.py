"""How each platform renews an account's access token, on Authlib's httpx OAuth 2.0 client.

    x          POST /2/oauth2/token            refresh_token grant, Basic client auth;
                                               the refresh token rotates (the old one is revoked)
    youtube    POST oauth2.googleapis.com/token  refresh_token grant; the refresh token stays
    tiktok     POST /v2/oauth/token/           refresh_token grant with client_key; rotates
    linkedin   POST /oauth/v2/accessToken      refresh_token grant; the refresh token stays
                                               (it has a life of its own: refresh_expires)
    instagram  GET  graph.instagram.com/refresh_access_token?grant_type=ig_refresh_token
                                               the long-lived token itself, once it is 24 h old
    facebook   GET  /{v}/oauth/access_token?grant_type=fb_exchange_token, then
               GET  /{v}/{page-id}?fields=access_token
                                               a Page token derived from a long-lived user
                                               token (kept as the refresh token): renewed when
                                               the user token nears its end

Client ids and secrets come from the credentials side, never from a job's payload: the
``clients`` given to the TokenKeeper, else the environment (``STREAMQ_X_CLIENT_ID``,
``STREAMQ_X_CLIENT_SECRET``, ...), else the file named by ``STREAMQ_OAUTH_CLIENTS_FILE`` (TOML
or JSON: ``[x] client_id = "..." client_secret = "..."``; a secret kept out of the process's
environment). Outcomes: a new TokenSet; :class:`RefreshRefused` when the platform will not
renew it (``invalid_grant``, revoked consent, a refresh token past its life: a person must
sign in again); :class:`RefreshUnavailable` when it could not answer (no answer, 5xx, 429).
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx

from streamq.errors import ConfigError
from streamq.platforms.base import PlatformSettings
from streamq.platforms.credentials import EnvCredentials, Secret, read_secret_table
from streamq.platforms.outcomes import clean
from streamq.tokenstore import StoredToken, TokenSet

with warnings.catch_warnings():
    # Authlib 1.7+ prefers the httpx2 fork and warns when it falls back to httpx, which is the
    # client the rest of streamq uses; the fallback is the same code path. Its module of
    # warnings, imported first, adds an "always" filter of its own, which this one overrides.
    import authlib.deprecate  # noqa: F401

    warnings.simplefilter("ignore")
    from authlib.integrations.base_client.errors import OAuthError
    from authlib.integrations.httpx_client import AsyncOAuth2Client

INSTAGRAM_MIN_AGE_MS: Final = 24 * 3600 * 1000
"""Instagram refreshes a long-lived token only once it is at least 24 hours old."""


@dataclass(frozen=True, slots=True)
class Flow:
    token_url: str
    """The real endpoint."""
    sim_path: str
    """Its path under the simulator's ``/<platform>`` (STREAMQ_PLATFORM_URL)."""
    auth: str
    """Authlib's token_endpoint_auth_method, or 'graph' for Meta's own exchanges."""
    rotates: bool


FLOWS: Final = {
    "x": Flow("https://api.x.com/2/oauth2/token", "2/oauth2/token", "client_secret_basic", True),
    "youtube": Flow("https://oauth2.googleapis.com/token", "token", "client_secret_post", False),
    "tiktok": Flow(
        "https://open.tiktokapis.com/v2/oauth/token/", "v2/oauth/token/", "client_secret_post", True
    ),
    "linkedin": Flow(
        "https://www.linkedin.com/oauth/v2/accessToken",
        "oauth/v2/accessToken",
        "client_secret_post",
        False,
    ),
    "instagram": Flow(
        "https://graph.instagram.com/refresh_access_token", "refresh_access_token", "graph", False
    ),
    "facebook": Flow("https://graph.facebook.com", "", "graph", False),
}


class RefreshRefused(Exception):
    """The platform will not renew this token: the account needs a new sign-in."""


class RefreshUnavailable(Exception):
    """The token endpoint gave no usable answer now (unreachable, 5xx, 429): try again."""


@dataclass(frozen=True, slots=True)
class Client:
    """An app's OAuth client on one platform."""

    client_id: str
    client_secret: Secret | None = None

    def __repr__(self) -> str:
        return f"Client(client_id={self.client_id!r}, client_secret=***)"


CLIENTS_FILE_ENV: Final = "STREAMQ_OAUTH_CLIENTS_FILE"


def client_from_env(platform: str, environ: Mapping[str, str] | None = None) -> Client | None:
    """``STREAMQ_<PLATFORM>_CLIENT_ID`` and ``STREAMQ_<PLATFORM>_CLIENT_SECRET``, else the
    platform's entry in the file named by ``STREAMQ_OAUTH_CLIENTS_FILE``."""
    env = os.environ if environ is None else environ
    client_id = env.get(EnvCredentials.variable(platform, None, "CLIENT_ID"))
    if not client_id:
        path = env.get(CLIENTS_FILE_ENV)
        return clients_from_file(path).get(platform) if path else None
    secret = env.get(EnvCredentials.variable(platform, None, "CLIENT_SECRET"))
    return Client(client_id, Secret(secret) if secret else None)


def clients_from_file(path: str | os.PathLike[str]) -> dict[str, Client]:
    """Each platform's client from a TOML (or ``.json``) file: ``{platform: {client_id,
    client_secret}}``. A file that does not parse is named, never quoted (it holds secrets)."""
    where = Path(path)
    table = read_secret_table(where, CLIENTS_FILE_ENV)
    clients = {}
    for platform, entry in table.items():
        if platform not in FLOWS:
            raise ConfigError(f"{CLIENTS_FILE_ENV} {where}: unknown platform {platform!r}")
        client_id = entry.get("client_id") if isinstance(entry, dict) else None
        secret = entry.get("client_secret") if isinstance(entry, dict) else None
        if not isinstance(client_id, str) or not client_id or not isinstance(secret, str | None):
            raise ConfigError(
                f"{CLIENTS_FILE_ENV} {where}: [{platform}] needs client_id (and client_secret) "
                "as strings"
            )
        clients[platform] = Client(client_id, Secret(secret) if secret else None)
    return clients


def simulated_token_url(root: str, platform: str) -> str:
    """The simulator's token endpoint for ``platform`` under its base URL ``root``."""
    url = f"{root.rstrip('/')}/{platform}/{FLOWS[platform].sim_path}"
    return url.rstrip("/") if not FLOWS[platform].sim_path else url


def token_url(platform: str, settings: PlatformSettings) -> str:
    """The endpoint refreshes go to: the settings' (a config's ``token_url``, or the
    simulator's under STREAMQ_PLATFORM_URL), else the real one."""
    return settings.token_url or FLOWS[platform].token_url


def can_refresh(
    stored: StoredToken, now_ms: int, instagram_min_age_ms: int = INSTAGRAM_MIN_AGE_MS
) -> str | None:
    """Why this token cannot be renewed by a refresh (None: it can)."""
    if stored.platform == "instagram":
        if stored.expired(now_ms):
            return "instagram: the long-lived token expired; it cannot be refreshed"
        if now_ms - stored.issued_at_ms < instagram_min_age_ms:
            return "young"  # not refused: only not yet
        return None
    if stored.refresh_token is None:
        return f"{stored.platform}: no refresh token is stored"
    if stored.refresh_expires_at_ms is not None and now_ms >= stored.refresh_expires_at_ms:
        return f"{stored.platform}: the refresh token is past its life"
    return None


def oauth_client(platform: str, client: Client | None, timeout: float) -> Any:
    """Authlib's httpx OAuth 2.0 client for ``platform``'s token endpoint. A keeper keeps one
    per platform (making one costs a TLS context); a call passes the refresh token, so the
    client holds no account's state between calls."""
    flow = FLOWS[platform]
    return AsyncOAuth2Client(
        client_id=None if client is None else client.client_id,
        client_secret=(
            None
            if client is None or client.client_secret is None
            else client.client_secret.reveal()
        ),
        token_endpoint_auth_method=(
            "none"
            if flow.auth == "graph" or client is None or client.client_secret is None
            else flow.auth
        ),
        timeout=timeout,
        follow_redirects=False,
    )


async def refresh(
    platform: str,
    url: str,
    client: Client | None,
    stored: StoredToken,
    *,
    http: Any = None,
    api_version: str = "v21.0",
    timeout: float = 30.0,  # noqa: ASYNC109 - per request, passed on to httpx
) -> TokenSet:
    """Renew ``stored`` at the platform through ``http`` (an :func:`oauth_client`, else one
    made for this call); see the module docstring for the outcomes."""
    flow = FLOWS[platform]
    if flow.auth != "graph" and client is None:
        raise RefreshRefused(
            f"{platform}: no OAuth client configured "
            f"(STREAMQ_{platform.upper()}_CLIENT_ID or {CLIENTS_FILE_ENV})"
        )
    secrets = [s for s in (stored.access_token, stored.refresh_token) if s is not None]
    if client is not None and client.client_secret is not None:
        secrets.append(client.client_secret)
    own = http is None
    if own:
        http = oauth_client(platform, client, timeout)
    try:
        if platform == "instagram":
            return await _instagram(http, url, stored)
        if platform == "facebook":
            return await _facebook(http, url, api_version, client, stored)
        assert stored.refresh_token is not None
        extra: dict[str, str] = {}
        if platform == "tiktok" and client is not None:
            extra["client_key"] = client.client_id
        if platform == "x" and client is not None:
            extra["client_id"] = client.client_id
        # Authlib sets the client's token from the answer and returns it, with no await in
        # between: callers sharing the client each get their own answer.
        answer = await http.refresh_token(
            url, refresh_token=stored.refresh_token.reveal(), timeout=timeout, **extra
        )
    except OAuthError as exc:
        raise RefreshRefused(
            _scrub(f"{platform}: refresh refused: {exc.error}: {exc.description or ''}", secrets)
        ) from None
    except httpx.HTTPStatusError as exc:
        raise RefreshUnavailable(
            f"{platform}: token endpoint answered HTTP {exc.response.status_code}"
        ) from None
    except httpx.HTTPError as exc:
        raise RefreshUnavailable(
            _scrub(f"{platform}: token endpoint: {type(exc).__name__}: {exc}", secrets)
        ) from None
    finally:
        if own:
            await http.aclose()
    return _token_set(platform, answer, stored)


def _token_set(platform: str, answer: Mapping[str, Any], stored: StoredToken) -> TokenSet:
    try:
        tokens = TokenSet.from_answer(answer)
    except (ValueError, TypeError):
        raise RefreshUnavailable(f"{platform}: token endpoint answered without a token") from None
    # Google and LinkedIn keep the refresh token (and its life); scopes may go unsaid; the
    # user id is the account's, never the answer's.
    return dataclasses.replace(
        tokens,
        refresh_token=tokens.refresh_token or stored.refresh_token,
        refresh_expires_at_ms=tokens.refresh_expires_at_ms or stored.refresh_expires_at_ms,
        scopes=tokens.scopes or stored.scopes,
        user_id=stored.user_id,
    )


async def _graph_get(
    http: AsyncOAuth2Client, platform: str, url: str, params: Mapping[str, str]
) -> dict[str, Any]:
    """One Graph API GET; its error object becomes RefreshRefused (code 190 and the OAuth
    errors) or RefreshUnavailable (transient, throttled)."""
    response = await http.request("GET", url, params=dict(params), withhold_token=True)
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code >= 500 or response.status_code == 429:
        raise RefreshUnavailable(f"{platform}: token endpoint answered HTTP {response.status_code}")
    if not isinstance(body, dict):
        raise RefreshUnavailable(f"{platform}: token endpoint answered without JSON")
    error = body.get("error")
    if isinstance(error, dict):
        if error.get("is_transient") or error.get("code") in (1, 2, 4, 17, 32, 613):
            raise RefreshUnavailable(f"{platform}: token endpoint: code {error.get('code')}")
        raise OAuthError(
            error=f"code {error.get('code')}/{error.get('error_subcode', '-')}",
            description=str(error.get("message") or ""),
        )
    return body


async def _instagram(http: AsyncOAuth2Client, url: str, stored: StoredToken) -> TokenSet:
    assert stored.access_token is not None
    body = await _graph_get(
        http,
        "instagram",
        url,
        {"grant_type": "ig_refresh_token", "access_token": stored.access_token.reveal()},
    )
    tokens = TokenSet.from_answer(body)
    return TokenSet(
        access_token=tokens.access_token,
        expires_at_ms=tokens.expires_at_ms,
        scopes=stored.scopes,
        user_id=stored.user_id,
        issued_at_ms=tokens.issued_at_ms,
    )


async def _facebook(
    http: AsyncOAuth2Client,
    url: str,
    api_version: str,
    client: Client | None,
    stored: StoredToken,
) -> TokenSet:
    """A new long-lived user token for the one about to end, then the Page's token from it."""
    if client is None or client.client_secret is None:
        raise OAuthError(error="no_client", description="STREAMQ_FACEBOOK_CLIENT_ID and _SECRET")
    if stored.refresh_token is None or not stored.user_id:
        raise OAuthError(error="no_user_token", description="no long-lived user token stored")
    base = url.rstrip("/")
    user = await _graph_get(
        http,
        "facebook",
        f"{base}/{api_version}/oauth/access_token",
        {
            "grant_type": "fb_exchange_token",
            "client_id": client.client_id,
            "client_secret": client.client_secret.reveal(),
            "fb_exchange_token": stored.refresh_token.reveal(),
        },
    )
    user_tokens = TokenSet.from_answer(user)
    page = await _graph_get(
        http,
        "facebook",
        f"{base}/{api_version}/{stored.user_id}",
        {"fields": "access_token", "access_token": user_tokens.access_token.reveal()},
    )
    page_token = page.get("access_token")
    if not isinstance(page_token, str) or not page_token:
        raise RefreshUnavailable("facebook: the page answered without its access_token")
    return TokenSet(
        access_token=Secret(page_token),
        refresh_token=user_tokens.access_token,
        # A Page token derived from a long-lived user token lives as long as that user token.
        expires_at_ms=user_tokens.expires_at_ms,
        scopes=stored.scopes,
        user_id=stored.user_id,
        issued_at_ms=user_tokens.issued_at_ms,
    )


def _scrub(text: str, secrets: list[Secret]) -> str:
    line = text
    for secret in secrets:
        line = secret.scrub(line)
    return clean(line)


def now_ms() -> int:
    return int(time.time() * 1000)

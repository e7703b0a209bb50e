"""The simulator's token endpoints: each platform's refresh, as the real one behaves.

    /x/2/oauth2/token                  POST  refresh_token grant (Basic client auth); rotates:
                                             the refresh token used is revoked
    /youtube/token                     POST  refresh_token grant; the refresh token stays
    /tiktok/v2/oauth/token/            POST  refresh_token grant with client_key; rotates
    /linkedin/oauth/v2/accessToken     POST  refresh_token grant; the refresh token stays
    /instagram/refresh_access_token    GET   ig_refresh_token: a long-lived token at least
                                             ``ig_min_age`` old, not expired, for a new one
    /facebook/{v}/oauth/access_token   GET   fb_exchange_token: a user token for a new one
    /facebook/{v}/{page}?fields=access_token   GET  the Page's token, with a user token
    /_sim/oauth/grant                  POST  {"platform", "user"}: a sign-in (tokens to put)
    /_sim/oauth/revoke                 POST  {"platform", "user"}: the user revokes consent

Access tokens it issues expire ``access_ttl`` seconds after issue (default: the platform's real
life); old access tokens keep working until then. A refresh token that was rotated away or
revoked is answered with the platform's own error (``invalid_grant``; X's
``invalid_request``) and counted, so a test can assert that none was ever presented.
Refreshes are counted per account, with those made while the account's newest access token
still had more than half its life ("early": a second refresh for the same expiry), and the
least part of its life any newest token had lived when it was refreshed
(``youngest_refreshed_life``: a client that refreshes in the last 10 % of a token's life and
never twice for one expiry keeps it at 0.9 or more).
"""

from __future__ import annotations

import base64
import secrets
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

if TYPE_CHECKING:
    from streamq.simulator import Simulator

REAL_LIFE: Final = {
    "x": 7200.0,
    "youtube": 3600.0,
    "tiktok": 86400.0,
    "linkedin": 60 * 86400.0,
    "instagram": 60 * 86400.0,
    "facebook": 60 * 86400.0,
}
ROTATING: Final = ("x", "tiktok")
CONFIDENTIAL: Final = ("x", "youtube", "tiktok", "linkedin", "facebook")


@dataclass(slots=True)
class Issued:
    platform: str
    user: str
    issued_at: float
    expires_at: float
    kind: str = "access"
    """'access', or 'user' (a Facebook user token), or 'page'."""


@dataclass(slots=True)
class Grant:
    platform: str
    user: str
    revoked: bool = False


class OAuthSim:
    """Token state and endpoints; a Simulator owns one (``sim.oauth``)."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.issued: dict[str, Issued] = {}
        self.grants: dict[str, Grant] = {}
        self.latest: dict[tuple[str, str], Issued] = {}
        self.refreshes: Counter[str] = Counter()
        """'<platform>/<user>' -> refreshes answered with a new token."""
        self.early = 0
        self.youngest_refreshed_life: float | None = None
        """The least fraction of its life an account's newest token had lived when a refresh
        replaced it (None: no refresh yet)."""
        self.revoked_presented = 0
        self.refused = 0
        self.failures_left: Counter[str] = Counter()
        """'<platform>' -> how many coming refreshes answer 503 (a test's outage)."""
        self.hold = 0.0
        """Seconds a rotating refresh holds its answer after the rotation (a window in which
        to kill the client that asked: the hard case of a refresh lost with its process)."""

    def reset(self) -> None:
        self.issued.clear()
        self.grants.clear()
        self.latest.clear()
        self.refreshes.clear()
        self.early = self.revoked_presented = self.refused = 0
        self.youngest_refreshed_life = None

    def summary(self) -> dict[str, Any]:
        return {
            "refreshes": sum(self.refreshes.values()),
            "refreshes_by_account": dict(self.refreshes),
            "early_refreshes": self.early,
            "youngest_refreshed_life": self.youngest_refreshed_life,
            "revoked_refresh_presented": self.revoked_presented,
            "refresh_refused": self.refused,
        }

    # -- the rules ------------------------------------------------------------------------------

    def life(self, platform: str) -> float:
        ttl = self.sim.options.access_ttls.get(platform, self.sim.options.access_ttl)
        return ttl if ttl is not None else REAL_LIFE[platform]

    def _issue(self, platform: str, user: str, kind: str = "access") -> tuple[str, Issued]:
        now = time.monotonic()
        token = f"{platform[:2]}{kind[0]}.{secrets.token_urlsafe(24)}"
        issued = Issued(platform, user, now, now + self.life(platform), kind)
        self.issued[token] = issued
        if kind != "user":
            self.latest[(platform, user)] = issued
        return token, issued

    def _grant(self, platform: str, user: str) -> str:
        token = f"{platform[:2]}r.{secrets.token_urlsafe(32)}"
        self.grants[token] = Grant(platform, user)
        return token

    def sign_in(self, platform: str, user: str) -> dict[str, Any]:
        """What the platform answers at the end of a sign-in: the tokens an app puts."""
        life = self.life(platform)
        if platform == "facebook":
            user_token, _ = self._issue(platform, user, "user")
            page_token, page = self._issue(platform, user, "page")
            page.expires_at = self.issued[user_token].expires_at
            return {
                "access_token": page_token,
                "refresh_token": user_token,
                "expires_in": life,
                "user_id": user,
            }
        access, _ = self._issue(platform, user)
        answer: dict[str, Any] = {"access_token": access, "expires_in": life, "user_id": user}
        if platform != "instagram":
            answer["refresh_token"] = self._grant(platform, user)
        return answer

    def revoke(self, platform: str, user: str) -> int:
        """The user revoked the app's consent: every refresh token of theirs stops working."""
        count = 0
        for grant in self.grants.values():
            if grant.platform == platform and grant.user == user and not grant.revoked:
                grant.revoked = True
                count += 1
        return count

    def check(self, token: str) -> tuple[str, bool] | None:
        """(user, expired) for a token this simulator issued, None for another."""
        issued = self.issued.get(token)
        if issued is None:
            return None
        return issued.user, time.monotonic() >= issued.expires_at

    def _count_refresh(self, platform: str, user: str) -> None:
        latest = self.latest.get((platform, user))
        if latest is not None:
            life = latest.expires_at - latest.issued_at
            now = time.monotonic()
            if now < latest.issued_at + life / 2:
                self.early += 1
            lived = (now - latest.issued_at) / life if life > 0 else 1.0
            if self.youngest_refreshed_life is None or lived < self.youngest_refreshed_life:
                self.youngest_refreshed_life = lived
        self.refreshes[f"{platform}/{user}"] += 1

    # -- endpoints ------------------------------------------------------------------------------

    def routes(self) -> list[tuple[str, Any, tuple[str, ...]]]:
        return [
            ("/_sim/oauth/grant", self._sign_in, ("POST",)),
            ("/_sim/oauth/revoke", self._revoke, ("POST",)),
            ("/x/2/oauth2/token", self._refresh_grant, ("POST",)),
            ("/youtube/token", self._refresh_grant, ("POST",)),
            ("/tiktok/v2/oauth/token/", self._refresh_grant, ("POST",)),
            ("/linkedin/oauth/v2/accessToken", self._refresh_grant, ("POST",)),
            ("/instagram/refresh_access_token", self._instagram, ("GET",)),
            ("/facebook/{version}/oauth/access_token", self._facebook_exchange, ("GET",)),
            ("/facebook/{version}/{node}", self._facebook_page, ("GET",)),
        ]

    async def _sign_in(self, request: Request) -> Response:
        body = await request.json()
        platform, user = body.get("platform"), body.get("user")
        if platform not in REAL_LIFE or not isinstance(user, str) or not user:
            return JSONResponse({"error": 'give {"platform", "user"}'}, status_code=400)
        return JSONResponse(self.sign_in(platform, user))

    async def _revoke(self, request: Request) -> Response:
        body = await request.json()
        count = self.revoke(str(body.get("platform")), str(body.get("user")))
        return JSONResponse({"revoked": count})

    async def _refresh_grant(self, request: Request) -> Response:
        platform = request.url.path.strip("/").split("/")[0]
        if self.sim.options.latency > 0:
            import asyncio

            await asyncio.sleep(self.sim.options.latency)
        self.sim.counts.requests += 1
        if self.failures_left[platform] > 0:
            self.failures_left[platform] -= 1
            return JSONResponse({"error": "temporarily_unavailable"}, status_code=503)
        form = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
        client = _client_id(request, form, platform)
        if platform in CONFIDENTIAL and client is None:
            self.refused += 1
            if platform == "x":
                return _oauth_error(
                    401, "unauthorized_client", "Missing valid authorization header"
                )
            return _oauth_error(401, "invalid_client", "The OAuth client was not found.")
        if form.get("grant_type") != "refresh_token":
            return _oauth_error(400, "unsupported_grant_type", "grant_type must be refresh_token")
        presented = str(form.get("refresh_token", ""))
        grant = self.grants.get(presented)
        if grant is None or grant.platform != platform or grant.revoked:
            self.refused += 1
            if grant is not None and grant.revoked:
                self.revoked_presented += 1
            return _refused(platform)
        self._count_refresh(platform, grant.user)
        access, _ = self._issue(platform, grant.user)
        answer: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": int(self.life(platform)) or self.life(platform),
            "scope": _SCOPES[platform],
        }
        if platform in ROTATING:
            grant.revoked = True  # rotation: the one used is spent
            answer["refresh_token"] = self._grant(platform, grant.user)
            if self.hold > 0:
                import asyncio

                await asyncio.sleep(self.hold)
        if platform == "tiktok":
            answer["open_id"] = grant.user
            answer["refresh_expires_in"] = 365 * 86400
        if platform == "linkedin":
            answer["refresh_token"] = presented  # the same one, its life not extended
            answer["refresh_token_expires_in"] = 365 * 86400
        return JSONResponse(answer)

    async def _instagram(self, request: Request) -> Response:
        self.sim.counts.requests += 1
        query = request.query_params
        token = query.get("access_token", "")
        issued = self.issued.get(token)
        now = time.monotonic()
        if query.get("grant_type") != "ig_refresh_token":
            return _graph_error(400, 100, "Unsupported grant_type")
        if issued is None or issued.platform != "instagram" or now >= issued.expires_at:
            self.refused += 1
            return _graph_error(400, 190, "Error validating access token: Session has expired")
        if now - issued.issued_at < self.sim.options.ig_min_age:
            self.refused += 1
            return _graph_error(400, 190, "The access token is less than 24 hours old")
        self._count_refresh("instagram", issued.user)
        access, _ = self._issue("instagram", issued.user)
        return JSONResponse(
            {"access_token": access, "token_type": "bearer", "expires_in": self.life("instagram")}
        )

    async def _facebook_exchange(self, request: Request) -> Response:
        self.sim.counts.requests += 1
        query = request.query_params
        if not query.get("client_id") or not query.get("client_secret"):
            self.refused += 1
            return _graph_error(400, 101, "Error validating application. Invalid application ID.")
        if query.get("grant_type") != "fb_exchange_token":
            return _graph_error(400, 100, "Unsupported grant_type")
        issued = self.issued.get(query.get("fb_exchange_token", ""))
        if issued is None or issued.kind != "user" or time.monotonic() >= issued.expires_at:
            self.refused += 1
            return _graph_error(400, 190, "Error validating access token: Session has expired", 463)
        self._count_refresh("facebook", issued.user)
        user_token, _ = self._issue("facebook", issued.user, "user")
        life = self.life("facebook")
        return JSONResponse(
            {"access_token": user_token, "token_type": "bearer", "expires_in": life}
        )

    async def _facebook_page(self, request: Request) -> Response:
        self.sim.counts.requests += 1
        page = request.path_params["node"]
        if request.query_params.get("fields") != "access_token":
            return _graph_error(400, 100, "(#100) Tried accessing nonexisting field")
        auth = request.headers.get("authorization", "")
        token = auth[7:] if auth.lower().startswith("bearer ") else ""
        issued = self.issued.get(request.query_params.get("access_token", "") or token)
        if issued is None or issued.kind != "user" or time.monotonic() >= issued.expires_at:
            return _graph_error(400, 190, "Error validating access token: Session has expired", 463)
        if issued.user != page:
            return _graph_error(403, 200, "(#200) The user does not manage this Page")
        page_token, page_issued = self._issue("facebook", page, "page")
        page_issued.expires_at = issued.expires_at
        return JSONResponse({"access_token": page_token, "id": page})


_SCOPES: Final = {
    "x": "tweet.read tweet.write users.read offline.access",
    "youtube": "https://www.googleapis.com/auth/youtube.upload",
    "tiktok": "user.info.basic,video.publish",
    "linkedin": "w_member_social",
}


def _client_id(request: Request, form: dict[str, Any], platform: str) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("basic "):
        try:
            client_id, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
        except ValueError:
            return None
        return client_id if client_id and secret else None
    key = "client_key" if platform == "tiktok" else "client_id"
    if platform == "x":  # a public client: client_id alone (PKCE apps)
        return str(form["client_id"]) if form.get("client_id") else None
    if form.get(key) and form.get("client_secret"):
        return str(form[key])
    return None


def _oauth_error(status: int, error: str, description: str) -> Response:
    return JSONResponse({"error": error, "error_description": description}, status_code=status)


def _refused(platform: str) -> Response:
    """A refresh token that was rotated away, revoked or never issued, as each platform says."""
    if platform == "x":
        return _oauth_error(400, "invalid_request", "Value passed for the token was invalid.")
    if platform == "youtube":
        return _oauth_error(400, "invalid_grant", "Token has been expired or revoked.")
    if platform == "tiktok":
        body = {
            "error": "invalid_grant",
            "error_description": "Refresh token is invalid or expired.",
            "log_id": "sim",
        }
        return JSONResponse(body, status_code=400)
    return _oauth_error(
        400,
        "invalid_grant",
        "The provided authorization grant or refresh token is invalid, expired or revoked",
    )


def _graph_error(status: int, code: int, message: str, subcode: int | None = None) -> Response:
    error: dict[str, Any] = {"message": message, "type": "OAuthException", "code": code}
    if subcode is not None:
        error["error_subcode"] = subcode
    error["fbtrace_id"] = "SimOAuth"
    return JSONResponse({"error": error}, status_code=status)

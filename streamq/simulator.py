"""A local imitation of the platforms' publishing endpoints, for tests, benchmarks and the demo.

``streamq simulate`` (or :class:`Simulator` from Python) serves, on loopback only, the
requests the built-in publishers make — each platform under its own prefix, so
``STREAMQ_PLATFORM_URL=http://127.0.0.1:8787`` sends every publisher to it:

    /facebook/{v}/{page}/feed                     POST  a Page post
    /facebook/{v}/{page}/feed|posts?since=T       GET   the Page's posts since T (Unix s)
    /instagram/{v}/{user}/media                   POST  a container (image, reel, carousel)
    /instagram/{v}/{user}/media?since=T           GET   the user's published media since T
    /instagram/{v}/{container}?fields=status_code GET   IN_PROGRESS, FINISHED, PUBLISHED, ERROR
    /instagram/{v}/{user}/media_publish           POST  publish a container (once)
    /instagram/{v}/{media}/comments               POST  a comment (``message``) on a media
    /instagram/{v}/{media}/comments?since=T       GET   the media's comments, newest first
    /linkedin/rest/posts                          POST  a post (URN in x-restli-id)
    /linkedin/rest/posts?q=author&author=URN      GET   the author's posts, newest first
    /x/{v}/tweets                                 POST  a post
    /x/{v}/users/me                               GET   the token's user
    /x/{v}/users/{id}/tweets?start_time=ISO       GET   the user's timeline since then
    /tiktok/{v}/post/publish/video/init/          POST  a video post, pulled from a URL
    /tiktok/{v}/post/publish/status/fetch/        POST  its status (PUBLISH_COMPLETE, post ids)
    /tiktok/{v}/video/list/                       POST  the user's videos, newest first
    /youtube/upload/youtube/{v}/videos            POST  an upload session (its URI in Location)
    <the session URI>                             PUT   the bytes; or, empty with
                                                        Content-Range: bytes */N, its status:
                                                        308 incomplete, 200 with the video
    /{platform}/_sim/lookup?key=K                 GET   the simulator's own: the post made with
                                                        idempotency key K (no publisher uses it)

Answers and errors have each platform's own shape (Graph API error objects, LinkedIn's
serviceErrorCode, X's problem JSON, TikTok's error.code, Google's error.errors[].reason),
with what real platforms do on top: latency, transient 5xx, 429 with Retry-After past a rate
limit, tokens that expire, X and LinkedIn refusing a duplicate text, media that takes a moment
to process. Faults can be scripted per request (:class:`Fault`): an error of any class, an
answer delayed past the client's timeout after the post was accepted, a 502 or a dropped
connection after acceptance; the same three come at random with ``slow_rate``,
``lost_answer_rate`` and ``drop_rate``.

A request that makes something is committed before the answer's latency: a sender that dies
(or gives up) while the answer is on its way leaves the post made, as on a real platform.

Every accepted post is recorded with its idempotency key (``GET /_sim/posts``,
``Simulator.posts``; comments in ``Simulator.comments``), so a test or the demo counts lost
and duplicated posts exactly. The simulator never deduplicates by key itself: a post (or a
comment) sent twice is recorded twice.

    GET  /_sim/posts[?platform=P]   every post received     GET  /_sim/summary   counts
    POST /_sim/faults               add a Fault (JSON)      DELETE /_sim/faults  clear them
    POST /_sim/tokens/expire        {"token": ...}          POST /_sim/reset     forget all

Token endpoints for every platform's refresh (and a sign-in to start from) are in
streamq.simoauth: ``sim.oauth``.
    GET  /_sim/media/{name}         bytes for video_url / image_url (?bytes=N)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import math
import random
import socket
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qsl

import msgspec
import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from streamq.config import parse_duration
from streamq.errors import ConfigError
from streamq.simoauth import OAuthSim

log = logging.getLogger("streamq.simulator")

PLATFORMS = ("facebook", "instagram", "linkedin", "x", "tiktok", "youtube")
LOOPBACK = ("127.0.0.1", "::1", "localhost")

FaultKind = Literal[
    "transient",
    "rate_limit",
    "platform_limit",
    "token_expired",
    "permission",
    "policy",
    "invalid",
    "hang",
    "lost_answer",
    "drop",
]
Step = Literal["create", "status", "publish", "comment", "lookup"]
_AFTER_ACCEPT = ("hang", "lost_answer", "drop")
_DROPPED_LOG = "ASGI callable returned without completing response."


class Fault(msgspec.Struct, kw_only=True):
    """A scripted answer for the requests it matches.

    ``kind``: an error class answered instead of accepting the post (``transient``,
    ``rate_limit`` — 429 with Retry-After —, ``platform_limit`` — the platform's own
    rate-limit signal —, ``token_expired`` — and the token stays expired —, ``permission``,
    ``policy``, ``invalid``), or, after accepting the post, ``hang`` (answer only after
    ``seconds``: a client timeout after send, or a window to kill a worker in),
    ``lost_answer`` (a 502 instead of the success: the post exists, the client cannot know)
    and ``drop`` (the connection closes in the middle of the answer).

    Steps: ``create`` makes something that is not yet a post (an Instagram container, a
    YouTube upload session); ``publish`` makes the post (a Facebook, LinkedIn or X post, an
    Instagram media_publish, a TikTok init, a YouTube upload); ``comment`` makes an Instagram
    comment; ``status`` asks about a container, a TikTok publish or an upload session;
    ``lookup`` lists posts or comments (and ``_sim/lookup``).
    """

    kind: FaultKind
    platform: str | None = None
    """Only this platform's requests (None: any)."""
    step: Step = "publish"
    """Which request of a publish: the one that makes the post, by default."""
    match: str | None = None
    """Only requests whose post text contains this, or whose idempotency key is this."""
    times: int = 1
    """How many requests it answers; 0 means every matching one."""
    seconds: float = 1.0
    """hang: delay before answering; rate_limit: the Retry-After sent."""


class SimPost(msgspec.Struct):
    """One post the simulator accepted."""

    platform: str
    id: str
    key: str | None
    """The Idempotency-Key the publisher sent (streamq's job id)."""
    user: str
    text: str
    at_ms: int
    media: list[str] = msgspec.field(default_factory=list)


class SimComment(msgspec.Struct):
    """One comment the simulator accepted (Instagram's ``/{media}/comments``)."""

    platform: str
    id: str
    media_id: str
    key: str | None
    """The Idempotency-Key the publisher sent (streamq's job id)."""
    user: str
    text: str
    at_ms: int


class SimOptions(msgspec.Struct, kw_only=True):
    latency: float = 0.0
    """Mean seconds before each platform answer (spread +/- 50 %)."""
    error_rate: float = 0.0
    """Share of platform requests answered with a transient 5xx, before anything happens."""
    lost_answer_rate: float = 0.0
    """Share of posts (and containers, upload sessions) accepted and then answered with a 502,
    as a gateway that lost the backend's answer would: the post exists though the publisher
    saw an error."""
    drop_rate: float = 0.0
    """Share accepted and then answered with a connection closed mid-answer (no status)."""
    slow_rate: float = 0.0
    """Share accepted and then answered only after ``slow_seconds`` (past a client timeout)."""
    slow_seconds: float = 5.0
    rate_limit: tuple[int, float] | None = None
    """At most this many posts per token in any window of that many seconds; beyond, 429."""
    token_ttl: float | None = None
    """A token expires this long after the simulator first sees it (tokens it did not issue)."""
    access_ttl: float | None = None
    """Life of the access tokens its token endpoints issue (None: each platform's real one)."""
    access_ttls: dict[str, float] = msgspec.field(default_factory=dict)
    """Per platform, before ``access_ttl``."""
    ig_min_age: float = 86400.0
    """Instagram refreshes a long-lived token only once it is this old."""
    processing: float = 0.2
    """Seconds a container, a TikTok pull or an upload takes to process."""
    refuse_duplicates: bool = True
    """X and LinkedIn refuse a post whose text one of the user's posts already has."""
    seed: int | None = None


def parse_rate(text: str) -> tuple[int, float]:
    """``"10/1s"`` → (10, 1.0): at most 10 posts per token per second."""
    count, sep, window = text.partition("/")
    try:
        number = int(count)
    except ValueError:
        number = 0
    if not sep or number < 1:
        raise ConfigError(f"rate limit must look like '10/1s' (posts per window), not {text!r}")
    seconds = parse_duration(window or "1s", "rate limit window")
    if seconds <= 0:
        raise ConfigError("rate limit window must be positive")
    return number, seconds


class _Answer(Exception):
    def __init__(self, response: Response) -> None:
        super().__init__("answer")
        self.response = response


@dataclass(slots=True)
class _Ctx:
    platform: str
    step: Step
    token: str
    key: str | None
    form: dict[str, Any]
    after: Fault | None = None
    lost: bool = False
    dropped: bool = False
    slow: bool = False


@dataclass(slots=True)
class _Container:
    id: str
    user: str
    fields: dict[str, Any]
    ready_at: float
    key: str | None
    status: str = "IN_PROGRESS"
    media_id: str | None = None


@dataclass(slots=True)
class _Upload:
    """A YouTube resumable upload session: the video's metadata, then (once) its bytes."""

    form: dict[str, Any]
    user: str
    video: dict[str, Any] | None = None


@dataclass(slots=True)
class _Counts:
    requests: int = 0
    rate_limited: int = 0
    transient: int = 0
    lost_answers: int = 0
    dropped: int = 0
    hung: int = 0
    refused: int = 0
    token_errors: int = 0
    lookups: int = 0
    found: int = 0
    key_lookups: int = 0
    """Asks of ``_sim/lookup`` (by the client's marker, which no real platform offers: no
    publisher may use it, so a run against the simulator cannot rely on it)."""
    by_kind: Counter[str] = field(default_factory=Counter)


def _token_id(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:10]


class Simulator:
    """The platforms' endpoints, in memory. ``async with sim.serve() as url:`` runs it."""

    def __init__(self, options: SimOptions | None = None) -> None:
        self.options = options or SimOptions()
        self.posts: list[SimPost] = []
        self.comments: list[SimComment] = []
        self.faults: list[Fault] = []
        self.counts = _Counts()
        self._rng = random.Random(self.options.seed)
        self._ids = itertools.count(1)
        self._first_seen: dict[str, float] = {}
        self._expired: set[str] = set()
        self._windows: dict[tuple[str, str], deque[float]] = defaultdict(deque)
        self._containers: dict[str, _Container] = {}
        self._ig_media: dict[str, str] = {}
        """Published Instagram media id -> its user: what comments may go on."""
        self._tiktok: dict[str, tuple[str, float]] = {}
        self._uploads: dict[str, _Upload] = {}
        self._lock = threading.Lock()
        self._closing = asyncio.Event()
        self._url: str | None = None
        self.oauth = OAuthSim(self)
        self.app = Starlette(routes=self._routes())

    @property
    def url(self) -> str:
        """The base URL while it serves (``http://127.0.0.1:PORT``)."""
        if self._url is None:
            raise RuntimeError("the simulator is not serving: use 'async with sim.serve():'")
        return self._url

    # -- the Python API -------------------------------------------------------------------------

    def add_fault(self, fault: Fault) -> None:
        with self._lock:
            self.faults.append(fault)

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def expire_token(self, token: str) -> None:
        """From now on, requests with this token get the platform's expired-token error."""
        self._expired.add(token)

    def reset(self) -> None:
        with self._lock:
            self.posts.clear()
            self.comments.clear()
            self._ig_media.clear()
            self.faults.clear()
            self.counts = _Counts()
            self._expired.clear()
            self._first_seen.clear()
            self._windows.clear()
            self._containers.clear()
            self._tiktok.clear()
            self._uploads.clear()
            self.oauth.reset()

    def posts_for(self, key: str) -> list[SimPost]:
        return [post for post in list(self.posts) if post.key == key]

    def duplicates(self) -> dict[str, int]:
        """Idempotency keys received more than once -> how many posts (or comments) each
        made."""
        made: list[SimPost | SimComment] = [*self.posts, *self.comments]
        by_key = Counter(item.key for item in made if item.key is not None)
        return {key: n for key, n in by_key.items() if n > 1}

    def summary(self) -> dict[str, Any]:
        posts = list(self.posts)
        by_platform: dict[str, dict[str, int]] = {}
        for platform in PLATFORMS:
            mine = [p for p in posts if p.platform == platform]
            keyed = Counter(p.key for p in mine if p.key is not None)
            by_platform[platform] = {
                "posts": len(mine),
                "duplicates": sum(n - 1 for n in keyed.values()),
            }
        counts = self.counts
        return {
            "posts": len(posts),
            "comments": len(self.comments),
            "duplicates": sum(n - 1 for n in self.duplicates().values()),
            "by_platform": by_platform,
            "requests": counts.requests,
            "rate_limited": counts.rate_limited,
            "transient": counts.transient,
            "lost_answers": counts.lost_answers,
            "dropped": counts.dropped,
            "hung": counts.hung,
            "refused": counts.refused,
            "token_errors": counts.token_errors,
            "lookups": counts.lookups,
            "found_by_lookup": counts.found,
            "key_lookups": counts.key_lookups,
            **self.oauth.summary(),
        }

    @contextlib.asynccontextmanager
    async def serve(self, port: int = 0, host: str = "127.0.0.1") -> AsyncIterator[str]:
        """Serve on loopback until the block ends; yields the base URL."""
        if host not in LOOPBACK:
            raise ConfigError(f"the simulator listens on loopback only, not {host!r}")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise ConfigError(f"simulator cannot listen on {host}:{port}: {exc.strerror}") from None
        sock.listen(1024)
        sock.setblocking(False)
        bound = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
            timeout_keep_alive=30,
        )
        server = _QuietServer(config)
        self._closing = asyncio.Event()
        task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
        try:
            while not server.started:
                if task.done():
                    task.result()
                    raise ConfigError("simulator stopped while starting")
                await asyncio.sleep(0.01)
            shown = f"[{host}]" if ":" in host else host
            self._url = f"http://{shown}:{bound}"
            yield self._url
        finally:
            self._url = None
            self._closing.set()  # hung answers end now
            server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.shield(task)
            sock.close()

    # -- the shared steps of every endpoint -----------------------------------------------------

    def _routes(self) -> list[Route]:
        def route(
            path: str, endpoint: Callable[[Request], Awaitable[Response]], *methods: str
        ) -> Route:
            return Route(path, _answering(endpoint), methods=list(methods))

        def platform(
            path: str, endpoint: Callable[[Request], Awaitable[Response]], *methods: str
        ) -> Route:
            return Route(path, self._after_latency(endpoint), methods=list(methods))

        return [
            route("/_sim/posts", self._list_posts, "GET"),
            route("/_sim/summary", self._summary, "GET"),
            route("/_sim/faults", self._faults, "POST", "DELETE", "GET"),
            route("/_sim/tokens/expire", self._expire, "POST"),
            route("/_sim/reset", self._reset, "POST"),
            route("/_sim/media/{name}", self._media, "GET"),
            platform("/{platform}/_sim/lookup", self._lookup, "GET"),
            platform("/facebook/{version}/{node}/feed", self._facebook_feed, "POST"),
            platform("/facebook/{version}/{node}/feed", self._facebook_list, "GET"),
            platform("/facebook/{version}/{node}/posts", self._facebook_list, "GET"),
            platform("/instagram/{version}/{node}/media", self._instagram_media, "POST"),
            platform("/instagram/{version}/{node}/media", self._instagram_list, "GET"),
            platform("/instagram/{version}/{node}/media_publish", self._instagram_publish, "POST"),
            platform("/instagram/{version}/{node}/comments", self._instagram_comment, "POST"),
            platform("/instagram/{version}/{node}/comments", self._instagram_comments, "GET"),
            platform("/instagram/{version}/{node}", self._instagram_status, "GET"),
            platform("/linkedin/rest/posts", self._linkedin_post, "POST"),
            platform("/linkedin/rest/posts", self._linkedin_list, "GET"),
            platform("/x/{version}/tweets", self._x_post, "POST"),
            platform("/x/{version}/users/me", self._x_me, "GET"),
            platform("/x/{version}/users/{user}/tweets", self._x_list, "GET"),
            platform("/tiktok/{version}/post/publish/video/init/", self._tiktok_init, "POST"),
            platform("/tiktok/{version}/post/publish/status/fetch/", self._tiktok_status, "POST"),
            platform("/tiktok/{version}/video/list/", self._tiktok_list, "POST"),
            platform(
                "/youtube/upload/youtube/{version}/videos", self._youtube_upload, "POST", "PUT"
            ),
            *(route(path, endpoint, *methods) for path, endpoint, methods in self.oauth.routes()),
        ]

    def _after_latency(
        self, endpoint: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """A platform endpoint: it does its work (and commits what it makes) at once, then
        the answer takes the latency, so a sender that dies meanwhile loses only the answer."""

        async def run(request: Request) -> Response:
            try:
                response = await endpoint(request)
            except _Answer as answer:
                response = answer.response
            except ClientDisconnect:
                # The sender died while its request's body was on its way (a worker killed
                # mid-upload): nothing was taken, and there is no one to answer.
                return Response(status_code=499)
            if self.options.latency > 0:
                await asyncio.sleep(self.options.latency * self._rng.uniform(0.5, 1.5))
            return response

        return run

    async def _open(self, request: Request, platform: str, step: Step) -> _Ctx:
        """The body and the token: what every platform request goes through first."""
        self.counts.requests += 1
        form: dict[str, Any] = dict(request.query_params)
        raw = await request.body()
        kind = request.headers.get("content-type", "")
        if raw and "json" in kind:
            try:
                loaded = json.loads(raw)
            except ValueError:
                raise _Answer(self._error(platform, "invalid", "body is not JSON")) from None
            if isinstance(loaded, dict):
                form.update(loaded)
        elif raw and "form" in kind:
            form.update(parse_qsl(raw.decode(), keep_blank_values=True))
        elif raw:
            form["_bytes"] = len(raw)
        auth = request.headers.get("authorization", "")
        token = (
            auth[7:] if auth.lower().startswith("bearer ") else str(form.get("access_token", ""))
        )
        if not token:
            self.counts.token_errors += 1
            raise _Answer(self._error(platform, "token_expired", "no access token"))
        now = time.monotonic()
        issued = self.oauth.check(token)
        if issued is not None:
            expired = issued[1]
        else:
            first = self._first_seen.setdefault(token, now)
            ttl = self.options.token_ttl
            expired = ttl is not None and now - first > ttl
        if token in self._expired or expired:
            self.counts.token_errors += 1
            raise _Answer(self._error(platform, "token_expired", "token expired"))
        key = request.headers.get("idempotency-key")
        return _Ctx(platform, step, token, key, form)

    def _gate(self, ctx: _Ctx, text: str) -> None:
        """Scripted faults, random transient errors and the rate limit, before accepting."""
        fault = self._take_fault(ctx, text)
        if fault is not None and fault.kind in _AFTER_ACCEPT:
            ctx.after = fault
        elif fault is not None:
            self.counts.by_kind[fault.kind] += 1
            if fault.kind == "token_expired":
                self._expired.add(ctx.token)
                self.counts.token_errors += 1
            elif fault.kind in ("rate_limit", "platform_limit"):
                self.counts.rate_limited += 1
            elif fault.kind == "transient":
                self.counts.transient += 1
            else:
                self.counts.refused += 1
            raise _Answer(self._error(ctx.platform, fault.kind, "scripted fault", fault.seconds))
        if ctx.step == "lookup":
            return
        if self.options.error_rate and self._rng.random() < self.options.error_rate:
            self.counts.transient += 1
            raise _Answer(self._error(ctx.platform, "transient", "random failure"))
        if ctx.step not in ("create", "publish", "comment"):
            return
        if ctx.step == "publish" and self.options.rate_limit is not None:
            count, window = self.options.rate_limit
            starts = self._windows[(ctx.platform, ctx.token)]
            now = time.monotonic()
            while starts and starts[0] <= now - window:
                starts.popleft()
            if len(starts) >= count:
                self.counts.rate_limited += 1
                wait = max(1, math.ceil(starts[0] + window - now))
                raise _Answer(self._error(ctx.platform, "rate_limit", "rate limited", wait))
            starts.append(now)
        if ctx.after is None:
            draw = self._rng.random()
            options = self.options
            ctx.lost = draw < options.lost_answer_rate
            draw -= options.lost_answer_rate
            ctx.dropped = 0 <= draw < options.drop_rate
            draw -= options.drop_rate
            ctx.slow = 0 <= draw < options.slow_rate

    def _take_fault(self, ctx: _Ctx, text: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.platform not in (None, ctx.platform) or fault.step != ctx.step:
                    continue
                if fault.match is not None and fault.match not in text and fault.match != ctx.key:
                    continue
                if fault.times > 0:
                    fault.times -= 1
                    if fault.times == 0:
                        self.faults.remove(fault)
                return fault
        return None

    def _record(self, ctx: _Ctx, post_id: str, user: str, text: str, media: list[str]) -> SimPost:
        post = SimPost(ctx.platform, post_id, ctx.key, user, text, int(time.time() * 1000), media)
        self.posts.append(post)
        return post

    async def _deliver(self, ctx: _Ctx, response: Response) -> Response:
        """The answer to an accepted request, unless a fault delays, loses or drops it."""
        kind = ctx.after.kind if ctx.after is not None else None
        if kind == "hang" or ctx.slow:
            self.counts.hung += 1
            seconds = ctx.after.seconds if ctx.after is not None else self.options.slow_seconds
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), seconds)
        elif kind == "lost_answer" or ctx.lost:
            self.counts.lost_answers += 1
            return JSONResponse({"message": "Bad Gateway"}, status_code=502)
        elif kind == "drop" or ctx.dropped:
            self.counts.dropped += 1
            return _Dropped()
        return response

    def _new_id(self, width: int = 15) -> str:
        return str(next(self._ids)).rjust(width, "0")

    def _user_of(self, token: str) -> str:
        issued = self.oauth.check(token)
        return issued[0] if issued is not None else f"user-{_token_id(token)}"

    def _duplicate(self, platform: str, user: str, text: str) -> SimPost | None:
        if not self.options.refuse_duplicates or not text:
            return None
        for post in reversed(self.posts):
            if post.platform == platform and post.user == user and post.text == text:
                return post
        return None

    # -- platform answers -----------------------------------------------------------------------

    def _error(
        self, platform: str, kind: str, detail: str, retry_after: float | None = None
    ) -> Response:
        """An error as the platform words it."""
        status, body, headers = _ERRORS[platform](kind, detail)
        if kind == "rate_limit":
            seconds = retry_after if retry_after is not None else 1.0
            headers.setdefault("Retry-After", _seconds_text(seconds))
            if platform == "x":
                headers["x-rate-limit-remaining"] = "0"
                headers["x-rate-limit-reset"] = str(math.ceil(time.time() + seconds))
        if kind == "platform_limit" and platform == "x":
            headers["x-app-limit-24hour-remaining"] = "0"
            headers["x-app-limit-24hour-reset"] = str(math.ceil(time.time() + 3600))
        return JSONResponse(body, status_code=status, headers=headers)

    async def _facebook_feed(self, request: Request) -> Response:
        ctx = await self._open(request, "facebook", "publish")
        text = str(ctx.form.get("message", ""))
        link = ctx.form.get("link")
        if not text and not link:
            raise _Answer(self._error("facebook", "invalid", "message or link required"))
        self._gate(ctx, text)
        page = request.path_params["node"]
        post = self._record(ctx, f"{page}_{self._new_id()}", page, text, [link] if link else [])
        return await self._deliver(ctx, JSONResponse({"id": post.id}))

    async def _facebook_list(self, request: Request) -> Response:
        """A Page's feed, newest first: ``since`` (Unix seconds), ``limit``, ``after``."""
        ctx = await self._open(request, "facebook", "lookup")
        self._gate(ctx, "")
        mine = self._listed("facebook", request.path_params["node"], _seconds_ms(ctx.form))
        shown, after = _page(mine, ctx.form.get("after"), ctx.form.get("limit"), 25, 100)
        data = [
            {
                "id": post.id,
                "created_time": _graph_time(post.at_ms),
                **({"message": post.text} if post.text else {}),
                **({"link": post.media[0]} if post.media else {}),
            }
            for post in shown
        ]
        return _graph_page(request, data, after)

    async def _instagram_media(self, request: Request) -> Response:
        ctx = await self._open(request, "instagram", "create")
        form = ctx.form
        caption = str(form.get("caption", ""))
        media_type = form.get("media_type")
        if media_type == "CAROUSEL":
            children = [c for c in str(form.get("children", "")).split(",") if c]
            if not 2 <= len(children) <= 10 or any(c not in self._containers for c in children):
                raise _Answer(self._error("instagram", "invalid", "children must be 2-10 items"))
        elif not (form.get("image_url") or form.get("video_url")):
            raise _Answer(self._error("instagram", "invalid", "image_url or video_url required"))
        self._gate(ctx, caption)
        processing = self.options.processing * (2 if form.get("video_url") else 1)
        container = _Container(
            self._new_id(17),
            request.path_params["node"],
            dict(form),
            time.monotonic() + processing,
            ctx.key,
        )
        self._containers[container.id] = container
        return await self._deliver(ctx, JSONResponse({"id": container.id}))

    async def _instagram_list(self, request: Request) -> Response:
        """The user's published media, newest first: ``since`` (Unix seconds), ``limit``."""
        ctx = await self._open(request, "instagram", "lookup")
        self._gate(ctx, "")
        mine = self._listed("instagram", request.path_params["node"], _seconds_ms(ctx.form))
        shown, after = _page(mine, ctx.form.get("after"), ctx.form.get("limit"), 25, 100)
        data = [
            {"id": post.id, "caption": post.text, "timestamp": _graph_time(post.at_ms)}
            for post in shown
        ]
        return _graph_page(request, data, after)

    async def _instagram_status(self, request: Request) -> Response:
        ctx = await self._open(request, "instagram", "status")
        container = self._containers.get(request.path_params["node"])
        if container is None:
            raise _Answer(self._error("instagram", "invalid", "unknown object id"))
        self._gate(ctx, str(container.fields.get("caption", "")))
        if container.status == "IN_PROGRESS" and time.monotonic() >= container.ready_at:
            container.status = "FINISHED"
        return JSONResponse(
            {"status_code": container.status, "status": container.status, "id": container.id}
        )

    async def _instagram_publish(self, request: Request) -> Response:
        ctx = await self._open(request, "instagram", "publish")
        container = self._containers.get(str(ctx.form.get("creation_id", "")))
        if container is None or container.user != request.path_params["node"]:
            raise _Answer(self._error("instagram", "invalid", "unknown creation_id"))
        if container.status == "IN_PROGRESS" and time.monotonic() >= container.ready_at:
            container.status = "FINISHED"
        if container.status == "PUBLISHED":  # a container publishes once
            raise _Answer(self._error("instagram", "invalid", "the media is already published"))
        if container.status != "FINISHED":
            raise _Answer(
                self._error("instagram", "invalid", f"media is {container.status}, not FINISHED")
            )
        caption = str(container.fields.get("caption", ""))
        self._gate(ctx, caption)
        container.status = "PUBLISHED"
        fields = container.fields
        media = [str(fields[k]) for k in ("image_url", "video_url") if fields.get(k)]
        if fields.get("children"):
            media = str(fields["children"]).split(",")
        post = self._record(ctx, self._new_id(17), container.user, caption, media)
        container.media_id = post.id
        self._ig_media[post.id] = container.user
        return await self._deliver(ctx, JSONResponse({"id": post.id}))

    def _commented_media(self, media_id: str) -> str:
        """The media a comment request names, as Graph answers an id it does not know."""
        if media_id not in self._ig_media:
            detail = (
                f"Unsupported request. Object with ID '{media_id}' does not exist, cannot be "
                "loaded due to missing permissions, or does not support this operation"
            )
            raise _Answer(self._error("instagram", "invalid", detail))
        return media_id

    async def _instagram_comment(self, request: Request) -> Response:
        """A comment on a published media: ``message`` -> ``{"id": <comment id>}``."""
        ctx = await self._open(request, "instagram", "comment")
        media_id = self._commented_media(request.path_params["node"])
        text = str(ctx.form.get("message", ""))
        if not text:
            raise _Answer(self._error("instagram", "invalid", "message is required"))
        self._gate(ctx, text)
        comment = SimComment(
            "instagram",
            self._new_id(17),
            media_id,
            ctx.key,
            self._user_of(ctx.token),
            text,
            int(time.time() * 1000),
        )
        self.comments.append(comment)
        return await self._deliver(ctx, JSONResponse({"id": comment.id}))

    async def _instagram_comments(self, request: Request) -> Response:
        """A media's comments, newest first: ``since`` (Unix seconds), ``limit``, ``after``."""
        ctx = await self._open(request, "instagram", "lookup")
        media_id = self._commented_media(request.path_params["node"])
        self._gate(ctx, "")
        self.counts.lookups += 1
        since = _seconds_ms(ctx.form)
        mine = [c for c in reversed(self.comments) if c.media_id == media_id and c.at_ms >= since]
        if mine:
            self.counts.found += 1
        shown, after = _page(mine, ctx.form.get("after"), ctx.form.get("limit"), 25, 100)
        data = [
            {
                "id": c.id,
                "text": c.text,
                "timestamp": _graph_time(c.at_ms),
                "from": {"id": c.user},
            }
            for c in shown
        ]
        return _graph_page(request, data, after)

    async def _linkedin_post(self, request: Request) -> Response:
        ctx = await self._open(request, "linkedin", "publish")
        author = ctx.form.get("author")
        text = ctx.form.get("commentary")
        if not isinstance(author, str) or not author.startswith("urn:li:") or not text:
            raise _Answer(self._error("linkedin", "invalid", "author and commentary required"))
        if not request.headers.get("linkedin-version"):
            raise _Answer(self._error("linkedin", "invalid", "LinkedIn-Version header missing"))
        if len(text) > 3000:
            raise _Answer(self._error("linkedin", "invalid", "commentary is too long"))
        self._gate(ctx, text)
        earlier = self._duplicate("linkedin", author, text)
        if earlier is not None:
            raise _Answer(
                JSONResponse(
                    {
                        "status": 422,
                        "code": "DUPLICATE_POST",
                        "message": f"Content is a duplicate of {earlier.id}",
                    },
                    status_code=422,
                )
            )
        post = self._record(ctx, f"urn:li:share:{self._new_id(19)}", author, text, [])
        answer = Response(status_code=201, headers={"x-restli-id": post.id})
        return await self._deliver(ctx, answer)

    async def _linkedin_list(self, request: Request) -> Response:
        """``?q=author&author=URN&start=&count=``: the author's posts, newest first."""
        ctx = await self._open(request, "linkedin", "lookup")
        author = ctx.form.get("author")
        if ctx.form.get("q") != "author" or not isinstance(author, str):
            raise _Answer(self._error("linkedin", "invalid", "q=author and author required"))
        self._gate(ctx, "")
        mine = self._listed("linkedin", author, 0)
        start = _int(ctx.form.get("start"), 0)
        count = max(1, min(100, _int(ctx.form.get("count"), 10)))
        elements = [
            {
                "id": post.id,
                "author": post.user,
                "commentary": post.text,
                "createdAt": post.at_ms,
                "lifecycleState": "PUBLISHED",
            }
            for post in mine[start : start + count]
        ]
        paging = {"start": start, "count": count, "total": len(mine)}
        return JSONResponse({"elements": elements, "paging": paging})

    async def _x_post(self, request: Request) -> Response:
        ctx = await self._open(request, "x", "publish")
        text = str(ctx.form.get("text", ""))
        media = ctx.form.get("media") or {}
        media_ids = media.get("media_ids", []) if isinstance(media, dict) else []
        if not text and not media_ids:
            raise _Answer(self._error("x", "invalid", "text or media required"))
        self._gate(ctx, text)
        user = self._user_of(ctx.token)
        if self._duplicate("x", user, text) is not None:
            raise _Answer(
                JSONResponse(
                    {
                        "detail": "You are not allowed to create a Tweet with duplicate content.",
                        "type": "about:blank",
                        "title": "Forbidden",
                        "status": 403,
                    },
                    status_code=403,
                )
            )
        post = self._record(ctx, self._new_id(19), user, text, list(media_ids))
        return await self._deliver(
            ctx, JSONResponse({"data": {"id": post.id, "text": text}}, status_code=201)
        )

    async def _x_me(self, request: Request) -> Response:
        ctx = await self._open(request, "x", "lookup")
        user = self._user_of(ctx.token)
        return JSONResponse({"data": {"id": user, "name": user, "username": user}})

    async def _x_list(self, request: Request) -> Response:
        """A user's timeline, newest first: ``start_time`` (ISO 8601), ``max_results``,
        ``pagination_token``."""
        ctx = await self._open(request, "x", "lookup")
        self._gate(ctx, "")
        since_ms = _iso_ms(ctx.form.get("start_time"))
        mine = self._listed("x", request.path_params["user"], since_ms)
        limit = ctx.form.get("max_results")
        shown, after = _page(mine, ctx.form.get("pagination_token"), limit, 10, 100)
        data = []
        for post in shown:
            item: dict[str, Any] = {
                "id": post.id,
                "text": post.text,
                "created_at": _iso_time(post.at_ms),
            }
            if post.media:
                item["attachments"] = {"media_keys": [f"3_{m}" for m in post.media]}
            data.append(item)
        meta: dict[str, Any] = {"result_count": len(data)}
        if after is not None:
            meta["next_token"] = after
        return JSONResponse({"data": data, "meta": meta} if data else {"meta": meta})

    async def _tiktok_init(self, request: Request) -> Response:
        ctx = await self._open(request, "tiktok", "publish")
        info = ctx.form.get("post_info") or {}
        source = ctx.form.get("source_info") or {}
        if not isinstance(source, dict) or source.get("source") != "PULL_FROM_URL":
            raise _Answer(self._error("tiktok", "invalid", "source_info.source must be set"))
        if not source.get("video_url"):
            raise _Answer(self._error("tiktok", "invalid", "video_url required"))
        text = str(info.get("title", "")) if isinstance(info, dict) else ""
        self._gate(ctx, text)
        publish_id = f"v_pub_url~v2-{self._new_id(12)}"
        post = self._record(
            ctx, self._new_id(19), self._user_of(ctx.token), text, [str(source["video_url"])]
        )
        self._tiktok[publish_id] = (post.id, time.monotonic() + self.options.processing)
        body = {"data": {"publish_id": publish_id}, "error": _tiktok_ok()}
        return await self._deliver(ctx, JSONResponse(body))

    async def _tiktok_status(self, request: Request) -> Response:
        ctx = await self._open(request, "tiktok", "status")
        found = self._tiktok.get(str(ctx.form.get("publish_id", "")))
        if found is None:
            raise _Answer(self._error("tiktok", "invalid", "unknown publish_id"))
        self._gate(ctx, "")
        post_id, ready_at = found
        if time.monotonic() < ready_at:
            data: dict[str, Any] = {"status": "PROCESSING_DOWNLOAD"}
        else:
            data = {"status": "PUBLISH_COMPLETE", "publicaly_available_post_id": [post_id]}
        return await self._deliver(ctx, JSONResponse({"data": data, "error": _tiktok_ok()}))

    async def _tiktok_list(self, request: Request) -> Response:
        """The Display API's video list: ``{"max_count", "cursor"}`` (a create time in ms:
        older videos than it), newest first."""
        ctx = await self._open(request, "tiktok", "lookup")
        self._gate(ctx, "")
        mine = self._listed("tiktok", self._user_of(ctx.token), 0)
        cursor = ctx.form.get("cursor")
        if isinstance(cursor, int) and cursor > 0:
            mine = [post for post in mine if post.at_ms < cursor]
        count = max(1, min(20, _int(ctx.form.get("max_count"), 10)))
        shown = mine[:count]
        videos = [
            {"id": post.id, "title": post.text, "create_time": post.at_ms // 1000} for post in shown
        ]
        data = {
            "videos": videos,
            "cursor": shown[-1].at_ms if shown else 0,
            "has_more": len(mine) > count,
        }
        return JSONResponse({"data": data, "error": _tiktok_ok()})

    async def _youtube_upload(self, request: Request) -> Response:
        if request.method == "POST":
            ctx = await self._open(request, "youtube", "create")
            snippet = ctx.form.get("snippet") or {}
            title = snippet.get("title") if isinstance(snippet, dict) else None
            if ctx.form.get("uploadType") != "resumable" or not title:
                raise _Answer(self._error("youtube", "invalid", "resumable upload with a title"))
            self._gate(ctx, str(title))
            upload_id = self._new_id(20)
            self._uploads[upload_id] = _Upload(ctx.form, self._user_of(ctx.token))
            location = f"{request.url.replace(query='')}?uploadType=resumable&upload_id={upload_id}"
            return await self._deliver(
                ctx, Response(status_code=200, headers={"Location": location})
            )
        asking = request.headers.get("content-range", "").startswith("bytes */")
        ctx = await self._open(request, "youtube", "status" if asking else "publish")
        upload = self._uploads.get(str(ctx.form.get("upload_id", "")))
        if upload is None:
            return JSONResponse({"error": {"code": 404, "message": "Not Found"}}, status_code=404)
        if asking:  # the session's status: 308 with what it has, or the finished video
            self._gate(ctx, "")
            if upload.video is None:
                return Response(status_code=308)
            return JSONResponse(upload.video)
        if not ctx.form.get("_bytes"):
            raise _Answer(self._error("youtube", "invalid", "mediaBodyRequired"))
        if upload.video is not None:  # a finished session answers its video, makes no other
            return JSONResponse(upload.video)
        snippet = upload.form.get("snippet") or {}
        text = f"{snippet.get('title', '')}\n{snippet.get('description', '')}".strip()
        self._gate(ctx, text)
        video_id = _youtube_id(next(self._ids))
        self._record(ctx, video_id, upload.user, text, [])
        upload.video = {
            "kind": "youtube#video",
            "id": video_id,
            "snippet": snippet,
            "status": {"uploadStatus": "uploaded", **(upload.form.get("status") or {})},
        }
        return await self._deliver(ctx, JSONResponse(upload.video))

    def _listed(self, platform: str, user: str, since_ms: int) -> list[SimPost]:
        """The user's posts on ``platform`` made at ``since_ms`` or later, newest first (a
        listing the publishers' lookups read)."""
        self.counts.lookups += 1
        found = [
            post
            for post in reversed(self.posts)
            if post.platform == platform and post.user == user and post.at_ms >= since_ms
        ]
        if found:
            self.counts.found += 1
        return found

    async def _lookup(self, request: Request) -> Response:
        platform = request.path_params["platform"]
        if platform not in PLATFORMS:
            return JSONResponse({"error": "unknown platform"}, status_code=404)
        ctx = await self._open(request, platform, "lookup")
        self._gate(ctx, "")
        self.counts.lookups += 1
        self.counts.key_lookups += 1
        key = request.query_params.get("key")
        found = [p for p in list(self.posts) if p.platform == platform and p.key == key]
        if not found:
            return JSONResponse({"id": None, "count": 0}, status_code=404)
        self.counts.found += 1
        return JSONResponse({"id": found[0].id, "count": len(found)})

    # -- the simulator's own endpoints ----------------------------------------------------------

    async def _list_posts(self, request: Request) -> Response:
        platform = request.query_params.get("platform")
        posts = [p for p in list(self.posts) if platform in (None, p.platform)]
        return Response(msgspec.json.encode({"posts": posts}), media_type="application/json")

    async def _summary(self, request: Request) -> Response:
        return JSONResponse(self.summary())

    async def _faults(self, request: Request) -> Response:
        if request.method == "DELETE":
            self.clear_faults()
        elif request.method == "POST":
            try:
                fault = msgspec.json.decode(await request.body(), type=Fault)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
            self.add_fault(fault)
        return Response(msgspec.json.encode({"faults": self.faults}), media_type="application/json")

    async def _expire(self, request: Request) -> Response:
        body = await request.json()
        token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, str):
            return JSONResponse({"error": 'give {"token": ...}'}, status_code=400)
        self.expire_token(token)
        return JSONResponse({"expired": True})

    async def _reset(self, request: Request) -> Response:
        self.reset()
        return JSONResponse({"reset": True})

    async def _media(self, request: Request) -> Response:
        try:
            size = max(1, min(64 * 2**20, int(request.query_params.get("bytes", 65_536))))
        except ValueError:
            size = 65_536
        name = request.path_params["name"]
        kind = "video/mp4" if name.endswith((".mp4", ".mov")) else "image/jpeg"
        return Response(b"\0" * size, media_type=kind)


def _answering(
    endpoint: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    async def run(request: Request) -> Response:
        try:
            return await endpoint(request)
        except _Answer as answer:
            return answer.response

    return run


class _Dropped(Response):
    """An answer cut off mid-way: its status line and the start of its body, then the
    connection closes (uvicorn closes a response the app left incomplete)."""

    def __init__(self) -> None:
        super().__init__(status_code=200)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"64")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"id": ', "more_body": True})


def _not_a_dropped_answer(record: logging.LogRecord) -> bool:
    return record.msg != _DROPPED_LOG


class _QuietServer(uvicorn.Server):
    """uvicorn without its signal handlers (the process that embeds it handles signals), and
    without an error line for each answer the simulator drops on purpose."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        errors = logging.getLogger("uvicorn.error")
        if _not_a_dropped_answer not in errors.filters:
            errors.addFilter(_not_a_dropped_answer)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _seconds_text(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:.3f}"


_Item = TypeVar("_Item")


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _graph_page(request: Request, data: list[dict[str, Any]], after: str | None) -> Response:
    """A Graph API listing's answer: the page's items, and the next page's URL when there is
    one (Facebook feeds, Instagram media and comments)."""
    body: dict[str, Any] = {"data": data}
    if after is not None:
        body["paging"] = {
            "cursors": {"after": after},
            "next": str(request.url.include_query_params(after=after)),
        }
    return JSONResponse(body)


def _page(
    items: list[_Item], after: Any, limit: Any, default: int, most: int
) -> tuple[list[_Item], str | None]:
    """One page of a listing (``after``: the position to go on from) and the next page's."""
    start = max(0, _int(after, 0))
    size = max(1, min(most, _int(limit, default)))
    end = start + size
    return items[start:end], (str(end) if end < len(items) else None)


def _seconds_ms(form: dict[str, Any]) -> int:
    """Graph's ``since`` (Unix seconds) in milliseconds; 0 when not given."""
    try:
        return int(float(form.get("since", 0)) * 1000)
    except (TypeError, ValueError):
        return 0


def _graph_time(at_ms: int) -> str:
    """Graph API's time format: ``2026-12-04T19:00:00+0000``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime(at_ms / 1000))


def _iso_time(at_ms: int) -> str:
    """X's time format: ``2026-12-04T19:00:00.000Z``."""
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at_ms / 1000))
    return f"{seconds}.{at_ms % 1000:03d}Z"


def _iso_ms(value: Any) -> int:
    """An ISO 8601 time (X's ``start_time``) in Unix milliseconds; 0 when not given."""
    if not isinstance(value, str) or not value:
        return 0
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return 0


def _tiktok_ok() -> dict[str, str]:
    return {"code": "ok", "message": "", "log_id": "sim"}


def _youtube_id(number: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    text = ""
    for _ in range(11):
        number, digit = divmod(number, 64)
        text = alphabet[digit] + text
    return text


ErrorShape = tuple[int, Any, dict[str, str]]


def _graph(platform: str) -> Callable[[str, str], ErrorShape]:
    def shape(kind: str, detail: str) -> ErrorShape:
        table: dict[str, tuple[int, int, int | None, str]] = {
            "transient": (503, 2, None, "Service temporarily unavailable"),
            "rate_limit": (429, 17, None, "(#17) User request limit reached"),
            "platform_limit": (
                (400, 32, None, "(#32) Page request limit reached")
                if platform == "facebook"
                else (400, 9, 2207042, "The account has reached its content publishing limit")
            ),
            "token_expired": (
                400,
                190,
                463,
                "Error validating access token: Session has expired",
            ),
            "permission": (403, 200, None, "(#200) Requires pages_manage_posts permission"),
            "policy": (
                400,
                368,
                None,
                "(#368) The action attempted has been deemed abusive or is otherwise disallowed",
            ),
            "invalid": (400, 100, None, f"(#100) Invalid parameter: {detail}"),
        }
        status, code, subcode, message = table[kind]
        error: dict[str, Any] = {
            "message": message,
            "type": "OAuthException",
            "code": code,
            "fbtrace_id": "Sim" + _token_id(detail),
        }
        if subcode is not None:
            error["error_subcode"] = subcode
        if kind == "transient":
            error["is_transient"] = True
        return status, {"error": error}, {}

    return shape


def _linkedin(kind: str, detail: str) -> ErrorShape:
    table: dict[str, tuple[int, Any, str]] = {
        "transient": (503, None, "Service Unavailable"),
        "rate_limit": (429, None, "Resource level throttle limit for calls to this resource"),
        "platform_limit": (429, None, "Application day limit for calls to this resource"),
        "token_expired": (401, "EXPIRED_ACCESS_TOKEN", "The token used in the request has expired"),
        "permission": (403, "ACCESS_DENIED", "Not enough permissions to access: posts.CREATE"),
        "policy": (
            422,
            "UNPROCESSABLE_ENTITY",
            "Content violates the LinkedIn Professional Community Policies",
        ),
        "invalid": (422, "UNPROCESSABLE_ENTITY", f"ERROR :: {detail}"),
    }
    status, code, message = table[kind]
    body: dict[str, Any] = {"status": status, "message": message}
    if code is not None:
        body["code"] = code
        body["serviceErrorCode"] = 65600 if kind == "token_expired" else 100
    return status, body, {}


def _x(kind: str, detail: str) -> ErrorShape:
    table: dict[str, tuple[int, str, str]] = {
        "transient": (503, "Service Unavailable", "Service Unavailable"),
        "rate_limit": (429, "Too Many Requests", "Too Many Requests"),
        "platform_limit": (429, "Too Many Requests", "Too Many Requests"),
        "token_expired": (401, "Unauthorized", "Unauthorized"),
        "permission": (403, "Forbidden", "You are not permitted to perform this action."),
        "policy": (
            403,
            "Forbidden",
            "This request looks like it might be automated and violates our rules.",
        ),
        "invalid": (400, "Invalid Request", f"One or more parameters were invalid: {detail}"),
    }
    status, title, message = table[kind]
    return status, {"title": title, "detail": message, "type": "about:blank", "status": status}, {}


def _tiktok(kind: str, detail: str) -> ErrorShape:
    table: dict[str, tuple[int, str, str]] = {
        "transient": (500, "internal_error", "Something went wrong. Please try again later."),
        "rate_limit": (429, "rate_limit_exceeded", "API rate limit exceeded."),
        "platform_limit": (403, "spam_risk_too_many_posts", "The daily post cap is reached."),
        "token_expired": (
            401,
            "access_token_invalid",
            "The access token is invalid or not found in the request.",
        ),
        "permission": (401, "scope_not_authorized", "The user did not authorize video.publish."),
        "policy": (
            403,
            "spam_risk_user_banned_from_posting",
            "The user is banned from making new posts.",
        ),
        "invalid": (400, "invalid_params", detail),
    }
    status, code, message = table[kind]
    return status, {"data": {}, "error": {"code": code, "message": message, "log_id": "sim"}}, {}


def _youtube(kind: str, detail: str) -> ErrorShape:
    table: dict[str, tuple[int, str, str]] = {
        "transient": (503, "backendError", "Backend Error"),
        "rate_limit": (429, "rateLimitExceeded", "The request rate is too high."),
        "platform_limit": (403, "quotaExceeded", "The request cannot be completed: quota."),
        "token_expired": (401, "authError", "Request had invalid authentication credentials."),
        "permission": (403, "insufficientPermissions", "Request had insufficient scopes."),
        "policy": (403, "forbidden", "The video violates the YouTube Community Guidelines."),
        "invalid": (400, "invalidTitle", f"The request metadata is invalid: {detail}"),
    }
    status, reason, message = table[kind]
    body = {
        "error": {
            "code": status,
            "message": message,
            "errors": [{"message": message, "domain": "youtube", "reason": reason}],
        }
    }
    return status, body, {}


_ERRORS: dict[str, Callable[[str, str], ErrorShape]] = {
    "facebook": _graph("facebook"),
    "instagram": _graph("instagram"),
    "linkedin": _linkedin,
    "x": _x,
    "tiktok": _tiktok,
    "youtube": _youtube,
}


# -- running it outside an event loop ---------------------------------------------------------


class ThreadedSimulator:
    """A Simulator serving from a thread of its own, for code that is not async (tests of
    worker processes, benchmarks): ``with ThreadedSimulator() as sim: sim.url, sim.posts``."""

    def __init__(self, options: SimOptions | None = None, port: int = 0) -> None:
        self.simulator = Simulator(options)
        self._port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def __enter__(self) -> Simulator:
        self._thread = threading.Thread(target=self._run, name="streamq-simulator", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        if self.simulator._url is None:
            raise ConfigError("simulator did not start within 10s")
        return self.simulator

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            async with self.simulator.serve(self._port):
                self._ready.set()
                await self._stop.wait()

        try:
            asyncio.run(main())
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()


# -- the command ------------------------------------------------------------------------------


async def run_command(port: int, options: SimOptions, ready: Callable[[str], None]) -> None:
    """``streamq simulate``: serve until SIGINT or SIGTERM."""
    from streamq import signals

    simulator = Simulator(options)
    async with simulator.serve(port) as url:
        ready(url)
        await signals.on_stop_signals(lambda name: True)
    log.info("simulator stopped: %s", simulator.summary())

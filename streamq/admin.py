"""``streamq admin``: an HTTP admin API under ``/api/`` and the web dashboard at ``/``.

Every ``/api/`` route but the OpenAPI document needs ``Authorization: Bearer <token>``. Tokens
are named and either read-only or read-write (``STREAMQ_ADMIN_TOKENS``, a tokens file; the
single ``STREAMQ_ADMIN_TOKEN`` or ``--token-file`` is one read-write token named "admin"), and
there is no way to run without one. Every POST needs a read-write token and appends an
``admin`` event (who: the token's name, never its value; the action; its target) to the
events of the stream it touched. The dashboard's files hold no data: the page asks for the
token and calls the API with it.

The routes are thin: figures come from ``stats``, every action from ``control``, so the API
and the CLI cannot drift apart. Errors are ``{"error": "<one line>"}`` with a 4xx status for
anything the caller can fix (bad ids, unknown streams, bad bodies) and 503 when Redis fails.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import re
import socket
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Final, Literal, TypeVar

import anyio
import msgspec
import uvicorn
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from streamq import (
    __version__,
    control,
    events,
    flows,
    keys,
    limiter,
    listing,
    scheduler,
    scripts,
    series,
    signals,
    stats,
    tokens,
    workers,
)
from streamq.config import Config, parse_duration
from streamq.errors import ConfigError, FlowNotFound, InvalidJobState, JobNotFound, StreamNotFound
from streamq.platforms import PLATFORMS as PLATFORM_NAMES
from streamq.platforms.credentials import read_secret_table

TOKEN_ENV: Final = "STREAMQ_ADMIN_TOKEN"
TOKENS_ENV: Final = "STREAMQ_ADMIN_TOKENS"
STATIC: Final = Path(__file__).with_name("admin_static")
MAX_BODY_BYTES: Final = 1_000_000
BACKLOG: Final = 128
MAX_PAGE: Final = 1000
DEFAULT_PAGE: Final = 50
_ENTRY_ID = re.compile(r"\d{1,20}-\d{1,20}")
STREAM_PATTERN: Final = r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}"
"""keys.check_stream_name's rule, for the document."""

log = logging.getLogger(__name__)

Endpoint = Callable[[Request], Awaitable[Response]]


# -- the token and the socket ---------------------------------------------------------------


Role = Literal["read-only", "read-write"]
ROLES: Final[tuple[Role, ...]] = ("read-only", "read-write")
_TOKEN_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@\-]{0,63}")


@dataclass(frozen=True)
class AdminToken:
    """A bearer token the API takes: its name says who acted in the audit events, its role
    whether it may change anything. The value is left out of ``repr``, so a token printed or
    logged by mistake shows no secret."""

    name: str
    role: Role
    value: bytes = field(repr=False)

    @property
    def writes(self) -> bool:
        return self.role == "read-write"


def _token(name: str, role: str, value: str, where: str) -> AdminToken:
    if not _TOKEN_NAME.fullmatch(name):
        raise ConfigError(
            f"{where}: invalid token name {name[:40]!r}: use 1-64 letters, digits, '_.@-'"
        )
    if role not in ROLES:
        raise ConfigError(f"{where}: token {name}: role must be read-only or read-write")
    if not value.strip():
        raise ConfigError(f"{where}: token {name} is empty")
    chosen: Role = "read-write" if role == "read-write" else "read-only"
    return AdminToken(name, chosen, value.strip().encode())


def tokens_from_env(text: str) -> list[AdminToken]:
    """``STREAMQ_ADMIN_TOKENS``: entries ``name:role:token`` separated by commas or newlines
    (a token may hold ':' but no ',')."""
    found = []
    for entry in text.replace("\n", ",").split(","):
        if not entry.strip():
            continue
        name, _, rest = entry.strip().partition(":")
        role, _, value = rest.partition(":")
        if not value:
            raise ConfigError(
                f"{TOKENS_ENV}: each entry is name:role:token (role read-only or read-write); "
                f"{name[:40]!r} is not"
            )
        found.append(_token(name, role, value, TOKENS_ENV))
    return found


def tokens_from_file(path: Path) -> list[AdminToken]:
    """A TOML file of ``[tokens.<name>]`` tables, each with ``token`` and ``role`` (read-only
    unless it says read-write). Errors name the file, never quote it."""
    table = read_secret_table(path, "the admin tokens file")
    entries = table.get("tokens")
    if not isinstance(entries, dict) or not entries or set(table) != {"tokens"}:
        raise ConfigError(f"the admin tokens file {path} must hold [tokens.<name>] tables only")
    found = []
    for name, entry in entries.items():
        where = f"the admin tokens file {path}"
        if not isinstance(entry, dict) or not isinstance(entry.get("token"), str):
            raise ConfigError(f'{where}: [tokens.{name}] needs token = "..."')
        unknown = set(entry) - {"token", "role"}
        if unknown:
            raise ConfigError(f"{where}: [tokens.{name}]: unknown key {sorted(unknown)[0]!r}")
        found.append(_token(name, str(entry.get("role", "read-only")), entry["token"], where))
    return found


def load_tokens(token_file: str | None = None, tokens_file: str | None = None) -> list[AdminToken]:
    """Every token the API takes: the tokens file's, ``STREAMQ_ADMIN_TOKENS``'s, and the single
    token (``--token-file`` or ``STREAMQ_ADMIN_TOKEN``) as read-write "admin". Raises
    ConfigError when there is none (an admin API without auth is never started), or when two
    share a name or a value (who acted would be ambiguous)."""
    found: list[AdminToken] = []
    if tokens_file is not None:
        found += tokens_from_file(Path(tokens_file))
    if os.environ.get(TOKENS_ENV, "").strip():
        found += tokens_from_env(os.environ[TOKENS_ENV])
    if token_file is not None or os.environ.get(TOKEN_ENV, "").strip():
        found.append(AdminToken("admin", "read-write", load_token(token_file).encode()))
    if not found:
        raise ConfigError(
            f"no admin token: set {TOKEN_ENV} or {TOKENS_ENV}, or pass --token-file PATH or "
            "--tokens-file PATH"
        )
    names = [t.name for t in found]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"two admin tokens are named {name!r}: names must differ")
    if len({t.value for t in found}) < len(found):
        raise ConfigError("two admin tokens have the same value: each needs its own")
    return found


def load_token(token_file: str | None) -> str:
    """The token from ``token_file`` if given, else ``STREAMQ_ADMIN_TOKEN``; raises ConfigError
    when there is none: an admin API without auth is never started."""
    if token_file is not None:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the admin token file {token_file}: {exc}") from None
        if not token:
            raise ConfigError(f"the admin token file {token_file} is empty")
        return token
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise ConfigError(f"no admin token: set {TOKEN_ENV} or pass --token-file PATH")
    return token


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: any free port); raises ConfigError.

    It listens at once, so a client that connects as soon as the address is printed waits in
    the backlog until the server accepts, instead of being refused."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


# -- JSON in and out ------------------------------------------------------------------------

_encoder = msgspec.json.Encoder()
NO_STORE: Final = {"Cache-Control": "no-store"}
"""Figures change every second and may be private: no cache keeps them."""


def _json(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    headers = {**NO_STORE, **(headers or {})}
    return Response(_encoder.encode(value), status, headers, media_type="application/json")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return _json({"error": " ".join(message.split())}, status, headers)


class _BadRequest(Exception):
    """Input the caller can fix; becomes a 400 (or ``status``) with its message."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class ReplayRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Exactly one of: ``all`` true, or ``ids`` (job ids or dead-letter entry ids)."""

    all: bool | msgspec.UnsetType = msgspec.UNSET
    ids: list[str] | msgspec.UnsetType = msgspec.UNSET


REPLAY_REQUEST_SCHEMA: Final = {
    "title": "ReplayRequest",
    "description": ReplayRequest.__doc__,
    "oneOf": [
        {
            "type": "object",
            "properties": {"all": {"const": True}},
            "required": ["all"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {"ids": {"type": "array", "items": {"type": "string"}}},
            "required": ["ids"],
            "additionalProperties": False,
        },
    ],
}
"""msgspec cannot say "exactly one of", so this part of the document is written by hand."""

MAX_OLDER_THAN: Final = 10 * 365 * 86400.0
MAX_TIME_MS: Final = 253402300799999
"""9999-12-31T23:59:59.999Z: the last instant a datetime holds."""
FinishedState = Literal["done", "dead", "cancelled", "expired"]


class PurgeFinishedRequest(msgspec.Struct, forbid_unknown_fields=True):
    older_than: (
        Annotated[float, msgspec.Meta(ge=0, le=MAX_OLDER_THAN)]
        | Annotated[str, msgspec.Meta(pattern=r"^\d{1,9}(\.\d{1,6})?(ms|s|m|h|d)?$")]
    ) = 0
    """Keep jobs that finished more recently: seconds, or a duration like "1h"."""
    states: Annotated[list[FinishedState], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: list(control.PURGED_BY_DEFAULT)  # type: ignore[arg-type]
    )


_Body = TypeVar("_Body", ReplayRequest, PurgeFinishedRequest, "PauseRequest", "RescheduleRequest")


async def _body(request: Request, kind: type[_Body], *, optional: bool = False) -> _Body:
    raw = await request.body()
    if not raw.strip() and optional:
        raw = b"{}"  # no body: every field's default
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as exc:
        raise _BadRequest(f"invalid request body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise _BadRequest(f"request body is not JSON: {exc}") from None


class DeadLetterPage(msgspec.Struct):
    stream: str
    letters: list[control.DeadLetter]
    next: str | None
    """Pass as ``after`` for the next page; null on the last page."""


class JobAction(msgspec.Struct):
    id: str
    outcome: str
    """retry: "queued"; cancel: "cancelled" (will never start) or "cancelling" (running)."""


class Replayed(msgspec.Struct):
    replayed: int
    skipped: int
    """Dead letters streamq did not write, or whose jobs are live again: not replayed."""


class Purged(msgspec.Struct):
    purged: int


class ErrorBody(msgspec.Struct):
    error: str


class Me(msgspec.Struct):
    """Who the bearer token is: the dashboard hides its buttons for a read-only one."""

    name: str
    role: Role


class PauseRequest(msgspec.Struct, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=500)] | None = None
    """Shown by `streamq limits show`, the accounts page and the events (default: "paused by
    an operator")."""


class AccountAction(msgspec.Struct, kw_only=True):
    account: str
    streams: list[str]
    """The streams (partitions) it was paused or resumed on."""
    paused: bool
    released: int
    """Resume: parked jobs sent back to run."""


class RescheduleRequest(msgspec.Struct, forbid_unknown_fields=True):
    run_at: (
        Annotated[float, msgspec.Meta(ge=0, le=MAX_TIME_MS)]
        | Annotated[
            str,
            msgspec.Meta(min_length=1, max_length=64, extra_json_schema={"format": "date-time"}),
        ]
    )
    """The new due time: ISO 8601 with an offset (2026-12-01T09:00:00+01:00), or ms since the
    epoch. A time in the past makes the job due at once."""


# -- the application ------------------------------------------------------------------------


class Admin:
    """The API's routes, bound to one Redis client, token and config."""

    def __init__(
        self,
        redis: Redis,
        admin_tokens: Sequence[AdminToken],
        config: Config,
        static: Path = STATIC,
    ) -> None:
        self.redis = redis
        self._tokens = tuple(admin_tokens)
        self.config = config
        self.static = static

    async def index(self, request: Request) -> Response:
        return FileResponse(self.static / "index.html", headers=PAGE_HEADERS)

    def _caller(self, given: bytes) -> AdminToken | None:
        # Compared with every token, matched or not, each in constant time: neither how fast
        # nor after how many comparisons it is refused tells anything about a token.
        match = None
        for candidate in self._tokens:
            if hmac.compare_digest(given, candidate.value) and match is None:
                match = candidate
        return match

    def authorized(self, endpoint: Endpoint, query: tuple[str, ...] = ()) -> Endpoint:
        """``endpoint`` behind the token check, refusing query parameters it does not know
        (a mistyped ``?streams=`` would otherwise be silently ignored)."""

        async def checked(request: Request) -> Response:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not given.strip():
                return _error(
                    401, "missing bearer token", {"WWW-Authenticate": 'Bearer realm="streamq"'}
                )
            caller = self._caller(given.strip().encode())
            if caller is None:
                return _error(
                    401,
                    "invalid bearer token",
                    {"WWW-Authenticate": 'Bearer realm="streamq", error="invalid_token"'},
                )
            if request.method != "GET" and not caller.writes:
                return _error(403, f"token {caller.name!r} is read-only: it cannot change anything")
            request.state.caller = caller
            unknown = sorted(set(request.query_params) - set(query))
            if unknown:
                known = ", ".join(query) or "none"
                return _error(400, f"unknown query parameter {unknown[0]!r} (known: {known})")
            try:
                return await endpoint(request)
            except _BadRequest as exc:
                return _error(exc.status, str(exc))
            except ConfigError as exc:
                return _error(400, str(exc))
            except (JobNotFound, FlowNotFound) as exc:
                return _error(404, str(exc))
            except InvalidJobState as exc:
                return _error(409, str(exc))
            except (redis_errors.RedisError, OSError) as exc:
                log.warning("admin: redis failed: %s", exc)
                return _error(503, f"redis: {exc}")

        return checked

    async def _stream(self, request: Request) -> str:
        return await self._known(request.path_params["stream"])

    async def _known(self, stream: str) -> str:
        try:
            return await stats.known_stream(self.redis, self.config, stream)
        except StreamNotFound as exc:
            raise _BadRequest(str(exc), 404) from None

    @staticmethod
    def _job_id(request: Request) -> str:
        job_id: str = request.path_params["job_id"]
        try:
            keys.stream_of_job(job_id)
        except ValueError as exc:
            raise _BadRequest(str(exc)) from None
        return job_id

    async def stats(self, request: Request) -> Response:
        wanted = request.query_params.getlist("stream")
        streams = [await self._known(s) for s in wanted] if wanted else None
        snapshot = stats.to_json(await stats.snapshot(self.redis, streams))
        return Response(snapshot, headers=NO_STORE, media_type="application/json")

    async def outcomes(self, request: Request) -> Response:
        wanted = request.query_params.getlist("stream")
        streams = [await self._known(s) for s in wanted] if wanted else None
        return _json(await stats.outcomes(self.redis, streams))

    async def job(self, request: Request) -> Response:
        return _json(await control.job_info(self.redis, self._job_id(request)))

    async def job_events(self, request: Request) -> Response:
        job_id = self._job_id(request)
        info = await control.job_info(self.redis, job_id)  # 404 for no such job
        return _json(await events.of_job(self.redis, job_id, info.enqueued_at_ms))

    async def flow(self, request: Request) -> Response:
        flow_id: str = request.path_params["flow_id"]
        if not _FLOW_ID.fullmatch(flow_id):
            raise _BadRequest(f"invalid flow id {flow_id[:60]!r}: expected 'flow:<token>'")
        return _json(await flows.flow_info(self.redis, flow_id))

    async def retry(self, request: Request) -> Response:
        job_id = self._job_id(request)
        await control.retry(self.redis, job_id)
        await self._audit(request, "retry", job_id)
        log.info("admin: %s retried %s", _who(request), job_id)
        return _json(JobAction(job_id, "queued"))

    async def cancel(self, request: Request) -> Response:
        job_id = self._job_id(request)
        stream_config = self.config.stream(keys.stream_of_job(job_id))
        outcome = await control.cancel(self.redis, job_id, stream_config)
        await self._audit(request, "cancel", job_id, detail=outcome)
        log.info("admin: %s cancelled %s: %s", _who(request), job_id, outcome)
        return _json(JobAction(job_id, outcome))

    async def dead(self, request: Request) -> Response:
        stream = await self._stream(request)
        count = _page_size(request.query_params.get("count"))
        after = request.query_params.get("after")
        if after is not None and not _ENTRY_ID.fullmatch(after):
            raise _BadRequest(f"invalid entry id {after!r}: expected like '1764600000000-0'")
        # One more than asked tells whether another page follows.
        letters = await control.dead_letters(self.redis, stream, count + 1, after)
        more = len(letters) > count
        letters = letters[:count]
        return _json(DeadLetterPage(stream, letters, letters[-1].entry_id if more else None))

    async def jobs(self, request: Request) -> Response:
        stream = await self._stream(request)
        query = request.query_params
        state = query.get("state")
        if state is None:
            raise _BadRequest(f"state is required: one of {', '.join(listing.STATES)}")
        limit = query.get("limit", "100")
        if not limit.isdigit():
            raise _BadRequest(f"limit must be a whole number from 1 to {listing.MAX_LIMIT}")
        page = await listing.list_jobs(
            self.redis,
            await stats.partitions_of(self.redis, stream, self.config),
            state,
            account=query.get("account"),
            key=query.get("key"),
            since_ms=_time_ms(query.get("since"), "since"),
            until_ms=_time_ms(query.get("until"), "until"),
            limit=int(limit),
            cursor=query.get("cursor"),
        )
        return _json(page)

    async def replay(self, request: Request) -> Response:
        stream = await self._stream(request)
        body = await _body(request, ReplayRequest)
        everything = body.all is True and body.ids is msgspec.UNSET
        if not everything and (body.all is not msgspec.UNSET or body.ids is msgspec.UNSET):
            raise _BadRequest('give {"all": true} or {"ids": [...]}, not both or neither')
        ids = None if everything else body.ids
        assert not isinstance(ids, msgspec.UnsetType)
        replayed, skipped = await control.replay(self.redis, stream, ids)
        detail = f"{replayed} replayed, {skipped} skipped" + ("" if ids is None else " (by id)")
        await self._audit_stream(request, "replay", stream, detail)
        log.info("admin: %s replayed dead letters of %s: %s", _who(request), stream, detail)
        return _json(Replayed(replayed, skipped))

    async def purge_dead(self, request: Request) -> Response:
        stream = await self._stream(request)
        purged = await control.purge_dead(self.redis, stream)
        await self._audit_stream(request, "purge-dead", stream, f"{purged} purged")
        log.info("admin: %s purged %d dead letters of %s", _who(request), purged, stream)
        return _json(Purged(purged))

    async def purge_finished(self, request: Request) -> Response:
        stream = await self._stream(request)
        body = await _body(request, PurgeFinishedRequest, optional=True)
        older_than = parse_duration(body.older_than, "older_than")
        if older_than > MAX_OLDER_THAN:
            raise _BadRequest(f"older_than must be at most {MAX_OLDER_THAN:g} s (ten years)")
        purged = await control.purge_finished(
            self.redis, stream, older_than=older_than, states=tuple(body.states)
        )
        detail = f"{purged} purged ({', '.join(body.states)}, older than {older_than:g} s)"
        await self._audit_stream(request, "purge-finished", stream, detail)
        log.info("admin: %s purged finished records of %s: %s", _who(request), stream, detail)
        return _json(Purged(purged))

    async def workers(self, request: Request) -> Response:
        wanted = request.query_params.getlist("stream")
        try:
            found = await workers.of_streams(self.redis, self.config, wanted or None)
        except StreamNotFound as exc:
            raise _BadRequest(str(exc), 404) from None
        return _json(found)

    async def account(self, request: Request) -> Response:
        platform, account = request.path_params["platform"], request.path_params["account"]
        report = await tokens.account_status(self.redis, self.config, platform, account)
        return _json(report)

    # -- who did what: the audit events ----------------------------------------------------

    async def _audit(
        self,
        request: Request,
        action: str,
        job_id: str,
        *,
        detail: str = "",
        account: str = "",
    ) -> None:
        """An ``admin`` event in the job's stream (its partition)."""
        await scripts.append_audit(
            self.redis,
            keys.stream_of_job(job_id),
            by=_who(request),
            action=action,
            target=job_id,
            job_id=job_id,
            account=account,
            detail=detail,
        )

    async def _audit_stream(self, request: Request, action: str, stream: str, detail: str) -> None:
        """An ``admin`` event for an action on a whole stream, in its first partition's events
        (a stream's events are read over its partitions together)."""
        parts = await stats.partitions_of(self.redis, stream, self.config)
        await scripts.append_audit(
            self.redis, parts[0], by=_who(request), action=action, target=stream, detail=detail
        )

    # -- the dashboard's reads ---------------------------------------------------------------

    async def me(self, request: Request) -> Response:
        caller: AdminToken = request.state.caller
        return _json(Me(name=caller.name, role=caller.role))

    async def series(self, request: Request) -> Response:
        stream = await self._stream(request)
        minutes = _whole(request.query_params.get("minutes"), "minutes", 60, series.MAX_MINUTES)
        parts = await stats.partitions_of(self.redis, stream, self.config)
        return _json(await series.read(self.redis, stream, parts, minutes))

    async def accounts(self, request: Request) -> Response:
        stream = await self._stream(request)
        query = request.query_params
        limit = _whole(query.get("limit"), "limit", 100, tokens.MAX_ACCOUNTS_PAGE)
        account = query.get("account")
        if account is not None:
            account = _account(account)
        parts = await stats.partitions_of(self.redis, stream, self.config)
        page = await tokens.stream_accounts(
            self.redis,
            self.config,
            keys.base_stream(stream),
            parts,
            cursor=query.get("cursor") or None,
            limit=limit,
            account=account,
        )
        return _json(page)

    # -- the dashboard's writes --------------------------------------------------------------

    async def _account_streams(self, platform: str) -> list[str]:
        """What ``{platform}`` names in an account action: a known stream (its partitions),
        else a platform (every stream its publisher posts to, as the GET reports pauses)."""
        try:
            stream = await stats.known_stream(self.redis, self.config, platform)
        except (StreamNotFound, ConfigError):
            pass
        else:
            return await stats.partitions_of(self.redis, stream, self.config)
        if platform in PLATFORM_NAMES:
            found = await tokens.platform_streams(self.redis, self.config, platform)
            if found:
                return found
        raise _BadRequest(f"no stream or platform {platform[:64]!r} with jobs", 404)

    async def pause_account(self, request: Request) -> Response:
        platform, account = request.path_params["platform"], request.path_params["account"]
        account = _account(account)
        body = await _body(request, PauseRequest, optional=True)
        reason = body.reason or "paused by an operator"
        streams = await self._account_streams(platform)
        for part in streams:
            await limiter.pause_account(self.redis, part, account, reason)
            await scripts.append_audit(
                self.redis,
                part,
                by=_who(request),
                action="pause-account",
                target=f"{platform}/{account}",
                account=account,
                detail=reason,
            )
        log.info("admin: %s paused %s on %s", _who(request), account, ", ".join(streams))
        return _json(AccountAction(account=account, streams=streams, paused=True, released=0))

    async def resume_account(self, request: Request) -> Response:
        platform, account = request.path_params["platform"], request.path_params["account"]
        account = _account(account)
        streams = await self._account_streams(platform)
        released = 0
        for part in streams:
            was_paused, count = await limiter.resume_account(self.redis, part, account)
            released += count
            # Recorded even when it changed nothing: who tried is part of the trail.
            await scripts.append_audit(
                self.redis,
                part,
                by=_who(request),
                action="resume-account",
                target=f"{platform}/{account}",
                account=account,
                detail=f"{count} released" if was_paused else "was not paused",
            )
        log.info("admin: %s resumed %s (%d released)", _who(request), account, released)
        return _json(
            AccountAction(account=account, streams=streams, paused=False, released=released)
        )

    async def reschedule(self, request: Request) -> Response:
        job_id = self._job_id(request)
        body = await _body(request, RescheduleRequest)
        given = body.run_at
        due = round(given) if isinstance(given, float) else _time_ms(given, "run_at")
        assert due is not None
        # A time in the past makes the job due at once, as at enqueue; one before 1970 (or past
        # what a datetime holds, by its offset) is held to those ends rather than refused.
        due = min(max(due, 0), MAX_TIME_MS)
        moved = await control.reschedule(
            self.redis, job_id, run_at=datetime.fromtimestamp(due / 1000, tz=UTC)
        )
        await self._audit(request, "reschedule", job_id, detail=f"run_at {moved}")
        log.info("admin: %s rescheduled %s to %d", _who(request), job_id, moved)
        return _json(await control.job_info(self.redis, job_id))

    async def promote(self, request: Request) -> Response:
        job_id = self._job_id(request)
        due = await control.promote(self.redis, job_id)
        await self._audit(request, "promote", job_id, detail=f"run_at {due}")
        log.info("admin: %s promoted %s", _who(request), job_id)
        return _json(await control.job_info(self.redis, job_id))

    def routes(self) -> list[BaseRoute]:
        only: tuple[str, ...] = ("stream",)
        api: list[tuple[str, Endpoint, str, tuple[str, ...]]] = [
            ("/api/stats", self.stats, "GET", only),
            ("/api/outcomes", self.outcomes, "GET", only),
            ("/api/workers", self.workers, "GET", only),
            ("/api/jobs/{job_id}", self.job, "GET", ()),
            ("/api/jobs/{job_id}/events", self.job_events, "GET", ()),
            ("/api/flows/{flow_id}", self.flow, "GET", ()),
            ("/api/jobs/{job_id}/retry", self.retry, "POST", ()),
            ("/api/jobs/{job_id}/cancel", self.cancel, "POST", ()),
            ("/api/streams/{stream}/dead", self.dead, "GET", ("count", "after")),
            ("/api/streams/{stream}/jobs", self.jobs, "GET", JOBS_QUERY),
            ("/api/streams/{stream}/dead/replay", self.replay, "POST", ()),
            ("/api/streams/{stream}/dead/purge", self.purge_dead, "POST", ()),
            ("/api/streams/{stream}/finished/purge", self.purge_finished, "POST", ()),
            ("/api/accounts/{platform}/{account}", self.account, "GET", ()),
            ("/api/me", self.me, "GET", ()),
            ("/api/streams/{stream}/series", self.series, "GET", ("minutes",)),
            ("/api/streams/{stream}/accounts", self.accounts, "GET", ACCOUNTS_QUERY),
            ("/api/accounts/{platform}/{account}/pause", self.pause_account, "POST", ()),
            ("/api/accounts/{platform}/{account}/resume", self.resume_account, "POST", ()),
            ("/api/jobs/{job_id}/reschedule", self.reschedule, "POST", ()),
            ("/api/jobs/{job_id}/promote", self.promote, "POST", ()),
        ]
        return [
            Route("/api/openapi.json", _openapi, methods=["GET"]),
            *(
                Route(path, self.authorized(fn, query), methods=[method])
                for path, fn, method, query in api
            ),
            Route("/", self.index, methods=["GET"]),
            Mount("/static", StaticFiles(directory=self.static), name="static"),
        ]


_FLOW_ID: Final = re.compile(r"flow:[0-9a-f-]{1,64}")
JOBS_QUERY: Final = ("state", "account", "key", "since", "until", "limit", "cursor")
ACCOUNTS_QUERY: Final = ("cursor", "limit", "account")


def _who(request: Request) -> str:
    caller: AdminToken = request.state.caller
    return caller.name


def _account(account: str) -> str:
    try:
        return keys.check_account(account)
    except ValueError as exc:
        raise _BadRequest(str(exc)) from None


def _whole(text: str | None, name: str, default: int, most: int) -> int:
    if text is None:
        return default
    if not text.isdigit() or not 1 <= int(text) <= most:
        raise _BadRequest(f"{name} must be a whole number from 1 to {most}, not {text[:20]!r}")
    return int(text)


def _time_ms(text: str | None, name: str) -> int | None:
    """An ISO 8601 time with an offset (or ms since the epoch) as ms since the epoch."""
    if text is None:
        return None
    if text.isdigit() and len(text) <= 15:
        return int(text)
    parsed = scheduler.aware_time(text)
    if parsed is None:
        raise _BadRequest(
            f"{name} must be an ISO 8601 time with an offset (2026-12-01T09:00:00Z) or ms since "
            f"the epoch, not {text[:40]!r}"
        )
    return round(parsed.timestamp() * 1000)


def _page_size(text: str | None) -> int:
    if text is None:
        return DEFAULT_PAGE
    if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE:
        raise _BadRequest(f"count must be a whole number from 1 to {MAX_PAGE}, not {text!r}")
    return int(text)


PAGE_HEADERS: Final = {
    # The page shows user data (payloads, reasons): even if some slipped into the markup, no
    # script but our own file could run, and no other site may frame it.
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no route, wrong method, body too large) as JSON too."""
    assert isinstance(exc, HTTPException)
    message = exc.detail
    if exc.status_code in (404, 405):
        message = f"{exc.detail.lower()}: {request.method} {request.url.path}"
    return _error(exc.status_code, message, dict(exc.headers or {}))


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("admin: %s %s failed", request.method, request.url.path, exc_info=exc)
    return _error(500, "internal error (see the server's log)")


def create_app(
    redis: Redis,
    token: str | Sequence[AdminToken],
    config: Config | None = None,
    *,
    static: Path = STATIC,
) -> Starlette:
    """The app; ``token`` is every token it takes, or one string: a read-write "admin".
    ``static``: the dashboard's files (another version's, for `python -m bench dashboard`)."""
    admin_tokens = (
        [AdminToken("admin", "read-write", token.encode())]
        if isinstance(token, str)
        else list(token)
    )
    admin = Admin(redis, admin_tokens, config or Config(), static)
    return Starlette(
        routes=admin.routes(),
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
        max_body_size=MAX_BODY_BYTES,
    )


# -- the OpenAPI document -------------------------------------------------------------------


def openapi_document() -> dict[str, Any]:
    structs = [
        stats.Snapshot,
        stats.Outcomes,
        control.JobInfo,
        listing.JobPage,
        DeadLetterPage,
        JobAction,
        ReplayRequest,
        Replayed,
        PurgeFinishedRequest,
        Purged,
        tokens.AccountStatus,
        workers.WorkersView,
        flows.FlowInfo,
        ErrorBody,
        Me,
        series.Series,
        tokens.StreamAccounts,
        PauseRequest,
        AccountAction,
        RescheduleRequest,
        events.JobEvents,
    ]
    _, schemas = msgspec.json.schema_components(structs, ref_template="#/components/schemas/{name}")

    def ref(name: str) -> dict[str, Any]:
        return {"$ref": f"#/components/schemas/{name}"}

    def answer(description: str, schema: str) -> dict[str, Any]:
        return {
            "description": description,
            "content": {"application/json": {"schema": ref(schema)}},
        }

    failure = {
        "400": answer("Bad input: a malformed id or stream name, a bad body", "ErrorBody"),
        "401": answer("Missing or wrong bearer token", "ErrorBody"),
        "503": answer("Redis failed", "ErrorBody"),
    }
    job_id = {
        "name": "job_id",
        "in": "path",
        "required": True,
        "description": "A job id, '<stream>:<token>'",
        "schema": {"type": "string", "pattern": f"^{STREAM_PATTERN}:.+$"},
    }
    stream = {
        "name": "stream",
        "in": "path",
        "required": True,
        "description": "A stream name: 1-64 letters, digits, '_', '.', '-'",
        "schema": {"type": "string", "pattern": f"^{STREAM_PATTERN}$"},
    }
    only = {
        "name": "stream",
        "in": "query",
        "required": False,
        "description": "Only these streams (repeatable); default: every stream",
        "schema": {"type": "array", "items": {"type": "string", "pattern": f"^{STREAM_PATTERN}$"}},
        "style": "form",
        "explode": True,
    }
    missing = {"404": answer("No such job or stream", "ErrorBody")}

    def operation(
        summary: str, schema: str, params: list[dict[str, Any]], **extra: Any
    ) -> dict[str, Any]:
        responses = {"200": answer(summary, schema), **failure, **extra.pop("responses", {})}
        return {"summary": summary, "parameters": params, "responses": responses, **extra}

    def body(schema: str, required: bool = True) -> dict[str, Any]:
        return {"required": required, "content": {"application/json": {"schema": ref(schema)}}}

    paths = {
        "/api/stats": {
            "get": operation(
                "Figures per stream, as `streamq stats --json` prints them",
                "Snapshot",
                [only],
                responses=missing,
            )
        },
        "/api/outcomes": {
            "get": operation(
                "How runs ended per stream, since it began (rates: difference of two readings)",
                "Outcomes",
                [only],
                responses=missing,
            )
        },
        "/api/workers": {
            "get": operation(
                "Live workers (host, pid, heartbeat, jobs held) and those gone lately, with "
                "what was reclaimed from them",
                "WorkersView",
                [only],
                responses=missing,
            )
        },
        "/api/jobs/{job_id}": {
            "get": operation("A job's record and state", "JobInfo", [job_id], responses=missing)
        },
        "/api/jobs/{job_id}/events": {
            "get": operation(
                "A job's events, oldest first, with who acted for an admin action (its "
                f"stream's latest {events.JOB_SCAN_MOST:,} events read at most)",
                "JobEvents",
                [job_id],
                responses=missing,
            )
        },
        "/api/flows/{flow_id}": {
            "get": operation(
                "A flow's state and each step's state, result and error",
                "FlowInfo",
                [
                    {
                        "name": "flow_id",
                        "in": "path",
                        "required": True,
                        "description": "A flow id, 'flow:<token>'",
                        "schema": {"type": "string", "pattern": "^flow:[0-9a-f-]+$"},
                    }
                ],
                responses={"404": answer("No such flow", "ErrorBody")},
            )
        },
        "/api/jobs/{job_id}/retry": {
            "post": operation(
                "Run a dead, cancelled or expired job again, attempts reset",
                "JobAction",
                [job_id],
                responses={**missing, "409": answer("The job cannot be retried", "ErrorBody")},
            )
        },
        "/api/jobs/{job_id}/cancel": {
            "post": operation(
                "Cancel a job: it never starts, or (running) is not retried",
                "JobAction",
                [job_id],
                responses={**missing, "409": answer("The job already finished", "ErrorBody")},
            )
        },
        "/api/streams/{stream}/dead": {
            "get": operation(
                "Dead letters of a stream, oldest first, a page at a time",
                "DeadLetterPage",
                [
                    stream,
                    {
                        "name": "count",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
                    },
                    {
                        "name": "after",
                        "in": "query",
                        "required": False,
                        "description": "The previous page's `next`",
                        "schema": {"type": "string", "pattern": f"^{_ENTRY_ID.pattern}$"},
                    },
                ],
                responses=missing,
            )
        },
        "/api/streams/{stream}/jobs": {
            "get": operation(
                "A stream's jobs in one state, a page at a time (`streamq jobs`), merged over its "
                "partitions; pass the answer's `cursor` for the next page (null: no more)",
                "JobPage",
                [
                    stream,
                    {
                        "name": "state",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string", "enum": list(listing.STATES)},
                    },
                    {
                        "name": "account",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                    },
                    {
                        "name": "key",
                        "in": "query",
                        "required": False,
                        "description": "Only the job holding (or that held) this dedup key",
                        "schema": {"type": "string", "minLength": 1, "maxLength": 512},
                    },
                    *(
                        {
                            "name": bound,
                            "in": "query",
                            "required": False,
                            "description": "Due, queued, parked or finished time, inclusive: "
                            "ISO 8601 with an offset, or ms since the epoch",
                            "schema": {"type": "string", "format": "date-time"},
                        }
                        for bound in ("since", "until")
                    ),
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": listing.MAX_LIMIT},
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "required": False,
                        "description": "The previous page's `cursor`",
                        "schema": {"type": "string"},
                    },
                ],
                responses=missing,
            )
        },
        "/api/streams/{stream}/dead/replay": {
            "post": operation(
                "Run dead letters again: all of them, or those named",
                "Replayed",
                [stream],
                requestBody=body("ReplayRequest"),
                responses=missing,
            )
        },
        "/api/streams/{stream}/dead/purge": {
            "post": operation(
                "Delete every dead letter of a stream", "Purged", [stream], responses=missing
            )
        },
        "/api/streams/{stream}/finished/purge": {
            "post": operation(
                "Delete records of finished jobs before their retention ends",
                "Purged",
                [stream],
                requestBody=body("PurgeFinishedRequest", required=False),
                responses=missing,
            )
        },
    }
    paths["/api/accounts/{platform}/{account}"] = {
        "get": operation(
            "An account's token state (never a token) and its pauses: reauth_required when a "
            "person must sign in again",
            "AccountStatus",
            [
                {
                    "name": "platform",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "enum": list(PLATFORM_NAMES)},
                },
                {
                    "name": "account",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                },
            ],
        )
    }
    account_path = [
        {
            "name": "platform",
            "in": "path",
            "required": True,
            "description": "A stream (the account is paused on its partitions) or a platform "
            "(on every stream its publisher posts to)",
            "schema": {"type": "string", "pattern": f"^{STREAM_PATTERN}$"},
        },
        {
            "name": "account",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[ -~]+$"},
        },
    ]
    read_only = {"403": answer("The token is read-only", "ErrorBody")}
    paths["/api/me"] = {
        "get": operation("The bearer token's name and role", "Me", []),
    }
    paths["/api/streams/{stream}/series"] = {
        "get": operation(
            "A stream's last minutes, oldest first: runs done, failed (retried + dead), "
            "retried, depth and p99 lateness per minute, kept by its workers for 24 h",
            "Series",
            [
                stream,
                {
                    "name": "minutes",
                    "in": "query",
                    "required": False,
                    "description": "How many minutes, the one under way included (60)",
                    "schema": {"type": "integer", "minimum": 1, "maximum": series.MAX_MINUTES},
                },
            ],
            responses=missing,
        )
    }
    paths["/api/streams/{stream}/accounts"] = {
        "get": operation(
            "A page of a stream's accounts (paused, holding jobs, or with a stored token; or "
            "the one named), by name: pause, reason, reauth_required, windows used",
            "StreamAccounts",
            [
                stream,
                {
                    "name": "cursor",
                    "in": "query",
                    "required": False,
                    "description": "The previous page's `next_cursor`",
                    "schema": {"type": "string", "maxLength": 200},
                },
                {
                    "name": "limit",
                    "in": "query",
                    "required": False,
                    "schema": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": tokens.MAX_ACCOUNTS_PAGE,
                    },
                },
                {
                    "name": "account",
                    "in": "query",
                    "required": False,
                    "description": "Only this account, listed or not",
                    "schema": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 200,
                        "pattern": "^[ -~]+$",
                    },
                },
            ],
            responses=missing,
        )
    }
    paths["/api/accounts/{platform}/{account}/pause"] = {
        "post": operation(
            "Hold an account's jobs (no attempts used) until resumed, as `streamq account pause`",
            "AccountAction",
            account_path,
            requestBody=body("PauseRequest", required=False),
            responses={**read_only, "404": answer("No such stream or platform", "ErrorBody")},
        )
    }
    paths["/api/accounts/{platform}/{account}/resume"] = {
        "post": operation(
            "Run a paused account's jobs again, as `streamq account resume`",
            "AccountAction",
            account_path,
            responses={**read_only, "404": answer("No such stream or platform", "ErrorBody")},
        )
    }
    paths["/api/jobs/{job_id}/reschedule"] = {
        "post": operation(
            "Move a scheduled or retrying job to another due time; answers the job",
            "JobInfo",
            [job_id],
            requestBody=body("RescheduleRequest"),
            responses={
                **missing,
                **read_only,
                "409": answer("The job is not scheduled or retrying", "ErrorBody"),
            },
        )
    }
    paths["/api/jobs/{job_id}/promote"] = {
        "post": operation(
            "Run a scheduled or retrying job now; answers the job",
            "JobInfo",
            [job_id],
            responses={
                **missing,
                **read_only,
                "409": answer("The job is not scheduled or retrying", "ErrorBody"),
            },
        )
    }
    for path, methods in paths.items():
        for method, op in methods.items():
            if method == "post":
                op["responses"].setdefault("403", read_only["403"])
            op["security"] = [{"bearer": []}]
            op["operationId"] = _operation_id(path, op)
    return {
        "openapi": "3.1.0",
        "info": {"title": "streamq admin API", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _operation_id(path: str, op: dict[str, Any]) -> str:
    words = re.sub(r"[{}]", "", path.removeprefix("/api/")).replace("/", "_")
    return words.replace("job_id", "job").replace("streams_stream", "stream")


_OPENAPI: Final = _encoder.encode(openapi_document())


async def _openapi(request: Request) -> Response:
    return Response(_OPENAPI, media_type="application/json")


# -- serving --------------------------------------------------------------------------------


class Server(uvicorn.Server):
    """uvicorn's server without its own signal handling: ``serve`` stops it on a signal and
    exits normally (uvicorn would re-raise the signal after shutting down)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def server(app: Starlette) -> Server:
    # log_config=None keeps the CLI's logging setup; actions are logged by the routes.
    return Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off"))


async def serve(app: Starlette, sock: socket.socket) -> None:
    """Serve until SIGTERM or SIGINT; a second signal stops at once."""
    srv = server(app)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(_stop_on_signals, srv)
        await srv.serve(sockets=[sock])
        tasks.cancel_scope.cancel()


async def _stop_on_signals(srv: Server) -> None:
    def handle(name: str) -> bool:
        if srv.should_exit:
            srv.force_exit = True
        srv.should_exit = True
        return False

    await signals.on_stop_signals(handle)

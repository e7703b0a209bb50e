"""What every built-in publisher shares: settings, the run of one job, and publish-once.

A publisher is an async callable handler (``await publisher(job)``) bound to a
:class:`~streamq.platforms.client.Session`, which holds the one pooled HTTP client of the
worker and the credentials provider. One run of a job:

1. the payload is read into the platform's Post Struct (the same check enqueue made);
2. the account's credentials are fetched (none: the account is paused, like a bad token);
3. publish-once: if an earlier attempt may have reached the platform (``job.attempt > 1``:
   a retry after an error or a timeout, or a redelivery after a worker died) and the platform
   can be asked, the publisher looks the post up by its idempotency marker (the job id) and
   returns the post found instead of sending it again;
4. the post is sent with that marker (an ``Idempotency-Key`` header on every request that
   creates something); the answer becomes the job's result ``{"platform", "post_id"}``, or
   the exception that steers its outcome (streamq.platforms.outcomes).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import msgspec

from streamq.errors import Fail, PayloadError, readable
from streamq.platforms import outcomes
from streamq.platforms.credentials import Credentials
from streamq.platforms.outcomes import Reply

if TYPE_CHECKING:
    from streamq.job import Job
    from streamq.platforms.client import Session

IDEMPOTENCY_HEADER = "Idempotency-Key"
TOKEN_TRIES = 3
"""Sends of one run with a token store: a refused token is refreshed and the post sent again,
up to this many times in all (a token refreshed by another worker may itself expire while a
slow run holds it); then the account pauses as without a store."""

HttpUrl = Annotated[str, msgspec.Meta(pattern=r"^https?://[^\s]+$", max_length=2048)]
"""A media or link URL the platform fetches."""


class PlatformSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Where and how a publisher talks to its platform."""

    base_url: str
    api_version: str
    timeout: float = 30.0
    """Seconds to wait for one answer; after that the request may or may not have landed."""
    lookup: bool = False
    """Ask the platform for an earlier attempt's post before sending again (see the README)."""
    poll_interval: float = 1.0
    """Between two checks of a container or upload the platform is still processing."""
    ready_timeout: float = 300.0
    """How long to wait for the platform to finish processing media before retrying later."""
    token_url: str | None = None
    """Where token refreshes go (None: the platform's own, streamq.platforms.refresh)."""


class PostBase(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Fields every platform's post may carry."""

    meta: Any = None
    """Anything of yours (ids, tags): kept in the job, never sent to the platform."""


def parse_post(platform: str, post_type: type[PostBase], payload: Any) -> PostBase:
    """The payload as the platform's Post; raises PayloadError with a one-line reason."""
    try:
        return msgspec.convert(payload, post_type)
    except msgspec.ValidationError as exc:
        raise PayloadError(f"{platform} post refused: {readable(str(exc))}") from None


class Publisher:
    """Base of the built-in publishers: subclasses set the class attributes and implement
    :meth:`publish` and :meth:`error`."""

    name: ClassVar[str]
    Post: ClassVar[type[PostBase]]
    base_url: ClassVar[str]
    api_version: ClassVar[str]
    needs_user_id: ClassVar[str | None] = None
    """What the credentials' user_id means where the platform needs one (e.g. "page id")."""

    def __init__(self, session: Session, settings: PlatformSettings) -> None:
        self.session = session
        self.settings = settings

    async def __call__(self, job: Job) -> dict[str, Any]:
        try:
            post = parse_post(self.name, self.Post, job.payload)
        except PayloadError as exc:
            raise Fail(str(exc)) from None
        creds = await self.session.credentials_for(self.name, job.account, job)
        if self.needs_user_id and not creds.user_id:
            who = "no account" if job.account is None else f"account {job.account!r}"
            raise Fail(
                f"{self.name}: token: the credentials of {who} have no user_id "
                f"({self.needs_user_id})",
                pause_account=True,
            )
        again = job.attempt > 1
        for _ in range(TOKEN_TRIES - 1):
            try:
                return await self._send(post, creds, job.id, again=again)
            except outcomes.TokenRejected:
                # The token expired (or was revoked) under us: with a token store, refresh it
                # (once, for every worker: streamq.platforms.keeper) and send again, in the
                # same attempt. An earlier step of this run may have reached the platform, so
                # the next send looks first, as a retry would.
                fresh = await self.session.refreshed(self.name, job.account, creds, job)
                if fresh is None:
                    raise
                creds, again = fresh, True
        return await self._send(post, creds, job.id, again=again)

    async def _send(
        self, post: Any, creds: Credentials, marker: str, *, again: bool
    ) -> dict[str, Any]:
        """Publish-once: ``again`` when an earlier try may have reached the platform."""
        if again and self.settings.lookup:
            found = await self.lookup(creds, marker)
            if found is not None:
                return {"platform": self.name, "post_id": found, "recovered": True}
        try:
            post_id = await self.publish(post, creds, marker)
        except outcomes.DuplicatePost as duplicate:
            if again:  # the earlier try's post: this job's own
                return {"platform": self.name, "post_id": duplicate.existing_id, "recovered": True}
            raise Fail(str(duplicate)) from None
        return {"platform": self.name, "post_id": post_id}

    # -- for subclasses -------------------------------------------------------------------------

    async def publish(self, post: Any, creds: Credentials, marker: str) -> str:
        """Send the post; returns the platform's id for it."""
        raise NotImplementedError

    def error(self, reply: Reply, creds: Credentials) -> Exception:
        """The exception that a non-2xx answer (or an error in a 2xx body) means."""
        raise NotImplementedError

    def url(self, path: str) -> str:
        return f"{self.settings.base_url.rstrip('/')}/{path.lstrip('/')}"

    async def call(
        self,
        method: str,
        path_or_url: str,
        creds: Credentials,
        *,
        marker: str | None = None,
        json: Any = None,
        data: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """One request to the platform; a non-2xx answer raises what :meth:`error` says."""
        url = path_or_url if "://" in path_or_url else self.url(path_or_url)
        extra = dict(headers or {})
        if marker is not None:
            extra[IDEMPOTENCY_HEADER] = marker
        reply = await self.session.send(
            self.name,
            method,
            url,
            creds.token,
            json=json,
            data=data,
            params=params,
            headers=extra,
            timeout=self.settings.timeout,
        )
        if not reply.ok:
            raise self.error(reply, creds)
        return reply

    async def lookup(self, creds: Credentials, marker: str) -> str | None:
        """The id of a post the platform already has for ``marker``, or None.

        The simulator answers ``GET <base>/_sim/lookup?key=<marker>``; none of the real
        platforms has such a query (see the README), so ``lookup`` is off for them.
        """
        reply = await self.session.send(
            self.name,
            "GET",
            self.url("_sim/lookup"),
            creds.token,
            params={"key": marker},
            timeout=self.settings.timeout,
        )
        if reply.status == 404:
            return None
        if not reply.ok:
            raise self.error(reply, creds)
        found = reply.body.get("id") if isinstance(reply.body, dict) else None
        return None if found is None else str(found)

    def message(self, text: Any, creds: Credentials) -> str:
        return outcomes.clean(text, creds.token)

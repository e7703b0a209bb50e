"""What every built-in publisher shares: settings, the run of one job, and publish-once.

A publisher is an async callable handler (``await publisher(job)``) bound to a
:class:`~streamq.platforms.client.Session`, which holds the one pooled HTTP client of the
worker and the credentials provider. One run of a job:

1. the payload is read into the platform's Post Struct (the same check enqueue made);
2. the account's credentials are fetched (none: the account is paused, like a bad token);
3. publish-once: if an earlier run may have sent the post (``job.sent_since_ms``: the job's
   "may have been sent" mark, which retries, redeliveries after a crash, ``dead replay`` and
   ``job retry`` all keep), the publisher asks the platform with its own API whether that
   send landed (:meth:`Publisher.find`: the status of a checkpointed container, upload
   session or publish id; else the account's posts since the first send, matched by content)
   and returns the post found (``"recovered": true``) instead of sending again. A verify run
   (``job.verify_only``) only asks: the post found, or :class:`~streamq.errors.NotPublished`;
4. the post is sent (:meth:`Publisher.publish`), the mark set (``job.may_send()``) before
   each request that can make a post, and each step's result kept as a checkpoint before the
   next step, so a later run resumes there; the answer becomes the job's result
   ``{"platform", "post_id"}``, or the exception that steers its outcome
   (streamq.platforms.outcomes). Requests that create something also carry
   ``Idempotency-Key: <job id>`` for a platform or proxy that honours one.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Final

import msgspec

from streamq.errors import Fail, NotPublished, PayloadError, readable
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

CLOCK_SLACK_MS: Final = 120_000
"""A listing looks this much earlier than the first send: the platform's clock and the
server's may disagree by that much."""
LIST_PAGES: Final = 1_000
"""Pages of an account's posts a lookup reads at most (a page is 20-100 posts). A lookup reads
back until it reaches the first send, however many posts the account made since: a post it
stops short of may exist, and the job could only end dead beside it. This bound is against a
listing that never ends (a cursor that does not move), far past what a real account posts
between a send and its lookup (TikTok: 20,000 videos)."""

HttpUrl = Annotated[str, msgspec.Meta(pattern=r"^https?://[^\s]+$", max_length=2048)]
"""A media or link URL the platform fetches."""


class PlatformSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Where and how a publisher talks to its platform."""

    base_url: str
    api_version: str
    timeout: float = 30.0
    """Seconds to wait for one answer; after that the request may or may not have landed."""
    lookup: bool = True
    """Before sending again a post an earlier run may have sent, read the account's recent
    posts to find it, where no checkpoint can tell (facebook, x, linkedin; tiktok and
    instagram in some steps; see the docs' "Publish once"). Off: those platforms are at
    least once after a lost answer (the reads need the account's read permission)."""
    poll_interval: float = 1.0
    """Between two checks of a container or upload the platform is still processing."""
    ready_timeout: float = 300.0
    """How long to wait for the platform to finish processing media before retrying later."""
    list_pages: int = LIST_PAGES
    """Pages of the account's posts a lookup reads at most before it gives up (LIST_PAGES)."""
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


class Found(msgspec.Struct, frozen=True):
    """An earlier send's post, found at the platform (``post_id`` None: it exists, the platform
    does not say which)."""

    post_id: str | None


class Sending:
    """One run of a job as a publisher sees it: its checkpoints, and since when a post of it
    may exist (an earlier run's mark, or this run's first send)."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.since_ms = job.sent_since_ms
        self.earlier = job.sent_since_ms is not None
        """Whether a post of this job may already exist: look before sending."""
        self.looked = False
        """Whether :meth:`Publisher.find` asked the platform (and found nothing)."""
        self.accepted = False
        """Whether a request of this run that makes the post was accepted (the post may
        exist even if a later step fails)."""

    def again(self) -> None:
        """Before sending once more in the same run (a refreshed token): if this run's
        earlier request may have made the post, look first."""
        self.earlier = self.since_ms is not None
        self.looked = False

    @property
    def nothing_before(self) -> bool:
        """No earlier send of this job can have landed: none was made, or it was looked up."""
        return self.job.sent_since_ms is None or self.looked

    @property
    def checkpoints(self) -> Mapping[str, str]:
        return self.job.checkpoints

    async def checkpoint(self, name: str, value: str) -> None:
        await self.job.checkpoint(name, value)

    async def may_send(self) -> None:
        """Before a request that can make a post: the job's mark, once per job."""
        if not self.job.may_have_sent:
            await self.job.may_send()
        if self.since_ms is None:
            self.since_ms = int(time.time() * 1000)

    def listed_since_ms(self) -> int:
        """Where a listing of the account's posts starts: the first send, less the slack."""
        assert self.since_ms is not None
        return max(0, self.since_ms - CLOCK_SLACK_MS)


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
        sending = Sending(job)
        for _ in range(TOKEN_TRIES - 1):
            try:
                return await self._send(post, creds, sending)
            except outcomes.TokenRejected:
                # The token expired (or was revoked) under us: with a token store, refresh it
                # (once, for every worker: streamq.platforms.keeper) and send again, in the
                # same attempt. A request of this run may have reached the platform: if so
                # its mark is set, and the next send looks first, as a retry would.
                fresh = await self.session.refreshed(self.name, job.account, creds, job)
                if fresh is None:
                    raise
                creds = fresh
                sending.again()
        return await self._send(post, creds, sending)

    async def _send(self, post: Any, creds: Credentials, sending: Sending) -> dict[str, Any]:
        """Publish-once: look first when an earlier send may have landed."""
        if sending.earlier:
            sending.looked = True  # unless find() could not ask (unlisted)
            found = await self.find(post, creds, sending)
            if found is not None:
                return {"platform": self.name, "post_id": found.post_id, "recovered": True}
        if sending.job.verify_only:
            raise NotPublished(f"{self.name}: no post of this job found at the platform")
        try:
            try:
                post_id = await self.publish(post, creds, sending)
            except outcomes.DuplicatePost as duplicate:
                if sending.earlier:  # the earlier run's post: this job's own
                    existing = duplicate.existing_id
                    return {"platform": self.name, "post_id": existing, "recovered": True}
                raise Fail(str(duplicate)) from None
        except Fail as refused:
            # Refused outright (a 4xx makes nothing), and no earlier send landed: no post of
            # this job exists, so the engine need not look again before it records the job dead.
            if not refused.pause_account and sending.nothing_before and not sending.accepted:
                await sending.job.sent_nothing()
            raise
        return {"platform": self.name, "post_id": post_id}

    # -- for subclasses -------------------------------------------------------------------------

    async def publish(self, post: Any, creds: Credentials, sending: Sending) -> str:
        """Send the post (``await sending.may_send()`` before each request that can make it;
        checkpoints between steps); returns the platform's id for it."""
        raise NotImplementedError

    async def find(self, post: Any, creds: Credentials, sending: Sending) -> Found | None:
        """The post of an earlier send of this job, if it landed; None when it did not (or
        when this platform cannot tell: then it is sent again)."""
        raise NotImplementedError

    def listing_too_long(self) -> Fail:
        """What a lookup raises when it read ``list_pages`` pages of the account's posts without
        reaching the first send: it cannot tell whether that send landed, and sending again
        could post twice. The engine verifies, then records the job dead with its mark kept
        (a replay looks again)."""
        return Fail(
            f"{self.name}: lookup: the account posted more than {self.settings.list_pages} "
            "pages since the "
            "first send; cannot tell whether it landed, so not sent again"
        )

    def unlisted(self, sending: Sending) -> Found | None:
        """What :meth:`find` answers when only a listing of the account's posts could tell and
        ``lookup`` is off: on a verify run an error (the job ends dead with its mark kept, so a
        replay asks again), otherwise None (sent again: at least once)."""
        sending.looked = False
        if sending.job.verify_only:
            raise outcomes.PlatformError(
                f"{self.name}: lookup is off: cannot tell whether an earlier send landed"
            )
        return None

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

    def message(self, text: Any, creds: Credentials) -> str:
        return outcomes.clean(text, creds.token)

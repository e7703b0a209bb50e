"""Instagram: create a media container, wait until Instagram has processed it, publish it.

    POST {base}/{version}/{ig-user-id}/media          image_url | video_url (REELS) | children
    GET  {base}/{version}/{container-id}?fields=status_code      until FINISHED
    POST {base}/{version}/{ig-user-id}/media_publish  creation_id   ->  {"id": "<media id>"}
    GET  {base}/{version}/{ig-user-id}/media?since=<unix>&fields=id,caption,timestamp

Credentials: a token with instagram_content_publish, and the Instagram user id as ``user_id``.
A carousel is 2-10 items, each a child container made first. Only the publish call makes a
post: a container left unpublished by a failed attempt expires on its own after 24 hours.

A comment (the first comment with the hashtags, say) is its own job on the same stream:
``{"comment": "#launch #spring"}`` in a flow step after the step that published the media
(the media id is that step's result, ``job.flow.results[...]["post_id"]``), or with an explicit
``media_id``:

    POST {base}/{version}/{ig-media-id}/comments      message   ->  {"id": "<comment id>"}
    GET  {base}/{version}/{ig-media-id}/comments?since=<unix>&fields=id,text,timestamp

Publish once: the container's id is kept as the job's checkpoint ``container`` before
media_publish is sent, and a container publishes once. A later run asks the container's
``status_code``: ``PUBLISHED`` means the earlier send landed (its media id is then read from
the user's media since the first send, matched by caption); ``FINISHED`` or ``IN_PROGRESS``
means it did not, and the run publishes that same container; anything else starts over. A comment
that an earlier run may have sent is looked for among the media's comments since the first
send, matched by text (with ``lookup`` off it is sent again: at least once).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Final

import anyio
import msgspec

from streamq.errors import Fail
from streamq.platforms import outcomes
from streamq.platforms.base import Found, HttpUrl, PostBase, Publisher, Sending
from streamq.platforms.credentials import Credentials
from streamq.platforms.facebook import graph_error, graph_listing
from streamq.platforms.outcomes import Reply

if TYPE_CHECKING:
    from streamq.job import Job

MAX_CAPTION: Final = 2_200
MAX_HASHTAGS: Final = 30
MAX_MENTIONS: Final = 20
_HASHTAG = re.compile(r"(?<!\w)#\w+")
_MENTION = re.compile(r"(?<!\w)@[\w.]+")
CONTAINER: Final = "container"
"""The checkpoint that keeps the container's id (the job's record; see streamq.job)."""


class InstagramItem(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One picture or video of a carousel."""

    image_url: HttpUrl | None = None
    video_url: HttpUrl | None = None

    def __post_init__(self) -> None:
        if (self.image_url is None) == (self.video_url is None):
            raise ValueError("each carousel item needs exactly one of image_url, video_url")


class InstagramPost(PostBase, frozen=True, forbid_unknown_fields=True, kw_only=True):
    text: Annotated[str, msgspec.Meta(max_length=MAX_CAPTION)] = ""
    """The caption."""
    comment: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_CAPTION)] | None = None
    """Not a post but a comment on a published media: ``media_id``'s, or in a flow the one
    Instagram media published by the step this one runs after."""
    media_id: Annotated[str, msgspec.Meta(pattern=r"^[0-9]{1,40}$")] | None = None
    """The media a ``comment`` goes on (none: the one of the step it runs after)."""
    image_url: HttpUrl | None = None
    video_url: HttpUrl | None = None
    """A video is published as a reel."""
    children: Annotated[list[InstagramItem], msgspec.Meta(min_length=2, max_length=10)] | None = (
        None
    )
    """A carousel of 2-10 items."""

    def __post_init__(self) -> None:
        given = [self.image_url, self.video_url, self.children]
        if self.comment is not None:
            if self.text or any(item is not None for item in given):
                raise ValueError(
                    "an instagram comment takes comment (and media_id) only: no text, "
                    "image_url, video_url or children"
                )
            return
        if self.media_id is not None:
            raise ValueError("media_id goes with comment (a comment on that media)")
        if sum(item is not None for item in given) != 1:
            raise ValueError(
                "an instagram post needs exactly one of image_url, video_url, children "
                "(instagram has no text-only posts)"
            )
        hashtags = len(_HASHTAG.findall(self.text))
        if hashtags > MAX_HASHTAGS:
            raise ValueError(f"caption has {hashtags} hashtags; instagram allows {MAX_HASHTAGS}")
        mentions = len(_MENTION.findall(self.text))
        if mentions > MAX_MENTIONS:
            raise ValueError(f"caption has {mentions} mentions; instagram allows {MAX_MENTIONS}")


class InstagramPublisher(Publisher):
    name: ClassVar[str] = "instagram"
    Post: ClassVar[type[PostBase]] = InstagramPost
    base_url: ClassVar[str] = "https://graph.facebook.com"
    api_version: ClassVar[str] = "v21.0"
    needs_user_id: ClassVar[str | None] = "the Instagram user id"

    async def publish(self, post: Any, creds: Credentials, sending: Sending) -> str:
        assert isinstance(post, InstagramPost)
        if post.comment is not None:
            return await self._comment(
                post.comment, _commented_media(post, sending.job), creds, sending
            )
        marker = sending.job.id
        container = sending.checkpoints.get(CONTAINER)
        if container is not None:
            status = await self._status(creds, container)
            if status == "PUBLISHED":  # published by an earlier run after all
                raise outcomes.DuplicatePost(f"{self.name}: container {container} is published")
            if status not in ("FINISHED", "IN_PROGRESS"):
                container = None  # expired, failed or unknown: a new one
        if container is None:
            if post.children is not None:
                children = [
                    await self._container(
                        creds, marker, _media(item.image_url, item.video_url), True
                    )
                    for item in post.children
                ]
                fields = {"media_type": "CAROUSEL", "children": ",".join(children)}
            else:
                fields = _media(post.image_url, post.video_url)
            if post.text:
                fields["caption"] = post.text
            container = await self._container(creds, marker, fields, False)
            await sending.checkpoint(CONTAINER, container)
        await self._wait_until_ready(creds, container)
        await sending.may_send()
        reply = await self.call(
            "POST",
            f"{self.settings.api_version}/{creds.user_id}/media_publish",
            creds,
            marker=marker,
            data={"creation_id": container},
        )
        media_id = reply.body.get("id") if isinstance(reply.body, dict) else None
        if not media_id:
            raise outcomes.transient(self.name, "publish answer without an id", reply)
        return str(media_id)

    async def find(self, post: Any, creds: Credentials, sending: Sending) -> Found | None:
        """The earlier run's post, if its container says PUBLISHED."""
        assert isinstance(post, InstagramPost)
        if post.comment is not None:
            return await self._find_comment(
                post.comment, _commented_media(post, sending.job), creds, sending
            )
        container = sending.checkpoints.get(CONTAINER)
        if container is None:  # no run got as far as media_publish (the id is kept first)
            return None
        if await self._status(creds, container) != "PUBLISHED":
            return None
        if not self.settings.lookup:
            return Found(None)  # published for sure; which media, only a listing says
        return Found(await self._published_media(post, creds, sending))

    async def _comment(self, text: str, media_id: str, creds: Credentials, sending: Sending) -> str:
        await sending.may_send()
        reply = await self.call(
            "POST",
            f"{self.settings.api_version}/{media_id}/comments",
            creds,
            marker=sending.job.id,
            data={"message": text},
        )
        comment_id = reply.body.get("id") if isinstance(reply.body, dict) else None
        if not comment_id:
            raise outcomes.transient(self.name, "comment answer without an id", reply)
        return str(comment_id)

    async def _find_comment(
        self, text: str, media_id: str, creds: Credentials, sending: Sending
    ) -> Found | None:
        """The earlier run's comment: the media's newest with this text since the first send."""
        if not self.settings.lookup:
            return self.unlisted(sending)
        comments = graph_listing(self, f"{media_id}/comments", creds, sending, "id,text,timestamp")
        async for item in comments:
            if item.get("text") == text and item.get("id"):
                return Found(str(item["id"]))
        return None

    async def _status(self, creds: Credentials, container: str) -> str | None:
        """A container's status_code; None when Instagram no longer knows it."""
        try:
            reply = await self.call(
                "GET",
                f"{self.settings.api_version}/{container}",
                creds,
                params={"fields": "status_code"},
            )
        except Fail as refused:
            if refused.pause_account:
                raise
            return None
        body = reply.body if isinstance(reply.body, dict) else {}
        status = body.get("status_code")
        return str(status) if status else None

    async def _published_media(
        self, post: InstagramPost, creds: Credentials, sending: Sending
    ) -> str | None:
        """The newest of the user's media since the first send with the post's caption."""
        fields = "id,caption,timestamp"
        media = graph_listing(self, f"{creds.user_id}/media", creds, sending, fields)
        async for item in media:
            if (item.get("caption") or "") == post.text:
                return str(item["id"])
        return None

    async def _container(
        self, creds: Credentials, marker: str, fields: dict[str, str], carousel_item: bool
    ) -> str:
        if carousel_item:
            fields = {**fields, "is_carousel_item": "true"}
            if fields.get("media_type") == "REELS":
                fields["media_type"] = "VIDEO"
        reply = await self.call(
            "POST",
            f"{self.settings.api_version}/{creds.user_id}/media",
            creds,
            marker=marker,
            data=fields,
        )
        container = reply.body.get("id") if isinstance(reply.body, dict) else None
        if not container:
            raise outcomes.transient(self.name, "container answer without an id", reply)
        return str(container)

    async def _wait_until_ready(self, creds: Credentials, container: str) -> None:
        """Poll the container until Instagram has fetched and processed its media."""
        with anyio.move_on_after(self.settings.ready_timeout):
            while True:
                reply = await self.call(
                    "GET",
                    f"{self.settings.api_version}/{container}",
                    creds,
                    params={"fields": "status_code,status"},
                )
                body = reply.body if isinstance(reply.body, dict) else {}
                status = body.get("status_code")
                if status in ("FINISHED", "PUBLISHED"):
                    return
                if status == "ERROR":
                    detail = self.message(body.get("status") or "processing failed", creds)
                    raise outcomes.refused(self.name, "media", detail, reply)
                if status == "EXPIRED":
                    raise outcomes.transient(self.name, "container expired before publishing")
                await anyio.sleep(self.settings.poll_interval)
        raise outcomes.transient(
            self.name, f"container not ready within {self.settings.ready_timeout:g}s"
        )

    def error(self, reply: Reply, creds: Credentials) -> Exception:
        return graph_error(self.name, reply, creds)


def _commented_media(post: InstagramPost, job: Job) -> str:
    """The media a comment goes on: its ``media_id``, or the one Instagram media that the
    steps of its flow it runs after published (their result's ``post_id``)."""
    if post.media_id is not None:
        return post.media_id
    flow = job.flow
    published = [
        str(result["post_id"])
        for result in (flow.results.values() if flow is not None else ())
        if isinstance(result, dict)
        and result.get("platform") == "instagram"
        and result.get("post_id")
    ]
    if len(published) != 1:
        found = "none" if not published else f"{len(published)}"
        raise Fail(
            "instagram: a comment needs media_id, or to run in a flow after exactly one "
            f"step that published an instagram media ({found} found)"
        )
    return published[0]


def _media(image_url: str | None, video_url: str | None) -> dict[str, str]:
    if image_url is not None:
        return {"image_url": image_url}
    assert video_url is not None
    return {"video_url": video_url, "media_type": "REELS"}

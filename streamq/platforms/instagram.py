"""Instagram: create a media container, wait until Instagram has processed it, publish it.

    POST {base}/{version}/{ig-user-id}/media          image_url | video_url (REELS) | children
    GET  {base}/{version}/{container-id}?fields=status_code      until FINISHED
    POST {base}/{version}/{ig-user-id}/media_publish  creation_id   ->  {"id": "<media id>"}
    GET  {base}/{version}/{ig-user-id}/media?since=<unix>&fields=id,caption,timestamp

Credentials: a token with instagram_content_publish, and the Instagram user id as ``user_id``.
A carousel is 2-10 items, each a child container made first. Only the publish call makes a
post: a container left unpublished by a failed attempt expires on its own after 24 hours.

Publish once: the container's id is kept as the job's checkpoint ``container`` before
media_publish is sent, and a container publishes once. A later run asks the container's
``status_code``: ``PUBLISHED`` means the earlier send landed (its media id is then read from
the user's media since the first send, matched by caption); ``FINISHED`` or ``IN_PROGRESS``
means it did not, and the run publishes that same container; anything else starts over.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Final

import anyio
import msgspec

from streamq.errors import Fail
from streamq.platforms import outcomes
from streamq.platforms.base import LIST_PAGES, Found, HttpUrl, PostBase, Publisher, Sending
from streamq.platforms.credentials import Credentials
from streamq.platforms.facebook import graph_error
from streamq.platforms.outcomes import Reply

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
    image_url: HttpUrl | None = None
    video_url: HttpUrl | None = None
    """A video is published as a reel."""
    children: Annotated[list[InstagramItem], msgspec.Meta(min_length=2, max_length=10)] | None = (
        None
    )
    """A carousel of 2-10 items."""

    def __post_init__(self) -> None:
        given = [self.image_url, self.video_url, self.children]
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
        container = sending.checkpoints.get(CONTAINER)
        if container is None:  # no run got as far as media_publish (the id is kept first)
            return None
        if await self._status(creds, container) != "PUBLISHED":
            return None
        if not self.settings.lookup:
            return Found(None)  # published for sure; which media, only a listing says
        return Found(await self._published_media(post, creds, sending))

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
        url: str | None = self.url(f"{self.settings.api_version}/{creds.user_id}/media")
        params: dict[str, Any] | None = {
            "since": sending.listed_since_ms() // 1000,
            "fields": "id,caption,timestamp",
            "limit": 100,
        }
        for _ in range(LIST_PAGES):
            if not url:
                return None
            reply = await self.call("GET", url, creds, params=params)
            body = reply.body if isinstance(reply.body, dict) else {}
            for item in body.get("data") or []:
                if isinstance(item, dict) and (item.get("caption") or "") == post.text:
                    return str(item["id"])
            paging = body.get("paging")
            url = paging.get("next") if isinstance(paging, dict) else None
            params = None
        raise self.listing_too_long()

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


def _media(image_url: str | None, video_url: str | None) -> dict[str, str]:
    if image_url is not None:
        return {"image_url": image_url}
    assert video_url is not None
    return {"video_url": video_url, "media_type": "REELS"}

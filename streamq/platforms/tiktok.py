"""TikTok: a video post with the Content Posting API, TikTok pulling the file from a URL.

    POST {base}/{version}/post/publish/video/init/     {"post_info", "source_info"}
         -> {"data": {"publish_id"}, "error": {"code": "ok"}}
    POST {base}/{version}/post/publish/status/fetch/   {"publish_id"}   until PUBLISH_COMPLETE
    POST {base}/{version}/video/list/?fields=id,title,video_description,create_time
         the user's videos, newest first (the Display API; needs video.list)

Publish once: the publish id is kept as the job's checkpoint ``publish_id`` as soon as init
answers, and a later run fetches its status instead of posting again (``FAILED``: nothing was
posted, so it posts). When init's own answer was lost there is no publish id: the run reads
the user's videos since the first send and matches the title.

Credentials: a user token with video.publish; TikTok needs no user id. The URL's domain must
be verified for the app. Every answer carries ``error.code`` ("ok" on success), which says
more than the HTTP status.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Final, Literal

import anyio
import msgspec

from streamq.errors import Fail
from streamq.platforms import outcomes
from streamq.platforms.base import Found, HttpUrl, PostBase, Publisher, Sending
from streamq.platforms.credentials import Credentials
from streamq.platforms.outcomes import Reply

MAX_TITLE: Final = 2_200
DAY: Final = 86_400.0
TOKEN_CODES: Final = frozenset({"access_token_invalid", "token_not_authorized_for_specified_user"})
PERMISSION_CODES: Final = frozenset(
    {
        "scope_not_authorized",
        "scope_permission_missed",
        "url_ownership_unverified",
        "unaudited_client_can_only_post_to_private_accounts",
    }
)
RATE_CODES: Final = frozenset({"rate_limit_exceeded"})
DAILY_CAP_CODES: Final = frozenset({"spam_risk_too_many_posts", "spam_risk_too_many_pending_share"})
APP_CAP_CODES: Final = frozenset({"reached_active_user_cap"})
POLICY_CODES: Final = frozenset(
    {"spam_risk_user_banned_from_posting", "spam_risk_text", "spam_risk"}
)
TRANSIENT_FAILURES: Final = frozenset({"internal", "video_pull_failed"})
PUBLISH_ID: Final = "publish_id"
"""The checkpoint that keeps init's publish id (the job's record; see streamq.job)."""


class TikTokPost(PostBase, frozen=True, forbid_unknown_fields=True, kw_only=True):
    video_url: HttpUrl
    text: Annotated[str, msgspec.Meta(max_length=MAX_TITLE)] = ""
    """The title shown with the video."""
    privacy_level: Literal[
        "PUBLIC_TO_EVERYONE", "MUTUAL_FOLLOW_FRIENDS", "FOLLOWER_OF_CREATOR", "SELF_ONLY"
    ] = "PUBLIC_TO_EVERYONE"
    disable_comment: bool = False
    disable_duet: bool = False
    disable_stitch: bool = False
    cover_timestamp_ms: Annotated[int, msgspec.Meta(ge=0)] | None = None


class TikTokPublisher(Publisher):
    name: ClassVar[str] = "tiktok"
    Post: ClassVar[type[PostBase]] = TikTokPost
    base_url: ClassVar[str] = "https://open.tiktokapis.com"
    api_version: ClassVar[str] = "v2"

    async def publish(self, post: Any, creds: Credentials, sending: Sending) -> str:
        assert isinstance(post, TikTokPost)
        info: dict[str, Any] = {
            "title": post.text,
            "privacy_level": post.privacy_level,
            "disable_comment": post.disable_comment,
            "disable_duet": post.disable_duet,
            "disable_stitch": post.disable_stitch,
        }
        if post.cover_timestamp_ms is not None:
            info["video_cover_timestamp_ms"] = post.cover_timestamp_ms
        await sending.may_send()
        reply = await self.call(
            "POST",
            f"{self.settings.api_version}/post/publish/video/init/",
            creds,
            marker=sending.job.id,
            json={
                "post_info": info,
                "source_info": {"source": "PULL_FROM_URL", "video_url": post.video_url},
            },
        )
        self._check_body(reply, creds)
        data = reply.body.get("data") or {}
        publish_id = data.get("publish_id")
        if not publish_id:
            raise outcomes.transient(self.name, "answer without a publish_id", reply)
        sending.accepted = True
        await sending.checkpoint(PUBLISH_ID, str(publish_id))
        post_id = await self._wait_until_published(creds, str(publish_id))
        assert post_id is not None
        return post_id

    async def find(self, post: Any, creds: Credentials, sending: Sending) -> Found | None:
        """The earlier run's post: by its publish id's status, else among the user's videos."""
        assert isinstance(post, TikTokPost)
        publish_id = sending.checkpoints.get(PUBLISH_ID)
        if publish_id is not None:
            try:
                post_id = await self._wait_until_published(creds, publish_id, lookup=True)
            except Fail as refused:
                if refused.pause_account:
                    raise
                # A publish id TikTok no longer knows (or will not answer for) says nothing of
                # the video: look among the user's videos, as after a lost init answer.
            else:
                return None if post_id is None else Found(post_id)  # None: FAILED, not posted
        if not self.settings.lookup:
            return self.unlisted(sending)
        if not post.text:
            return None  # nothing to tell it from the user's other videos
        since = sending.listed_since_ms()
        body: dict[str, Any] = {"max_count": 20}
        for _ in range(self.settings.list_pages):
            reply = await self.call(
                "POST",
                f"{self.settings.api_version}/video/list/",
                creds,
                params={"fields": "id,title,video_description,create_time"},
                json=body,
            )
            self._check_body(reply, creds)
            data = reply.body.get("data") or {}
            videos = [v for v in data.get("videos") or [] if isinstance(v, dict)]
            for video in videos:
                if post.text in (video.get("title"), video.get("video_description")):
                    return Found(str(video["id"]))
            times = [v.get("create_time") for v in videos]
            if not data.get("has_more") or any(
                isinstance(t, int) and t * 1000 < since for t in times
            ):
                return None
            cursor = data.get("cursor")
            # The cursor is a time (ms): the next page holds the videos created before it, so
            # another video of the last one's millisecond would be skipped. A millisecond later
            # shows that millisecond again (a video seen twice is matched twice, harmlessly).
            body["cursor"] = cursor + 1 if isinstance(cursor, int) else cursor
        raise self.listing_too_long()

    async def _wait_until_published(
        self, creds: Credentials, publish_id: str, *, lookup: bool = False
    ) -> str | None:
        """Poll the publish until TikTok has pulled and posted the video; returns the post id
        TikTok gives (the publish id while the post is not public yet). A failed publish
        raises what its reason means, or with ``lookup`` returns None (nothing was posted)."""
        with anyio.move_on_after(self.settings.ready_timeout):
            while True:
                reply = await self.call(
                    "POST",
                    f"{self.settings.api_version}/post/publish/status/fetch/",
                    creds,
                    json={"publish_id": publish_id},
                )
                self._check_body(reply, creds)
                data = reply.body.get("data") or {}
                status = data.get("status")
                if status in ("PUBLISH_COMPLETE", "SEND_TO_USER_INBOX"):
                    public = data.get("publicaly_available_post_id") or []
                    return str(public[0]) if public else publish_id
                if status == "FAILED":
                    if lookup:
                        return None
                    reason = self.message(data.get("fail_reason") or "failed", creds)
                    if reason in TRANSIENT_FAILURES:
                        raise outcomes.transient(self.name, f"publish failed: {reason}", reply)
                    raise outcomes.refused(self.name, "refused", f"publish failed: {reason}", reply)
                await anyio.sleep(self.settings.poll_interval)
        # TikTok accepted the post and is still working on it: it may well appear.
        return publish_id

    def _check_body(self, reply: Reply, creds: Credentials) -> None:
        body = reply.body if isinstance(reply.body, dict) else {}
        error = body.get("error") or {}
        if isinstance(error, dict) and error.get("code") not in (None, "ok"):
            raise self.error(reply, creds)

    def error(self, reply: Reply, creds: Credentials) -> Exception:
        body = reply.body if isinstance(reply.body, dict) else {}
        found = body.get("error")
        error: dict[str, Any] = found if isinstance(found, dict) else {}
        code = error.get("code")
        message = self.message(error.get("message") or code or reply.body or "no body", creds)
        if code in TOKEN_CODES:
            return outcomes.token_problem(self.name, message, reply, code)
        if code in RATE_CODES:
            return outcomes.rate_limited(self.name, message, reply, code)
        if code in DAILY_CAP_CODES:
            wait = outcomes.retry_after(reply.headers, default=DAY)
            return outcomes.rate_limited(self.name, message, reply, code, seconds=wait)
        if code in APP_CAP_CODES:
            wait = outcomes.retry_after(reply.headers, default=DAY)
            return outcomes.rate_limited(
                self.name, message, reply, code, seconds=wait, scope="platform"
            )
        if code in PERMISSION_CODES:
            return outcomes.refused(self.name, "permission", message, reply, code)
        if code in POLICY_CODES:
            return outcomes.refused(self.name, "content policy", message, reply, code)
        if code == "internal_error":
            return outcomes.transient(self.name, message, reply, code)
        return outcomes.by_status(self.name, message, reply, code)

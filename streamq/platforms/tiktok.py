"""TikTok: a video post with the Content Posting API, TikTok pulling the file from a URL.

    POST {base}/{version}/post/publish/video/init/     {"post_info", "source_info"}
         -> {"data": {"publish_id"}, "error": {"code": "ok"}}
    POST {base}/{version}/post/publish/status/fetch/   {"publish_id"}   until PUBLISH_COMPLETE

Credentials: a user token with video.publish; TikTok needs no user id. The URL's domain must
be verified for the app. Every answer carries ``error.code`` ("ok" on success), which says
more than the HTTP status.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Final, Literal

import anyio
import msgspec

from streamq.platforms import outcomes
from streamq.platforms.base import HttpUrl, PostBase, Publisher
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

    async def publish(self, post: Any, creds: Credentials, marker: str) -> str:
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
        reply = await self.call(
            "POST",
            f"{self.settings.api_version}/post/publish/video/init/",
            creds,
            marker=marker,
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
        return await self._wait_until_published(creds, str(publish_id))

    async def _wait_until_published(self, creds: Credentials, publish_id: str) -> str:
        """Poll the publish until TikTok has pulled and posted the video; returns the post id
        TikTok gives (the publish id while the post is not public yet)."""
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

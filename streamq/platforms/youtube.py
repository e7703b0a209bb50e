"""YouTube: a video upload with the Data API v3, resumable protocol.

    POST {base}/upload/youtube/{version}/videos?uploadType=resumable&part=snippet,status
         {"snippet": {...}, "status": {...}}   -> 200, the upload session's URL in Location
    PUT  <session URL>   the video's bytes, streamed from video_url   -> {"id": "<video id>"}
    PUT  <session URL>   empty, Content-Range: bytes */*   -> 308 incomplete, or 200 the video

Publish once: the session URL is kept as the job's checkpoint ``upload`` before the bytes are
sent (a video exists only once an upload completes). A later run asks the session: complete
means the earlier upload landed (the video is the job's); incomplete, expired or unknown means
it did not, and the run starts a new session.

Credentials: an OAuth token with youtube.upload; the channel is the token's. videos.insert
has its own quota (100 a day per Cloud project, see streamq.limiter): ``quotaExceeded`` holds
back the whole stream until the quota resets (midnight Pacific time).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, ClassVar, Final, Literal
from zoneinfo import ZoneInfo

import msgspec

from streamq.errors import Fail
from streamq.platforms import outcomes
from streamq.platforms.base import (
    IDEMPOTENCY_HEADER,
    Found,
    HttpUrl,
    PostBase,
    Publisher,
    Sending,
)
from streamq.platforms.credentials import Credentials
from streamq.platforms.outcomes import Reply

MAX_TITLE: Final = 100
MAX_DESCRIPTION_BYTES: Final = 5_000
MAX_TAGS_CHARS: Final = 500
QUOTA_ZONE: Final = ZoneInfo("America/Los_Angeles")
HOUR: Final = 3600.0
TOKEN_REASONS: Final = frozenset({"authError", "invalidCredentials", "expired"})
PERMISSION_REASONS: Final = frozenset(
    {"insufficientPermissions", "forbidden", "youtubeSignupRequired", "accessNotConfigured"}
)
RATE_REASONS: Final = frozenset({"rateLimitExceeded", "userRateLimitExceeded"})
PROJECT_QUOTA_REASONS: Final = frozenset({"quotaExceeded", "dailyLimitExceeded"})
UPLOAD_LIMIT_REASONS: Final = frozenset({"uploadLimitExceeded"})
TRANSIENT_REASONS: Final = frozenset({"backendError", "internalError"})
UPLOAD: Final = "upload"
"""The checkpoint that keeps the upload session's URL (the job's record; see streamq.job)."""


class YouTubePost(PostBase, frozen=True, forbid_unknown_fields=True, kw_only=True):
    video_url: HttpUrl
    """Where the video file is; streamq streams it to YouTube."""
    title: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TITLE)]
    text: str = ""
    """The description."""
    tags: list[str] = msgspec.field(default_factory=list)
    privacy: Literal["public", "unlisted", "private"] = "public"
    category_id: str = "22"
    made_for_kids: bool = False

    def __post_init__(self) -> None:
        for name, value in (("title", self.title), ("text", self.text)):
            if "<" in value or ">" in value:
                raise ValueError(f"youtube does not allow < or > in the {name}")
        size = len(self.text.encode())
        if size > MAX_DESCRIPTION_BYTES:
            raise ValueError(
                f"text (the description) is {size} bytes; youtube allows {MAX_DESCRIPTION_BYTES}"
            )
        # YouTube counts a tag with a space as if quoted, and a comma between tags.
        counted = sum(len(t) + (2 if " " in t else 0) for t in self.tags) + max(
            0, len(self.tags) - 1
        )
        if counted > MAX_TAGS_CHARS:
            raise ValueError(f"tags come to {counted} characters; youtube allows {MAX_TAGS_CHARS}")


def seconds_until_quota_reset(now: datetime | None = None) -> float:
    """YouTube's daily quotas reset at midnight Pacific time."""
    here = (now or datetime.now(QUOTA_ZONE)).astimezone(QUOTA_ZONE)
    midnight = (here + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(60.0, (midnight - here).total_seconds())


class YouTubePublisher(Publisher):
    name: ClassVar[str] = "youtube"
    Post: ClassVar[type[PostBase]] = YouTubePost
    base_url: ClassVar[str] = "https://www.googleapis.com"
    api_version: ClassVar[str] = "v3"

    async def publish(self, post: Any, creds: Credentials, sending: Sending) -> str:
        assert isinstance(post, YouTubePost)
        marker = sending.job.id
        metadata = {
            "snippet": {
                "title": post.title,
                "description": post.text,
                "tags": post.tags,
                "categoryId": post.category_id,
            },
            "status": {
                "privacyStatus": post.privacy,
                "selfDeclaredMadeForKids": post.made_for_kids,
            },
        }
        session = await self.call(
            "POST",
            f"upload/youtube/{self.settings.api_version}/videos",
            creds,
            marker=marker,
            params={"uploadType": "resumable", "part": "snippet,status"},
            json=metadata,
            headers={"X-Upload-Content-Type": "video/*"},
        )
        upload_url = session.header("location")
        if not upload_url:
            raise outcomes.transient(self.name, "no upload session URL in the answer", session)
        await sending.checkpoint(UPLOAD, upload_url)
        await sending.may_send()
        reply = await self.session.relay(
            self.name,
            post.video_url,
            "PUT",
            upload_url,
            creds.token,
            headers={IDEMPOTENCY_HEADER: marker},
            timeout=self.settings.timeout,
        )
        if not reply.ok:
            raise self.error(reply, creds)
        video_id = reply.body.get("id") if isinstance(reply.body, dict) else None
        if not video_id:
            raise outcomes.transient(self.name, "upload answer without the video's id", reply)
        return str(video_id)

    async def find(self, post: Any, creds: Credentials, sending: Sending) -> Found | None:
        """The video of the earlier run's upload session, if that upload completed."""
        upload_url = sending.checkpoints.get(UPLOAD)
        if upload_url is None:  # no run got as far as the bytes (the URL is kept first)
            return None
        reply = await self.session.send(
            self.name,
            "PUT",
            upload_url,
            creds.token,
            headers={"Content-Range": "bytes */*"},
            timeout=self.settings.timeout,
        )
        if reply.status == 308 or reply.status in (404, 410):
            return None  # incomplete, or gone: no video came of it
        if not reply.ok:
            error = self.error(reply, creds)
            if isinstance(error, Fail) and not error.pause_account:
                return None  # the session is refused: no video came of it
            raise error
        video_id = reply.body.get("id") if isinstance(reply.body, dict) else None
        if not video_id:
            raise outcomes.transient(self.name, "session status without the video's id", reply)
        return Found(str(video_id))

    def error(self, reply: Reply, creds: Credentials) -> Exception:
        body = reply.body if isinstance(reply.body, dict) else {}
        found = body.get("error")
        error: dict[str, Any] = found if isinstance(found, dict) else {}
        details = error.get("errors") or [{}]
        reason = details[0].get("reason") if isinstance(details[0], dict) else None
        message = self.message(error.get("message") or reply.body or "no body", creds)
        if reply.status == 401 or reason in TOKEN_REASONS:
            return outcomes.token_problem(self.name, message, reply, reason)
        if reason in PROJECT_QUOTA_REASONS:
            wait = outcomes.retry_after(reply.headers, default=seconds_until_quota_reset())
            return outcomes.rate_limited(
                self.name, message, reply, reason, seconds=wait, scope="platform"
            )
        if reason in UPLOAD_LIMIT_REASONS:
            wait = outcomes.retry_after(reply.headers, default=HOUR)
            return outcomes.rate_limited(self.name, message, reply, reason, seconds=wait)
        if reason in RATE_REASONS or reply.status == 429:
            return outcomes.rate_limited(self.name, message, reply, reason)
        if reason in TRANSIENT_REASONS or reply.status >= 500:
            return outcomes.transient(self.name, message, reply, reason)
        if reason in PERMISSION_REASONS:
            lowered = message.lower()
            kind = (
                "content policy" if "guideline" in lowered or "polic" in lowered else "permission"
            )
            return outcomes.refused(self.name, kind, message, reply, reason)
        return outcomes.by_status(self.name, message, reply, reason)

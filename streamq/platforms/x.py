"""X: a post with the X API v2.

    POST {base}/{version}/tweets   {"text", "media": {"media_ids"}, "reply", "quote_tweet_id"}
         -> 201 {"data": {"id", "text"}}
    GET  {base}/{version}/users/me                       the token's user id
    GET  {base}/{version}/users/{id}/tweets?start_time=  the user's posts since a time: how a
         later run finds an earlier send that landed (needs tweet.read, users.read)

Credentials: a user-context OAuth 2.0 token with tweet.write; X needs no user id. Text length
is X's weighted count: 280 at most, where a URL counts as 23 and characters outside Latin,
general punctuation and the like (CJK, emoji, ...) count as 2. X refuses a post whose text
duplicates a recent one of the same user (403): after an earlier attempt of the same job,
that post is the job's own, though X does not say its id.
"""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Final

import msgspec

from streamq.platforms import outcomes
from streamq.platforms.base import Found, PostBase, Publisher, Sending
from streamq.platforms.credentials import Credentials
from streamq.platforms.outcomes import Reply

MAX_WEIGHT: Final = 280
URL_WEIGHT: Final = 23
_URL = re.compile(r"https?://\S+")
_LIGHT_RANGES: Final = ((0, 4351), (8192, 8205), (8208, 8223), (8242, 8247))
"""Code points X counts as 1 (twitter-text's default configuration); others count as 2."""


def weighted_length(text: str) -> int:
    """The length X measures ``text`` by."""
    urls = _URL.findall(text)
    rest = _URL.sub("", text)
    weight = 0
    for char in rest:
        point = ord(char)
        weight += 1 if any(low <= point <= high for low, high in _LIGHT_RANGES) else 2
    return weight + URL_WEIGHT * len(urls)


class XPost(PostBase, frozen=True, forbid_unknown_fields=True, kw_only=True):
    text: str = ""
    media_ids: Annotated[list[str], msgspec.Meta(min_length=1, max_length=4)] | None = None
    """Media uploaded beforehand (the v2 media upload endpoint); up to 4."""
    reply_to: str | None = None
    quote_of: str | None = None

    def __post_init__(self) -> None:
        if not self.text and not self.media_ids:
            raise ValueError("an x post needs text or media_ids")
        weight = weighted_length(self.text)
        if weight > MAX_WEIGHT:
            raise ValueError(
                f"text is {weight} characters as x counts them (URLs 23, CJK and emoji 2); "
                f"x allows {MAX_WEIGHT}"
            )


class XPublisher(Publisher):
    name: ClassVar[str] = "x"
    Post: ClassVar[type[PostBase]] = XPost
    base_url: ClassVar[str] = "https://api.x.com"
    api_version: ClassVar[str] = "2"

    async def publish(self, post: Any, creds: Credentials, sending: Sending) -> str:
        assert isinstance(post, XPost)
        body: dict[str, Any] = {}
        if post.text:
            body["text"] = post.text
        if post.media_ids:
            body["media"] = {"media_ids": post.media_ids}
        if post.reply_to:
            body["reply"] = {"in_reply_to_tweet_id": post.reply_to}
        if post.quote_of:
            body["quote_tweet_id"] = post.quote_of
        await sending.may_send()
        reply = await self.call(
            "POST", f"{self.settings.api_version}/tweets", creds, marker=sending.job.id, json=body
        )
        data = reply.body.get("data") if isinstance(reply.body, dict) else None
        if not isinstance(data, dict) or not data.get("id"):
            raise outcomes.transient(self.name, "answer without the post's id", reply)
        return str(data["id"])

    async def find(self, post: Any, creds: Credentials, sending: Sending) -> Found | None:
        """The user's timeline since the first send, matched by text (URLs aside: X shortens
        them) and media."""
        assert isinstance(post, XPost)
        if not self.settings.lookup:
            return self.unlisted(sending)
        version = self.settings.api_version
        user = creds.user_id
        if not user:
            me = await self.call("GET", f"{version}/users/me", creds)
            data = me.body.get("data") if isinstance(me.body, dict) else None
            user = str(data.get("id") or "") if isinstance(data, dict) else ""
            if not user:
                raise outcomes.transient(self.name, "users/me answered without an id", me)
        since = datetime.fromtimestamp(sending.listed_since_ms() / 1000, tz=UTC)
        params: dict[str, Any] = {
            "start_time": since.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "max_results": 100,
            "tweet.fields": "created_at,attachments",
        }
        wanted = _comparable(post.text)
        media = set(post.media_ids or ())
        for _ in range(self.settings.list_pages):
            reply = await self.call("GET", f"{version}/users/{user}/tweets", creds, params=params)
            body = reply.body if isinstance(reply.body, dict) else {}
            for item in body.get("data") or []:
                if not isinstance(item, dict) or _comparable(item.get("text")) != wanted:
                    continue
                attachments = item.get("attachments") or {}
                keys = attachments.get("media_keys") or [] if isinstance(attachments, dict) else []
                if {str(key).partition("_")[2] or str(key) for key in keys} == media:
                    return Found(str(item["id"]))
            meta = body.get("meta") or {}
            token = meta.get("next_token") if isinstance(meta, dict) else None
            if not token:
                return None
            params["pagination_token"] = token
        raise self.listing_too_long()

    def error(self, reply: Reply, creds: Credentials) -> Exception:
        body = reply.body if isinstance(reply.body, dict) else {}
        errors = body.get("errors")
        first = errors[0] if isinstance(errors, list) and errors else {}
        text = body.get("detail") or (first.get("message") if isinstance(first, dict) else None)
        message = self.message(text or body.get("title") or reply.body or "no body", creds)
        lowered = message.lower()
        if reply.status == 429:
            app_left = reply.header("x-app-limit-24hour-remaining")
            if app_left == "0":  # the app's daily cap: every account waits
                reset = reply.header("x-app-limit-24hour-reset")
                headers = {"x-rate-limit-reset": reset} if reset else {}
                return outcomes.rate_limited(
                    self.name,
                    message,
                    reply,
                    seconds=outcomes.retry_after(headers),
                    scope="platform",
                )
            return outcomes.rate_limited(self.name, message, reply)
        if reply.status == 401:
            return outcomes.token_problem(self.name, message, reply)
        if reply.status == 403:
            if "duplicate content" in lowered:
                return outcomes.DuplicatePost(
                    outcomes.describe(self.name, "duplicate", message, reply)
                )
            if "rules" in lowered or "automated" in lowered or "policy" in lowered:
                return outcomes.refused(self.name, "content policy", message, reply)
        return outcomes.by_status(self.name, message, reply)


def _comparable(text: Any) -> str:
    """A post's text as X's timeline and the payload can both be read: entities unescaped,
    each URL (which X answers as its t.co form) one placeholder, spaces trimmed."""
    return _URL.sub("<url>", html.unescape(str(text or ""))).strip()

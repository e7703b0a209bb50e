"""Facebook: a post on a Page's feed, with the Graph API.

    POST {base}/{version}/{page-id}/feed   message, link   ->  {"id": "<page>_<post>"}
    GET  {base}/{version}/{page-id}/feed?since=<unix>&fields=id,message,link,created_time
         the Page's posts since a time: how a later run finds an earlier send that landed

Credentials: a Page access token, and the Page id as ``user_id``. Errors come as
``{"error": {"message", "type", "code", "error_subcode", "is_transient"}}``; Instagram's Graph
API speaks the same dialect, so :func:`graph_error` serves both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any, ClassVar, Final

import msgspec

from streamq.platforms import outcomes
from streamq.platforms.base import Found, HttpUrl, PostBase, Publisher, Sending
from streamq.platforms.credentials import Credentials
from streamq.platforms.outcomes import Reply

MAX_TEXT: Final = 63_206
TOKEN_CODES: Final = frozenset({102, 190})
"""OAuthException codes of an invalid, expired or revoked token (190: subcodes 458-467)."""
APP_RATE_CODES: Final = frozenset({4})
"""Application request limit reached: every account of the app waits."""
RATE_CODES: Final = frozenset({17, 32, 341, 613, *range(80001, 80015)})
"""User, Page, and business-use-case request limits: the account waits."""
PERMISSION_CODES: Final = frozenset({10, *range(200, 300)})
POLICY_CODES: Final = frozenset({368})
TRANSIENT_CODES: Final = frozenset({1, 2})
DUPLICATE_CODES: Final = frozenset({506})
IG_PUBLISH_LIMIT_SUBCODE: Final = 2207042
"""Instagram: the account reached its content publishing limit (code 9)."""


class FacebookPost(PostBase, frozen=True, forbid_unknown_fields=True, kw_only=True):
    text: Annotated[str, msgspec.Meta(max_length=MAX_TEXT)] | None = None
    link: HttpUrl | None = None

    def __post_init__(self) -> None:
        if not self.text and not self.link:
            raise ValueError("a facebook post needs text or a link")


FEED_FIELDS: Final = "id,message,link,created_time"


async def graph_listing(
    publisher: Publisher, path: str, creds: Credentials, sending: Sending, fields: str
) -> AsyncIterator[dict[str, Any]]:
    """The items of a Graph API edge (a Page's feed, a user's media, a media's comments) since
    the job's first send, newest first, page after page (Facebook and Instagram). Raises
    ``listing_too_long`` when ``list_pages`` pages did not reach the end: a lookup that stopped
    there cannot tell whether the send landed."""
    url: str | None = publisher.url(f"{publisher.settings.api_version}/{path}")
    params: dict[str, Any] | None = {
        "since": sending.listed_since_ms() // 1000,
        "fields": fields,
        "limit": 100,
    }
    for _ in range(publisher.settings.list_pages):
        if not url:
            return
        reply = await publisher.call("GET", url, creds, params=params)
        body = reply.body if isinstance(reply.body, dict) else {}
        for item in body.get("data") or []:
            if isinstance(item, dict):
                yield item
        paging = body.get("paging")
        url = paging.get("next") if isinstance(paging, dict) else None
        params = None  # the next page's URL carries them
    if url:
        raise publisher.listing_too_long()


def graph_error(platform: str, reply: Reply, creds: Credentials) -> Exception:
    """The outcome of a Graph API error answer (Facebook and Instagram)."""
    error = reply.body.get("error") if isinstance(reply.body, dict) else None
    if not isinstance(error, dict):
        text = reply.body if isinstance(reply.body, str) and reply.body else "no error body"
        return outcomes.by_status(platform, outcomes.clean(text, creds.token), reply)
    code: Any = error.get("code")
    subcode: Any = error.get("error_subcode")
    message = outcomes.clean(error.get("message") or "unknown error", creds.token)
    shown = code if subcode is None else f"{code}/{subcode}"
    if code in TOKEN_CODES:
        return outcomes.token_problem(platform, message, reply, shown)
    if code in APP_RATE_CODES:
        return outcomes.rate_limited(platform, message, reply, shown, scope="platform")
    if code in RATE_CODES or subcode == IG_PUBLISH_LIMIT_SUBCODE or reply.status == 429:
        return outcomes.rate_limited(platform, message, reply, shown)
    if code in TRANSIENT_CODES or error.get("is_transient") or reply.status >= 500:
        return outcomes.transient(platform, message, reply, shown)
    if code in PERMISSION_CODES:
        return outcomes.refused(platform, "permission", message, reply, shown)
    if code in POLICY_CODES:
        return outcomes.refused(platform, "content policy", message, reply, shown)
    if code in DUPLICATE_CODES:
        return outcomes.refused(platform, "duplicate", message, reply, shown)
    return outcomes.by_status(platform, message, reply, shown)


class FacebookPublisher(Publisher):
    name: ClassVar[str] = "facebook"
    Post: ClassVar[type[PostBase]] = FacebookPost
    base_url: ClassVar[str] = "https://graph.facebook.com"
    api_version: ClassVar[str] = "v21.0"
    needs_user_id: ClassVar[str | None] = "the Page id"

    async def publish(self, post: Any, creds: Credentials, sending: Sending) -> str:
        assert isinstance(post, FacebookPost)
        form = {"message": post.text, "link": post.link}
        await sending.may_send()
        reply = await self.call(
            "POST",
            f"{self.settings.api_version}/{creds.user_id}/feed",
            creds,
            marker=sending.job.id,
            data={k: v for k, v in form.items() if v is not None},
        )
        return _id_of(self.name, reply)

    async def find(self, post: Any, creds: Credentials, sending: Sending) -> Found | None:
        """The Page's posts since the first send, matched by text and link."""
        assert isinstance(post, FacebookPost)
        if not self.settings.lookup:
            return self.unlisted(sending)
        feed = graph_listing(self, f"{creds.user_id}/feed", creds, sending, FEED_FIELDS)
        async for item in feed:
            same_link = post.link is None or item.get("link") == post.link
            if (item.get("message") or None) == (post.text or None) and same_link:
                return Found(str(item["id"]))
        return None

    def error(self, reply: Reply, creds: Credentials) -> Exception:
        return graph_error(self.name, reply, creds)


def _id_of(platform: str, reply: Reply) -> str:
    post_id = reply.body.get("id") if isinstance(reply.body, dict) else None
    if not post_id:
        raise outcomes.transient(platform, "answer without an id", reply)
    return str(post_id)

"""LinkedIn: a post with the Posts API (versioned REST).

    POST {base}/rest/posts   {"author", "commentary", "visibility", "distribution", ...}
         headers LinkedIn-Version: <YYYYMM>, X-Restli-Protocol-Version: 2.0.0
         -> 201, the post's URN in the x-restli-id header
    GET  {base}/rest/posts?q=author&author=<URN>&sortBy=CREATED   the author's posts, newest
         first: how a later run finds an earlier send that landed (needs r_member_social or
         r_organization_social; without it, the duplicate refusal below still finds it)

Credentials: a token with w_member_social (or w_organization_social), and the author URN
(``urn:li:person:...`` or ``urn:li:organization:...``) as ``user_id``. LinkedIn refuses a
post whose text duplicates a recent one of the author, naming the existing URN: after an
earlier attempt of the same job, that URN is the job's post.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Final, Literal

import msgspec

from streamq.platforms import outcomes
from streamq.platforms.base import Found, HttpUrl, PostBase, Publisher, Sending
from streamq.platforms.credentials import Credentials
from streamq.platforms.outcomes import Reply

MAX_TEXT: Final = 3_000
_DUPLICATE = re.compile(r"duplicate of (urn:li:\w+:[\w-]+)", re.IGNORECASE)
TOKEN_CODES: Final = frozenset(
    {"EXPIRED_ACCESS_TOKEN", "REVOKED_ACCESS_TOKEN", "INVALID_ACCESS_TOKEN"}
)


class LinkedInPost(PostBase, frozen=True, forbid_unknown_fields=True, kw_only=True):
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TEXT)]
    """The commentary."""
    visibility: Literal["PUBLIC", "CONNECTIONS", "LOGGED_IN"] = "PUBLIC"
    link: HttpUrl | None = None
    """An article to attach; it needs a link_title."""
    link_title: Annotated[str, msgspec.Meta(max_length=400)] | None = None

    def __post_init__(self) -> None:
        if self.link is not None and not self.link_title:
            raise ValueError("a linkedin article link needs a link_title")


class LinkedInPublisher(Publisher):
    name: ClassVar[str] = "linkedin"
    Post: ClassVar[type[PostBase]] = LinkedInPost
    base_url: ClassVar[str] = "https://api.linkedin.com"
    api_version: ClassVar[str] = "202411"
    needs_user_id: ClassVar[str | None] = (
        "the author URN, urn:li:person:... or urn:li:organization:..."
    )

    async def publish(self, post: Any, creds: Credentials, sending: Sending) -> str:
        assert isinstance(post, LinkedInPost)
        body: dict[str, Any] = {
            "author": creds.user_id,
            "commentary": post.text,
            "visibility": post.visibility,
            "distribution": {
                "feedDistribution": "MAIN_FEED",
                "targetEntities": [],
                "thirdPartyDistributionChannels": [],
            },
            "lifecycleState": "PUBLISHED",
            "isReshareDisabledByAuthor": False,
        }
        if post.link is not None:
            body["content"] = {"article": {"source": post.link, "title": post.link_title}}
        await sending.may_send()
        reply = await self.call(
            "POST",
            "rest/posts",
            creds,
            marker=sending.job.id,
            json=body,
            headers=self._headers(),
        )
        urn = reply.header("x-restli-id") or (
            reply.body.get("id") if isinstance(reply.body, dict) else None
        )
        if not urn:
            raise outcomes.transient(self.name, "answer without the post's URN", reply)
        return str(urn)

    async def find(self, post: Any, creds: Credentials, sending: Sending) -> Found | None:
        """The author's posts since the first send, matched by text. With ``lookup`` off,
        sending again finds it too: LinkedIn refuses the duplicate and names its URN."""
        assert isinstance(post, LinkedInPost)
        if not self.settings.lookup:
            return self.unlisted(sending)
        since = sending.listed_since_ms()
        start, count = 0, 50
        for _ in range(self.settings.list_pages):
            params = {"q": "author", "author": creds.user_id, "sortBy": "CREATED",
                      "start": start, "count": count}  # fmt: skip
            headers = self._headers()
            reply = await self.call("GET", "rest/posts", creds, params=params, headers=headers)
            body = reply.body if isinstance(reply.body, dict) else {}
            elements = [e for e in body.get("elements") or [] if isinstance(e, dict)]
            for element in elements:
                if element.get("commentary") == post.text and element.get("id"):
                    return Found(str(element["id"]))
            created = [e.get("createdAt") for e in elements]
            if len(elements) < count or any(isinstance(t, int) and t < since for t in created):
                return None
            start += count
        raise self.listing_too_long()

    def _headers(self) -> dict[str, str]:
        return {"LinkedIn-Version": self.settings.api_version, "X-Restli-Protocol-Version": "2.0.0"}

    def error(self, reply: Reply, creds: Credentials) -> Exception:
        body = reply.body if isinstance(reply.body, dict) else {}
        message = self.message(body.get("message") or reply.body or "no error body", creds)
        code = body.get("code") or body.get("serviceErrorCode")
        duplicate = _DUPLICATE.search(message)
        if duplicate is not None:
            return outcomes.DuplicatePost(
                outcomes.describe(self.name, "duplicate", message, reply, code), duplicate[1]
            )
        if reply.status == 401 or code in TOKEN_CODES:
            return outcomes.token_problem(self.name, message, reply, code)
        if reply.status == 422 and "polic" in message.lower():
            return outcomes.refused(self.name, "content policy", message, reply, code)
        return outcomes.by_status(self.name, message, reply, code)

"""What a platform's answer means for the job, in the engine's terms.

    the request never got an answer (connect error, reset, timeout)  -> PlatformUnavailable
    5xx, or a platform error the platform calls transient            -> PlatformError
        (both are plain exceptions: the worker retries the job with backoff)
    429, or the platform's own rate-limit codes                      -> RateLimited(retry_after)
    invalid, expired or revoked token                                -> Fail(pause_account=True)
    missing permission, content policy, a request the platform refuses -> Fail(message)

Every message is one line, names the platform, and has the account's token scrubbed out.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from typing import Any, Literal

from streamq.errors import Fail, RateLimited
from streamq.platforms.credentials import Secret

DEFAULT_RETRY_AFTER = 60.0
"""Seconds to hold an account back when a platform throttles without saying for how long."""
MAX_MESSAGE = 300


class PlatformUnavailable(Exception):
    """The request got no answer: the job is retried (and, if the request may have reached the
    platform, the retry first looks for the post)."""


class PlatformError(Exception):
    """The platform answered with a transient error (5xx): the job is retried."""


class Reply:
    """A platform's answer, as publishers read it (status, headers, the decoded JSON body)."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: Mapping[str, str], body: Any) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


def clean(text: Any, secret: Secret | None = None) -> str:
    """A platform's message made safe to store: one line, bounded, no token in it."""
    line = " ".join(str(text).split())
    if secret is not None:
        line = secret.scrub(line)
    return line[:MAX_MESSAGE]


def retry_after(headers: Mapping[str, str], default: float = DEFAULT_RETRY_AFTER) -> float:
    """Seconds to wait from Retry-After (seconds or an HTTP date), else X's x-rate-limit-reset
    (epoch seconds), else ``default``."""
    value = headers.get("retry-after")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            when = email.utils.parsedate_to_datetime(value) if value else None
            if when is not None:
                return max(0.0, when.timestamp() - time.time())
    reset = headers.get("x-rate-limit-reset")
    if reset:
        try:
            return max(0.0, float(reset) - time.time())
        except ValueError:
            pass
    return default


def describe(platform: str, kind: str, message: str, reply: Reply | None, code: Any = None) -> str:
    where = [] if reply is None else [f"HTTP {reply.status}"]
    if code not in (None, ""):
        where.append(f"code {code}")
    suffix = f" ({', '.join(where)})" if where else ""
    return f"{platform}: {kind}: {message}{suffix}"


def transient(
    platform: str, message: str, reply: Reply | None = None, code: Any = None
) -> Exception:
    return PlatformError(describe(platform, "platform error", message, reply, code))


def rate_limited(
    platform: str,
    message: str,
    reply: Reply | None,
    code: Any = None,
    *,
    seconds: float | None = None,
    scope: Literal["account", "platform"] | None = None,
) -> RateLimited:
    wait = seconds if seconds is not None else retry_after(reply.headers if reply else {})
    return RateLimited(wait, describe(platform, "rate limited", message, reply, code), scope=scope)


class TokenRejected(Fail):
    """The platform refused the account's token (invalid, expired or revoked). With a token
    store, the publisher refreshes the token and sends again once; otherwise, or when the new
    token is refused too, the account is paused until it has a good token."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, pause_account=True)


def token_problem(
    platform: str, message: str, reply: Reply | None, code: Any = None
) -> TokenRejected:
    """The account's token is invalid, expired or revoked: refresh it, or pause the account."""
    return TokenRejected(describe(platform, "token", message, reply, code))


def refused(platform: str, kind: str, message: str, reply: Reply | None, code: Any = None) -> Fail:
    """Permission, content policy, or a request the platform will never accept."""
    return Fail(describe(platform, kind, message, reply, code))


def by_status(platform: str, message: str, reply: Reply, code: Any = None) -> Exception:
    """The outcome when the platform's body says nothing more specific."""
    if reply.status == 429:
        return rate_limited(platform, message, reply, code)
    if reply.status >= 500 or reply.status in (408, 409, 425):
        return transient(platform, message, reply, code)
    if reply.status == 401:
        return token_problem(platform, message, reply, code)
    if reply.status == 403:
        return refused(platform, "permission", message, reply, code)
    return refused(platform, "refused", message, reply, code)


class DuplicatePost(Exception):
    """The platform refused the post as a duplicate of one it already has (X and LinkedIn do
    this for identical text). After an earlier attempt of the same job, that is the post this
    job made; on a first attempt, the job fails."""

    def __init__(self, message: str, existing_id: str | None = None) -> None:
        super().__init__(message)
        self.existing_id = existing_id

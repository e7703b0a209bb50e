"""Built-in publishers for the major platforms, and the rule that picks one for a stream.

    facebook   Page feed post                       POST /{v}/{page-id}/feed
    instagram  container, wait until ready, publish POST /{v}/{ig-user}/media, GET /{v}/{id},
                                                    POST /{v}/{ig-user}/media_publish
    linkedin   Posts API                            POST /rest/posts
    x          X API v2 post                        POST /2/tweets
    tiktok     Content Posting API, pull from URL   POST /v2/post/publish/video/init/
    youtube    Data API v3 resumable upload         POST /upload/youtube/v3/videos, PUT

``Session`` (streamq.platforms.client) holds the worker's one HTTP client and makes them;
``validate`` is what enqueue calls for a stream that a publisher runs. This module stays
light (no HTTP client imported) because enqueue imports it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from streamq.errors import ConfigError, PayloadError

if TYPE_CHECKING:
    from streamq.config import StreamConfig
    from streamq.platforms.base import Publisher

PLATFORMS: Final = ("facebook", "instagram", "linkedin", "x", "tiktok", "youtube")
_CLASSES: Final = {
    "facebook": "FacebookPublisher",
    "instagram": "InstagramPublisher",
    "linkedin": "LinkedInPublisher",
    "x": "XPublisher",
    "tiktok": "TikTokPublisher",
    "youtube": "YouTubePublisher",
}


def check_publisher(name: str) -> str:
    if name not in _CLASSES:
        raise ConfigError(f"unknown publisher {name!r}: use one of {', '.join(PLATFORMS)}")
    return name


def publisher_class(name: str) -> type[Publisher]:
    module = importlib.import_module(f"streamq.platforms.{check_publisher(name)}")
    cls: type[Publisher] = getattr(module, _CLASSES[name])
    return cls


def publisher_for(
    stream: str,
    configured: StreamConfig,
    *,
    publisher: str | None = None,
    handler: str | None = None,
) -> str | None:
    """The built-in publisher that runs ``stream``'s jobs, or None when a handler does.

    In order: ``--publisher``; none when a handler is given (``--handler``, or ``handler`` in
    the config); the config's ``publisher``; the stream's own name if it names a platform.
    """
    if publisher is not None:
        if handler is not None:
            raise ConfigError("give --handler or --publisher, not both")
        return check_publisher(publisher)
    if handler is not None or configured.handler is not None:
        return None
    if configured.publisher is not None:
        return check_publisher(configured.publisher)
    return stream if stream in _CLASSES else None


Validator = Callable[[list[Any]], None]


def validator(name: str) -> Validator:
    """A check of payloads against the publisher's Post: raises PayloadError, one line, naming
    the payload (by its position when there are several)."""
    from streamq.platforms.base import parse_post

    post_type = publisher_class(name).Post

    def check(payloads: list[Any]) -> None:
        for index, payload in enumerate(payloads):
            try:
                parse_post(name, post_type, payload)
            except PayloadError as exc:
                if len(payloads) == 1:
                    raise
                raise PayloadError(f"payload {index + 1} of {len(payloads)}: {exc}") from None

    return check


def __getattr__(name: str) -> Any:
    # Heavier names load on first use, so that enqueue does not import an HTTP client.
    lazy = {
        "Session": "streamq.platforms.client",
        "resolve_settings": "streamq.platforms.client",
        "PlatformSettings": "streamq.platforms.base",
        "Publisher": "streamq.platforms.base",
        "Credentials": "streamq.platforms.credentials",
        "Secret": "streamq.platforms.credentials",
        "EnvCredentials": "streamq.platforms.credentials",
        "FileCredentials": "streamq.platforms.credentials",
        "CallableCredentials": "streamq.platforms.credentials",
    }
    if name in lazy:
        return getattr(importlib.import_module(lazy[name]), name)
    raise AttributeError(f"module 'streamq.platforms' has no attribute {name!r}")

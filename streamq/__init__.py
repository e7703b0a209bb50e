"""streamq: a job engine on Redis Streams for publishing social-media posts."""

from __future__ import annotations

import logging

from streamq.client import Queue, connect
from streamq.errors import (
    ConfigError,
    ConnectionFailed,
    HandlerError,
    PayloadError,
    ServerError,
    StreamqError,
)
from streamq.job import Job

__version__ = "0.1.0"

logging.getLogger("streamq").addHandler(logging.NullHandler())

__all__ = [
    "ConfigError",
    "ConnectionFailed",
    "HandlerError",
    "Job",
    "PayloadError",
    "Queue",
    "ServerError",
    "StreamqError",
    "__version__",
    "connect",
]

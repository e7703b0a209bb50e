"""streamq: a job engine on Redis Streams for publishing social-media posts."""

from __future__ import annotations

import logging

from streamq.client import Queue, connect
from streamq.errors import (
    ConfigError,
    ConnectionFailed,
    Fail,
    FlowError,
    FlowNotFound,
    HandlerError,
    InvalidJobState,
    JobCancelled,
    JobExpired,
    JobFailed,
    JobNotFound,
    NotPublished,
    PayloadError,
    RateLimited,
    Retry,
    ServerError,
    ServerFull,
    StreamNotFound,
    StreamqError,
)
from streamq.events import Event
from streamq.flows import Flow, FlowInfo, Step
from streamq.handler import Hooks
from streamq.job import Job

__version__ = "0.2.0"

logging.getLogger("streamq").addHandler(logging.NullHandler())

__all__ = [
    "ConfigError",
    "ConnectionFailed",
    "Event",
    "Fail",
    "Flow",
    "FlowError",
    "FlowInfo",
    "FlowNotFound",
    "HandlerError",
    "Hooks",
    "InvalidJobState",
    "Job",
    "JobCancelled",
    "JobExpired",
    "JobFailed",
    "JobNotFound",
    "NotPublished",
    "PayloadError",
    "Queue",
    "RateLimited",
    "Retry",
    "ServerError",
    "ServerFull",
    "Step",
    "StreamNotFound",
    "StreamqError",
    "__version__",
    "connect",
]

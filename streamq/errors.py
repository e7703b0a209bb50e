"""The exceptions streamq raises, in one tree.

    StreamqError
    ├── ConfigError          bad config file, option or argument value
    ├── PayloadError         a payload that is not JSON, or not encodable
    ├── HandlerError         a handler spec that does not import or is not async
    ├── ServerError          the embedded server cannot be started or found
    └── ConnectionFailed     Redis is unreachable or refused our credentials

Every message is one line meant for a person: the CLI prints it as it is and exits non-zero.
"""

from __future__ import annotations


class StreamqError(Exception):
    """Base class of every error streamq raises on purpose."""


class ConfigError(StreamqError):
    """A configuration value, option or argument is not acceptable."""


class PayloadError(StreamqError):
    """A payload is not valid JSON or cannot be encoded."""


class HandlerError(StreamqError):
    """A handler spec does not name an importable async function."""


class ServerError(StreamqError):
    """The embedded server could not be started, found or stopped."""


class ConnectionFailed(StreamqError):
    """Redis could not be reached, or refused the credentials given."""

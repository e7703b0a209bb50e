"""Logging for every streamq command: one setup, human-readable or JSON lines.

    streamq consume ... --log-format json --log-level INFO

Log calls about one job pass ``extra=logs.job(job_id, stream, attempt)``, so every job line
carries ``job_id``, ``stream`` and ``attempt``: as fields in JSON, and in brackets at the end
of a text line. Payload bodies and credentials never go into a message at INFO or above (the
worker logs ids, attempts and error texts, and URLs only through ``connection.redact``).

The library itself only adds a NullHandler (``streamq/__init__.py``): an application embedding
streamq keeps its own logging; ``setup`` is for the command line.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, Final, Literal, TextIO

import orjson

LogFormat = Literal["text", "json"]
FORMATS: Final = ("text", "json")
LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")

CONTEXT_FIELDS: Final = ("job_id", "stream", "attempt", "consumer")
"""Fields a log call may pass in ``extra``; text lines show them in brackets."""

_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def job(job_id: str, stream: str, attempt: int) -> dict[str, Any]:
    """The ``extra`` of a log line about one job."""
    return {"job_id": job_id, "stream": stream, "attempt": attempt}


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = [
            f"{name}={record.__dict__[name]}" for name in CONTEXT_FIELDS if name in record.__dict__
        ]
        if not context:
            return line
        # Keep a traceback (if any) after the context, so the first line stays one record.
        first, _, rest = line.partition("\n")
        tagged = f"{first} [{' '.join(context)}]"
        return f"{tagged}\n{rest}" if rest else tagged


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, then any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if name not in _STANDARD and not name.startswith("_"):
                entry[name] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=repr).decode()


def setup(level: str = "INFO", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Send every log record at ``level`` or above to stderr in the chosen format; replaces
    whatever handlers the root logger had, so calling it twice does not double lines."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}: use text or json")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)

"""Configuration: a TOML file (``--config`` or ``STREAMQ_CONFIG``) read into frozen Structs.

    redis_url = "redis://localhost:6379/0"     # optional; STREAMQ_REDIS_URL and --redis-url win

    [streams.instagram]
    handler = "mypkg.handlers:publish"          # module:function, an async def
    concurrency = 32
    visibility_timeout = "60s"
    max_deliveries = 5
    grace = "30s"
    max_attempts = 5
    backoff = { base = "2s", factor = 2, max = "10m", jitter = 0.2 }
    expire_after = "6h"
    job_timeout = "10m"
    retention = "7d"

Durations are seconds (a number) or a string such as "250ms", "90s", "10m", "6h", "7d".
Command-line flags override the file; the file overrides the defaults below.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

import msgspec

from streamq.errors import ConfigError
from streamq.keys import check_stream_name

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: str | int | float, what: str = "duration") -> float:
    """Seconds from a number or a string like "90s" or "10m"; raises ConfigError."""
    if isinstance(value, bool):
        raise ConfigError(f"{what} must be a duration like '30s', not {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.fullmatch(value)
        if not match:
            raise ConfigError(
                f"{what} must be a duration like '250ms', '30s', '10m', not {value!r}"
            )
        seconds = float(match[1]) * _UNIT_SECONDS[match[2]]
    if seconds < 0:
        raise ConfigError(f"{what} must not be negative")
    return seconds


class Backoff(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Delay before retry n (n = 1, 2, ...): min(max, base * factor ** (n - 1)), then spread
    by +/- jitter (a fraction) so retries of a failed batch do not return in lockstep."""

    base: float = 2.0
    factor: float = 2.0
    max: float = 600.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.base < 0 or self.max < 0 or self.factor < 1:
            raise ConfigError("backoff needs base >= 0, max >= 0 and factor >= 1")
        if not 0 <= self.jitter <= 1:
            raise ConfigError("backoff jitter is a fraction between 0 and 1")


class StreamConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    handler: str | None = None
    concurrency: int = 32
    prefetch: int | None = None
    """Entries fetched ahead of free slots; None means as many as `concurrency`."""
    visibility_timeout: float = 60.0
    max_deliveries: int = 5
    grace: float = 30.0
    max_attempts: int = 5
    """Runs of a job before it is dead-lettered (RateLimited deferrals do not count)."""
    backoff: Backoff = msgspec.field(default_factory=Backoff)
    expire_after: float | None = None
    """A job that comes due longer than this ago is not run: it ends as expired."""
    job_timeout: float | None = 600.0
    """A handler running longer is cancelled and the attempt counts as failed."""
    retention: float = 7 * 86400.0
    """How long records of finished jobs are kept."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError("max_attempts must be at least 1")
        if self.job_timeout is not None and self.job_timeout <= 0:
            raise ConfigError("job_timeout must be positive")
        if self.concurrency < 1:
            raise ConfigError("concurrency must be at least 1")
        if self.prefetch is not None and self.prefetch < 0:
            raise ConfigError("prefetch must not be negative")
        if self.visibility_timeout < 1:
            raise ConfigError("visibility_timeout must be at least 1s")
        if self.max_deliveries < 1:
            raise ConfigError("max_deliveries must be at least 1")


_DURATION_FIELDS = ("visibility_timeout", "grace", "expire_after", "job_timeout", "retention")
_BACKOFF_DURATIONS = ("base", "max")


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    redis_url: str | None = None
    streams: dict[str, StreamConfig] = msgspec.field(default_factory=dict)

    def stream(self, name: str) -> StreamConfig:
        return self.streams.get(name, StreamConfig())


def _duration_value(value: Any, what: str) -> float:
    if not isinstance(value, str | int | float):
        raise ConfigError(f"{what} must be a duration like '30s', not {value!r}")
    return parse_duration(value, what)


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read the config file named by ``path`` or ``STREAMQ_CONFIG``; no file means defaults."""
    chosen = path if path is not None else os.environ.get("STREAMQ_CONFIG")
    if not chosen:
        return Config()
    file = Path(chosen)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {file} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {file}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {file} is not valid TOML: {exc}") from None
    return parse_config(data, source=str(file))


def parse_config(data: dict[str, Any], source: str = "config") -> Config:
    streams = data.get("streams", {})
    if not isinstance(streams, dict):
        raise ConfigError(f"{source}: [streams] must be a table")
    for name, table in streams.items():
        try:
            check_stream_name(name)
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: [streams.{name}] must be a table")
        for field in _DURATION_FIELDS:
            if field in table:
                table[field] = _duration_value(table[field], f"streams.{name}.{field}")
        backoff = table.get("backoff")
        if isinstance(backoff, dict):
            for field in _BACKOFF_DURATIONS:
                if field in backoff:
                    backoff[field] = _duration_value(
                        backoff[field], f"streams.{name}.backoff.{field}"
                    )
    try:
        return msgspec.convert(data, Config)
    except (msgspec.ValidationError, ConfigError, TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {exc}") from None

"""Configuration: a TOML file (``--config`` or ``STREAMQ_CONFIG``) read into frozen Structs.

    redis_url = "redis://localhost:6379/0"     # optional; STREAMQ_REDIS_URL and --redis-url win
    socket_timeout = "10s"                      # longest wait for the server's answer (>= 6s)

    [streams.instagram]
    handler = "mypkg.handlers:publish"          # module:function, an async def
    concurrency = 32
    visibility_timeout = "60s"
    liveness_timeout = "2s"                     # a silent worker's jobs are taken over after it
    max_deliveries = 5
    grace = "30s"
    max_attempts = 5
    backoff = { base = "2s", factor = 2, max = "10m", jitter = 0.2 }
    expire_after = "6h"
    job_timeout = "10m"
    retention = "7d"
    partitions = 1                              # >1 splits the stream (docs: Redis Cluster)

    [streams.instagram.health]                  # what `streamq health` checks (defaults shown)
    expected_workers = 4                        # default: unset, workers are not counted
    min_alive = 0.8                             # degraded below this share of expected_workers
    max_depth = 1000
    max_pending_age = "10m"
    max_error_rate = 0.05                       # (retried + dead) / runs over error_window
    error_window = "5m"
    max_lateness = "60s"                        # p95 of start minus due over the last minute

    [[streams.instagram.limits]]                # replaces the built-in instagram limits
    scope = "account"                           # "account" (each account) or "platform" (the app)
    max = 25
    per = "24h"
    [[streams.instagram.limits]]
    scope = "account"
    min_interval = "30s"

    [streams.instagram.autoscale]               # `streamq autoscale`; flags win over it
    min_workers = 1
    max_workers = 20
    target_drain = "60s"
    deployment = "streamq-consume-instagram"    # with --target kubernetes

Durations are seconds (a number) or a string such as "250ms", "90s", "10m", "6h", "7d".
Command-line flags override the file; the file overrides the defaults below.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal, Self

import msgspec

from streamq.connection import MIN_SOCKET_TIMEOUT_SECONDS, SOCKET_TIMEOUT_SECONDS
from streamq.errors import ConfigError, readable
from streamq.keys import MAX_PARTITIONS, base_stream, check_stream_name

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*")
MAX_CONCURRENCY = 10_000
"""Handlers one worker runs at once at most (each is a task with its own slot)."""
MAX_PAYLOAD_BYTES = 512 << 20
"""The largest value a Redis server takes by default (proto-max-bulk-len)."""
MAX_ATTEMPTS = 1_000_000
"""Attempts and deliveries at most: an entry's numbers must stay within what scripts carry."""
MAX_DURATION = 100 * 365 * 86400.0
"""Longest duration anything takes: its milliseconds stay exact in every script's numbers."""
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
    if not seconds <= MAX_DURATION:  # also NaN, and a number too long to be finite
        raise ConfigError(f"{what} must be at most 100 years, not {value!r}"[:200])
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


class Limit(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """At most ``max`` job starts in any ``per`` seconds, and/or at least ``min_interval``
    seconds between starts, counted for the whole platform or for each account."""

    scope: Literal["platform", "account"]
    max: int | None = None
    per: float | None = None
    min_interval: float | None = None

    def __post_init__(self) -> None:
        if (self.max is None) != (self.per is None):
            raise ConfigError("a limit needs both max and per (or only min_interval)")
        if self.max is None and self.min_interval is None:
            raise ConfigError("a limit needs max and per, or min_interval")
        if self.max is not None and self.max < 1:
            raise ConfigError("a limit's max must be at least 1")
        if self.per is not None and self.per < 0.001:
            raise ConfigError("a limit's per must be at least 1ms")
        if self.min_interval is not None and self.min_interval < 0.001:
            raise ConfigError("a limit's min_interval must be at least 1ms")

    def windows(self) -> list[tuple[int, int]]:
        """The limit as (count, window ms) pairs: a minimum interval is 1 per interval."""
        pairs = []
        if self.max is not None and self.per is not None:
            pairs.append((self.max, round(self.per * 1000)))
        if self.min_interval is not None:
            pairs.append((1, round(self.min_interval * 1000)))
        return pairs


EVENT_TYPES = (
    "queued",
    "scheduled",
    "started",
    "retried",
    "done",
    "dead",
    "cancelled",
    "expired",
    "rate-limited",
    "paused",
    "account.reauth_required",
    "flow.done",
    "flow.failed",
    "flow.partially_done",
    "flow.cancelled",
    "admin",
)
"""Every lifecycle event type (streamq.events); ``admin`` is an operator's action through the
admin API (who: the token's name; the action; its target), in the stream it touched;
``account.reauth_required`` is an account's,
written by the token store's keeper when a refresh is refused (its ``job`` is the job that
found out); ``flow.<state>`` a flow's end (its ``job`` is the flow's id, its ``result`` each
step's final state, by name), in the stream of its first step (streamq.flows)."""


DEFAULT_EVENTS_SKIP = ("started",)
"""Written with the run's outcome anyway, a ``started`` event tells nothing the outcome's
``started_at`` does not; it cost the drain path an XADD a job (bench/RESULTS.md, issue 22)."""


class EventsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The stream's lifecycle events (streamq:{S}:events): on by default, capped by length and
    by age."""

    enabled: bool = True
    max_len: int = 100_000
    """About this many events are kept (trimmed a node at a time, so a few more)."""
    max_age: float | None = 7 * 86400.0
    """Events older than this are trimmed; None keeps them until max_len."""
    skip: tuple[str, ...] | None = None
    """Event types not recorded, e.g. ("started", "queued") to spare the server two writes
    a job. None (the default) records all but ``started``, unless a webhook of the stream asks
    for it: every run's final event carries ``started_at`` instead, so a run costs one event
    (``skipped``). Set it, even to [], to choose."""

    def __post_init__(self) -> None:
        if self.max_len < 1:
            raise ConfigError("events.max_len must be at least 1")
        unknown = set(self.skip or ()) - set(EVENT_TYPES)
        if unknown:
            raise ConfigError(f"events.skip: unknown event type(s) {', '.join(sorted(unknown))}")

    @property
    def skipped(self) -> tuple[str, ...]:
        """The types not recorded: ``skip``, or the default's."""
        return DEFAULT_EVENTS_SKIP if self.skip is None else self.skip

    @property
    def cap(self) -> int:
        """The scripts' MAXLEN, 0 when events are off."""
        return self.max_len if self.enabled else 0

    @property
    def max_age_ms(self) -> int:
        return 0 if self.max_age is None else round(self.max_age * 1000)


class Webhook(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """POST these events of the stream to ``url`` (streamq.webhooks)."""

    url: str
    events: tuple[str, ...] = ("done", "dead", "cancelled", "expired", "account.reauth_required")
    secret_env: str | None = None
    """Name of the environment variable holding the signing secret (preferred to ``secret``,
    which puts it in the file)."""
    secret: str | None = None
    timeout: float = 10.0
    max_attempts: int = 10
    """Deliveries tried before the event goes to the webhook dead-letter stream."""

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"webhook url must be http:// or https://, not {self.url!r}")
        unknown = set(self.events) - set(EVENT_TYPES)
        if unknown:
            raise ConfigError(f"unknown webhook event type(s): {', '.join(sorted(unknown))}")
        if self.max_attempts < 1:
            raise ConfigError("a webhook's max_attempts must be at least 1")


class AutoscaleConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A stream's autoscaling policy; None leaves a field to the flag or to the default of
    autoscaler.policy.Policy, which checks the values."""

    min_workers: int | None = None
    max_workers: int | None = None
    target_drain: float | None = None
    lead: float | None = None
    tolerance: float | None = None
    scale_up_window: float | None = None
    scale_down_window: float | None = None
    max_step_up: int | None = None
    max_step_down: int | None = None
    idle_after: float | None = None
    deployment: str | None = None
    """The stream's consumer Deployment (Kubernetes target)."""


class HealthConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Thresholds of ``streamq health``: a stream beyond any of them is degraded."""

    expected_workers: int | None = None
    """Workers that should be consuming; None: the number alive is not checked."""
    min_alive: float = 0.8
    max_depth: int = 1000
    max_pending_age: float = 600.0
    max_error_rate: float = 0.05
    error_window: float = 300.0
    max_lateness: float = 60.0

    def __post_init__(self) -> None:
        if self.expected_workers is not None and self.expected_workers < 0:
            raise ConfigError("health.expected_workers must not be negative")
        if not 0 <= self.min_alive <= 1:
            raise ConfigError("health.min_alive is a fraction between 0 and 1")
        if not 0 <= self.max_error_rate <= 1:
            raise ConfigError("health.max_error_rate is a fraction between 0 and 1")
        if self.max_depth < 0:
            raise ConfigError("health.max_depth must not be negative")


class StreamConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    handler: str | None = None
    """The async function that runs the stream's jobs, as "package.module:function"."""
    publisher: str | None = None
    """A built-in platform publisher (streamq.platforms) that runs the stream's jobs when no
    handler is given; unset, a stream named after a platform uses that platform's."""
    concurrency: int = 32
    """Jobs one worker runs at once."""
    prefetch: int | None = None
    """Entries fetched ahead of free slots; None means as many as `concurrency`."""
    visibility_timeout: float = 60.0
    """How long a job's entry may stay idle (its worker no longer refreshing its claim) before
    another worker reclaims it."""
    liveness_timeout: float = 2.0
    """How long a worker's heartbeat thread may go without beating before the worker counts as
    dead and a live worker takes its jobs over at once, without waiting for the visibility
    timeout (docs/recovery.md). The thread beats four times within it, and keeps beating while
    a handler blocks the event loop, up to the job timeout."""
    max_deliveries: int = 5
    """Runs of one entry cut short (its handler started and never finished: its worker died)
    before it is dead-lettered, instead of crash-looping workers."""
    grace: float = 30.0
    """Time running jobs get to finish when the worker is asked to stop."""
    max_attempts: int = 5
    """Runs of a job before it is dead-lettered (RateLimited deferrals do not count)."""
    backoff: Backoff = msgspec.field(default_factory=Backoff)
    expire_after: float | None = None
    """A job that comes due longer than this ago is not run: it ends as expired."""
    job_timeout: float | None = 600.0
    """A handler running longer is cancelled and the attempt counts as failed."""
    retention: float = 7 * 86400.0
    """How long records of finished jobs are kept."""
    max_payload_bytes: int = 1 << 20
    """A job whose encoded payload is larger is refused at enqueue (PayloadError)."""
    limits: tuple[Limit, ...] | None = None
    """Rate limits; None means the built-in ones for the platform the stream is named after
    (streamq.limiter.DEFAULT_LIMITS), and an empty list means none."""
    autoscale: AutoscaleConfig = msgspec.field(default_factory=AutoscaleConfig)
    events: EventsConfig = msgspec.field(default_factory=EventsConfig)
    webhooks: tuple[Webhook, ...] = ()
    hooks: str | None = None
    """Module whose on_done, on_failed, ... the worker calls (streamq.handler.Hooks)."""
    health: HealthConfig = msgspec.field(default_factory=HealthConfig)
    partitions: int = 1
    """Streams ``S:0`` ... ``S:N-1`` that hold the stream's jobs, to spread one platform over
    a cluster's shards; producers route by account, else by job key, else round-robin."""

    def __post_init__(self) -> None:
        if not 1 <= self.partitions <= MAX_PARTITIONS:
            raise ConfigError(f"partitions must be between 1 and {MAX_PARTITIONS}")
        if self.max_attempts < 1:
            raise ConfigError("max_attempts must be at least 1")
        if self.job_timeout is not None and self.job_timeout <= 0:
            raise ConfigError("job_timeout must be positive")
        if not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise ConfigError(f"concurrency must be from 1 to {MAX_CONCURRENCY}")
        if self.prefetch is not None and not 0 <= self.prefetch <= MAX_CONCURRENCY:
            raise ConfigError(f"prefetch must be from 0 to {MAX_CONCURRENCY}")
        if self.visibility_timeout < 1:
            raise ConfigError("visibility_timeout must be at least 1s")
        if not 0.5 <= self.liveness_timeout <= 3600:
            raise ConfigError("liveness_timeout must be from 0.5s to 1h")
        if self.max_deliveries < 1:
            raise ConfigError("max_deliveries must be at least 1")
        if not 1 <= self.max_payload_bytes <= MAX_PAYLOAD_BYTES:
            raise ConfigError(f"max_payload_bytes must be from 1 to {MAX_PAYLOAD_BYTES}")
        if self.max_attempts > MAX_ATTEMPTS or self.max_deliveries > MAX_ATTEMPTS:
            raise ConfigError(f"max_attempts and max_deliveries must be at most {MAX_ATTEMPTS}")
        if self.events.skip is None and any("started" in hook.events for hook in self.webhooks):
            # A webhook asked for started events: the default that spares them does not apply.
            msgspec.structs.force_setattr(
                self, "events", msgspec.structs.replace(self.events, skip=())
            )

    def partition_share(self, partitions: int) -> Self:
        """One partition's settings when a process reads ``partitions`` of them: an equal
        share of the concurrency and read-ahead, at least one each."""
        if partitions <= 1:
            return self
        share = {"concurrency": max(1, math.ceil(self.concurrency / partitions))}
        if self.prefetch is not None:
            share["prefetch"] = math.ceil(self.prefetch / partitions)
        return msgspec.structs.replace(self, **share)


class PlatformConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Where a built-in publisher sends its requests (``[platforms.<name>]``); unset fields
    keep the platform's defaults (streamq.platforms)."""

    base_url: str | None = None
    api_version: str | None = None
    timeout: float | None = None
    """Seconds to wait for the platform's answer to one request."""
    lookup: bool | None = None
    """Before sending again a post an earlier run may have sent, read the account's recent
    posts to find it where no checkpoint can tell (default on; see the docs' "Publish
    once"). Off: at least once on those platforms, and no read permission needed."""
    token_url: str | None = None
    """Where token refreshes go, when not the platform's own endpoint."""


class TokensConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How the token store keeps tokens alive (``[tokens]``; streamq.platforms.keeper)."""

    refresh_before: float = 0.1
    """Refresh a token once it is in this last part of its life (0.1: the last 10 %)."""
    lease: float = 15.0
    """Seconds one worker may hold an account's refresh before another may try."""
    wait: float = 10.0
    """Seconds a worker whose token has expired waits for another's refresh before it defers
    the job (without using an attempt)."""

    sweep: float = 60.0
    """Seconds between two background looks for due tokens (streamq.platforms.keeper
    keep_alive), for accounts that post less often than their tokens expire."""
    instagram_min_age: float = 86400.0
    """Instagram refreshes a long-lived token only once it is this old (its rule: 24 h);
    lower it only against the simulator."""

    def __post_init__(self) -> None:
        if not 0 <= self.refresh_before < 1:
            raise ConfigError("tokens.refresh_before must be at least 0 and below 1")
        if self.lease <= 0 or self.wait <= 0 or self.sweep <= 0:
            raise ConfigError("tokens.lease, tokens.wait and tokens.sweep must be positive")


_DURATION_FIELDS = (
    "visibility_timeout",
    "liveness_timeout",
    "grace",
    "expire_after",
    "job_timeout",
    "retention",
)
_BACKOFF_DURATIONS = ("base", "max")
_LIMIT_DURATIONS = ("per", "min_interval")
_AUTOSCALE_DURATIONS = (
    "target_drain",
    "lead",
    "scale_up_window",
    "scale_down_window",
    "idle_after",
)
_HEALTH_DURATIONS = ("max_pending_age", "error_window", "max_lateness")


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    redis_url: str | None = None
    """redis://, rediss://, unix:// or redis+cluster:// URL (STREAMQ_REDIS_URL and --redis-url
    win); unset: the embedded server."""
    socket_timeout: float = SOCKET_TIMEOUT_SECONDS
    """Seconds a command waits for the server before the connection is given up (and, in a
    worker, made again): what a stalled network costs at most per command."""
    streams: dict[str, StreamConfig] = msgspec.field(default_factory=dict)
    platforms: dict[str, PlatformConfig] = msgspec.field(default_factory=dict)
    credentials: str | None = None
    """Where publishers find tokens: "env", "file:PATH", "store" (the token store, which
    refreshes them) or "package.module:callable" (STREAMQ_CREDENTIALS wins; default "env")."""
    tokens: TokensConfig = msgspec.field(default_factory=TokensConfig)

    def stream(self, name: str) -> StreamConfig:
        """The configuration of stream ``name``; a partition (``S:3``) has its stream's."""
        found = self.streams.get(name)
        if found is None:
            found = self.streams.get(base_stream(name), StreamConfig())
        return found


def _duration_value(value: Any, what: str) -> float:
    if not isinstance(value, str | int | float):
        raise ConfigError(f"{what} must be a duration like '30s', not {value!r}")
    return parse_duration(value, what)


def _parse_durations(table: dict[str, Any], fields: tuple[str, ...], where: str) -> None:
    for field in fields:
        if field in table:
            table[field] = _duration_value(table[field], f"{where}.{field}")


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
    if "socket_timeout" in data:
        timeout = _duration_value(data["socket_timeout"], "socket_timeout")
        if timeout < MIN_SOCKET_TIMEOUT_SECONDS:
            raise ConfigError(
                f"{source}: socket_timeout must be at least {MIN_SOCKET_TIMEOUT_SECONDS:g}s, "
                "longer than a worker's 5s blocking reads"
            )
        data = {**data, "socket_timeout": timeout}
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
        _parse_durations(table, _DURATION_FIELDS, f"streams.{name}")
        for part, fields in (
            ("backoff", _BACKOFF_DURATIONS),
            ("autoscale", _AUTOSCALE_DURATIONS),
            ("events", ("max_age",)),
            ("health", _HEALTH_DURATIONS),
        ):
            if isinstance(table.get(part), dict):
                _parse_durations(table[part], fields, f"streams.{name}.{part}")
        if isinstance(table.get("webhooks"), dict):  # one [streams.S.webhooks] table
            table["webhooks"] = [table["webhooks"]]
        for index, webhook in enumerate(table.get("webhooks") or []):
            if isinstance(webhook, dict):
                _parse_durations(webhook, ("timeout",), f"streams.{name}.webhooks[{index}]")
        limits = table.get("limits")
        if isinstance(limits, list):
            for index, limit in enumerate(limits):
                if not isinstance(limit, dict):
                    raise ConfigError(f"{source}: streams.{name}.limits must be tables")
                _parse_durations(limit, _LIMIT_DURATIONS, f"streams.{name}.limits[{index}]")
    platforms = data.get("platforms", {})
    if not isinstance(platforms, dict):
        raise ConfigError(f"{source}: [platforms] must be a table")
    for name, table in platforms.items():
        if isinstance(table, dict) and "timeout" in table:
            table["timeout"] = _duration_value(table["timeout"], f"platforms.{name}.timeout")
    if isinstance(data.get("tokens"), dict):
        _parse_durations(data["tokens"], ("lease", "wait", "sweep", "instagram_min_age"), "tokens")
    for name, table in streams.items():  # an error names its stream, not $.streams[...]
        try:
            msgspec.convert(table, StreamConfig)
        except (msgspec.ValidationError, ConfigError, TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: [streams.{name}] {readable(str(exc))}") from None
    try:
        return msgspec.convert(data, Config)
    except (msgspec.ValidationError, ConfigError, TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {readable(str(exc))}") from None

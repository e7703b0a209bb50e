"""Read-only figures about streams: what ``streamq stats`` prints and scalers read.

Acknowledged entries are deleted at once, so a lane holds exactly the entries still to finish:
``length`` is the depth, ``pending`` comes from the group's PEL, and ``waiting`` (never
delivered, the group's lag) is their difference. This stays right after deletes and trims, where
XINFO GROUPS reports lag as null on Redis 7.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

import msgspec
from redis.asyncio import Redis

from streamq import channel, codec, keys
from streamq.config import Config
from streamq.errors import ConfigError, StreamNotFound

ALIVE_SECONDS: Final = 15.0
"""A consumer that touched its group this recently counts as alive: workers touch it at least
every ``reclaim.HEARTBEAT_SECONDS`` (5 s), so this allows two missed beats."""

STATS_FORMAT: Final = 1


class LaneStats(msgspec.Struct):
    priority: str
    key: str
    length: int
    pending: int
    waiting: int
    oldest_pending_age_s: float | None


class StreamStats(msgspec.Struct):
    stream: str
    group: str
    keys: dict[str, str]
    length: int
    """Entries in all lanes: waiting plus in flight."""
    pending: int
    """Delivered to a consumer and not yet acknowledged (in flight)."""
    waiting: int
    """Not yet delivered to any consumer."""
    lag: int
    """Same as waiting: what the group has still to read."""
    depth: int
    """waiting + pending: the work left."""
    oldest_pending_age_s: float | None
    """Seconds since the oldest unacknowledged entry was added to its lane."""
    consumers: int
    """Consumers alive (seen within ALIVE_SECONDS) in the group of any lane."""
    dead: int
    """Entries in the dead-letter stream."""
    delayed: int
    """Scheduled jobs and retries waiting for their time (plus one safety-net entry per
    account with jobs held for their turn on the platform)."""
    retrying: int
    """Of the delayed, those waiting to retry after a failure."""
    expired: int
    """Jobs that came due too late and were not run (since the stream was created)."""
    limited: int
    """Times a job was held back by a rate limit or a pause (since the stream was created)."""
    throttled: int
    """Jobs deferred because the platform itself said "slow down": a handler's RateLimited,
    or a job read just before a platform pause began."""
    lanes: list[LaneStats]


class Snapshot(msgspec.Struct):
    format: int
    server_time_ms: int
    streams: list[StreamStats]


async def known_streams(redis: Redis) -> list[str]:
    members: set[bytes] = await redis.smembers(keys.STREAM_REGISTRY)  # type: ignore[assignment]
    return sorted(m.decode() for m in members)


async def partitions_of(redis: Redis, stream: str, config: Config) -> list[str]:
    """The streams that hold ``stream``'s jobs: itself, or its configured partitions, and any
    partition left from an earlier partition count that producers wrote to."""
    if keys.partition_index(stream) is not None:
        return [stream]
    configured = keys.partitions(stream, config.stream(stream).partitions)
    registered = await known_streams(redis)
    return configured + [
        n for n in registered if keys.base_stream(n) == stream and n not in configured
    ]


async def known_stream(redis: Redis, config: Config, stream: str) -> str:
    """``stream`` if streamq knows it, else StreamNotFound (ConfigError for a bad name).

    Known means configured (``[streams.S]``, or S for its partition ``S:i``) or used: a
    producer or worker registered it, or one of its partitions, in ``streamq:streams``. Every
    place that answers about a named stream (CLI, Python API, admin API) asks this, so an
    unknown one is an error everywhere instead of zeros here and an empty list there."""
    try:
        keys.check_stream_name(stream)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if stream in config.streams or keys.base_stream(stream) in config.streams:
        return stream
    registered = await known_streams(redis)
    if stream in registered or any(keys.base_stream(name) == stream for name in registered):
        return stream
    raise StreamNotFound(
        f"no stream {stream!r}: it is not configured and no job was ever enqueued on it"
    )


async def stream_parts(redis: Redis, streams: list[str] | None = None) -> dict[str, list[str]]:
    """Each stream (all ever used, by default) and the streams that hold its jobs: itself,
    and every partition ``S:i`` of it a producer has written to (old ones included after a
    change of the partition count, until they are empty and unregistered)."""
    known = await known_streams(redis)
    by_base: dict[str, list[str]] = {}
    for name in known:
        by_base.setdefault(keys.base_stream(name), []).append(name)
    wanted = streams if streams is not None else list(by_base)
    return {
        name: sorted(by_base.get(name, [name]), key=_partition_order)
        if keys.partition_index(name) is None
        else [name]
        for name in wanted
    }


def holders(figures: StreamStats) -> list[str]:
    """The streams that hold a stream's jobs, and its workers' counts and reports: its
    partitions (figures merged by `snapshot`), or itself."""
    listed = figures.keys.get("partitions")
    return listed.split(",") if listed else [figures.stream]


def _partition_order(name: str) -> int:
    index = keys.partition_index(name)
    return -1 if index is None else index


async def snapshot(redis: Redis, streams: list[str] | None = None) -> Snapshot:
    """Figures of each stream; a partitioned one's summed over its partitions."""
    parts = await stream_parts(redis, streams)
    now_ms = await channel.server_ms(redis)
    figures = []
    for name, names in parts.items():
        each = [await stream_stats(redis, part, now_ms) for part in names]
        figures.append(each[0] if len(each) == 1 and names == [name] else merged(name, each))
    return Snapshot(STATS_FORMAT, now_ms, figures)


def merged(stream: str, parts: list[StreamStats]) -> StreamStats:
    """One stream's figures from its partitions'. Every worker reads every partition, so the
    consumers alive are the most any partition counts."""
    lanes = [
        LaneStats(
            priority=priority,
            key=keys.lane(stream, priority),
            length=sum(p.lanes[i].length for p in parts),
            pending=sum(p.lanes[i].pending for p in parts),
            waiting=sum(p.lanes[i].waiting for p in parts),
            oldest_pending_age_s=_oldest(p.lanes[i].oldest_pending_age_s for p in parts),
        )
        for i, priority in enumerate(keys.LANES)
    ]
    return StreamStats(
        stream=stream,
        group=keys.GROUP,
        keys={"partitions": ",".join(p.stream for p in parts)},
        length=sum(p.length for p in parts),
        pending=sum(p.pending for p in parts),
        waiting=sum(p.waiting for p in parts),
        lag=sum(p.lag for p in parts),
        depth=sum(p.depth for p in parts),
        oldest_pending_age_s=_oldest(p.oldest_pending_age_s for p in parts),
        consumers=max((p.consumers for p in parts), default=0),
        dead=sum(p.dead for p in parts),
        delayed=sum(p.delayed for p in parts),
        retrying=sum(p.retrying for p in parts),
        expired=sum(p.expired for p in parts),
        limited=sum(p.limited for p in parts),
        throttled=sum(p.throttled for p in parts),
        lanes=lanes,
    )


def _oldest(ages: Iterable[float | None]) -> float | None:
    known = [age for age in ages if age is not None]
    return max(known) if known else None


class StreamOutcomes(msgspec.Struct):
    """How runs of a stream's jobs ended, since the stream was created: counters that only
    grow, so a rate is the difference of two readings over their ``server_time_ms``."""

    stream: str
    done: int
    retried: int
    dead: int
    expired: int
    cancelled: int
    deferred: int


class Outcomes(msgspec.Struct):
    server_time_ms: int
    streams: list[StreamOutcomes]


_OUTCOMES: Final = ("done", "retried", "dead", "expired", "cancelled", "deferred")


async def outcomes(redis: Redis, streams: list[str] | None = None) -> Outcomes:
    """Each stream's outcome counters; a partitioned one's summed over its partitions."""
    parts = await stream_parts(redis, streams)
    names = [name for group in parts.values() for name in group]
    # TIME apart: a cluster pipeline refuses a command that names no key.
    now_ms = await channel.server_ms(redis)
    async with redis.pipeline(transaction=False) as pipe:
        for stream in names:
            pipe.hmget(keys.counts(stream), list(_OUTCOMES))
        replies = await pipe.execute()
    counted = {
        stream: [int(value or 0) for value in reply]
        for stream, reply in zip(names, replies, strict=True)
    }
    return Outcomes(
        server_time_ms=now_ms,
        streams=[
            StreamOutcomes(
                name, *(sum(column) for column in zip(*(counted[p] for p in group), strict=True))
            )
            for name, group in parts.items()
        ],
    )


async def stream_stats(redis: Redis, stream: str, now_ms: int) -> StreamStats:
    lane_keys = keys.lanes(stream)
    async with redis.pipeline(transaction=False) as pipe:
        for key in lane_keys:
            pipe.xlen(key)
            pipe.execute_command("XPENDING", key, keys.GROUP)
            pipe.execute_command("XINFO", "CONSUMERS", key, keys.GROUP)
        pipe.xlen(keys.dead(stream))
        pipe.zcard(keys.delayed(stream))
        pipe.hmget(keys.counts(stream), ["retrying", "expired", "limited", "deferred"])
        replies = await pipe.execute(raise_on_error=False)
    lanes: list[LaneStats] = []
    alive: set[bytes] = set()
    for index, (priority, key) in enumerate(zip(keys.LANES, lane_keys, strict=True)):
        length, summary, consumers = replies[index * 3 : index * 3 + 3]
        length = length if isinstance(length, int) else 0
        pending, oldest = _pending(summary, now_ms)
        alive |= _alive(consumers)
        waiting = max(0, length - pending)
        lanes.append(LaneStats(priority, key, length, pending, waiting, oldest))
    dead, delayed, (retrying, expired, limited, throttled) = replies[-3:]
    # Summed lane by lane: after a trim a lane can hold fewer entries than are pending.
    waiting = sum(lane.waiting for lane in lanes)
    length = sum(lane.length for lane in lanes)
    pending = sum(lane.pending for lane in lanes)
    ages = [lane.oldest_pending_age_s for lane in lanes if lane.oldest_pending_age_s is not None]
    return StreamStats(
        stream=stream,
        group=keys.GROUP,
        keys={**{lane.priority: lane.key for lane in lanes}, "dead": keys.dead(stream)},
        length=length,
        pending=pending,
        waiting=waiting,
        lag=waiting,
        depth=waiting + pending,
        oldest_pending_age_s=max(ages) if ages else None,
        consumers=len(alive),
        dead=int(dead),
        delayed=int(delayed),
        retrying=max(0, int(retrying or 0)),
        expired=int(expired or 0),
        limited=int(limited or 0),
        throttled=int(throttled or 0),
        lanes=lanes,
    )


def _pending(summary: Any, now_ms: int) -> tuple[int, float | None]:
    """Count and age of the oldest entry from an XPENDING summary (an error if no group yet)."""
    if isinstance(summary, Exception) or not summary:
        return 0, None
    if isinstance(summary, dict):  # redis-py parses the summary form into a dict
        count, smallest = summary.get("pending", 0), summary.get("min")
    else:
        count, smallest = summary[0], summary[1]
    if not count or not smallest:
        return int(count or 0), None
    added_ms = int(codec.text(smallest).split("-")[0])
    return int(count), max(0.0, (now_ms - added_ms) / 1000)


def _alive(consumers: Any) -> set[bytes]:
    if isinstance(consumers, Exception) or not consumers:
        return set()
    names: set[bytes] = set()
    for consumer in consumers:
        info = consumer if isinstance(consumer, dict) else _pairs(consumer)
        # Valkey and Redis 7.2+ report "inactive" (since the last successful read/claim);
        # Redis 7.0 only "idle" (since the last attempt, which is what liveness needs).
        idle_ms = info.get("idle", info.get(b"idle")) or 0
        name = info.get("name", info.get(b"name", b""))
        if int(idle_ms) < ALIVE_SECONDS * 1000:
            names.add(name if isinstance(name, bytes) else str(name).encode())
    return names


def _pairs(flat: list[Any]) -> dict[Any, Any]:
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}


encoder = msgspec.json.Encoder()


def to_json(snap: Snapshot) -> bytes:
    return encoder.encode(snap)

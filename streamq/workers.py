"""Who is working: every live worker of a stream, and those that died lately; and each
worker's name in its group (``consumer_name``: host, pid and a random part).

Each worker (one consumer of one stream, or partition) rewrites its card in
``streamq:{S}:workers`` every ``CARD_SECONDS``: host, pid, concurrency, when it started, its last
heartbeat (server clock), jobs done and failed since it started, and the ids of the jobs it
holds now (running or read ahead). A worker that stops cleanly removes its card as it leaves
the group (retire_consumer.lua).

A worker that dies leaves its card behind and its entries pending. Another worker's reclaim
(reclaim_jobs.lua) takes the entries over, logging which jobs it took from whom in
``streamq:{S}:workers:gone``; once the dead consumer owns nothing and has been idle for the
visibility timeout, the same script deletes it from the group, removes its card and logs that
too. The log is capped (about ``scripts.GONE_KEPT`` records a stream), so "died recently"
means the latest of those.

A card not rewritten for ``SILENT_AFTER_MS`` belongs to a worker that stopped answering (dead,
or its event loop blocked): it is listed among the gone, as not yet dropped.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Sequence
from typing import Any, Final

import anyio
import msgspec
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from streamq import channel, connection, keys, stats
from streamq.config import Config

log = logging.getLogger("streamq.worker")

CARD_SECONDS: Final = 5.0
SILENT_AFTER_MS: Final = 20_000
"""A card this old (four missed rewrites) is a worker that no longer answers."""
HOLDING_SHOWN: Final = 1000
"""At most this many job ids on a card: a worker with a huge read-ahead is summarised."""
GONE_READ: Final = 200
"""How many of the latest gone-log records a view reads per stream."""


class WorkerCard(msgspec.Struct, kw_only=True, omit_defaults=True):
    consumer: str
    host: str
    pid: int
    streams: list[str]
    concurrency: int
    started_at_ms: int
    heartbeat_at_ms: int
    done: int
    """Jobs whose handler returned, since the worker started."""
    failed: int
    """Runs that raised or timed out (each retried or dead-lettered), since it started."""
    holding: list[str]
    """Ids of the jobs it holds now: running, or read ahead and waiting for a free slot."""
    uptime_ms: int | None = None
    """In a view: since it started, by the server's clock (not written on the card)."""


class Reclaim(msgspec.Struct, kw_only=True):
    by: str
    """The consumer that took them over."""
    at_ms: int
    jobs: list[str]


class GoneWorker(msgspec.Struct, kw_only=True):
    consumer: str
    stream: str
    dropped_at_ms: int | None
    """When it was deleted from the group; None while it is only silent."""
    card: WorkerCard | None
    """Its last card (None if it never wrote one)."""
    reclaimed: list[Reclaim] = msgspec.field(default_factory=list)


class WorkersView(msgspec.Struct, kw_only=True):
    live: list[WorkerCard]
    gone: list[GoneWorker]
    server_time_ms: int | None = None
    """The server's clock when read: ages and uptimes are counted from it."""


def consumer_name() -> str:
    """A new worker's name in its group: host and pid, as on its card, and a random part (the
    workers of one process, one per partition, each need their own)."""
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"


def card(
    *,
    consumer: str,
    stream: str,
    concurrency: int,
    started_at_ms: int,
    now_ms: int,
    done: int,
    failed: int,
    holding: Sequence[str],
) -> WorkerCard:
    """This process's card for one of its workers."""
    return WorkerCard(
        consumer=consumer,
        host=socket.gethostname(),
        pid=os.getpid(),
        streams=[stream],
        concurrency=concurrency,
        started_at_ms=started_at_ms,
        heartbeat_at_ms=now_ms,
        done=done,
        failed=failed,
        holding=list(holding[:HOLDING_SHOWN]),
    )


async def publish(redis: Redis, stream: str, worker_card: WorkerCard) -> None:
    await redis.hset(keys.workers(stream), worker_card.consumer, msgspec.json.encode(worker_card))


async def publish_loop(
    redis: Redis, stream: str, make_card: Callable[[], WorkerCard], every: float = CARD_SECONDS
) -> None:
    """Rewrite the worker's card every ``every`` seconds until cancelled."""
    while True:
        try:
            await publish(redis, stream, make_card())
        except (*connection.TRANSIENT_ERRORS, redis_errors.ResponseError) as exc:
            log.debug("could not publish the worker's card: %s", exc)
        await anyio.sleep(every)


def _decode_card(raw: bytes | None) -> WorkerCard | None:
    if not raw:
        return None
    try:
        return msgspec.json.decode(raw, type=WorkerCard)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


async def view(redis: Redis, streams: Sequence[str], now_ms: int) -> WorkersView:
    """The live workers of ``streams`` (streams or partitions, as registered) and the latest
    gone, newest first."""
    live: list[WorkerCard] = []
    gone: list[GoneWorker] = []
    for stream in streams:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.workers(stream))
            pipe.xrevrange(keys.workers_gone(stream), count=GONE_READ)
            cards_raw, log_raw = await pipe.execute()
        cards: dict[Any, Any] = cards_raw
        by_name: dict[str, GoneWorker] = {}
        for name_raw, raw in cards.items():
            found = _decode_card(raw)
            name = name_raw.decode()
            if found is not None and now_ms - found.heartbeat_at_ms <= SILENT_AFTER_MS:
                found.uptime_ms = max(0, now_ms - found.started_at_ms)
                live.append(found)
            else:
                by_name[name] = GoneWorker(
                    consumer=name, stream=stream, dropped_at_ms=None, card=found
                )
        reclaims: dict[str, list[Reclaim]] = {}
        for entry_id, fields in reversed(log_raw):
            at = int(fields.get(b"at", entry_id.split(b"-")[0]))
            if fields.get(b"kind") == b"reclaimed":
                jobs = fields.get(b"jobs", b"").decode().split()
                by = fields.get(b"by", b"").decode()
                reclaims.setdefault(fields[b"from"].decode(), []).append(
                    Reclaim(by=by, at_ms=at, jobs=jobs)
                )
            elif fields.get(b"kind") == b"gone":
                name = fields[b"consumer"].decode()
                by_name[name] = GoneWorker(
                    consumer=name,
                    stream=stream,
                    dropped_at_ms=at,
                    card=_decode_card(fields.get(b"card")),
                )
        for name, taken in reclaims.items():
            if name not in by_name:  # its entries taken, not dropped yet (or dropped earlier)
                by_name[name] = GoneWorker(
                    consumer=name, stream=stream, dropped_at_ms=None, card=None
                )
            by_name[name].reclaimed = taken
        live_names = {c.consumer for c in live}
        gone += [g for name, g in by_name.items() if name not in live_names]
    live.sort(key=lambda c: (c.streams, c.consumer))
    gone.sort(key=lambda g: -(g.dropped_at_ms or (g.card.heartbeat_at_ms if g.card else 0)))
    return WorkersView(live=live, gone=gone, server_time_ms=now_ms)


async def of_streams(redis: Redis, config: Config, streams: Sequence[str] | None) -> WorkersView:
    """The workers of the streams named (each must be known, ``stats.known_stream``; a
    partitioned one's partitions), or of every stream used."""
    for stream in streams or []:
        await stats.known_stream(redis, config, stream)
    parts = await stats.stream_parts(redis, list(streams) if streams else None)
    names = [part for group in parts.values() for part in group]
    return await view(redis, names, await channel.server_ms(redis))

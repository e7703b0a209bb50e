"""Webhooks: each lifecycle event a stream's ``[[streams.S.webhooks]]`` asks for is POSTed to
its URL as JSON, signed, and retried through streamq's own engine.

A relay follows the stream's events in the consumer group ``webhooks`` and turns each
matching event into a delivery job on the stream ``<S>.webhooks`` (keyed by event id and
webhook, so a relay that stops midway does not enqueue one twice); a worker of that stream
POSTs it. Deliveries are jobs like any other: retried with backoff, and dead-lettered to
``<S>.webhooks``'s dead-letter stream after ``max_attempts``, where ``streamq dead replay``
sends them again. So a receiver that is slow or down never holds up publishing, and no
event is lost: at worst one is delivered twice (a worker dying after the receiver answered,
before the acknowledgement), which receivers detect by the ``Streamq-Event-Id`` header.

Signature: ``Streamq-Signature: v1=<hex>``, the HMAC-SHA256 with the webhook's secret of
``<Streamq-Timestamp>.<body>`` (the timestamp in Unix seconds, a dot, the raw body bytes).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from streamq import __version__, events, keys
from streamq.config import Config, StreamConfig, Webhook
from streamq.errors import ConfigError, Fail, RateLimited, StreamqError
from streamq.job import Job
from streamq.producer import JobOptions, Producer
from streamq.worker import Worker, WorkerOptions

log = logging.getLogger("streamq.webhooks")

GROUP = "webhooks"
DELIVERY_CONCURRENCY = 16
RELAY_BATCH = 500
RELAY_BLOCK_MS = 1000
ABANDONED_AFTER_MS = 60_000
"""Events a relay read and has not acknowledged for this long were left by a dead process."""


def delivery_stream(stream: str) -> str:
    """Where the stream's deliveries queue: one for all the partitions of a split stream."""
    return f"{keys.base_stream(stream)}.webhooks"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"v1={digest.hexdigest()}"


def secret_of(webhook: Webhook) -> str | None:
    if webhook.secret_env is not None:
        value = os.environ.get(webhook.secret_env)
        if not value:
            raise ConfigError(f"webhook {webhook.url}: ${webhook.secret_env} is not set")
        return value
    return webhook.secret


class Deliveries:
    """The relay and the delivery worker of one stream's webhooks, run beside its worker."""

    def __init__(self, redis: Redis, stream: str, config: Config, consumer: str) -> None:
        self.redis = redis
        self.stream = stream
        self.webhooks = config.stream(stream).webhooks
        self.target = delivery_stream(stream)
        self.consumer = consumer
        self._secrets = [secret_of(webhook) for webhook in self.webhooks]  # fail early
        settings = config.streams.get(self.target, _DELIVERY_DEFAULTS)
        options = WorkerOptions(**msgspec.structs.asdict(settings))
        self.worker = Worker(redis, self.target, self.deliver, options, consumer=consumer)
        self._producer = Producer(redis, config)
        self._stopping = False
        self._client: httpx.AsyncClient | None = None
        self.abandoned_after_ms = ABANDONED_AFTER_MS

    def stop(self) -> None:
        self._stopping = True
        self.worker.stop()

    async def run(self) -> None:
        async with httpx.AsyncClient(
            headers={"User-Agent": f"streamq/{__version__}"}, follow_redirects=False
        ) as client:
            self._client = client
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._relay)
                await self.worker.run()
                tasks.cancel_scope.cancel()

    async def _relay(self) -> None:
        source = keys.events(self.stream)
        try:
            await self.redis.xgroup_create(source, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        cursor = "0"  # first what this consumer was given and did not finish, then new ones
        failures = 0
        while not self._stopping:
            try:
                entries = await self._adopt_abandoned(source) if cursor == ">" else []
                if not entries:
                    reply: Any = await self.redis.xreadgroup(
                        GROUP,
                        self.consumer,
                        {source: cursor},
                        count=RELAY_BATCH,
                        block=RELAY_BLOCK_MS if cursor == ">" else None,
                    )
                    entries = reply[0][1] if reply else []
                if not entries:
                    cursor = ">"
                    continue
                await self._enqueue([events.from_entry(self.stream, *e) for e in entries])
                await self.redis.xack(source, GROUP, *[entry_id for entry_id, _ in entries])
                failures = 0
            except (RedisError, OSError) as exc:  # the server went away: the events wait
                failures += 1
                log.warning("webhook relay of %s: %s; retrying", self.stream, exc)
                await anyio.sleep(min(30.0, 0.5 * 2**failures))
                cursor = "0"

    async def _adopt_abandoned(self, source: str) -> list[Any]:
        """Events another relay read and never acknowledged (its process died), now this
        one's."""
        reply: Any = await self.redis.xautoclaim(
            source, GROUP, self.consumer, min_idle_time=self.abandoned_after_ms, count=RELAY_BATCH
        )
        return [entry for entry in reply[1] if entry[1]]  # deleted entries come back empty

    async def _enqueue(self, batch: Sequence[events.Event]) -> None:
        for index, webhook in enumerate(self.webhooks):
            wanted = [event for event in batch if event.type in webhook.events]
            if not wanted:
                continue
            options = JobOptions(max_attempts=webhook.max_attempts)
            payloads = [{"webhook": index, "event": msgspec.to_builtins(ev)} for ev in wanted]
            dedup = [f"{ev.id}:{index}" for ev in wanted]
            try:
                await self._producer.enqueue_many(
                    self.target, payloads, keys=dedup, options=options
                )
            except StreamqError:  # one event the delivery stream refuses (too large, say)
                for payload, key in zip(payloads, dedup, strict=True):
                    try:
                        await self._producer.enqueue(self.target, payload, key=key, options=options)
                    except StreamqError as exc:
                        await self._dead_letter(payload, str(exc))

    async def _dead_letter(self, payload: dict[str, Any], reason: str) -> None:
        """An event that cannot become a delivery goes straight to the webhook dead letters,
        kept whole, so it is neither lost nor able to stop the relay."""
        log.warning("webhook event %s not deliverable: %s", payload["event"]["id"], reason)
        await self.redis.xadd(
            keys.dead(self.target),
            {"j": msgspec.json.encode(payload), "_reason": reason, "_source": "relay"},
        )

    async def deliver(self, job: Job) -> dict[str, int]:
        """POST one event; a 2xx ends it, 410 gives up, 429 waits, anything else retries."""
        assert self._client is not None
        index = int(job.payload["webhook"])
        if index >= len(self.webhooks):
            raise Fail(f"webhook {index} is no longer configured")
        webhook = self.webhooks[index]
        event = job.payload["event"]
        body = msgspec.json.encode(event)
        stamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "Streamq-Event-Id": str(event["id"]),
            "Streamq-Event-Type": str(event["type"]),
            "Streamq-Timestamp": str(stamp),
        }
        secret = self._secrets[index]
        if secret is not None:
            headers["Streamq-Signature"] = sign(secret, stamp, body)
        answer = await self._client.post(
            webhook.url, content=body, headers=headers, timeout=webhook.timeout
        )
        if 200 <= answer.status_code < 300:
            return {"status": answer.status_code}
        where = _site(webhook.url)  # never the path or query: they often carry a token
        if answer.status_code == 410:
            raise Fail(f"{where} answered 410 Gone")
        if answer.status_code == 429:
            retry_after = answer.headers.get("Retry-After", "")
            raise RateLimited(float(retry_after) if retry_after.isdigit() else 30.0)
        raise RuntimeError(f"{where} answered {answer.status_code}")


def _site(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


_DELIVERY_DEFAULTS = StreamConfig(concurrency=DELIVERY_CONCURRENCY, limits=())
"""A delivery stream's settings unless the config has a table for ``<S>.webhooks``."""

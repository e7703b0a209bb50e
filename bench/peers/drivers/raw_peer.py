"""The ceiling: a minimal redis-py loop, XREADGROUP 500 entries, then XACK + XDEL them in one
pipeline, nothing else (no records, no retries, no scheduling). Throughput only."""

from __future__ import annotations

import signal
import sys
import time
from typing import Any

import redis

from bench import probe
from bench.peers.drivers import _cli

GROUP = "g"


def stream_key(queue: str) -> str:
    return f"raw:{{{queue}}}"


def produce(args: Any) -> None:
    client = redis.Redis.from_url(args.url)
    if _cli.scheduled(args) or args.kind != "hit":
        sys.exit("the raw loop runs no-op jobs at once only")
    key = stream_key(args.queue)
    started = time.perf_counter()
    tags = _cli.tags(args)
    for start in range(0, len(tags), 1000):
        pipe = client.pipeline(transaction=False)
        for tag in tags[start : start + 1000]:
            pipe.xadd(key, {"t": tag})
        pipe.execute()
    _cli.report(started)


def work(args: Any) -> None:
    client = redis.Redis.from_url(args.url)
    key = stream_key(args.queue)
    try:
        client.xgroup_create(key, GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    while not stopping:
        reply: Any = client.xreadgroup(GROUP, "c", {key: ">"}, count=500, block=100)
        if not reply:
            continue
        ids = []
        for entry_id, fields in reply[0][1]:
            probe.hit(int(fields[b"t"]))
            ids.append(entry_id)
        pipe = client.pipeline(transaction=False)
        pipe.xack(key, GROUP, *ids)
        pipe.xdel(key, *ids)
        pipe.execute()


def main() -> None:
    args = _cli.parse()
    produce(args) if args.command == "produce" else work(args)


if __name__ == "__main__":
    main()

"""``streamq consume``: run a worker on a stream."""

from __future__ import annotations

import argparse
import contextlib
import logging
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import msgspec

from streamq import metrics, platforms, signals
from streamq.client import Queue
from streamq.commands.common import command, duration, port, positive_int
from streamq.config import Config, StreamConfig
from streamq.errors import HandlerError
from streamq.handler import Handler, load_handler, load_hooks
from streamq.metrics import WorkerCounts
from streamq.producer import check_stream
from streamq.worker import Worker, WorkerOptions

log = logging.getLogger("streamq.worker")


def register(commands: Any) -> None:
    consume = command(commands, "consume", "run a worker on a stream", run)
    consume.add_argument("--stream", required=True, help="stream to consume, e.g. instagram")
    consume.add_argument("--handler", help="async handler as 'package.module:function'")
    consume.add_argument("--hooks", help="module whose on_done, on_failed, ... are called")
    consume.add_argument(
        "--publisher",
        help="built-in publisher (" + ", ".join(platforms.PLATFORMS) + "); a stream named "
        "after a platform uses its own when no handler is given",
    )
    consume.add_argument("--concurrency", type=positive_int, help="jobs run at once (32)")
    consume.add_argument("--prefetch", type=int, help="entries fetched ahead (= concurrency)")
    consume.add_argument(
        "--visibility-timeout", type=duration, help="idle time before a job is reclaimed (60s)"
    )
    consume.add_argument(
        "--max-deliveries", type=positive_int, help="deliveries before dead-lettering (5)"
    )
    consume.add_argument("--grace", type=duration, help="time running jobs get on stop (30s)")
    consume.add_argument(
        "--job-timeout", type=duration, help="cancel a handler running longer (10m)"
    )
    consume.add_argument(
        "--burst", action="store_true", help="exit once the stream has nothing left to run"
    )
    consume.add_argument("--metrics-port", type=port, help="serve Prometheus /metrics (0: any)")
    consume.add_argument("--metrics-host", default="127.0.0.1", help="address for /metrics")


def worker_options(args: argparse.Namespace, stream: StreamConfig) -> WorkerOptions:
    """The stream's configuration with the command line's flags on top."""
    flags = {
        "concurrency": args.concurrency,
        "prefetch": args.prefetch,
        "visibility_timeout": args.visibility_timeout,
        "max_deliveries": args.max_deliveries,
        "grace": args.grace,
        "job_timeout": args.job_timeout,
    }
    given = {name: value for name, value in flags.items() if value is not None}
    return WorkerOptions(**{**msgspec.structs.asdict(stream), **given, "burst": args.burst})


def resolve_handler(stream: str, flag: str | None, configured: StreamConfig) -> Handler:
    spec = flag or configured.handler
    if spec is None:
        raise HandlerError(
            f"no handler for stream {stream!r}: pass --handler package.module:function "
            f'or --publisher NAME, or set handler = "package.module:function" under '
            f"[streams.{stream}] in the config"
        )
    return load_handler(spec)


def open_handler(
    args: argparse.Namespace, configured: StreamConfig, config: Config, concurrency: int
) -> AbstractAsyncContextManager[Handler]:
    """The stream's handler, or its built-in publisher (open while the worker runs)."""
    name = platforms.publisher_for(
        args.stream, configured, publisher=args.publisher, handler=args.handler
    )
    if name is None:
        return contextlib.nullcontext(resolve_handler(args.stream, args.handler, configured))
    from streamq.platforms.client import publishing

    return publishing(
        name, config, concurrency=concurrency, redis_url=getattr(args, "redis_url", None)
    )


async def run(args: argparse.Namespace, config: Config) -> int:
    stream_config = config.stream(args.stream)
    options = worker_options(args, stream_config)
    hooks_module = args.hooks or stream_config.hooks
    hooks = load_hooks(hooks_module) if hooks_module else None
    stream = check_stream(args.stream)
    async with (
        open_handler(args, stream_config, config, options.concurrency) as handler,
        Queue(args.redis_url, config=config) as q,
    ):
        parts = await q.partitions(stream)
        share = options.partition_share(len(parts))
        workers = [Worker(q.redis, part, handler, share, hooks=hooks) for part in parts]
        deliveries = []
        if stream_config.webhooks:
            from streamq.webhooks import Deliveries

            deliveries = [Deliveries(q.redis, w.stream, config, w.consumer) for w in workers]
        async with (
            metrics.exposed(q.redis, [stream], args.metrics_port, args.metrics_host),
            anyio.create_task_group() as tasks,
        ):
            for relay in deliveries:
                tasks.start_soon(relay.run)
            await run_all(workers, handle_signals=True)
            for relay in deliveries:
                relay.stop()
    return 0


async def run_all(workers: list[Worker], *, handle_signals: bool = False) -> list[WorkerCounts]:
    """Run several workers in this process (one per partition of a stream) until they stop;
    SIGTERM or SIGINT stops them all, a second one ends them at once."""
    if len(workers) == 1:
        return [await workers[0].run(handle_signals=handle_signals)]
    counts: list[WorkerCounts] = []

    async def run(worker: Worker) -> None:
        counts.append(await worker.run())

    async with anyio.create_task_group() as tasks:
        if handle_signals:
            tasks.start_soon(signals.stop_gracefully, workers, tasks.cancel_scope, log)
        async with anyio.create_task_group() as running:
            for worker in workers:
                running.start_soon(run, worker)
        tasks.cancel_scope.cancel()
    return counts

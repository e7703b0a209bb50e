"""The ``streamq`` command: the only module that prints.

Every domain error ends as one line on stderr and a non-zero exit, never a traceback:
``streamq: error: <message>`` with exit code 1 (2 for a command line that does not parse).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TextIO

import anyio
import msgspec
from redis import exceptions as redis_errors

from streamq import (
    __version__,
    codec,
    limiter,
    logs,
    metrics,
    platforms,
    scheduler,
    server,
    stats,
)
from streamq.client import Queue
from streamq.config import Config, StreamConfig, load_config, parse_duration
from streamq.errors import ConfigError, HandlerError, PayloadError, StreamqError
from streamq.handler import Handler, load_handler, load_hooks
from streamq.producer import check_priority, check_stream
from streamq.worker import Worker, WorkerOptions, partition_options, run_all

STDIN_BATCH = 10_000
"""JSON Lines read from stdin are enqueued this many at a time."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # Escaped: an argument holding a line break (\n, \x85, \u2028) must not split the line.
        shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
        self.exit(2, f"{self.prog}: error: {shown}\n")


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, not {text!r}")
    return int(text)


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a share from 0 to 1, not {text!r}")
    return value


def _add_when(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--at", help="due time: 2026-12-01T09:00:00+01:00, or a wall time + --tz")
    parser.add_argument("--tz", help="IANA time zone for a wall-time --at, e.g. Europe/Paris")
    parser.add_argument("--delay", type=_duration, help="due after this long, e.g. 90s")


def _when(args: argparse.Namespace) -> tuple[datetime | None, float | None]:
    if args.at is not None and args.delay is not None:
        raise ConfigError("give --at or --delay, not both")
    if args.tz is not None and args.at is None:
        raise ConfigError("--tz goes with --at")
    run_at = scheduler.parse_at(args.at, args.tz) if args.at is not None else None
    return run_at, args.delay


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--redis-url",
        help="redis://, rediss:// or unix:// URL (default: $STREAMQ_REDIS_URL, else the "
        "embedded server)",
    )
    common.add_argument("--config", help="TOML config file (default: $STREAMQ_CONFIG)")
    common.add_argument("--log-level", default="INFO", choices=logs.LEVELS)
    common.add_argument(
        "--log-format", default="text", choices=logs.FORMATS, help="text (default) or json lines"
    )

    parser = _Parser(prog="streamq", description="Reliable job engine on Redis Streams.")
    parser.add_argument("--version", action="version", version=f"streamq {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    consume = commands.add_parser("consume", parents=[common], help="run a worker on a stream")
    consume.add_argument("--stream", required=True, help="stream to consume, e.g. instagram")
    consume.add_argument("--handler", help="async handler as 'package.module:function'")
    consume.add_argument("--hooks", help="module whose on_done, on_failed, ... are called")
    consume.add_argument(
        "--publisher",
        help="built-in publisher (" + ", ".join(platforms.PLATFORMS) + "); a stream named "
        "after a platform uses its own when no handler is given",
    )
    consume.add_argument("--concurrency", type=_positive_int, help="jobs run at once (32)")
    consume.add_argument("--prefetch", type=int, help="entries fetched ahead (= concurrency)")
    consume.add_argument(
        "--visibility-timeout", type=_duration, help="idle time before a job is reclaimed (60s)"
    )
    consume.add_argument(
        "--max-deliveries", type=_positive_int, help="deliveries before dead-lettering (5)"
    )
    consume.add_argument("--grace", type=_duration, help="time running jobs get on stop (30s)")
    consume.add_argument(
        "--job-timeout", type=_duration, help="cancel a handler running longer (10m)"
    )
    consume.add_argument(
        "--burst", action="store_true", help="exit once the stream has nothing left to run"
    )
    consume.add_argument("--metrics-port", type=_port, help="serve Prometheus /metrics (0: any)")
    consume.add_argument("--metrics-host", default="127.0.0.1", help="address for /metrics")

    enqueue = commands.add_parser("enqueue", parents=[common], help="add jobs to a stream")
    enqueue.add_argument("--stream", required=True)
    enqueue.add_argument(
        "--payload",
        required=True,
        help="JSON text, @file.json, or - to read JSON Lines from stdin (one job per line)",
    )
    enqueue.add_argument("--key", help="dedup key: a live job with this key is not added twice")
    enqueue.add_argument("--account", help="account that publishes it (its rate limits apply)")
    enqueue.add_argument("--priority", default="normal", help="high, normal or low")
    _add_when(enqueue)
    enqueue.add_argument(
        "--replace",
        action="store_true",
        help="with --key: replace the payload and time of a still-scheduled job holding it",
    )
    enqueue.add_argument("--max-attempts", type=_positive_int, help="runs before dead-lettering")
    enqueue.add_argument("--expire-after", type=_duration, help="skip if this late when due")
    enqueue.add_argument("--job-timeout", type=_duration, help="cancel a run longer than this")

    job = commands.add_parser("job", parents=[common], help="show or steer one job by id")
    job_actions = job.add_subparsers(dest="action", required=True, parser_class=_Parser)
    show = job_actions.add_parser("show", parents=[common], help="a job's state and record")
    show.add_argument("id")
    show.add_argument("--json", action="store_true")
    for action, text in (
        ("cancel", "never start it, or do not retry it"),
        ("retry", "run a dead, cancelled or expired job again"),
    ):
        job_actions.add_parser(action, parents=[common], help=text).add_argument("id")
    move = job_actions.add_parser("reschedule", parents=[common], help="move a scheduled job")
    move.add_argument("id")
    _add_when(move)

    dead = commands.add_parser("dead", parents=[common], help="dead letters of a stream")
    dead_actions = dead.add_subparsers(dest="action", required=True, parser_class=_Parser)
    listing = dead_actions.add_parser("list", parents=[common], help="show dead letters")
    listing.add_argument("--stream", required=True)
    listing.add_argument("--json", action="store_true")
    listing.add_argument("--count", type=_positive_int, default=100)
    again = dead_actions.add_parser("replay", parents=[common], help="run dead letters again")
    again.add_argument("--stream", required=True)
    which = again.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true")
    which.add_argument("ids", nargs="*", default=[], metavar="ID", help="job or entry ids")
    purge = dead_actions.add_parser("purge", parents=[common], help="delete all dead letters")
    purge.add_argument("--stream", required=True)

    cron = commands.add_parser("cron", parents=[common], help="recurring jobs")
    cron_actions = cron.add_subparsers(dest="action", required=True, parser_class=_Parser)
    add = cron_actions.add_parser("add", parents=[common], help="add or replace a schedule")
    add.add_argument("name")
    add.add_argument("--stream", required=True)
    add.add_argument("--cron", required=True, help='cron expression, e.g. "30 2 * * *"')
    add.add_argument("--tz", default="UTC", help="IANA time zone, e.g. Europe/Paris")
    add.add_argument("--payload", default="null", help="JSON text or @file.json")
    add.add_argument("--priority", default="normal")
    cron_list = cron_actions.add_parser("list", parents=[common], help="schedules of a stream")
    cron_list.add_argument("--stream", required=True)
    cron_list.add_argument("--json", action="store_true")
    remove = cron_actions.add_parser("remove", parents=[common], help="forget a schedule")
    remove.add_argument("name")
    remove.add_argument("--stream", required=True)

    stats_cmd = commands.add_parser("stats", parents=[common], help="figures per stream")
    stats_cmd.add_argument("--stream", action="append", help="only this stream (repeatable)")
    stats_cmd.add_argument("--json", action="store_true", help="print the stable JSON shape")

    events_cmd = commands.add_parser("events", parents=[common], help="jobs' lifecycle events")
    events_cmd.add_argument("--stream", action="append", help="this stream (repeatable; all)")
    events_cmd.add_argument("--follow", action="store_true", help="keep printing new events")
    events_cmd.add_argument(
        "--since", help="an event id, a time (ISO 8601), a duration ago ('10m') or 'now'"
    )
    events_cmd.add_argument("--type", action="append", help="only events of this type")
    events_cmd.add_argument("--group", help="share the events with other readers of this group")
    events_cmd.add_argument("--consumer", help="this reader's name in --group")
    events_cmd.add_argument("--json", action="store_true", help="one JSON object per line")

    account = commands.add_parser("account", parents=[common], help="pause or resume an account")
    account_actions = account.add_subparsers(dest="action", required=True, parser_class=_Parser)
    pause = account_actions.add_parser(
        "pause", parents=[common], help="hold its jobs (no attempts used) until resumed"
    )
    pause.add_argument("--reason", default="paused by an operator")
    resume = account_actions.add_parser("resume", parents=[common], help="run its jobs again")
    for action_parser in (pause, resume):
        action_parser.add_argument("account")
        action_parser.add_argument(
            "--stream", action="append", help="only on this stream (repeatable; default: all)"
        )

    # The token store (issue 23): its commands live in streamq.tokens_cli.
    from streamq import tokens_cli

    tokens_cli.add_account_status(account_actions, common)
    tokens_cli.add_tokens_parser(commands, common, _Parser)

    limits = commands.add_parser("limits", parents=[common], help="rate limits and their use")
    limits_actions = limits.add_subparsers(dest="action", required=True, parser_class=_Parser)
    limits_show = limits_actions.add_parser(
        "show", parents=[common], help="usage and remaining capacity"
    )
    limits_show.add_argument("--stream", action="append", help="only this stream (repeatable)")
    limits_show.add_argument("--account", help="also this account's windows, pause and backlog")
    limits_show.add_argument("--json", action="store_true")

    scale = commands.add_parser(
        "autoscale", parents=[common], help="size worker pools from each stream's load"
    )
    scale.add_argument("--target", choices=["local", "kubernetes"], default="local",
                       help="where workers run: processes here, or Deployments")  # fmt: skip
    scale.add_argument("--stream", action="append", required=True, help="a stream (repeatable)")
    scale.add_argument("--handler", help="local target: handler for the workers")
    scale.add_argument("--min", type=int, help="fewest workers per stream (0)")
    scale.add_argument("--max", type=_positive_int, help="most workers per stream (10)")
    scale.add_argument("--concurrency", type=_positive_int, help="per worker (the stream's)")
    scale.add_argument("--interval", type=_duration, default=5.0, help="between decisions (5s)")
    scale.add_argument("--target-drain", type=_duration, help="drain the backlog in (60s)")
    scale.add_argument("--lead", type=_duration, help="count jobs due within (60s)")
    scale.add_argument("--tolerance", type=float, help="change nothing within (0.1)")
    scale.add_argument("--scale-up-window", type=_duration, help="stabilization (0s)")
    scale.add_argument("--scale-down-window", type=_duration, help="stabilization (5m)")
    scale.add_argument("--max-step-up", type=_positive_int, help="workers added at once")
    scale.add_argument("--max-step-down", type=_positive_int, help="removed at once (1)")
    scale.add_argument("--idle-after", type=_duration, help="then scale to 0 (5m)")
    scale.add_argument("--dry-run", action="store_true", help="log decisions, change nothing")
    scale.add_argument("--metrics-port", type=_port, help="serve Prometheus /metrics (0: any)")
    scale.add_argument("--metrics-host", default="127.0.0.1", help="metrics address")
    kube = scale.add_argument_group("kubernetes target")
    kube.add_argument("--namespace", help="of the Deployments (in-cluster: the pod's)")
    kube.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, ~/.kube)")
    kube.add_argument("--context", help="kubeconfig context")
    kube.add_argument("--deployment", default="streamq-consume-{stream}",
                      help="Deployment name for a stream without one in the config")  # fmt: skip
    kube.add_argument("--lease", default="streamq-autoscaler", help="Lease for leadership")

    admin = commands.add_parser(
        "admin", parents=[common], help="serve the HTTP admin API and the web dashboard"
    )
    admin.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    admin.add_argument("--port", type=_port, default=8080, help="port (8080; 0: any free port)")
    admin.add_argument(
        "--token-file", help="file holding the bearer token (default: $STREAMQ_ADMIN_TOKEN)"
    )

    health_cmd = commands.add_parser(
        "health", parents=[common], help="exit 0 healthy, 1 degraded, 2 down (a probe)"
    )
    health_cmd.add_argument("--stream", action="append", help="only this stream (repeatable)")
    health_cmd.add_argument("--json", action="store_true", help="print the report as JSON")
    health_cmd.add_argument(
        "--expected-workers", type=_positive_int, help="workers that should be alive, per stream"
    )
    health_cmd.add_argument("--timeout", type=_duration, default=3.0, help="down after (3s)")
    health_cmd.add_argument(
        "--fail-on",
        choices=["degraded", "down"],
        default="degraded",
        help="exit non-zero from this state on; 'down' suits liveness probes (a deep backlog "
        "must not restart workers)",
    )
    top_cmd = commands.add_parser("top", parents=[common], help="live view of every stream")
    top_cmd.add_argument("--stream", action="append", help="only this stream (repeatable)")
    top_cmd.add_argument("--once", action="store_true", help="print one snapshot and exit")
    top_cmd.add_argument("--interval", type=_duration, default=1.0, help="between refreshes")

    sim = commands.add_parser(
        "simulate", parents=[common], help="imitate the platforms' endpoints on loopback"
    )
    sim.add_argument("--port", type=int, default=8787, help="loopback port (8787; 0: any free)")
    sim.add_argument("--latency", type=_duration, default=0.0, help="mean answer delay (0)")
    sim.add_argument("--error-rate", type=_share, default=0.0, help="share of 5xx answers")
    sim.add_argument(
        "--lost-answer-rate", type=_share, default=0.0, help="share of posts taken, then a 502"
    )
    sim.add_argument("--rate-limit", help="posts per token per window, e.g. 10/1s (then 429)")
    sim.add_argument("--token-ttl", type=_duration, help="tokens expire this long after first use")
    sim.add_argument(
        "--access-ttl", type=_duration, help="life of the tokens its token endpoints issue"
    )
    sim.add_argument("--processing", type=_duration, default=0.2, help="media processing (200ms)")
    sim.add_argument("--seed", type=int, help="seed of the random failures")

    demo = commands.add_parser("demo", help="the whole system in one command (about a minute)")
    demo.add_argument("--duration", type=_duration, default=60.0, help="the compressed day (60s)")
    demo.add_argument("--latency", type=_duration, default=0.08, help="simulator latency (80ms)")
    demo.add_argument("--error-rate", type=_share, default=0.02, help="simulator 5xx share")
    demo.add_argument("--lost-answer-rate", type=_share, default=0.01, help="answers lost")
    demo.add_argument("--seed", type=int, help="make the run repeatable")
    demo.add_argument("--json", action="store_true", help="no live view: the summary as JSON")

    srv = commands.add_parser("server", help="manage the embedded Valkey server")
    srv.add_argument("action", choices=["start", "stop", "status"])
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logs.setup(getattr(args, "log_level", "INFO"), getattr(args, "log_format", "text"))
    if logging.root.level > logging.DEBUG:
        # httpx logs every request at INFO: too much for a publisher at volume.
        logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        code = _dispatch(args)
    except KeyboardInterrupt:
        code = 130
    except BaseException as exc:
        message = _one_line(exc)
        if message is None:
            raise
        logging.getLogger("streamq").debug("the error in full", exc_info=exc)
        _fail(message)
    sys.exit(code)


def _one_line(exc: BaseException) -> str | None:
    """The one-line message for an error a person can act on; None for a bug (re-raised).

    Errors from inside the worker's task groups arrive wrapped in exception groups.
    """
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            message = _one_line(inner)
            if message is not None:
                return message
        return None
    if isinstance(exc, StreamqError):
        return str(exc)
    if isinstance(exc, redis_errors.RedisError):
        return f"redis: {exc}"
    return None


def _fail(message: str) -> NoReturn:
    print(f"streamq: error: {message}", file=sys.stderr)
    sys.exit(1)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "server":
        return _server(args.action)
    if args.command == "demo":  # its own server, simulator and settings: reads no config
        return anyio.run(_demo, args, Config(), backend_options={"use_uvloop": True})
    config = load_config(args.config)
    commands: dict[str, Callable[[argparse.Namespace, Config], Awaitable[int]]] = {
        "consume": _consume,
        "enqueue": _enqueue,
        "stats": _stats,
        "events": _events,
        "job": _job,
        "dead": _dead,
        "cron": _cron,
        "account": _account,
        "limits": _limits,
        "autoscale": _autoscale,
        "admin": _admin,
        "health": _health,
        "top": _top,
        "simulate": _simulate,
        "tokens": _tokens,
    }
    command = commands[args.command]
    return anyio.run(command, args, config, backend_options={"use_uvloop": True})


# -- consume ------------------------------------------------------------------------------------


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

    return publishing(name, config, concurrency=concurrency, redis_url=args.redis_url)


async def _consume(args: argparse.Namespace, config: Config) -> int:
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
        share = partition_options(options, len(parts))
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


# -- enqueue ------------------------------------------------------------------------------------


async def _enqueue(args: argparse.Namespace, config: Config) -> int:
    check_priority(args.priority)
    check_stream(args.stream)
    run_at, delay = _when(args)
    if args.replace and not args.key:
        raise ConfigError("--replace needs --key: it replaces the job holding that key")
    options = {
        "run_at": run_at,
        "delay": delay,
        "max_attempts": args.max_attempts,
        "expire_after": args.expire_after,
        "job_timeout": args.job_timeout,
    }
    if args.payload == "-":
        if args.key:
            raise ConfigError("--key names one job; with --payload - put keys in the payloads")
        async with Queue(args.redis_url, config=config) as q:
            for batch in _json_lines(sys.stdin):
                accounts = None if args.account is None else [args.account] * len(batch)
                ids = await q.enqueue_many(
                    args.stream, batch, accounts=accounts, priority=args.priority, **options
                )
                sys.stdout.write("".join(f"{job_id}\n" for job_id in ids))
            sys.stdout.flush()
        return 0
    payload = _read_payload(args.payload)
    async with Queue(args.redis_url, config=config) as q:
        job_id = await q.enqueue(
            args.stream,
            payload,
            key=args.key,
            account=args.account,
            priority=args.priority,
            on_conflict="replace" if args.replace else "keep",
            **options,
        )
        print(job_id)
    return 0


def _read_payload(text: str) -> Any:
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise PayloadError(f"cannot read payload file {path}: {exc.strerror}") from None
        return codec.parse_json(data, what=f"payload file {path}")
    return codec.parse_json(text)


def _json_lines(stream: TextIO) -> Iterator[list[Any]]:
    """Batches of parsed JSON Lines; a bad line stops before its batch is enqueued."""
    batch: list[Any] = []
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        batch.append(codec.parse_json(line, what=f"stdin line {number}"))
        if len(batch) == STDIN_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


# -- stats --------------------------------------------------------------------------------------


async def _events(args: argparse.Namespace, config: Config) -> int:
    async with Queue(args.redis_url, config=config) as q:
        streams = await _streams_named(q, args.stream)
        since = args.since or ("now" if args.follow and not args.group else None)
        reader = q.events(
            streams,
            since=since,
            wait=args.follow,
            group=args.group,
            consumer=args.consumer,
            types=args.type,
        )
        async for event in reader:
            if args.json:
                print(msgspec.json.encode(event).decode(), flush=True)
            else:
                print(_event_line(event), flush=True)
    return 0


def _event_line(event: Any) -> str:
    parts = [
        _when_text(event.at_ms),
        event.stream,
        event.type,
        event.job,
        f"attempt {event.attempt}",
    ]
    if event.account:
        parts.append(f"account {event.account}")
    if event.run_at_ms is not None:
        parts.append(f"due {_when_text(event.run_at_ms)}")
    if event.error:
        parts.append(f"error: {event.error}")
    return "  ".join(parts)


async def _stats(args: argparse.Namespace, config: Config) -> int:
    for stream in args.stream or []:
        check_stream(stream)
    async with Queue(args.redis_url, config=config) as q:
        snap = await q.stats(args.stream)
    if args.json:
        sys.stdout.write(stats.to_json(snap).decode() + "\n")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="streamq streams")
    columns = ("stream", "depth", "waiting", "pending", "oldest pending", "consumers", "dead")
    for column in (*columns, "delayed", "limited"):
        table.add_column(column, justify="left" if column == "stream" else "right")
    for s in snap.streams:
        age = "-" if s.oldest_pending_age_s is None else f"{s.oldest_pending_age_s:.1f}s"
        table.add_row(
            s.stream,
            str(s.depth),
            str(s.waiting),
            str(s.pending),
            age,
            str(s.consumers),
            str(s.dead),
            str(s.delayed),
            str(s.limited),
        )
    Console().print(table)
    return 0


# -- job control --------------------------------------------------------------------------------


def _print_json(value: Any) -> None:
    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")


def _json_text(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def _when_text(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


async def _job(args: argparse.Namespace, config: Config) -> int:
    async with Queue(args.redis_url, config=config) as q:
        if args.action == "show":
            info = await q.job(args.id)
            if args.json:
                _print_json(info)
                return 0
            rows = [
                ("id", info.id), ("state", info.state), ("attempt", str(info.attempt)),
                ("priority", info.priority), ("key", info.key or "-"),
                ("account", info.account or "-"),
                ("enqueued", _when_text(info.enqueued_at_ms)),
                ("scheduled", _when_text(info.run_at_ms)),
                ("started", _when_text(info.started_at_ms)),
                ("finished", _when_text(info.finished_at_ms)),
                ("worker", info.consumer or "-"), ("error", info.error or "-"),
                ("result", _json_text(info.result) if info.result is not None else "-"),
                ("payload", _json_text(info.payload)),
            ]  # fmt: skip
            width = max(len(name) for name, _ in rows)
            for name, value in rows:
                print(f"{name:<{width}}  {value}")
        elif args.action == "cancel":
            outcome = await q.cancel(args.id)
            print(outcome if outcome == "cancelled" else "cancelling: it is running; not retried")
        elif args.action == "retry":
            await q.retry(args.id)
            print("queued")
        else:
            run_at, delay = _when(args)
            if run_at is None and delay is None:
                raise ConfigError("reschedule needs --at or --delay")
            print(_when_text(await q.reschedule(args.id, run_at=run_at, delay=delay)))
    return 0


async def _dead(args: argparse.Namespace, config: Config) -> int:
    check_stream(args.stream)
    async with Queue(args.redis_url, config=config) as q:
        if args.action == "list":
            letters = await q.dead(args.stream, args.count)
            if args.json:
                _print_json(letters)
                return 0
            for letter in letters:
                print(f"{letter.entry_id}  {letter.job_id or '(foreign entry)'}  {letter.reason}")
        elif args.action == "replay":
            replayed, skipped = await q.replay_dead(args.stream, None if args.all else args.ids)
            print(
                f"replayed {replayed}"
                + (f", skipped {skipped} (not replayable)" if skipped else "")
            )
        else:
            print(f"purged {await q.purge_dead(args.stream)}")
    return 0


async def _cron(args: argparse.Namespace, config: Config) -> int:
    check_stream(args.stream)
    async with Queue(args.redis_url, config=config) as q:
        if args.action == "add":
            scheduler.check_cron(args.cron)
            await q.schedule_recurring(
                args.name,
                args.stream,
                cron=args.cron,
                tz=args.tz,
                payload=_read_payload(args.payload),
                priority=args.priority,
            )
            print(f"scheduled {args.name}")
        elif args.action == "list":
            schedules = await q.recurring(args.stream)
            if args.json:
                _print_json(schedules)
                return 0
            for schedule in schedules:
                last = _when_text(schedule.last_ms or None)
                print(f"{schedule.name}  {schedule.cron}  {schedule.tz}  last fired {last}")
        else:
            if not await q.remove_recurring(args.stream, args.name):
                raise ConfigError(f"no schedule {args.name!r} on stream {args.stream!r}")
            print(f"removed {args.name}")
    return 0


# -- accounts and limits ------------------------------------------------------------------------


async def _streams_named(q: Queue, given: list[str] | None) -> list[str]:
    """The streams given, else every stream ever used."""
    if given:
        return [check_stream(stream) for stream in given]
    return await stats.known_streams(q.redis)


async def _tokens(args: argparse.Namespace, config: Config) -> int:
    from streamq import tokens_cli

    return await tokens_cli.tokens_command(args, config)


async def _account(args: argparse.Namespace, config: Config) -> int:
    if args.action == "status":
        from streamq import tokens_cli

        return await tokens_cli.account_status(args, config)
    limiter.check_account(args.account)
    async with Queue(args.redis_url, config=config) as q:
        streams = await _streams_named(q, args.stream)
        if not streams:
            raise ConfigError("no streams yet: name one with --stream")
        for stream in streams:
            if args.action == "pause":
                await q.pause_account(args.account, stream, reason=args.reason)
                print(f"{stream}: paused {args.account}")
            else:
                was_paused, resumed = await q.resume_account(args.account, stream)
                if was_paused:
                    print(f"{stream}: resumed {args.account} ({resumed} waiting jobs released)")
                else:
                    print(f"{stream}: {args.account} was not paused")
    return 0


async def _limits(args: argparse.Namespace, config: Config) -> int:
    if args.account is not None:
        limiter.check_account(args.account)
    async with Queue(args.redis_url, config=config) as q:
        streams = await _streams_named(q, args.stream)
        if args.account is None:  # a partitioned stream's platform windows are per partition
            streams = [part for stream in streams for part in await q.partitions(stream)]
        reports = [await q.limits(stream, args.account) for stream in streams]
    if args.json:
        _print_json(reports)
        return 0
    if not reports:
        print("no streams yet")
    for report in reports:
        rate = report.platform_rate_per_second
        ceiling = "no platform limit" if rate is None else f"platform allows {rate * 3600:g}/h"
        print(f"{report.stream}  ({ceiling}, {report.waiting_platform} waiting on the platform)")
        if not report.limits:
            print("  no limits")
        if report.account is None:
            for spec in report.limits:
                if spec.scope == "account":
                    limit = f"{spec.max} per {spec.per_seconds:g}s"
                    print(f"  account  {limit} each (--account A shows one's use)")
        for window in report.windows:
            frees = f", next in {window.frees_in_seconds:.1f}s" if window.remaining == 0 else ""
            print(
                f"  {window.scope:<8} {window.used}/{window.max} per {window.per_seconds:g}s"
                f"  ({window.remaining} left{frees})"
            )
        for pause in report.pauses:
            until = "until resumed"
            if pause.until_ms is not None:
                until = f"until {_when_text(pause.until_ms)}"
            print(f"  paused   {pause.scope} {until}: {pause.reason}")
        if report.account is not None:
            print(
                f"  account  {report.account}: {report.waiting_account} waiting, "
                f"{report.parked} parked"
            )
    return 0


# -- autoscale ----------------------------------------------------------------------------------


async def _autoscale(args: argparse.Namespace, config: Config) -> int:
    from autoscaler import controller, targets
    from autoscaler.policy import policy_for

    streams = [check_stream(stream) for stream in args.stream]
    policies = {
        stream: policy_for(
            config.stream(stream).autoscale,
            args.concurrency or config.stream(stream).concurrency,
            min_workers=args.min,
            max_workers=args.max,
            target_drain=args.target_drain,
            lead=args.lead,
            tolerance=args.tolerance,
            scale_up_window=args.scale_up_window,
            scale_down_window=args.scale_down_window,
            max_step_up=args.max_step_up,
            max_step_down=args.max_step_down,
            idle_after=args.idle_after,
        )
        for stream in streams
    }
    if args.metrics_port is not None:
        exposition = metrics.serve(args.metrics_port, args.metrics_host)
        logging.getLogger("streamq.autoscaler").info("serving metrics at %s", exposition.url)
    async with Queue(args.redis_url, config=config) as q:
        leadership: controller.Leadership | None = None
        target: targets.Target
        if args.target == "kubernetes":
            target, leadership = await _kubernetes_target(args, config, streams)
            if args.dry_run:  # reads the Deployments' sizes, patches nothing, takes no Lease
                target, leadership = targets.DryRun(over=target), controller.Unelected()
        elif args.dry_run:
            target, leadership = targets.DryRun(), controller.Unelected()
        else:
            assert q.resolved_url is not None
            target = targets.LocalTarget(
                _consume_args(args, config, streams, policies),
                env={"STREAMQ_REDIS_URL": q.resolved_url},
            )
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(_cancel_on_signal, tasks.cancel_scope)
                await controller.run(
                    q.redis,
                    streams,
                    policies,
                    target,
                    config,
                    leadership=leadership,
                    interval=args.interval,
                )
        finally:
            with anyio.CancelScope(shield=True):
                await target.close()  # local workers finish their running jobs first
    return 0


def _consume_args(
    args: argparse.Namespace,
    config: Config,
    streams: list[str],
    policies: dict[str, Any],
) -> dict[str, list[str]]:
    """The `streamq consume` command line of each stream's local workers (the server's URL
    goes in their environment)."""
    consume: dict[str, list[str]] = {}
    for stream in streams:
        if platforms.publisher_for(stream, config.stream(stream), handler=args.handler) is None:
            resolve_handler(stream, args.handler, config.stream(stream))  # fail early
        spec = ["--stream", stream]
        spec += ["--concurrency", str(policies[stream].concurrency), "--log-level", args.log_level]
        spec += ["--log-format", args.log_format]
        if args.handler:
            spec += ["--handler", args.handler]
        if args.config:
            spec += ["--config", args.config]
        consume[stream] = spec
    return consume


async def _kubernetes_target(
    args: argparse.Namespace, config: Config, streams: list[str]
) -> tuple[Any, Any]:
    from autoscaler import controller, kubernetes

    api = await kubernetes.api_client(args.kubeconfig, args.context)
    namespace = args.namespace or kubernetes.default_namespace(args.kubeconfig, args.context)
    deployments = {
        stream: config.stream(stream).autoscale.deployment or args.deployment.format(stream=stream)
        for stream in streams
    }
    lease = kubernetes.LeaseLeadership(
        api,
        namespace,
        args.lease,
        identity=controller.identity(),
        duration_seconds=max(3 * args.interval, 15.0),
    )
    return kubernetes.KubernetesTarget(api, namespace, deployments), lease


async def _cancel_on_signal(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            scope.cancel()
            return


# -- admin --------------------------------------------------------------------------------------


async def _admin(args: argparse.Namespace, config: Config) -> int:
    from streamq import admin

    token = admin.load_token(args.token_file)
    sock = admin.bind(args.host, args.port)
    with sock:
        async with Queue(args.redis_url, config=config) as q:
            app = admin.create_app(q.redis, token, config)
            print(f"streamq admin: serving {admin.url_of(sock)}", flush=True)
            await admin.serve(app, sock)
    return 0


# -- health and top -----------------------------------------------------------------------------


async def _health(args: argparse.Namespace, config: Config) -> int:
    from streamq import health

    streams = [check_stream(stream) for stream in args.stream or []]
    report = await health.check(
        args.redis_url,
        config,
        streams or None,
        expected_workers=args.expected_workers,
        within=args.timeout,
    )
    print(health.to_json(report).decode() if args.json else report.summary())
    if args.fail_on == "down" and report.code == 1:
        return 0  # degraded, reported, but not a failure of this probe
    return report.code


async def _top(args: argparse.Namespace, config: Config) -> int:
    from rich.console import Console

    from streamq import top

    streams = [check_stream(stream) for stream in args.stream or []]
    async with Queue(args.redis_url, config=config) as q:
        await top.run(q.redis, Console(), streams or None, interval=args.interval, once=args.once)
    return 0


# -- simulator and demo -------------------------------------------------------------------------


async def _simulate(args: argparse.Namespace, config: Config) -> int:
    from streamq import simulator

    def ready(url: str) -> None:
        print(f"simulating {', '.join(platforms.PLATFORMS)} at {url}", flush=True)
        print(f"export STREAMQ_PLATFORM_URL={url}", flush=True)

    options = simulator.SimOptions(
        latency=args.latency,
        error_rate=args.error_rate,
        lost_answer_rate=args.lost_answer_rate,
        rate_limit=None if args.rate_limit is None else simulator.parse_rate(args.rate_limit),
        token_ttl=args.token_ttl,
        access_ttl=args.access_ttl,
        processing=args.processing,
        seed=args.seed,
    )
    await simulator.run_command(args.port, options, ready)
    return 0


async def _demo(args: argparse.Namespace, config: Config) -> int:
    from rich.console import Console

    from streamq import demo

    if args.duration < 2:
        raise ConfigError("the demo needs a --duration of at least 2s")
    options = demo.DemoOptions(
        duration=args.duration,
        latency=args.latency,
        error_rate=args.error_rate,
        lost_answer_rate=args.lost_answer_rate,
        seed=args.seed,
        json=args.json,
    )
    return await demo.run(options, Console())


# -- server -------------------------------------------------------------------------------------


def _server(action: str) -> int:
    if action == "start":
        state = server.start()
        print(f"running: pid {state.pid}, {server.url_for(state.home)}")
    elif action == "stop":
        print("stopped" if server.stop() else "not running")
    else:
        state = server.status()
        if state.running:
            print(f"running: pid {state.pid}, {server.url_for(state.home)}, valkey {state.version}")
        else:
            print(f"not running (home {state.home})")
            return 3
    return 0


if __name__ == "__main__":
    main()

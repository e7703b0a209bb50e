"""What every command group shares: the parser, the common options, exit codes, errors and
output for people (a terminal) and for scripts (a pipe, or ``--json``).

Exit codes, the same for every command (``health`` alone answers a probe's 0/1/2):

    0  done
    1  a runtime failure: Redis unreachable, no such job, stream or schedule, a refused state
    2  a usage error: a bad flag, value, time, payload or config file
    3  a timeout
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn

import msgspec

from streamq import logs, stats
from streamq.client import Queue
from streamq.config import Config, parse_duration
from streamq.errors import ConfigError, StreamqError

OK, FAILURE, USAGE, TIMEOUT = 0, 1, 2, 3

Runner = Callable[[argparse.Namespace, Config], Awaitable[int]]
"""An async command: the parsed arguments and the loaded config in, the exit code out."""


class UsageError(StreamqError):
    """The command line asks for something it cannot mean (exit 2)."""


class NotFound(StreamqError):
    """What the command names does not exist (exit 1)."""


def one_line(message: str) -> str:
    """The message on one line: a value holding a line break (\\n, \\x85, \\u2028) cannot
    split it."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


def fail(message: str, code: int = FAILURE) -> NoReturn:
    print(f"streamq: error: {one_line(message)}", file=sys.stderr)
    sys.exit(code)


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see '{self.prog} --help')", USAGE)


# -- the options every Redis command takes, before or after its action -------------------------

COMMON_DEFAULTS: dict[str, Any] = {
    "redis_url": None,
    "config": None,
    "log_level": "INFO",
    "log_format": "text",
}
"""Common options are parsed with no default (argparse.SUPPRESS) wherever they appear, so a
value given to the group (``streamq job --redis-url U show``) is not overwritten by the
action's default; these fill in what was given nowhere."""


def add_common(parser: argparse.ArgumentParser, *, connects: bool = True) -> None:
    """The common options, on a group and on each of its actions: given before or after the
    action, they mean the same (the last one given wins)."""
    group = parser.add_argument_group("common options (before or after the action)")
    if connects:
        group.add_argument(
            "--redis-url",
            default=argparse.SUPPRESS,
            metavar="URL",
            help="redis://, rediss://, unix:// or redis+cluster://host:port,host:port URL "
            "(default: $STREAMQ_REDIS_URL, else the embedded server)",
        )
        group.add_argument(
            "--config",
            default=argparse.SUPPRESS,
            metavar="FILE",
            help="TOML config file (default: $STREAMQ_CONFIG)",
        )
    group.add_argument(
        "--log-level",
        default=argparse.SUPPRESS,
        choices=logs.LEVELS,
        help="log to stderr from this level on (INFO)",
    )
    group.add_argument(
        "--log-format",
        default=argparse.SUPPRESS,
        choices=logs.FORMATS,
        help="text (default) or json lines",
    )


def fill_defaults(args: argparse.Namespace) -> argparse.Namespace:
    for name, value in COMMON_DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, value)
    return args


def command(
    commands: Any, name: str, help: str, run: Runner | None = None, *, connects: bool = True
) -> Parser:
    """A command (``streamq stats``) or a group's action (``streamq dead list``)."""
    parser: Parser = commands.add_parser(name, help=help, description=help)
    add_common(parser, connects=connects)
    parser.set_defaults(connects=connects)
    if run is not None:
        parser.set_defaults(run=run)
    return parser


def group(commands: Any, name: str, help: str, *, connects: bool = True) -> Any:
    """A command group (``streamq dead``) whose actions are added to what this returns."""
    parser: Parser = commands.add_parser(name, help=help, description=help)
    add_common(parser, connects=connects)
    return parser.add_subparsers(
        dest="action", required=True, parser_class=Parser, metavar="ACTION", title="actions"
    )


# -- values -------------------------------------------------------------------------------------


def duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, not {text!r}")
    return int(text)


def share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a share from 0 to 1, not {text!r}")
    return value


def add_simulator_options(
    parser: argparse.ArgumentParser,
    *,
    latency: float,
    error_rate: float,
    lost_answer_rate: float,
    what: str = "",
) -> None:
    """The simulator's failure options, with this command's defaults (``streamq simulate``
    imitates a healthy platform, ``streamq demo`` a realistic one)."""

    def shown(value: float, unit: str = "") -> str:
        return f"{value * 1000:g}ms" if unit == "ms" and value else f"{value:g}"

    parser.add_argument(
        "--latency", type=duration, default=latency,
        help=f"{what}mean answer delay ({shown(latency, 'ms')})",
    )  # fmt: skip
    parser.add_argument(
        "--error-rate", type=share, default=error_rate,
        help=f"{what}share of 5xx answers ({shown(error_rate)})",
    )  # fmt: skip
    parser.add_argument(
        "--lost-answer-rate", type=share, default=lost_answer_rate,
        help=f"{what}share of posts taken, then a 502 ({shown(lost_answer_rate)})",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, help="seed of the random failures (a repeatable run)")


def when_text(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


def span_text(seconds: float) -> str:
    """A duration as people write it: 90 -> 1m30s, 86400 -> 1d, 0.25 -> 250ms."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    parts, rest = [], round(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts[:2])


# -- due times ----------------------------------------------------------------------------------


def add_when(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--at", help="due time: 2026-12-01T09:00:00+01:00, or a wall time with --tz"
    )
    parser.add_argument("--tz", help="IANA time zone of a wall-time --at, e.g. Europe/Paris")
    parser.add_argument("--delay", type=duration, help="due after this long, e.g. 90s or 2h")
    parser.add_argument(
        "--allow-past",
        action="store_true",
        help="take an --at already past and run the job at once (else refused)",
    )


def when(args: argparse.Namespace) -> tuple[datetime | None, float | None]:
    """The due time given (--at, or --delay), checked: a past --at is a usage error unless
    --allow-past, which makes it due now."""
    from streamq import scheduler

    if args.at is not None and args.delay is not None:
        raise UsageError("give --at or --delay, not both")
    if args.tz is not None and args.at is None:
        raise UsageError("--tz goes with --at")
    if args.at is None:
        return None, args.delay
    try:
        run_at = scheduler.parse_at(args.at, args.tz)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    late = datetime.now(UTC) - run_at
    if late.total_seconds() > 0:
        if not args.allow_past:
            raise UsageError(
                f"--at {run_at.isoformat()} is {span_text(late.total_seconds())} in the past: "
                "give a later time, or --allow-past to run it at once"
            )
        return None, 0.0
    return run_at, None


# -- streams ------------------------------------------------------------------------------------


async def known(q: Queue, streams: Sequence[str]) -> list[str]:
    """The streams named, each one configured or used (``stats.known_stream``); else
    StreamNotFound (exit 1), as the admin API's 404 and the Python API's exception."""
    for stream in streams:
        await stats.known_stream(q.redis, q.config, stream)
    return list(streams)


async def named_or_all(q: Queue, given: Sequence[str] | None) -> list[str]:
    """The streams given (each must exist), else every stream ever used."""
    if given:
        return await known(q, given)
    return await stats.known_streams(q.redis)


# -- output -------------------------------------------------------------------------------------


def is_terminal() -> bool:
    return sys.stdout.isatty()


def print_json(value: Any) -> None:
    """One JSON document on one line (a list is an array: ``[]`` when empty)."""
    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")


def json_text(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def nothing(message: str) -> None:
    """An empty result, said so: on stdout at a terminal, on stderr through a pipe (where
    stdout stays empty for scripts)."""
    print(message, file=sys.stdout if is_terminal() else sys.stderr)


def table(
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    title: str | None = None,
    right: Sequence[str] = (),
) -> None:
    """Rows for people and scripts: a rich table at the terminal's full width; through a pipe,
    tab-separated lines under a header line, never cut."""
    if not is_terminal():
        lines = ["\t".join(columns), *("\t".join(row) for row in rows)]
        sys.stdout.write("".join(line + "\n" for line in lines))
        return
    from rich.console import Console
    from rich.table import Table

    shown = Table(title=title)
    for column in columns:
        shown.add_column(column, justify="right" if column in right else "left")
    for row in rows:
        shown.add_row(*row)
    Console().print(shown)


def pairs(rows: Sequence[tuple[str, str]]) -> None:
    """Name and value, one pair a line (aligned at a terminal, tab-separated through a pipe)."""
    width = max(len(name) for name, _ in rows) if is_terminal() else 0
    sep = "  " if is_terminal() else "\t"
    for name, value in rows:
        print(f"{name:<{width}}{sep}{value}")

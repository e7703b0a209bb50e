"""The ``streamq`` command: the only place that prints.

Each command group lives in its own module under ``streamq.commands``; this module builds the
parser from them, runs the command chosen and turns every error a person can act on into one
line, ``streamq: error: <message>``, and a uniform exit code (``streamq.commands.common``):
0 ok, 1 a runtime failure (including "not found"), 2 a usage error, 3 a timeout.

argparse rather than click or typer: the common options (--redis-url, --config, --log-level,
--log-format) must mean the same before or after a group's action, which argparse gives by
parsing them with no default at both levels, while click binds an option to one level; the
usage errors stay one line with exit 2, and argcomplete adds shell completion.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import NoReturn

import anyio
from redis import exceptions as redis_errors

from streamq import __version__, logs
from streamq.commands import GROUPS
from streamq.commands.common import (
    FAILURE,
    TIMEOUT,
    USAGE,
    NotFound,
    Parser,
    UsageError,
    fail,
    fill_defaults,
)
from streamq.config import Config, load_config
from streamq.errors import (
    ConfigError,
    HandlerError,
    JobNotFound,
    PayloadError,
    StreamqError,
)

USAGE_ERRORS = (UsageError, ConfigError, PayloadError, HandlerError)
"""What the person asked for cannot be done as asked: a flag, value, time, payload, handler
spec or config file (exit 2)."""


def build_parser() -> Parser:
    parser = Parser(prog="streamq", description="Reliable job engine on Redis Streams.")
    parser.add_argument("--version", action="version", version=f"streamq {__version__}")
    commands = parser.add_subparsers(
        dest="command", required=True, parser_class=Parser, metavar="COMMAND", title="commands"
    )
    for module in GROUPS:
        module.register(commands)
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with the common options' defaults where none was given."""
    parser = build_parser()
    try:
        import argcomplete
    except ImportError:  # pragma: no cover - a dependency; completion is a convenience
        pass
    else:
        argcomplete.autocomplete(parser)  # answers a shell's completion request, then exits
    return fill_defaults(parser.parse_args(argv))


def main(argv: list[str] | None = None) -> NoReturn:
    args = parse(argv)
    logs.setup(args.log_level, args.log_format)
    if logging.root.level > logging.DEBUG:
        # httpx logs every request at INFO: too much for a publisher at volume.
        logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        config = load_config(args.config) if args.connects else Config()
        code = anyio.run(args.run, args, config, backend_options={"use_uvloop": True})
    except KeyboardInterrupt:
        code = 130
    except BaseException as exc:
        found = _reportable(exc)
        if found is None:
            raise
        logging.getLogger("streamq").debug("the error in full", exc_info=exc)
        fail(*found)
    sys.exit(code)


def _reportable(exc: BaseException) -> tuple[str, int] | None:
    """The one-line message and exit code for an error a person can act on; None for a bug
    (re-raised, with its traceback).

    Errors from inside the worker's task groups arrive wrapped in exception groups.
    """
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _reportable(inner)
            if found is not None:
                return found
        return None
    if isinstance(exc, USAGE_ERRORS) and not _timed_out(exc):
        # A port taken or a file that cannot be read is the system's answer, not a usage error.
        return str(exc), FAILURE if isinstance(exc.__context__, OSError) else USAGE
    if isinstance(exc, NotFound | JobNotFound):
        return str(exc), FAILURE
    if isinstance(exc, redis_errors.TimeoutError | TimeoutError):
        return f"timed out: {exc}" if str(exc) else "timed out", TIMEOUT
    if isinstance(exc, StreamqError):
        return str(exc), TIMEOUT if _timed_out(exc) else FAILURE
    if isinstance(exc, redis_errors.RedisError):
        return f"redis: {exc}", FAILURE
    return None


def _timed_out(exc: BaseException) -> bool:
    """Whether a domain error stands for a timeout: a server that went silent is reported as
    "cannot reach Redis", raised while handling the client's timeout."""
    seen = exc.__context__
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, redis_errors.TimeoutError | TimeoutError):
            return True
        seen = seen.__context__
    return False


if __name__ == "__main__":
    main()

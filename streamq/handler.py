"""Finding the function that runs a job: ``--handler module:function`` or ``handler =``."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from streamq.errors import HandlerError

if TYPE_CHECKING:
    from streamq.job import Job

Handler = Callable[["Job"], Awaitable[Any]]


def load_handler(spec: str) -> Handler:
    """Import ``module:function`` and check it is an async function; raises HandlerError."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise HandlerError(f"handler {spec!r} must look like 'package.module:function'")
    # Like uvicorn and celery: the directory the command runs in is importable.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure is the user's handler failing to load
        raise HandlerError(
            f"handler {spec!r}: cannot import {module_name!r}: {type(exc).__name__}: {exc}"
        ) from None
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise HandlerError(f"handler {spec!r}: {module_name!r} has no {attr!r}") from None
    if not callable(target):
        raise HandlerError(f"handler {spec!r} is not callable")
    call = getattr(target, "__call__", None)  # noqa: B004 - async callable objects count too
    if not (inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(call)):
        raise HandlerError(f"handler {spec!r} must be an async function ('async def')")
    handler: Handler = target
    return handler

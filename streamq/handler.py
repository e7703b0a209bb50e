"""Finding the function that runs a job (``--handler module:function`` or ``handler =``), and
the hooks a worker calls after outcomes (``--hooks module``), and calling those."""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from streamq import logs, outcomes
from streamq.codec import Outcome
from streamq.errors import HandlerError

if TYPE_CHECKING:
    from streamq.job import Job

log = logging.getLogger("streamq.worker")

Handler = Callable[["Job"], Awaitable[Any]]


def load_callable(spec: str, what: str = "handler") -> Any:
    """Import ``module:attribute`` and check it is callable; raises HandlerError."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise HandlerError(f"{what} {spec!r} must look like 'package.module:function'")
    # Like uvicorn and celery: the directory the command runs in is importable.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure is the user's code failing to load
        raise HandlerError(
            f"{what} {spec!r}: cannot import {module_name!r}: {type(exc).__name__}: {exc}"
        ) from None
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise HandlerError(f"{what} {spec!r}: {module_name!r} has no {attr!r}") from None
    if not callable(target):
        raise HandlerError(f"{what} {spec!r} is not callable")
    return target


def load_handler(spec: str) -> Handler:
    """Import ``module:function`` and check it is an async function; raises HandlerError."""
    target = load_callable(spec)
    call = getattr(target, "__call__", None)  # noqa: B004 - async callable objects count too
    if not (inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(call)):
        raise HandlerError(f"handler {spec!r} must be an async function ('async def')")
    handler: Handler = target
    return handler


@dataclass(frozen=True, slots=True)
class Hooks:
    """In-process callbacks a worker calls once a batch's outcomes are recorded, for apps that
    prefer them to reading events. Each may be async or plain. An exception or a hook running
    longer than ``timeout`` seconds is logged and changes nothing: the outcome is recorded
    already. A worker that dies between recording and calling its hooks does not call them;
    the events stream has every outcome."""

    on_done: Callable[[Job, Any], Any] | None = None
    """(job, result): the handler returned."""
    on_failed: Callable[[Job, str], Any] | None = None
    """(job, error): a run failed, whether it will be retried or not."""
    on_dead: Callable[[Job, str], Any] | None = None
    """(job, reason): no more attempts; the job is in the dead-letter stream."""
    on_cancelled: Callable[[Job], Any] | None = None
    on_expired: Callable[[Job], Any] | None = None
    timeout: float = 5.0


HOOK_NAMES = ("on_done", "on_failed", "on_dead", "on_cancelled", "on_expired")


def load_hooks(module_name: str) -> Hooks:
    """The ``on_*`` functions of a module (``--hooks mypkg.hooks``); raises HandlerError."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise HandlerError(
            f"hooks {module_name!r}: cannot import: {type(exc).__name__}: {exc}"
        ) from None
    found = {name: getattr(module, name) for name in HOOK_NAMES if hasattr(module, name)}
    if not found:
        raise HandlerError(f"hooks {module_name!r} defines none of {', '.join(HOOK_NAMES)}")
    for name, hook in found.items():
        if not callable(hook):
            raise HandlerError(f"hooks {module_name!r}: {name} is not callable")
    return Hooks(**found)


async def call_hooks(hooks: Hooks, batch: Sequence[tuple[Job, Outcome]]) -> None:
    """The hooks of a recorded batch, one call at a time; none can change an outcome."""
    for job, outcome in batch:
        for name, rest in outcomes.hook_calls(outcome):
            hook: Callable[..., Any] | None = getattr(hooks, name)
            if hook is None:
                continue
            args = (job, *rest)
            try:
                with anyio.fail_after(hooks.timeout):
                    if inspect.iscoroutinefunction(hook):
                        await hook(*args)
                    else:  # a plain function must not block the worker's event loop
                        await anyio.to_thread.run_sync(
                            functools.partial(hook, *args), abandon_on_cancel=True
                        )
            except Exception as exc:  # a hook's failure is logged, never the job's
                log.warning(
                    "hook %s failed for job %s: %s",
                    name,
                    job.id,
                    outcomes.describe(exc),
                    extra=logs.job(job.id, job.stream, job.attempt),
                )

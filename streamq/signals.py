"""Stopping on SIGTERM or SIGINT: the one place a process listens for them.

A worker, the admin server, ``top`` and the simulator each decide what a signal means to them
(finish running jobs, then stop; a second signal stops at once); ``on_stop_signals`` only
delivers the signals, by name, until the callback says it has had enough. ``stop_gracefully``
is the meaning shared by whatever can be asked to stop (the workers of a process): the first
signal asks, the second cancels.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Sequence
from typing import Protocol

import anyio

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def on_stop_signals(handle: Callable[[str], bool]) -> None:
    """Call ``handle`` with the name of each SIGTERM or SIGINT ('SIGTERM', 'SIGINT') this
    process receives, until it returns True."""
    with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:
        async for signum in signals:
            if handle(signal.Signals(signum).name):
                return


class Stoppable(Protocol):
    @property
    def stopping(self) -> bool: ...

    def stop(self) -> None:
        """Finish what is under way, start nothing new, then return from run()."""


async def stop_gracefully(
    stoppables: Sequence[Stoppable], scope: anyio.CancelScope, log: logging.Logger
) -> None:
    """SIGTERM or SIGINT stops ``stoppables`` (what they are doing finishes); the next one
    cancels ``scope`` at once."""

    def handle(name: str) -> bool:
        if any(stoppable.stopping for stoppable in stoppables):
            log.warning("second %s: stopping now", name)
            scope.cancel()
            return True
        log.info("%s: finishing running jobs, then stopping", name)
        for stoppable in stoppables:
            stoppable.stop()
        return False

    await on_stop_signals(handle)

"""Stopping on SIGTERM or SIGINT: the one place a process listens for them.

A worker, the admin server, ``top`` and the simulator each decide what a signal means to them
(finish running jobs, then stop; a second signal stops at once); this module only delivers
the signals, by name, until the callback says it has had enough.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

import anyio

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def on_stop_signals(handle: Callable[[str], bool]) -> None:
    """Call ``handle`` with the name of each SIGTERM or SIGINT ('SIGTERM', 'SIGINT') this
    process receives, until it returns True."""
    with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:
        async for signum in signals:
            if handle(signal.Signals(signum).name):
                return

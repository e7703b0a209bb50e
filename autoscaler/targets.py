"""Where the workers run, and how their number changes.

- ``LocalTarget`` runs ``streamq consume`` processes on this machine: starts them, stops the
  newest with SIGTERM (they finish their jobs), and replaces any that died.
- ``DryRun`` changes nothing and remembers what it was told, so decisions build on each other.
- ``autoscaler.kubernetes.KubernetesTarget`` sets the replicas of each stream's Deployment.

A target that cannot read or change a stream's size raises ``TargetError``: the controller
logs it and tries again at the next tick, and the other streams go on.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from typing import Protocol

log = logging.getLogger("streamq.autoscaler")


class TargetError(Exception):
    """A stream's pool could not be read or resized this time; one line for a person, and the
    HTTP status where an API answered."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Target(Protocol):
    async def workers(self, stream: str) -> int: ...

    async def scale(self, stream: str, count: int) -> None: ...

    async def close(self) -> None: ...


class DryRun:
    """Changes nothing. Over a real target it starts from that target's sizes (read, never
    written); alone, from zero."""

    def __init__(self, over: Target | None = None) -> None:
        self.over = over
        self._sizes: dict[str, int] = {}

    async def workers(self, stream: str) -> int:
        if stream not in self._sizes and self.over is not None:
            self._sizes[stream] = await self.over.workers(stream)
        return self._sizes.get(stream, 0)

    async def scale(self, stream: str, count: int) -> None:
        self._sizes[stream] = count

    async def close(self) -> None:
        if self.over is not None:
            await self.over.close()


class LocalTarget:
    """``streamq consume`` processes on this machine, per stream."""

    def __init__(
        self,
        consume_args: dict[str, list[str]],
        grace_seconds: float = 30.0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.consume_args = consume_args
        # The server's URL goes to the workers in their environment, not their command line,
        # where `ps` would show a password in it to every user of the machine.
        self.env = {**os.environ, **(env or {})}
        self.grace_seconds = grace_seconds
        self._pools: dict[str, list[subprocess.Popen[bytes]]] = {}
        self._stopping: list[subprocess.Popen[bytes]] = []

    async def workers(self, stream: str) -> int:
        pool = self._pools.setdefault(stream, [])
        alive = [p for p in pool if p.poll() is None]
        if len(alive) < len(pool):
            log.warning("%d %s worker(s) exited: replacing", len(pool) - len(alive), stream)
            self._pools[stream] = alive
            await self.scale(stream, len(pool))
        self._stopping = [p for p in self._stopping if p.poll() is None]
        return len(self._pools[stream])

    def pids(self, stream: str) -> list[int]:
        """Process ids of the stream's workers, oldest first."""
        return [process.pid for process in self._pools.get(stream, [])]

    async def scale(self, stream: str, count: int) -> None:
        pool = self._pools.setdefault(stream, [])
        while len(pool) < count:
            pool.append(self._start(stream))
        while len(pool) > count:
            process = pool.pop()
            process.send_signal(signal.SIGTERM)  # finishes its running jobs, then exits
            self._stopping.append(process)

    def _start(self, stream: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "streamq", "consume", *self.consume_args[stream]],
            stdin=subprocess.DEVNULL,
            env=self.env,
        )

    async def close(self) -> None:
        every = [p for pool in self._pools.values() for p in pool] + self._stopping
        for process in every:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in every:
            try:
                process.wait(self.grace_seconds + 5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._pools.clear()
        self._stopping.clear()

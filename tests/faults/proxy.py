"""A loopback TCP proxy that breaks the connections between clients and a server on command.

    client ──► 127.0.0.1:<free port> ──► proxy ──► the test server

Modes, switched from the test's thread at any moment:
- ``pass``: bytes flow both ways untouched.
- ``cut()``: every live connection is closed at once, and new ones are reset as soon as they
  are accepted, until the mode changes (a server that went away, or a firewall that rejects).
- ``black_hole()``: connections are accepted and read, but nothing is forwarded either way: a
  stall, where the client only learns of trouble from its own timeouts. A connection that
  swallowed bytes stays broken after the black hole ends (its requests are gone), as after a
  real partition; new connections pass again.
- ``slow(seconds)``: every chunk waits that long before it is forwarded, both ways.
- ``lose_next_reply()``: the next chunk the server sends is dropped and its connection closed:
  the server did the work, the client never hears of it (the case idempotent retries are for).

The proxy runs an asyncio loop in a daemon thread of its own and stops with ``close()`` (or the
``with`` block), closing every connection it made.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from typing import Any, Literal

Mode = Literal["pass", "cut", "black_hole", "slow"]
CHUNK = 65536


class _Link:
    """One client connection and its own connection to the server."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.writers = (client, upstream)
        self.broken = False

    def close(self) -> None:
        for writer in self.writers:
            _reset(writer)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a reset, not a polite FIN: the peer learns at once, as from a dead host."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.mode: Mode = "pass"
        self.delay = 0.0
        self.connections = 0
        """Connections accepted so far (reconnects show up here)."""
        self._lose_reply = False
        self._links: set[_Link] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    # -- commands, from the test's thread --------------------------------------------------------

    def passthrough(self) -> None:
        self._call(self._set, "pass", 0.0)

    def cut(self) -> None:
        self._call(self._set, "cut", 0.0)

    def black_hole(self) -> None:
        self._call(self._set, "black_hole", 0.0)

    def slow(self, seconds: float) -> None:
        self._call(self._set, "slow", seconds)

    def lose_next_reply(self) -> None:
        self._call(self._arm_lost_reply)

    def live_connections(self) -> int:
        return int(self._call(self._count_links))

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fault proxy did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._shutdown)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.close()

    def _call(self, coroutine_function: Any, *args: Any) -> Any:
        done: Coroutine[Any, Any, Any] = coroutine_function(*args)
        return asyncio.run_coroutine_threadsafe(done, self._loop).result(10)

    # -- inside the loop -------------------------------------------------------------------------

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for link in list(self._links):
            link.close()
        self._links.clear()

    async def _set(self, mode: Mode, delay: float) -> None:
        self.mode, self.delay = mode, delay
        if mode == "cut":
            for link in list(self._links):
                link.close()
            self._links.clear()

    async def _arm_lost_reply(self) -> None:
        self._lose_reply = True

    async def _count_links(self) -> int:
        return len(self._links)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.mode == "cut":
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _reset(writer)
            return
        link = _Link(writer, up_writer)
        self._links.add(link)
        pumps = [
            asyncio.ensure_future(self._pump(link, reader, up_writer, upstream=True)),
            asyncio.ensure_future(self._pump(link, up_reader, writer, upstream=False)),
        ]
        try:
            # Either side closing (or a lost reply) ends the link: the other side learns of it.
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            link.close()
            self._links.discard(link)
            for pump in pumps:
                pump.cancel()

    async def _pump(
        self,
        link: _Link,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        *,
        upstream: bool,
    ) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                chunk = await source.read(CHUNK)
                if not chunk:
                    return
                if self.mode == "black_hole":
                    link.broken = True
                if link.broken:
                    continue  # swallowed: never forwarded, in either direction
                if not upstream and self._lose_reply:
                    self._lose_reply = False
                    return  # the caller closes the link: the reply is gone with it
                if self.mode == "slow":
                    await asyncio.sleep(self.delay)
                sink.write(chunk)
                await sink.drain()

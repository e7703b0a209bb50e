"""``streamq top``: every stream at a glance, refreshed each second (rich.live).

Rates are jobs done per second, fleet-wide: between two refreshes from the stream's `done`
count; on the first view (and in a one-off snapshot) over the last 10–20 s from the samples
workers keep for health. Lateness is the worst p95 the stream's workers reported over their last
minute (`late`). On a narrow terminal the least needed columns go first (delayed, pending,
lag, late); when stdout is not a terminal one snapshot is printed, so ``streamq top | cat``
and cron jobs get plain text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import anyio
from redis.asyncio import Redis
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from streamq import health, keys, signals, stats

FIRST_RATE_WINDOW_SECONDS: Final = 10.0


@dataclass(frozen=True, slots=True)
class Row:
    stream: str
    done_per_s: float | None
    depth: int
    lag: int
    pending: int
    lateness_p95_s: float | None
    consumers: int
    dead: int
    delayed: int


class Sampler:
    """Reads a view's rows; remembers the last `done` counts so rates span one refresh."""

    def __init__(self, redis: Redis, streams: list[str] | None = None) -> None:
        self.redis = redis
        self.streams = streams
        self._last: dict[str, tuple[int, int]] = {}  # stream -> (server ms, done)

    async def rows(self) -> tuple[int, list[Row]]:
        snap = await stats.snapshot(self.redis, self.streams)
        now = snap.server_time_ms
        rows = []
        for s in snap.streams:
            holders = stats.holders(s)
            done = sum([int(await self.redis.hget(keys.counts(h), "done") or 0) for h in holders])
            rate: float | None = None
            last = self._last.get(s.stream)
            if last is not None and now > last[0]:
                rate = (done - last[1]) * 1000 / (now - last[0])
            else:
                recent = await health.recent_rates(
                    self.redis, holders, now, FIRST_RATE_WINDOW_SECONDS
                )
                if recent is not None and recent.span_s > 0:
                    rate = recent.done / recent.span_s
            self._last[s.stream] = (now, done)
            lateness = await health.recent_lateness(self.redis, holders, now)
            figures = (s.depth, s.waiting, s.pending, lateness, s.consumers, s.dead, s.delayed)
            rows.append(Row(s.stream, rate, *figures))
        return now, rows


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:g}s"


_Column = tuple[str, Callable[[Row], str]]
COLUMNS: Final[list[_Column]] = [
    ("stream", lambda r: r.stream),
    ("done/s", lambda r: _rate(r.done_per_s)),
    ("depth", lambda r: f"{r.depth:,}"),
    ("lag", lambda r: f"{r.lag:,}"),
    ("pending", lambda r: f"{r.pending:,}"),
    ("late", lambda r: _seconds(r.lateness_p95_s)),
    ("workers", lambda r: str(r.consumers)),
    ("dead", lambda r: f"{r.dead:,}"),
    ("delayed", lambda r: f"{r.delayed:,}"),
]
DROP_ORDER: Final = ("delayed", "pending", "lag", "late")
"""Columns left out, in this order, while the table does not fit the terminal."""
STREAM_FOLD_WIDTH: Final = 16
"""Stream names longer than this fold onto several lines when space is short."""


def render(server_ms: int, rows: list[Row], width: int) -> RenderableType:
    """The view for a terminal ``width`` columns wide."""
    when = datetime.fromtimestamp(server_ms / 1000, tz=UTC).strftime("%H:%M:%S UTC")
    title = Text(f"streamq top · {len(rows)} stream(s) · {when}", style="bold")
    if not rows:
        return Group(title, Text("no streams yet"))
    cells = {name: [cell(row) for row in rows] for name, cell in COLUMNS}
    shown = [name for name, _ in COLUMNS]

    def needed() -> int:  # each column's widest cell; columns are three spaces apart
        widths = {name: max(len(name), *map(len, cells[name])) for name in shown}
        widths["stream"] = min(widths["stream"], STREAM_FOLD_WIDTH)  # longer names fold
        return sum(widths.values()) + 3 * (len(widths) - 1)

    for name in DROP_ORDER:
        if needed() <= width:
            break
        shown.remove(name)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for name in shown:
        if name == "stream":  # long names fold rather than push numbers off the screen
            table.add_column(name, overflow="fold", ratio=None, min_width=6)
        else:
            table.add_column(name, justify="right", no_wrap=True)
    for index in range(len(rows)):
        table.add_row(*(cells[name][index] for name in shown))
    return Group(title, table)


async def run(
    redis: Redis,
    console: Console,
    streams: list[str] | None = None,
    *,
    interval: float = 1.0,
    once: bool = False,
) -> None:
    """Show the view until SIGINT or SIGTERM; once (one snapshot) when asked or not a TTY."""
    sampler = Sampler(redis, streams)
    if once or not console.is_terminal:
        console.print(render(*await sampler.rows(), console.width))
        return
    async with anyio.create_task_group() as tasks:

        def handle(name: str) -> bool:
            tasks.cancel_scope.cancel()
            return True

        tasks.start_soon(signals.on_stop_signals, handle)
        with Live(console=console, auto_refresh=False, transient=False) as live:
            while True:
                live.update(render(*await sampler.rows(), console.width), refresh=True)
                await anyio.sleep(interval)

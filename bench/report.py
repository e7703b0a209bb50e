"""What the bench shows: a rich progress bar while it runs, tables at the end, ``--json`` for
machines, and PNG charts (matplotlib, from the ``bench`` extra) in bench/results/."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench.common import Section

RESULTS_DIR = Path(__file__).resolve().parent / "results"


class UI:
    """Progress on stderr (so ``--json`` keeps stdout clean), one bar per step."""

    def __init__(self, *, quiet: bool = False) -> None:
        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            disable=quiet,
            transient=False,
        )

    def __enter__(self) -> UI:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    @contextmanager
    def step(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        task = self.progress.add_task(description, total=total)

        def advance(done: int) -> None:
            self.progress.update(task, completed=min(done, total))

        try:
            yield advance
        finally:
            self.progress.update(task, completed=total)

    def say(self, text: str) -> None:
        self.progress.console.print(text, markup=False, highlight=False)


def cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value)


def print_tables(sections: list[Section], console: Console) -> None:
    for section in sections:
        table = Table(title=section.title, title_justify="left")
        for column in section.columns:
            table.add_column(column, justify="left" if column in TEXT_COLUMNS else "right")
        for row in section.rows:
            table.add_row(*(cell(row.get(column)) for column in section.columns))
        console.print(table)
        for note in section.notes:
            console.print(f"  - {note}", markup=False, highlight=False)


TEXT_COLUMNS = {"system", "engine", "case", "settings", "versions", "status", "day", "compressed"}


def as_markdown(sections: list[Section]) -> str:
    """The tables as Markdown, for bench/RESULTS.md."""
    out = []
    for section in sections:
        out.append(f"**{section.title}**\n")
        out.append("| " + " | ".join(section.columns) + " |")
        out.append(
            "| "
            + " | ".join("---" if c in TEXT_COLUMNS else "---:" for c in section.columns)
            + " |"
        )
        for row in section.rows:
            out.append("| " + " | ".join(cell(row.get(c)) for c in section.columns) + " |")
        if section.notes:
            out.append("")
            out.extend(f"- {note}" for note in section.notes)
        out.append("")
    return "\n".join(out)


def as_json(sections: list[Section], meta: dict[str, Any]) -> str:
    return json.dumps(
        {
            "format": 1,
            **meta,
            "sections": [
                {
                    "scenario": s.scenario,
                    "title": s.title,
                    "columns": s.columns,
                    "rows": s.rows,
                    "notes": s.notes,
                }
                for s in sections
            ],
        },
        indent=2,
        default=str,
    )


def bar_label(row: dict[str, Any]) -> str:
    label = f"{row.get('engine', '')} {row['system']}".strip()
    return f"{label} x{row['processes']}" if "processes" in row else label


def write_charts(sections: list[Section], directory: Path = RESULTS_DIR) -> list[Path]:
    """A bar chart of throughput per system and a lateness distribution per system, for the
    sections that have them; returns the files written. Needs matplotlib (``.[bench]``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("charts skipped: pip install -e '.[bench]' for matplotlib", file=sys.stderr)
        return []
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for section in sections:
        bars = [
            (bar_label(row), float(row["jobs/s"]))
            for row in section.rows
            if isinstance(row.get("jobs/s"), int | float) and "system" in row
        ]
        if bars:
            fig, ax = plt.subplots(figsize=(8, 0.45 * len(bars) + 1.5))
            names = [name for name, _ in bars][::-1]
            rates = [rate for _, rate in bars][::-1]
            ax.barh(names, rates, color="#4c72b0")
            for y, rate in enumerate(rates):
                ax.annotate(f" {rate:,.0f}", (rate, y), va="center", fontsize=8)
            # Peers differ by orders of magnitude: a log axis keeps the slow ones visible.
            if max(rates) > 20 * min(rates):
                ax.set_xscale("log")
            ax.set_xlim(right=max(rates) * 3)
            ax.set_xlabel("jobs per second, end to end")
            ax.set_title(section.title, fontsize=9)
            fig.tight_layout()
            path = directory / f"{section.scenario}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
        if section.samples:
            labels = list(section.samples)
            fig, ax = plt.subplots(figsize=(8, 0.5 * len(labels) + 1.5))
            data = [[max(v, 0.1) for v in section.samples[label]] for label in labels][::-1]
            ax.boxplot(data, vert=False, whis=(1, 99), showfliers=False)
            ax.set_yticks(range(1, len(labels) + 1), labels[::-1], fontsize=8)
            ax.set_xscale("log")
            ax.set_xlabel("lateness, ms (start minus due time, server clock; whiskers p1-p99)")
            ax.set_title(section.title, fontsize=9)
            fig.tight_layout()
            name = section.scenario
            path = directory / f"{name if 'lateness' in name else name + '-lateness'}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
        if section.series:
            fig, ax = plt.subplots(figsize=(8, 4))
            for name, points in section.series.items():
                ax.plot([t for t, _ in points], [v for _, v in points], label=name)
            ax.set_xlabel("seconds")
            ax.set_ylabel("used_memory, MB")
            ax.set_title(section.title, fontsize=9)
            ax.legend(fontsize=8)
            fig.tight_layout()
            path = directory / f"{section.scenario}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    return written

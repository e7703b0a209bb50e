"""The command-line examples of the README and of the docs' pages (``docs/**/*.md``), read
from the documents themselves so that the tests and the docs cannot drift apart.

An example is a fenced ```` ```console ```` block. A line starting with ``$ `` is a command
(a line ending in ``\\`` continues it; ``# ...`` after it is a comment for the reader); the
lines after it, up to the next command, are what it prints:

- a job id (``instagram:19ab5f0c2e1-8d2f0a6b9c41``) stands for the id the command printed,
  and later commands that name it get the real one;
- ``streamq: error: ...`` means the command fails with that line (``...`` ends a prefix);
- any other line must appear in the output (``...`` at its end: as a prefix).

Every other command must exit 0. Commands that run until stopped (a worker, a server, a
follower) must still be running after a few seconds; they are then stopped by their PID.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

FENCE = "```console"
JOB_ID = re.compile(r"\b([a-z0-9][a-z0-9_.-]*):([0-9a-f]{8,})-([0-9a-f]{8,})\b")
AT_DATE = re.compile(r'(--at\s+"?)(\d{4}-\d{2}-\d{2})')
PORT = re.compile(r"(--(?:metrics-)?port)\s+\d+")
LONG_RUNNING = ("consume", "admin", "simulate", "autoscale")
"""Commands that run until stopped, unless a flag below ends them."""
ENDS = ("--burst", "--once")


@dataclass
class Command:
    line: int
    text: str
    expected: list[str] = field(default_factory=list)

    @property
    def streamq_args(self) -> list[str]:
        words = self.text.split("#", 1)[0].split()
        return words[words.index("streamq") + 1 :] if "streamq" in words else []

    @property
    def runs_until_stopped(self) -> bool:
        args = self.streamq_args
        if not args or any(flag in args for flag in ENDS):
            return False
        return args[0] in LONG_RUNNING or (args[0] == "events" and "--follow" in args)

    @property
    def error(self) -> str | None:
        return next((line for line in self.expected if line.startswith("streamq: error:")), None)


@dataclass
class Block:
    source: str
    commands: list[Command]


def blocks(path: Path) -> list[Block]:
    """The console blocks of one Markdown file, in order."""
    found: list[Block] = []
    current: Block | None = None
    pending = ""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        stripped = line.rstrip()
        if current is None:
            if stripped.strip() == FENCE:
                current = Block(f"{path.name}:{number}", [])
            continue
        if stripped.strip() == "```":
            found.append(current)
            current = None
            continue
        if pending:
            pending += " " + stripped.strip()
        elif stripped.startswith("$ "):
            pending = stripped[2:]
            start = number
        elif current.commands and stripped:
            current.commands[-1].expected.append(stripped)
            continue
        else:
            continue
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        current.commands.append(Command(start, pending))
        pending = ""
    return found


def documents(root: Path) -> list[Path]:
    return all_documents(root)


def all_documents(root: Path) -> list[Path]:
    """The README and every page of the docs' source."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


OPENING = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)(.*)$")
TITLE = re.compile(r'title="([^"]*)"')


@dataclass
class Fence:
    """One fenced code block of a document, as tests/test_examples.py judges it."""

    document: Path
    line: int
    language: str
    title: str | None
    body: str

    @property
    def source(self) -> str:
        return f"{self.document.name}:{self.line}"


def fences(path: Path) -> list[Fence]:
    """Every fenced block of one Markdown file (indented ones in lists too), in order."""
    found: list[Fence] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        opening = OPENING.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, marker, language, rest = opening.groups()
        title = TITLE.search(rest)
        body: list[str] = []
        end = index + 1
        while end < len(lines) and lines[end].strip() != marker:
            body.append(lines[end].removeprefix(indent))
            end += 1
        found.append(Fence(path, index + 1, language, title[1] if title else None, "\n".join(body)))
        index = end + 1
    return found


def prepared(command: str, ids: dict[str, str], now: datetime | None = None) -> str:
    """The command as the test runs it: ids printed earlier instead of the document's
    placeholders, dates moved to tomorrow (so a time to come stays to come), any free port
    for a fixed one."""
    tomorrow = ((now or datetime.now(UTC)) + timedelta(days=1)).strftime("%Y-%m-%d")
    command = AT_DATE.sub(lambda m: m[1] + tomorrow, command)
    command = PORT.sub(lambda m: f"{m[1]} 0", command)
    for placeholder, real in ids.items():
        command = command.replace(placeholder, real)
    return command


def matches(expected: str, output: str) -> bool:
    lines = [line.rstrip() for line in output.splitlines()]
    if expected.endswith("..."):
        return any(line.startswith(expected[:-3].rstrip()) for line in lines)
    return expected in lines

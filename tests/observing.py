"""Helpers for the observability tests: scrape /metrics over HTTP, follow a process's output."""

from __future__ import annotations

import queue
import subprocess
import threading
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    """Every sample of a /metrics page, by name and labels."""
    with urllib.request.urlopen(url, timeout=5) as response:
        body = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


class Lines:
    """The output lines of a process, read by a thread so a test can wait with a deadline."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        assert process.stdout is not None
        stdout = process.stdout

        def pump() -> None:
            for line in stdout:
                self._queue.put(line.rstrip("\n"))
            self._queue.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def wait_for(self, fragment: str, timeout: float = 15.0) -> str:
        """The first line (seen or to come) containing ``fragment``."""
        for line in self.seen:
            if fragment in line:
                return line
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                got = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if got is None:
                break
            self.seen.append(got)
            if fragment in got:
                return got
        raise AssertionError(f"no line with {fragment!r} in:\n" + "\n".join(self.seen))

    def rest(self, timeout: float = 10.0) -> list[str]:
        """Every line until the output ends (the process exited)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                got = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if got is None:
                return self.seen
            self.seen.append(got)
        raise AssertionError("output did not end:\n" + "\n".join(self.seen))

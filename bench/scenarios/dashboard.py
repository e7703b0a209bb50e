"""dashboard: what the dashboard's overview costs with 1,000,000 jobs scheduled.

One stream holds 1,000,000 jobs scheduled over a week (as in the listing scenario, for 10,000
accounts) and an hour of its per-minute series (written by ``record_minute``, as workers do).
``streamq admin``'s app runs in a process of its own (``python -m bench.scenarios.dashboard
serve``), serving this tree's pages or, with ``--pages-from REF``, another commit's
``streamq/admin_static`` (taken with ``git archive``), so the pages a branch is building can be
measured against this server.

API: each call the overview page makes (``/api/me``, ``/api/stats``, the stream's
``/api/streams/S/series?minutes=60``), and the other pages' first calls (workers, accounts, a
page of scheduled jobs, the job page's record and events of the job due first: its events
are long trimmed by the events' cap, so the timeline's read goes its whole bounded length),
over one kept-alive HTTP connection: median and p99 wall time of ``REPEATS`` calls each, on
loopback.

Page load: headless Chromium (``/usr/bin/chromium`` via Playwright), a fresh browser context
per load with the token already in the page's sessionStorage (as after signing in): the time
from navigation start to the overview showing the stream's figures and sparklines (``READY``,
noted in the page by a MutationObserver, by the browser's clock), and the browser's own
``loadEventEnd``. Run several times; the first load (cold caches) is reported
apart from the median of the others.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import httpx
import redis as sync_redis

from bench.common import ROOT, UVLOOP, BenchError, Section, engine_label, percentile, servers
from bench.report import UI
from bench.scenarios.listing import fill
from streamq import keys, scripts, series

API_COLUMNS = ["engine", "pages", "call", "jobs", "median ms", "p99 ms", "bytes"]
LOAD_COLUMNS = ["engine", "pages", "jobs", "first load ms", "median load ms", "p90 load ms",
                "median loadEventEnd ms", "loads"]  # fmt: skip
REPEATS = 50
LOADS = 15
TOKEN = f"bench-{uuid.uuid4().hex}"
TOKEN_KEY = "streamq-admin-token"
"""Where the pages keep the token (sessionStorage), as streamq/admin_static/dashboard.js."""
READY = ".stream-card [data-series] svg, #streams tbody tr"
"""The overview has drawn the stream: its sparklines (the issue-25 pages) or its row (the
pages before them)."""
MARK_READY = (
    "new MutationObserver((_, observer) => {"
    f"  if (window.__ready === undefined && document.querySelector({READY!r})) {{"
    "    window.__ready = performance.now(); observer.disconnect(); }"
    "}).observe(document, {childList: true, subtree: true});"
)
"""Notes, in the page, when the overview is drawn: ms since navigation began, by the browser's
clock (no round trip to the driver in the figure)."""
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update"]  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, help="scheduled jobs (1,000,000; quick 20,000)")
    parser.add_argument("--accounts", type=int, default=10_000, help="accounts they belong to")
    parser.add_argument(
        "--pages-from",
        metavar="REF",
        help="serve the dashboard files of this commit or branch (default: this tree's)",
    )
    parser.add_argument("--loads", type=int, default=LOADS, help="page loads per engine")
    parser.add_argument("--no-browser", action="store_true", help="API calls only")


def run(args: argparse.Namespace, ui: UI) -> list[Section]:
    pages = args.pages_from or "this tree"
    api = Section(
        "dashboard", "Admin API calls of the dashboard, 1 kept-alive connection", API_COLUMNS
    )
    loads = Section("dashboard", "Dashboard overview page load, headless Chromium", LOAD_COLUMNS)
    api.notes.append(f"{REPEATS} calls each; wall time on loopback, server in its own process")
    loads.notes.append(
        "from navigation start until the stream's sparklines (or row) are drawn, by the "
        "browser's clock; a fresh context per "
        "load, token already in sessionStorage; the first load apart (cold caches)"
    )
    jobs = args.jobs or (20_000 if args.quick else 1_000_000)
    with tempfile.TemporaryDirectory() as tmp:
        static = _pages(args.pages_from, Path(tmp)) if args.pages_from else None
        with servers(args.engines) as started:
            for engine, srv in started:
                label = engine_label(engine, srv)
                stream = f"dash-{uuid.uuid4().hex[:8]}"
                with ui.step(f"{label}: {jobs:,} scheduled jobs and an hour of series", 2):
                    anyio.run(fill, srv.url, stream, jobs, min(args.accounts, jobs), False,
                              backend_options=UVLOOP)  # fmt: skip
                    anyio.run(_history, srv.url, stream, backend_options=UVLOOP)
                client = sync_redis.Redis.from_url(srv.url)
                if client.zcard(keys.delayed(stream)) != jobs:
                    raise BenchError(f"dashboard: filled {client.zcard(keys.delayed(stream))} jobs")
                first_due: Any = client.zrange(keys.delayed(stream), 0, 0)
                job_id = first_due[0].decode()
                with _admin(srv.url, static) as url:
                    with ui.step(f"{label}: API calls", 1):
                        for call, (median, p99, size) in _time_calls(url, stream, job_id).items():
                            api.rows.append({"engine": label, "pages": pages, "call": call,
                                             "jobs": jobs, "median ms": round(median, 2),
                                             "p99 ms": round(p99, 2), "bytes": size})  # fmt: skip
                    if not args.no_browser:
                        with ui.step(f"{label}: {args.loads} page loads", 1):
                            first, rest, events = _time_loads(url, args.loads)
                        loads.rows.append({
                            "engine": label, "pages": pages, "jobs": jobs,
                            "first load ms": round(first, 1),
                            "median load ms": round(statistics.median(rest), 1),
                            "p90 load ms": round(percentile(rest, 0.9), 1),
                            "median loadEventEnd ms": round(statistics.median(events), 1),
                            "loads": len(rest) + 1,
                        })  # fmt: skip
                client.flushall(asynchronous=True)
                client.close()
    return [api] if args.no_browser else [api, loads]


def _pages(ref: str, into: Path) -> Path:
    """``ref``'s streamq/admin_static, unpacked under ``into``."""
    archive = into / "pages.tar"
    done = subprocess.run(
        ["git", "archive", "--format=tar", "-o", str(archive), ref, "streamq/admin_static"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        raise BenchError(f"dashboard: cannot take the pages of {ref}: {done.stderr.strip()}")
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into / "streamq" / "admin_static"


async def _history(url: str, stream: str) -> None:
    """An hour of the stream's series, minute by minute, as its workers would have left it."""
    import streamq

    async with streamq.connect(url) as q:
        now = await q.redis.time()
        last = series.minute_of(int(now[0]) * 1000)
        for minute in range(60):
            start = last - minute * series.MINUTE_MS
            lateness = [0] * 17
            lateness[minute % 8] = 40
            await scripts.record_minute(
                q.redis, stream, minute_ms=start, keep_ms=series.KEPT_MS, lateness=lateness
            )


class _admin:
    """``streamq admin``'s app in a process of its own; its URL while inside."""

    def __init__(self, redis_url: str, static: Path | None) -> None:
        command = [sys.executable, "-m", "bench.scenarios.dashboard", "serve", redis_url]
        self.process = subprocess.Popen(
            command + ([str(static)] if static else []),
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "STREAMQ_ADMIN_TOKEN": TOKEN},
        )  # fmt: skip

    def __enter__(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("http"):
            self.process.kill()
            raise BenchError(f"dashboard: the admin server did not start: {line.strip()}")
        return line.strip()

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _time_calls(url: str, stream: str, job_id: str) -> dict[str, tuple[float, float, int]]:
    calls = {
        "GET /api/me": "/api/me",
        "GET /api/stats": "/api/stats",
        "GET /api/streams/S/series?minutes=60": f"/api/streams/{stream}/series?minutes=60",
        "GET /api/workers": "/api/workers",
        "GET /api/streams/S/accounts": f"/api/streams/{stream}/accounts",
        "GET /api/streams/S/jobs?state=scheduled&limit=25": (
            f"/api/streams/{stream}/jobs?state=scheduled&limit=25"
        ),
        "GET /api/jobs/J (the job due first)": f"/api/jobs/{job_id}",
        "GET /api/jobs/J/events (its timeline)": f"/api/jobs/{job_id}/events",
        "GET / (the page)": "/",
        "GET /static/dashboard.js": "/static/dashboard.js",
    }
    found = {}
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        for name, path in calls.items():
            times, size = [], 0
            for _ in range(REPEATS):
                began = time.perf_counter()
                answer = http.get(path)
                times.append((time.perf_counter() - began) * 1000)
                if answer.status_code != 200:
                    raise BenchError(f"dashboard: {path} answered {answer.status_code}")
                size = len(answer.content)
            found[name] = (statistics.median(times), percentile(times, 0.99), size)
    return found


def _time_loads(url: str, loads: int) -> tuple[float, list[float], list[float]]:
    if not CHROMIUM.exists():
        raise BenchError(f"dashboard: {CHROMIUM} is missing (or run with --no-browser)")
    from playwright.sync_api import sync_playwright

    walls: list[float] = []
    events: list[float] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            for _ in range(loads):
                context = browser.new_context()
                context.add_init_script(f"sessionStorage.setItem({TOKEN_KEY!r}, {TOKEN!r});")
                context.add_init_script(MARK_READY)
                page = context.new_page()
                page.goto(url + "/")
                page.wait_for_function("() => window.__ready !== undefined", timeout=30_000)
                timing: Any = page.evaluate(
                    "() => { const n = performance.getEntriesByType('navigation')[0];"
                    " return [window.__ready, n.loadEventEnd - n.startTime]; }"
                )
                walls.append(float(timing[0]))
                events.append(float(timing[1]))
                context.close()
        finally:
            browser.close()
    return walls[0], walls[1:] or walls, events


async def _serve(redis_url: str, static: str | None) -> None:
    """The admin app on a free loopback port; prints its URL, serves until SIGTERM."""
    from streamq import admin, connection

    client = connection.client(redis_url)
    try:
        app = admin.create_app(
            client, admin.load_tokens(), static=Path(static) if static else admin.STATIC
        )
        sock = admin.bind("127.0.0.1", 0)
        print(admin.url_of(sock), flush=True)
        await admin.serve(app, sock)
    finally:
        await client.aclose()


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        asyncio.run(_serve(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None))

"""The web dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright)
against a real admin server and Redis, driven as an operator would: filter and page a job list,
open a job, reschedule, cancel, retry a dead letter, pause an account. Each action is checked
on the server (through the Python client), not only on the page.

One admin server and one browser for the module; each test has its own browser context (its
own sessionStorage, so it signs in), in New York time and US English, so times shown "in the
viewer's zone" are not the server's UTC. The pages render nothing engine-specific, so the module
runs on Valkey only (any_engine).

Screenshots of every page at 1,280 and 390 px wide are written to ``test-artifacts/dashboard/``
at the repository root (ignored by git), or to ``$STREAMQ_DASHBOARD_SCREENSHOTS``.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import anyio
import httpx
import pytest
from playwright.sync_api import Browser, Dialog, Page, expect, sync_playwright
from redis.exceptions import ResponseError

import streamq
from streamq import admin, channel, connection, events, keys, limiter, tokens, workers
from streamq.config import Config, EventsConfig, Limit
from streamq.errors import Fail, Retry
from streamq.job import Job
from streamq.tokenstore import REAUTH_REQUIRED
from streamq.worker import Worker
from tests.conftest import ROOT, VIEWER_TOKEN, AdminServer
from tests.test_lifecycle import Running
from tests.test_worker import FAST, options, poll

pytestmark = pytest.mark.any_engine

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWER_ZONE = "America/New_York"
T = TypeVar("T")
SCREENSHOTS = Path(
    os.environ.get("STREAMQ_DASHBOARD_SCREENSHOTS") or ROOT / "test-artifacts" / "dashboard"
)
WIDTHS = (1280, 390)
PATHS = admin.openapi_document()["paths"]


def needs(path: str) -> pytest.MarkDecorator:
    """Skip a test whose endpoint the admin API does not have yet (issue 25's server side)."""
    return pytest.mark.skipif(path not in PATHS, reason=f"the admin API has no {path} yet")


# Recorded by the page itself: a script an XSS payload would run sets a flag, and any attempt
# at inline code the CSP blocks is counted.
WATCH = """
window.__csp = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__csp.push(e.violatedDirective + " " + e.blockedURI));
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason)
        pytest.skip(reason)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(
        locale="en-US", timezone_id=VIEWER_ZONE, viewport={"width": 1280, "height": 900}
    )
    opened = context.new_page()
    opened.set_default_timeout(10_000)
    opened.add_init_script(WATCH)
    dialogs: list[str] = []

    def refuse(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    opened.on("dialog", refuse)
    yield opened
    assert dialogs == [], "the page opened a JavaScript dialog"
    context.close()


def run_async(function: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run async code to completion from a test: in a thread of its own, as Playwright's sync
    API keeps an event loop running in the test's thread."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(anyio.run, function, *args).result(timeout=60)


def on_server(redis_url: str, work: Callable[[streamq.Queue], Awaitable[T]]) -> T:
    """``work(q)`` with a client of its own: how tests set up and check the server's state."""

    async def run() -> T:
        async with streamq.connect(redis_url) as q:
            return await work(q)

    return run_async(run)


def state_of(redis_url: str, job_id: str) -> str:
    async def read(q: streamq.Queue) -> str:
        return (await q.job(job_id)).state

    return on_server(redis_url, read)


async def _done(q: streamq.Queue, job_id: str) -> bool:
    return (await q.job(job_id)).state == "done"


def fail_jobs(
    redis_url: str, stream: str, payloads: list[Any], error: str = "platform down"
) -> list[str]:
    """Enqueue ``payloads`` and run them with a handler that always fails: they end dead."""

    async def handler(job: Job) -> None:
        raise Fail(error)

    async def run(q: streamq.Queue) -> list[str]:
        ids = await q.enqueue_many(stream, payloads)
        redis = connection.client(redis_url)
        try:
            await Worker(redis, stream, handler, FAST).run()
        finally:
            await redis.aclose()
        for job_id in ids:
            assert (await q.job(job_id)).state == "dead"
        return ids

    return on_server(redis_url, run)


def admin_actions(redis_url: str, stream: str) -> list[tuple[str | None, str | None, str | None]]:
    """Who did what to what, by the stream's ``admin`` events on the server."""

    async def read(q: streamq.Queue) -> list[tuple[str | None, str | None, str | None]]:
        found = events.follow(q.redis, [stream], wait=False, types=["admin"])
        return [(e.by, e.action, e.target) async for e in found]

    return on_server(redis_url, read)


def later(minutes: float) -> datetime:
    return datetime.now(UTC) + timedelta(minutes=minutes)


def sign_in(page: Page, server: AdminServer, where: str = "#/", token: str | None = None) -> None:
    page.goto(f"{server.url}/{where}")
    page.fill("#token", token or server.token)
    page.click("#sign-in button[type=submit]")
    expect(page.locator("#status")).to_have_text("live")


def confirm(page: Page) -> None:
    expect(page.locator("#confirm")).to_be_visible()
    page.click("#confirm-yes")
    expect(page.locator("#confirm")).to_be_hidden()


# -- signing in and the overview ------------------------------------------------------------


def test_a_wrong_token_is_refused_and_the_form_comes_back(
    page: Page, admin_server: AdminServer
) -> None:
    page.goto(admin_server.url)
    page.fill("#token", "not-the-token")
    page.click("#sign-in button[type=submit]")
    expect(page.locator("#message")).to_have_text("invalid bearer token")
    expect(page.locator("#sign-in")).to_be_visible()
    expect(page.locator("#view")).to_be_hidden()


def test_the_overview_shows_each_streams_figures_and_links_to_its_lists(
    page: Page, admin_server: AdminServer, redis_url: str, stream: str
) -> None:
    async def enqueue(q: streamq.Queue) -> None:
        await q.enqueue_many(stream, [{"n": n} for n in range(4)])
        await q.enqueue(stream, {"n": 9}, run_at=later(90))

    on_server(redis_url, enqueue)
    fail_jobs(redis_url, f"{stream}-dead", ["x"])
    sign_in(page, admin_server)
    card = page.locator(f'.stream-card[data-stream="{stream}"]')
    expect(card.locator('dd[data-figure="depth"]')).to_have_text("4")
    expect(card.locator('dd[data-figure="delayed"]')).to_have_text("1")
    expect(
        page.locator(f'.stream-card[data-stream="{stream}-dead"] dd[data-figure="dead"]')
    ).to_have_text("1")
    # No worker ever ran this stream: an hour of gaps, not an error.
    expect(card.locator('figure[data-series="depth"] svg')).to_have_attribute(
        "aria-label", "depth over the last hour: now -, peak -"
    )
    card.get_by_role("link", name="Dead letters").click()
    expect(page).to_have_url(re.compile(rf"#/streams/{stream}/jobs\?state=dead$"))
    expect(page.locator("#no-jobs")).to_have_text("No dead jobs.")


@needs("/api/streams/{stream}/series")
def test_the_overview_draws_an_hour_of_each_streams_rates_as_sparklines(
    page: Page, admin_server: AdminServer, redis_url: str, stream: str
) -> None:
    fail_jobs(redis_url, stream, ["x", "y"])
    sign_in(page, admin_server)
    card = page.locator(f'.stream-card[data-stream="{stream}"]')
    for series in ("done", "failed", "retried", "depth", "lateness_p99_ms"):
        expect(card.locator(f'figure[data-series="{series}"] svg[role="img"]')).to_have_count(1)
    # What the server keeps, drawn as is: the runs are over, so its series holds still (a
    # minute's runs land in the minute a worker's report copied the counters, so which minute
    # holds the two failures is the server's business, not the page's).
    answer = httpx.get(
        f"{admin_server.url}/api/streams/{stream}/series?minutes=60",
        headers={"Authorization": f"Bearer {admin_server.token}"},
    )
    series = answer.json()
    per_second = [p["failed"] / series["bucket_seconds"] for p in series["points"] if p["sampled"]]
    peak = max(per_second, default=None)
    shown = "-" if peak is None else str(int(peak)) if peak == int(peak) else f"{peak:.2f}"
    expect(card.locator('figure[data-series="failed"] svg')).to_have_attribute(
        "aria-label", re.compile(rf"^failed/s over the last hour: now [-\d.]+, peak {shown}$")
    )


# -- job lists: filter, page, open -----------------------------------------------------------


def test_a_job_list_filters_by_account_pages_and_opens_a_job(
    page: Page, admin_server: AdminServer, redis_url: str, stream: str
) -> None:
    async def enqueue(q: streamq.Queue) -> tuple[list[str], list[str]]:
        mine = [
            await q.enqueue(stream, {"n": n}, account="alice", run_at=later(90 + n))
            for n in range(5)
        ]
        theirs = [
            await q.enqueue(stream, {"n": n}, account="bob", run_at=later(60 + n)) for n in range(2)
        ]
        return mine, theirs

    alice, bob = on_server(redis_url, enqueue)
    sign_in(page, admin_server, f"#/streams/{stream}/jobs?state=scheduled&limit=2")
    rows = page.locator("#jobs tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.locator("td.account")).to_have_text(["bob", "bob"])  # due first

    page.fill("#filter-account", "alice")
    page.click("#filter button[type=submit]")
    expect(page).to_have_url(re.compile(r"account=alice"))
    seen: list[str] = []
    for expected in (2, 2, 1):
        expect(rows).to_have_count(expected)
        expect(rows.locator("td.account")).to_have_text(["alice"] * expected)
        seen += [row.get_attribute("data-job") or "" for row in rows.all()]
        if len(seen) < 5:
            page.click("#next-page")
            # The next page is drawn once its first row is none of those seen.
            listed = re.compile("^(" + "|".join(map(re.escape, seen)) + ")$")
            expect(rows.first).not_to_have_attribute("data-job", listed)
    expect(page.locator("#next-page")).to_have_count(0)
    assert seen == alice  # every one of alice's jobs, once, in due order
    assert {state_of(redis_url, job_id) for job_id in alice + bob} == {"scheduled"}

    # Times in the viewer's zone, with how far off they are.
    due_ms = on_server(redis_url, lambda q: q.job(alice[4])).run_at_ms
    assert due_ms is not None
    due = datetime.fromtimestamp(due_ms / 1000, UTC)
    shown = page.locator(f'#jobs tr[data-job="{alice[4]}"] td.time')
    local = due.astimezone(ZoneInfo(VIEWER_ZONE))
    expect(shown).to_contain_text(f"{local.hour % 12 or 12}:{local:%M:%S}")
    expect(shown).to_contain_text(re.compile(r"\(in (1 hour|2 hours|94 minutes)\)"))

    page.click("#first-page")
    expect(rows.first).to_have_attribute("data-job", alice[0])
    rows.first.get_by_role("link").click()
    expect(page).to_have_url(re.compile(rf"#/jobs/{re.escape(alice[0])}$"))
    expect(page.locator('#job-fields dd[data-field="state"]')).to_have_text("scheduled")
    expect(page.locator('#job-fields dd[data-field="account"]')).to_have_text("alice")
    expect(page.locator("#payload pre")).to_have_text('{\n  "n": 0\n}')


def jobs_in_every_state(redis_url: str, stream: str) -> dict[str, set[str]]:
    """At least one job of ``stream`` in each of the ten states a list has, by state."""

    async def handler(job: Job) -> str:
        match job.payload:
            case "bad":
                raise Fail("no good")
            case "later":
                raise Retry(after=3600)
        return "ok"

    async def run(q: streamq.Queue) -> dict[str, set[str]]:
        done = await q.enqueue(stream, "ok", key="k-done", account="alice")
        dead = await q.enqueue(stream, "bad")
        retrying = await q.enqueue(stream, "later")
        expired = await q.enqueue(stream, "stale", expire_after=0.001)
        paused = await q.enqueue(stream, "ok", account="carol")
        await q.pause_account("carol", stream)
        enqueued_ms = (await q.job(expired)).enqueued_at_ms or 0
        await poll(lambda: _later_than(q, enqueued_ms + 5))  # its 1 ms are over by the server
        await Worker(q.redis, stream, handler, FAST).run()

        # The platform allows one run a minute: dave's first runs, his second waits for the
        # platform (scheduled), his third is held behind it.
        dave = await q.enqueue_many(stream, ["ok"] * 3, accounts=["dave"] * 3)
        platform = Limit(scope="platform", max=1, per=60.0)
        limited = Worker(q.redis, stream, handler, options(burst=False, limits=(platform,)))
        async with Running(limited):
            await poll(lambda: _state_is(q, dave[2], "held"))

        scheduled = await q.enqueue(stream, "ok", run_at=later(60))
        cancelled = await q.enqueue(stream, "ok", run_at=later(60))
        await q.cancel(cancelled)
        running = await q.enqueue(stream, "ok")
        # Delivered to a worker that never finishes it: running, held by "ghost".
        await q.redis.xreadgroup(keys.GROUP, "ghost", {keys.lane(stream, "normal"): ">"}, count=1)
        queued = await q.enqueue(stream, "ok")
        return {
            "scheduled": {scheduled, dave[1]},
            "queued": {queued},
            "running": {running},
            "retrying": {retrying},
            "paused": {paused},
            "held": {dave[2]},
            "dead": {dead},
            "done": {done, dave[0]},
            "cancelled": {cancelled},
            "expired": {expired},
        }

    return on_server(redis_url, run)


async def _later_than(q: streamq.Queue, ms: int) -> bool:
    return await channel.server_ms(q.redis) > ms


async def _state_is(q: streamq.Queue, job_id: str, state: str) -> bool:
    return (await q.job(job_id)).state == state


def test_every_states_list_is_a_tab_with_its_jobs_and_the_time_that_matters(
    page: Page, admin_server: AdminServer, redis_url: str, stream: str
) -> None:
    by_state = jobs_in_every_state(redis_url, stream)
    for state, ids in by_state.items():  # the server agrees before the page is asked
        # A job's own state for a delivered one is "active" (a worker holds it).
        expected = "active" if state == "running" else state
        assert {state_of(redis_url, job_id) for job_id in ids} == {expected}, state
    shown_time = {
        "scheduled": "due", "retrying": "due", "queued": "enqueued", "paused": "enqueued",
        "held": "enqueued", "running": "started", "done": "finished", "dead": "finished",
        "cancelled": "finished", "expired": "finished",
    }  # fmt: skip
    sign_in(page, admin_server, f"#/streams/{stream}/jobs?state=queued")
    tabs = page.locator("nav.tabs a")
    expect(tabs).to_have_text(list(by_state))
    rows = page.locator("#jobs tbody tr")
    for state, ids in by_state.items():
        tab = page.locator(f'nav.tabs a[data-state="{state}"]')
        tab.click()
        expect(page).to_have_url(re.compile(rf"state={state}$"))
        expect(tab).to_have_attribute("aria-current", "page")
        expect(rows).to_have_count(len(ids))
        assert {row.get_attribute("data-job") for row in rows.all()} == ids, state
        expect(page.locator("#jobs thead th").nth(5)).to_have_text(shown_time[state])
        # Each row's time, in the viewer's zone, with how far it is from now.
        for cell in rows.locator("td.time").all():
            expect(cell).to_have_text(re.compile(r"\d:\d\d:\d\d (AM|PM) \((in |.* ago|now)"))

    page.locator('nav.tabs a[data-state="running"]').click()
    expect(page.locator('#jobs td[data-label="worker"]')).to_have_text(["ghost"])
    rows.first.get_by_role("link").click()
    expect(page.locator("#job-state")).to_have_text("active")
    page.click("#job-list-link")  # back to the list it is in
    expect(page).to_have_url(re.compile(r"state=running$"))
    expect(rows).to_have_count(1)
    page.locator('nav.tabs a[data-state="done"]').click()
    page.fill("#filter-key", "k-done")
    page.click("#filter button[type=submit]")
    expect(page).to_have_url(re.compile(r"key=k-done"))
    expect(rows).to_have_count(1)
    expect(rows.first.locator('td[data-label="key"]')).to_have_text("k-done")
    page.locator('nav.tabs a[data-state="dead"]').click()  # a tab keeps the filters
    expect(page).to_have_url(re.compile(r"state=dead&key=k-done|key=k-done.*state=dead"))
    expect(page.locator("#no-jobs")).to_have_text("No dead jobs match these filters.")


# -- one job's actions ----------------------------------------------------------------------


def test_cancel_asks_first_and_then_cancels_the_job(
    page: Page, admin_server: AdminServer, redis_url: str, stream: str
) -> None:
    job_id = on_server(redis_url, lambda q: q.enqueue(stream, {"n": 1}, run_at=later(60)))
    sign_in(page, admin_server, f"#/jobs/{job_id}")
    page.click("#cancel-job")
    expect(page.locator("#confirm-text")).to_contain_text(job_id)
    page.click("#confirm-no")  # changed their mind: nothing happens
    expect(page.locator("#confirm")).to_be_hidden()
    assert state_of(redis_url, job_id) == "scheduled"

    page.click("#cancel-job")
    confirm(page)
    expect(page.locator("#message")).to_have_text(f"{job_id}: cancelled")
    expect(page.locator("#job-state")).to_have_text("cancelled")
    assert state_of(redis_url, job_id) == "cancelled"
    assert admin_actions(redis_url, stream) == [("admin", "cancel", job_id)]  # the token's name
    expect(page.locator("#cancel-job")).to_have_count(0)
    expect(page.locator("#retry-job")).to_be_visible()
    expect(page.locator('#timeline li[data-event="cancel by admin"]')).to_contain_text("cancelled")


@needs("/api/jobs/{job_id}/reschedule")
def test_reschedule_takes_a_wall_time_in_the_chosen_zone(
    page: Page, admin_server: AdminServer, redis_url: str, stream: str
) -> None:
    job_id = on_server(redis_url, lambda q: q.enqueue(stream, {"n": 1}, run_at=later(60)))
    sign_in(page, admin_server, f"#/jobs/{job_id}")
    page.select_option("#reschedule-zone", "Asia/Tokyo")
    wall = datetime.now(ZoneInfo("Asia/Tokyo")).replace(second=0, microsecond=0) + timedelta(days=2)
    page.fill("#reschedule-at", f"{wall:%Y-%m-%dT%H:%M}")
    expect(page.locator("#reschedule-preview")).to_contain_text(f"{wall:%Y-%m-%dT%H:%M}:00+09:00")
    page.click("#reschedule button[type=submit]")
    expect(page.locator("#message")).to_contain_text(f"{job_id}: due")
    run_at_ms = on_server(redis_url, lambda q: q.job(job_id)).run_at_ms
    assert run_at_ms == round(wall.timestamp() * 1000)
    assert state_of(redis_url, job_id) == "scheduled"
    assert admin_actions(redis_url, stream) == [("admin", "reschedule", job_id)]
    # The page drawn again after the action: its timeline holds the job's events, who acted.
    expect(page.locator("#timeline li strong")).to_have_text(
        ["scheduled", "scheduled", "reschedule by admin"]
    )


@needs("/api/jobs/{job_id}/promote")
def test_run_now_makes_a_scheduled_job_due_at_once(
    page: Page, admin_server: AdminServer, redis_url: str, stream: str
) -> None:
    job_id = on_server(redis_url, lambda q: q.enqueue(stream, {"n": 1}, run_at=later(60)))
    sign_in(page, admin_server, f"#/jobs/{job_id}")
    page.click("#promote-job")
    expect(page.locator("#message")).to_have_text(f"{job_id}: due now")
    run_at_ms = on_server(redis_url, lambda q: q.job(job_id)).run_at_ms
    assert run_at_ms is not None
    assert run_at_ms <= datetime.now(UTC).timestamp() * 1000

    async def runs(q: streamq.Queue) -> None:  # a worker finds it due now, not in an hour
        async def handler(job: Job) -> None:
            return None

        async with Running(Worker(q.redis, stream, handler, options(burst=False))):
            await poll(lambda: _done(q, job_id))

    on_server(redis_url, runs)
    assert state_of(redis_url, job_id) == "done"


def test_a_dead_jobs_page_shows_its_attempts_and_retries_it(
    page: Page, admin_server: AdminServer, redis_url: str, stream: str
) -> None:
    [job_id] = fail_jobs(redis_url, stream, [{"text": "hi"}], error="the platform said no")
    sign_in(page, admin_server, f"#/jobs/{job_id}")
    expect(page.locator("#job-state")).to_have_text("dead")
    attempts = page.locator("#attempts > li")
    expect(attempts.first).to_contain_text("the platform said no")
    expect(attempts.first.locator(".badge")).to_have_text(re.compile("retried|dead"))
    page.click("#retry-job")
    confirm(page)
    expect(page.locator("#message")).to_have_text(f"{job_id}: queued")
    assert state_of(redis_url, job_id) == "queued"


def test_a_jobs_page_shows_its_options_result_traceback_and_replays_its_dead_letter(
    page: Page, admin_server: AdminServer, redis_url: str, stream: str
) -> None:
    async def run(q: streamq.Queue) -> tuple[str, str]:
        posted = await q.enqueue(
            stream, {"text": "hi"}, key="k-1", max_attempts=4, expire_after="2h", job_timeout=30
        )
        broken = await q.enqueue(stream, {"text": "boom"}, max_attempts=1)

        async def handler(job: Job) -> dict[str, str]:
            if job.payload["text"] == "boom":
                raise RuntimeError("the platform broke")
            return {"post_id": "p-1"}

        await Worker(q.redis, stream, handler, FAST).run()
        return posted, broken

    posted, broken = on_server(redis_url, run)
    assert (state_of(redis_url, posted), state_of(redis_url, broken)) == ("done", "dead")
    sign_in(page, admin_server, f"#/jobs/{posted}")
    expect(page.locator("#result pre")).to_have_text('{\n  "post_id": "p-1"\n}')
    options_shown = page.locator("#job-options")
    expect(options_shown.locator('dd[data-field="max attempts"]')).to_have_text("4")
    expect(options_shown.locator('dd[data-field="expire after"]')).to_have_text("2 h")
    expect(options_shown.locator('dd[data-field="job timeout"]')).to_have_text("30 s")
    expect(page.locator("#timeline li strong")).to_have_text(["queued", "started", "done"])

    page.goto(f"{admin_server.url}/#/jobs/{broken}")
    expect(page.locator("#job-state")).to_have_text("dead")
    trace = page.locator("#attempts details")
    expect(trace.locator(".trace")).to_be_hidden()  # folded until asked for
    trace.locator("summary").click()
    expect(trace.locator(".trace")).to_contain_text('in handler: raise RuntimeError("the platform')
    error = page.locator("#attempts .error-text")
    expect(error).to_contain_text("RuntimeError: the platform broke")
    expect(page.locator("#timeline li strong").last).to_have_text("dead")

    page.click("#replay-job")
    expect(page.locator("#confirm-text")).to_contain_text(broken)
    confirm(page)
    expect(page.locator("#message")).to_have_text(f"{stream}: 1 queued again")
    assert state_of(redis_url, broken) == "queued"
    assert admin_actions(redis_url, stream) == [("admin", "replay", stream)]


def test_a_job_whose_events_are_not_kept_shows_what_its_record_tells(
    page: Page, admin_server: AdminServer, redis_url: str, stream: str
) -> None:
    async def enqueue(q: streamq.Queue) -> str:
        await events.publish_settings(q.redis, stream, EventsConfig(enabled=False))
        return await q.enqueue(stream, {"n": 1}, run_at=later(60))

    job_id = on_server(redis_url, enqueue)
    sign_in(page, admin_server, f"#/jobs/{job_id}")
    expect(page.locator("#timeline li strong")).to_have_text(["enqueued", "due"])
    expect(page.locator("#timeline-note")).to_contain_text("this is what its record tells")


def test_a_dead_letter_is_retried_from_the_list_and_purge_asks_first(
    page: Page, admin_server: AdminServer, redis_url: str, stream: str
) -> None:
    ids = fail_jobs(redis_url, stream, ["a", "b", "c"])
    sign_in(page, admin_server, f"#/streams/{stream}/jobs?state=dead")
    rows = page.locator("#jobs tbody tr")
    expect(rows).to_have_count(3)
    rows.filter(has=page.locator(f'a:text-is("{ids[0]}")')).get_by_role("button").click()
    confirm(page)
    expect(page.locator("#message")).to_have_text(f"{stream}: 1 queued again")
    expect(rows).to_have_count(2)
    assert state_of(redis_url, ids[0]) == "queued"

    page.click("#purge-dead")
    page.click("#confirm-no")
    expect(rows).to_have_count(2)
    page.click("#purge-dead")
    confirm(page)
    expect(page.locator("#message")).to_have_text(f"{stream}: 2 dead letters deleted")
    expect(page.locator("#no-jobs")).to_be_visible()
    assert on_server(redis_url, lambda q: q.dead(stream)) == []


def test_retry_all_asks_first_and_replays_every_dead_letter(
    page: Page, admin_server: AdminServer, redis_url: str, stream: str
) -> None:
    ids = fail_jobs(redis_url, stream, ["a", "b"])
    sign_in(page, admin_server, f"#/streams/{stream}/jobs?state=dead")
    page.click("#retry-all")
    confirm(page)
    expect(page.locator("#message")).to_have_text(f"{stream}: 2 queued again")
    assert {state_of(redis_url, job_id) for job_id in ids} == {"queued"}


# -- accounts, workers, flows ---------------------------------------------------------------


@needs("/api/streams/{stream}/accounts")
@needs("/api/accounts/{platform}/{account}/pause")
def test_an_account_is_paused_with_a_reason_and_resumed(
    page: Page, admin_server: AdminServer, redis_url: str
) -> None:
    stream = "x"  # a platform's stream: its accounts have the platform's default windows
    account = f"acct-{uuid.uuid4().hex[:8]}"
    on_server(
        redis_url, lambda q: q.enqueue(stream, {"text": "hi"}, account=account, run_at=later(60))
    )

    async def status(q: streamq.Queue) -> tokens.StreamAccount:
        page = await tokens.stream_accounts(q.redis, Config(), stream, [stream], account=account)
        [found] = page.accounts
        return found

    sign_in(page, admin_server, f"#/streams/{stream}/accounts")
    row = page.locator(f'#accounts tr[data-account="{account}"]')
    expect(page.locator("#platform-windows li[data-window]")).to_have_count(1)
    expect(row).to_have_count(0)  # it never paused nor waited: not listed
    page.fill("#account-name", account)
    page.click("#account-find button[type=submit]")
    expect(row.locator('[data-field="status"]')).to_have_text("active")
    expect(row.locator("li[data-window]")).to_have_text(["100 per 15m: 0 used of 100"])
    row.get_by_role("button", name=f"Pause {account}").click()
    page.fill("#confirm-reason-input", "brand review <b>now</b>")
    confirm(page)
    expect(row.locator('[data-field="status"]')).to_have_text("paused")
    expect(row.locator('[data-field="reason"]')).to_have_text("brand review <b>now</b>")
    paused = on_server(redis_url, status)
    assert (paused.paused, paused.reason) == (True, "brand review <b>now</b>")

    row.get_by_role("button", name=f"Resume {account}").click()
    expect(row.locator('[data-field="status"]')).to_have_text("active")
    assert on_server(redis_url, status).paused is False
    assert admin_actions(redis_url, stream)[-2:] == [
        ("admin", "pause-account", f"{stream}/{account}"),
        ("admin", "resume-account", f"{stream}/{account}"),
    ]

    # A refused token paused another account until a person signs it in again.
    signed_out = f"acct-{uuid.uuid4().hex[:8]}"
    on_server(
        redis_url, lambda q: limiter.pause_account(q.redis, stream, signed_out, REAUTH_REQUIRED)
    )
    page.goto(f"{admin_server.url}/#/streams/{stream}/accounts?account={signed_out}")
    flagged = page.locator(f'#accounts tr[data-account="{signed_out}"]')
    expect(flagged.locator('[data-field="status"]')).to_have_text("sign-in needed")


def reclaimed_from_a_dead_worker(redis_url: str, stream: str) -> tuple[str, list[str]]:
    """A worker takes two jobs and dies; a live one reclaims and runs them, and drops it from
    the group (as tests/test_workers.py does): the dead one's name and the jobs taken."""
    ghost = f"{stream}-ghost"

    async def run(q: streamq.Queue) -> list[str]:
        ids = await q.enqueue_many(stream, ["a", "b"])
        redis = q.redis
        for lane in keys.lanes(stream):
            with contextlib.suppress(ResponseError):  # the group exists already
                await redis.xgroup_create(lane, keys.GROUP, id="0", mkstream=True)
        now = await channel.server_ms(redis)
        card = workers.card(
            consumer=ghost, stream=stream, concurrency=5, started_at_ms=now - 60_000,
            now_ms=now - 30_000, done=7, failed=1, holding=ids,
        )  # fmt: skip
        await workers.publish(redis, stream, card)
        await redis.xreadgroup(keys.GROUP, ghost, {keys.lane(stream, "normal"): ">"}, count=10)
        seen: list[str] = []

        async def handler(job: Job) -> None:
            seen.append(job.id)

        async with Running(Worker(redis, stream, handler, options(burst=False))):
            await poll(lambda: len(seen) == len(ids))
        return ids

    return ghost, on_server(redis_url, run)


def test_the_workers_page_shows_live_and_silent_workers_with_the_jobs_they_hold(
    page: Page, admin_server: AdminServer, redis_url: str, stream: str
) -> None:
    held = on_server(redis_url, lambda q: q.enqueue(stream, {"n": 1}))

    async def publish(q: streamq.Queue) -> None:
        now_ms = round(datetime.now(UTC).timestamp() * 1000)
        for name, age_ms in ((f"{stream}-live", 0), (f"{stream}-silent", 600_000)):
            card = workers.card(
                consumer=name,
                stream=stream,
                concurrency=8,
                started_at_ms=now_ms - age_ms - 7_200_000,
                now_ms=now_ms - age_ms,
                done=41,
                failed=2,
                holding=[held] if age_ms == 0 else [],
            )
            await workers.publish(q.redis, stream, card)

    on_server(redis_url, publish)
    ghost, taken = reclaimed_from_a_dead_worker(redis_url, f"{stream}-r")
    sign_in(page, admin_server)
    page.click('#nav a[data-nav="workers"]')
    live = page.locator(f'#workers tr[data-worker="{stream}-live"]')
    expect(live.locator('td[data-label="pid"]')).to_have_text(str(os.getpid()))
    expect(live.locator('td[data-label="concurrency"]')).to_have_text("8")
    expect(live.locator('td[data-label="up for"]')).to_have_text(re.compile(r"^2 h( 1 min)?$"))
    expect(live.locator('td[data-label="done"]')).to_have_text("41")
    expect(live.locator('td[data-label="failed"]')).to_have_text("2")
    expect(live.locator('td[data-label="host"]')).to_have_text(socket.gethostname())
    expect(page.locator(f'#gone li[data-worker="{stream}-silent"]')).to_contain_text("silent")
    dead = page.locator(f'#gone > li[data-worker="{ghost}"]')
    expect(dead).to_contain_text("removed")
    expect(dead).to_contain_text(f"{len(taken)} jobs reclaimed by ")
    for job_id in taken:
        expect(dead.get_by_role("link", name=job_id)).to_be_visible()
    live.get_by_role("link", name=held).click()
    expect(page.locator('#job-fields dd[data-field="id"]')).to_have_text(held)


def test_a_flow_shows_its_steps_by_depth_linked_to_their_jobs(
    page: Page, admin_server: AdminServer, redis_url: str, stream: str
) -> None:
    async def add_flow(q: streamq.Queue) -> streamq.Flow:
        return await q.enqueue_flow(
            [
                streamq.Step(name="post", stream=stream, payload={"text": "hi"}),
                streamq.Step(name="pin", stream=f"{stream}-b", after=["post"]),
                streamq.Step(name="share", stream=f"{stream}-b", after=["post"]),
                streamq.Step(name="report", stream=f"{stream}-b", after=["pin", "share"]),
            ]
        )

    flow = on_server(redis_url, add_flow)
    sign_in(page, admin_server)
    page.fill("#find-id", flow.id)
    page.click("#find button")
    expect(page.locator("#flow-state")).to_have_text("scheduled")
    layers = page.locator("#flow-graph > li.layer")
    expect(layers).to_have_count(3)
    expect(layers.nth(1).locator("li.step")).to_have_count(2)
    expect(layers.nth(2).locator('li[data-step="report"] [data-field="state"]')).to_have_text(
        "held"
    )
    step = page.locator('#flow-graph li[data-step="post"]')
    expect(step.locator('[data-field="state"]')).to_have_text("queued")
    step.get_by_role("link").click()
    expect(page.locator('#job-fields dd[data-field="id"]')).to_have_text(flow.jobs["post"])
    page.fill("#find-id", "flow:0-0")
    page.click("#find button")
    expect(page.locator("#view p.error")).to_have_text("no flow 'flow:0-0'")


def test_a_flows_on_complete_step_is_drawn_last_and_its_then_link_opens_its_job(
    page: Page, admin_server: AdminServer, redis_url: str, stream: str
) -> None:
    async def add_flow(q: streamq.Queue) -> streamq.Flow:
        return await q.enqueue_flow(
            [
                streamq.Step(name="upload", stream=stream, payload={"file": "a.mp4"}),
                streamq.Step(name="publish", stream=stream, after=["upload"]),
            ],
            on_complete=streamq.Step(name="notify", stream=f"{stream}-hooks"),
        )

    flow = on_server(redis_url, add_flow)
    sign_in(page, admin_server, f"#/flows/{flow.id}")
    layers = page.locator("#flow-graph > li.layer")
    # notify runs once every step is final: right of all of them, not beside the first one.
    expect(layers).to_have_count(3)
    notify = layers.nth(2).locator('li[data-step="notify"]')
    expect(notify).to_contain_text("after every step")
    expect(layers.nth(0).locator("li.step")).to_have_count(1)
    # The link is notify's job, not a job named "notify" (held, it is not enqueued yet).
    then = page.locator("#flow-fields").get_by_role("link", name="notify")
    expect(then).to_have_attribute("href", f"#/jobs/{flow.jobs['notify']}")
    then.click()
    expect(page.locator("#view p.error")).to_contain_text("a flow step not released yet")
    # A step's job page leads back to its flow.
    page.goto(f"{admin_server.url}/#/jobs/{flow.jobs['upload']}")
    page.locator("#job-options").get_by_role("link", name=flow.id).click()
    expect(page.locator("#flow-state")).to_have_text("scheduled")


# -- safety: user data is text, a read-only token has no buttons ------------------------------

XSS = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'


def test_html_in_payloads_accounts_and_errors_is_shown_as_text_and_never_runs(
    page: Page, admin_server: AdminServer, redis_url: str, stream: str
) -> None:
    account = '<img src=x onerror="window.__xss = 3">'
    job_id = on_server(
        redis_url,
        lambda q: q.enqueue(stream, {"text": XSS}, account=account, key=XSS, run_at=later(60)),
    )
    [dead] = fail_jobs(redis_url, f"{stream}-d", [{"text": XSS}], error=XSS)
    sign_in(page, admin_server, f"#/streams/{stream}/jobs?state=scheduled")
    expect(page.locator(f'#jobs tr[data-job="{job_id}"] td.account')).to_have_text(account)
    page.goto(f"{admin_server.url}/#/jobs/{job_id}")
    expect(page.locator('#job-fields dd[data-field="key"]')).to_have_text(XSS)
    expect(page.locator("#payload pre")).to_contain_text(XSS.replace('"', '\\"'))
    page.goto(f"{admin_server.url}/#/jobs/{dead}")
    expect(page.locator("#attempts .error-text").first).to_have_text(XSS)
    page.goto(f"{admin_server.url}/#/streams/{stream}-d/jobs?state=dead")
    expect(page.locator(f'#jobs tr[data-job="{dead}"] .error-text')).to_have_text(XSS)
    assert page.locator("#view img, #view script").count() == 0
    assert page.evaluate("window.__xss") is None
    assert page.evaluate("window.__csp") == []


def test_the_page_is_served_with_a_strict_content_security_policy(
    page: Page, admin_server: AdminServer
) -> None:
    response = page.goto(admin_server.url)
    assert response is not None
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy
    assert "unsafe-inline" not in policy


def test_the_dashboards_files_are_served_as_written_and_name_no_other_site() -> None:
    """No build step (the three files are the source) and nothing from a CDN: the only URL
    in them is the SVG namespace, a name and never fetched. No inline script or style either:
    the CSP would refuse them."""
    static = Path(admin.__file__).parent / "admin_static"
    assert sorted(p.name for p in static.iterdir()) == [
        "dashboard.css",
        "dashboard.js",
        "index.html",
    ]
    urls = {
        url
        for path in static.iterdir()
        for url in re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"')]*", path.read_text())
    }
    assert urls == {"http://www.w3.org/2000/svg"}
    html = (static / "index.html").read_text()
    assert re.findall(r"<script\b[^>]*>", html) == [
        '<script type="module" src="/static/dashboard.js">'
    ]
    assert " style=" not in html
    assert "<style" not in html


def test_a_read_only_token_sees_no_action_buttons(
    page: Page, admin_server: AdminServer, redis_url: str, stream: str
) -> None:
    job_id = on_server(redis_url, lambda q: q.enqueue(stream, {"n": 1}, run_at=later(60)))
    fail_jobs(redis_url, f"{stream}-d", ["x"])
    sign_in(page, admin_server, f"#/jobs/{job_id}", token=VIEWER_TOKEN)
    expect(page.locator("#who")).to_have_text("viewer (read-only)")
    expect(page.locator("#job-state")).to_have_text("scheduled")
    expect(page.locator("#view button")).to_have_count(0)
    expect(page.locator("#reschedule")).to_have_count(0)
    page.goto(f"{admin_server.url}/#/streams/{stream}-d/jobs?state=dead")
    expect(page.locator("#jobs tbody tr")).to_have_count(1)
    expect(page.locator("#view button[type=button]")).to_have_count(0)
    page.goto(f"{admin_server.url}/#/streams/{stream}/accounts?account=alice")
    expect(page.locator('#accounts tr[data-account="alice"]')).to_be_visible()
    expect(page.locator("#view button[type=button]")).to_have_count(0)


# -- usable at both widths, by keyboard --------------------------------------------------------


def test_every_page_fits_both_widths_labels_its_controls_and_is_photographed(
    page: Page, admin_server: AdminServer, redis_url: str, stream: str
) -> None:
    async def setup(q: streamq.Queue) -> tuple[str, str]:
        job_id = await q.enqueue(
            stream,
            {"text": "a post", "meta": {"campaign": "winter"}},
            account="alice",
            run_at=later(60),
        )
        flow = await q.enqueue_flow(
            [
                streamq.Step(name="post", stream=stream, payload={"text": "hi"}),
                streamq.Step(name="pin", stream=stream, after=["post"]),
            ]
        )
        await q.enqueue("x", {"text": "hi"}, account="bob", run_at=later(60))
        await q.pause_account("bob", "x", reason="brand review")  # listed, with x's windows
        return job_id, flow.id

    job_id, flow_id = on_server(redis_url, setup)
    fail_jobs(redis_url, stream, [{"text": "failed post"}])
    pages = {
        "streams": "#/",
        "jobs": f"#/streams/{stream}/jobs?state=scheduled",
        "dead": f"#/streams/{stream}/jobs?state=dead",
        "job": f"#/jobs/{job_id}",
        "workers": "#/workers",
        "flow": f"#/flows/{flow_id}",
    }
    if "/api/streams/{stream}/accounts" in PATHS:
        pages["accounts"] = "#/streams/x/accounts"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url))
    sign_in(page, admin_server)
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        for name, where in pages.items():
            page.goto(f"{admin_server.url}/{where}")
            expect(page.locator("#view h2").first).to_be_visible()
            expect(page.locator("#view p.error")).to_have_count(0)
            overflow = page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0, f"{name} at {width} px scrolls sideways by {overflow} px"
            unlabelled = page.evaluate(
                """[...document.querySelectorAll("input, select, textarea")]
                  .filter((el) => el.offsetParent !== null && el.labels.length === 0
                    && !el.getAttribute("aria-label"))
                  .map((el) => el.id || el.name)"""
            )
            assert unlabelled == [], f"{name}: controls without a label: {unlabelled}"
            page.screenshot(path=str(SCREENSHOTS / f"{name}-{width}.png"), full_page=True)
    assert len(list(SCREENSHOTS.glob("*.png"))) >= 2 * len(pages)
    # Nothing fetched from another site (no CDN, no web font): it works offline.
    elsewhere = [url for url in asked if not url.startswith(f"{admin_server.url}/")]
    assert asked
    assert elsewhere == []


def test_the_keyboard_alone_opens_a_job_from_a_list_and_backs_out_of_cancelling_it(
    page: Page, admin_server: AdminServer, redis_url: str, stream: str
) -> None:
    job_id = on_server(redis_url, lambda q: q.enqueue(stream, {"n": 1}, run_at=later(60)))
    sign_in(page, admin_server, f"#/streams/{stream}/jobs?state=scheduled")
    expect(page.locator("#jobs tbody tr")).to_have_count(1)

    def tab_to(check: str) -> None:
        for _ in range(60):
            page.keyboard.press("Tab")
            if page.evaluate(f"(() => {{ const el = document.activeElement; return {check}; }})()"):
                return
        raise AssertionError(f"Tab never reached an element where {check}")

    tab_to(f"el.getAttribute('href') === '#/jobs/{job_id}'")
    page.keyboard.press("Enter")
    expect(page.locator("#job-state")).to_have_text("scheduled")
    tab_to("el.id === 'cancel-job'")
    page.keyboard.press("Enter")
    expect(page.locator("#confirm")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.locator("#confirm")).to_be_hidden()
    assert state_of(redis_url, job_id) == "scheduled"

"""The web dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright)
against a real admin server and Redis: it loads, shows a known workload's streams, and a dead
job's retry button makes the job run."""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

import streamq
from streamq import connection
from streamq.errors import Fail
from streamq.job import Job
from streamq.worker import Worker
from tests.conftest import AdminServer
from tests.test_worker import FAST

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
T = TypeVar("T")
SCREENSHOT = os.environ.get("STREAMQ_DASHBOARD_SCREENSHOT")
"""A path to save a picture of the page to, for a person to look at."""


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
    context = browser.new_context()
    opened = context.new_page()
    opened.set_default_timeout(10_000)
    yield opened
    context.close()


def run_async(function: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run async code to completion from a test: in a thread of its own, as Playwright's sync
    API keeps an event loop running in the test's thread."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(anyio.run, function, *args).result(timeout=60)


class Workload:
    """Two streams: one with finished and waiting jobs, one with a dead job. The handler
    fails jobs while ``healthy`` is false, as a platform outage would."""

    def __init__(self, redis_url: str, stream: str) -> None:
        self.redis_url = redis_url
        self.busy = stream
        self.failing = f"{stream}-dead"
        self.healthy = False
        self.done: list[str] = []
        self.dead = ""

    async def _handler(self, job: Job) -> None:
        if not self.healthy:
            raise Fail("platform down")

    async def work(self, stream: str) -> None:
        redis = connection.client(self.redis_url)
        try:
            await Worker(redis, stream, self._handler, FAST).run()
        finally:
            await redis.aclose()

    async def _setup(self) -> None:
        async with streamq.connect(self.redis_url) as q:
            self.healthy = True
            self.done = await q.enqueue_many(self.busy, [{"n": n} for n in range(3)])
            await self.work(self.busy)
            await q.enqueue_many(self.busy, [{"n": n} for n in range(4)])  # left waiting
            self.healthy = False
            self.dead = await q.enqueue(self.failing, {"text": "<b>not html</b>"})
            await self.work(self.failing)
            assert (await q.job(self.dead)).state == "dead"

    def setup(self) -> None:
        run_async(self._setup)

    def run_healthy(self, stream: str) -> None:
        """A burst worker, the platform back up: runs every job due on ``stream``."""
        self.healthy = True
        run_async(self.work, stream)

    def state(self, job_id: str) -> str:
        async def read() -> str:
            async with streamq.connect(self.redis_url) as q:
                return (await q.job(job_id)).state

        return run_async(read)


def sign_in(page: Page, url: str, token: str) -> None:
    page.goto(url)
    page.fill("#token", token)
    page.click("#sign-in button[type=submit]")


def test_a_wrong_token_is_refused_and_the_form_comes_back(
    page: Page, admin_server: AdminServer
) -> None:
    sign_in(page, admin_server.url, "not-the-token")
    expect(page.locator("#message")).to_have_text("invalid bearer token")
    expect(page.locator("#sign-in")).to_be_visible()
    expect(page.locator("#app")).to_be_hidden()


def test_the_dashboard_shows_the_streams_and_a_dead_jobs_retry_button_runs_it(
    page: Page, admin_server: AdminServer, redis_url: str, stream: str
) -> None:
    workload = Workload(redis_url, stream)
    workload.setup()
    sign_in(page, admin_server.url, admin_server.token)
    expect(page.locator("#status")).to_have_text("live")

    busy = page.locator(f'#streams tr[data-stream="{workload.busy}"]')
    failing = page.locator(f'#streams tr[data-stream="{workload.failing}"]')
    expect(busy.locator("td").nth(1)).to_have_text("4")  # depth: the jobs left waiting
    expect(busy.locator("td.dead")).to_have_text("0")
    expect(failing.locator("td.dead")).to_have_text("1")
    expect(busy.locator("td.rate-done")).to_have_text("0.0")  # two readings, nothing ran
    workload.run_healthy(workload.busy)  # the 4 waiting jobs run between two readings
    expect(busy.locator("td").nth(1)).to_have_text("0")
    expect(busy.locator("td.rate-done")).to_have_text(re.compile(r"^(?!0\.0$)\d+\.\d$"))

    page.fill("#job-id", workload.done[0])
    page.click("#job-search button")
    expect(page.locator('#job dd[data-field="state"]')).to_have_text("done")

    failing.locator("button").click()
    letter = page.locator(f'#dead tr[data-job="{workload.dead}"]')
    expect(letter.locator("td").nth(2)).to_have_text("platform down")
    expect(letter.locator("td.payload")).to_have_text('{"text":"<b>not html</b>"}')
    if SCREENSHOT:
        page.screenshot(path=SCREENSHOT, full_page=True)

    letter.locator("button", has_text="Retry").click()
    expect(page.locator("#message")).to_have_text(f"{workload.failing}: 1 queued again")
    expect(letter).to_have_count(0)
    expect(page.locator("#no-dead")).to_be_visible()
    assert workload.state(workload.dead) == "queued"
    workload.run_healthy(workload.failing)
    assert workload.state(workload.dead) == "done"
    expect(failing.locator("td.dead")).to_have_text("0")


def test_retry_all_replays_every_dead_letter_of_the_stream(
    page: Page, admin_server: AdminServer, redis_url: str, stream: str
) -> None:
    async def fail_three() -> list[str]:
        async with streamq.connect(redis_url) as q:
            ids = await q.enqueue_many(stream, ["x"] * 3)
            await Workload(redis_url, stream).work(stream)
            return ids

    ids = run_async(fail_three)
    sign_in(page, admin_server.url, admin_server.token)
    page.locator(f'#streams tr[data-stream="{stream}"] button').click()
    expect(page.locator("#dead tbody tr")).to_have_count(3)
    page.click("#retry-all")
    expect(page.locator("#message")).to_have_text(f"{stream}: 3 queued again")
    expect(page.locator("#dead tbody tr")).to_have_count(0)
    workload = Workload(redis_url, stream)
    workload.run_healthy(stream)
    assert {workload.state(job_id) for job_id in ids} == {"done"}


def test_the_dashboard_shows_a_flow_and_its_steps_jobs(
    page: Page, admin_server: AdminServer, redis_url: str, stream: str
) -> None:
    async def add_flow() -> streamq.Flow:
        async with streamq.connect(redis_url) as q:
            return await q.enqueue_flow(
                [
                    streamq.Step(name="post", stream=stream, payload={"text": "hi"}),
                    streamq.Step(name="pin", stream=f"{stream}-b", after=["post"]),
                ]
            )

    flow = run_async(add_flow)
    sign_in(page, admin_server.url, admin_server.token)
    page.fill("#job-id", flow.id)
    page.click("#job-search button")
    expect(page.locator("#flow-state")).to_have_text(f"{flow.id}: scheduled")
    expect(page.locator('#flow-steps tr[data-step="post"] td.state')).to_have_text("queued")
    expect(page.locator('#flow-steps tr[data-step="pin"] td.state')).to_have_text("held")
    page.locator('#flow-steps tr[data-step="post"] button').click()
    expect(page.locator('#job dd[data-field="id"]')).to_have_text(flow.jobs["post"])
    expect(page.locator('#job dd[data-field="state"]')).to_have_text("queued")
    page.fill("#job-id", "flow:0-0")
    page.click("#job-search button")
    expect(page.locator("#message")).to_have_text("no flow 'flow:0-0'")

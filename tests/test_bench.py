"""The bench runs: its command line, one tiny scenario end to end, and the day's planning.

Figures are never asserted here (they live in bench/RESULTS.md); what is checked is that the
bench's machinery works and that what it counts adds up: the JSON shape, every job done once.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from typing import Any

from bench.scenarios import day
from tests.conftest import ROOT


def bench(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "160"},
    )


def test_help_lists_every_scenario() -> None:
    done = bench("--help")
    assert done.returncode == 0, done.stderr
    for scenario in (
        "throughput",
        "io-bound",
        "lateness",
        "recovery",
        "memory",
        "day",
        "peers",
        "cluster",
        "listing",
        "dashboard",
    ):
        assert scenario in done.stdout


def test_unknown_engine_is_one_line_and_exit_1() -> None:
    done = bench("throughput", "--jobs", "10", "--engines", "nope", "--json", "--no-charts")
    assert done.returncode == 1
    assert "unknown engine 'nope'" in done.stderr


def test_tiny_dashboard_run_times_every_call_the_overview_makes() -> None:
    done = bench(
        "dashboard", "--jobs", "200", "--engines", "valkey", "--no-browser", "--json",
        "--no-charts",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    assert report["failed"] == []
    [api] = report["sections"]
    calls = {row["call"] for row in api["rows"]}
    assert {"GET /api/me", "GET /api/stats", "GET /api/streams/S/series?minutes=60"} <= calls
    assert all(row["jobs"] == 200 and row["bytes"] > 0 for row in api["rows"])


def test_tiny_throughput_run_as_json() -> None:
    done = bench("throughput", "--jobs", "500", "--engines", "valkey", "--json", "--no-charts")
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    assert report["format"] == 1
    assert report["failed"] == []
    assert report["machine"]["nproc"] == os.cpu_count()
    (section,) = report["sections"]
    assert section["scenario"] == "throughput"
    systems = [(row["system"], row["processes"]) for row in section["rows"]]
    assert systems == [("streamq", 1), ("streamq", 2), ("redis-py loop", 1)]
    for row in section["rows"]:
        assert row["jobs"] == row["done"] == 500
        assert row["lost"] == 0
        assert row["jobs/s"] > 0
        assert set(section["columns"]) <= set(row) | {"engine"}


def test_tiny_recovery_loses_nothing() -> None:
    done = bench(
        "recovery", "--in-flight", "20", "--visibility-timeout", "1", "--engines", "valkey",
        "--json", "--no-charts",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(done.stdout)["sections"][0]["rows"]
    assert row["in flight"] == 20
    assert row["lost"] == 0
    assert row["run twice"] == 0
    assert row["recovered in s"] is not None


def test_tiny_recovery_runs_a_git_refs_code_beside_this_tree() -> None:
    done = bench(
        "recovery", "--in-flight", "20", "--visibility-timeout", "1", "--before", "HEAD",
        "--engines", "valkey", "--json", "--no-charts",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["sections"][0]["rows"]
    assert [row["code"].split()[0] for row in rows] == ["HEAD", "this"]
    assert all(row["lost"] == 0 and row["recovered in s"] is not None for row in rows)


def test_tiny_listing_run_pages_every_case_and_times_both_sides() -> None:
    done = bench(
        "listing", "--jobs", "2000", "--accounts", "20", "--ties", "500", "--hot-jobs", "200",
        "--pairs", "1", "--commits", "--engines", "valkey", "--json", "--no-charts",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    pages, hot = json.loads(done.stdout)["sections"]
    assert [row["jobs in set"] for row in pages["rows"]] == [2000, 2000, 100, 100, 500, 500]
    # A page of 100 everywhere but from the middle of one account's 100 jobs (its last 49).
    assert [row["page"] for row in pages["rows"]] == [100, 100, 100, 49, 100, 101]
    assert all(row["server us/page"] > 0 for row in pages["rows"])
    # Only this tree's side here (each older commit's side is the same run in its own copy).
    assert [(row["side"], row["round"]) for row in hot["rows"]] == [
        ("this tree", 1),
        ("this tree", "median"),
    ]
    assert all(row["enqueue jobs/s"] > 0 and row["drain jobs/s"] > 0 for row in hot["rows"])


def test_day_plan_respects_platform_caps_and_spreads_over_zones() -> None:
    posts, minutes = day.plan(posts_per_day=10_000, accounts=1_000, count=10_000)
    assert len(posts) == 10_000
    assert minutes == day.MINUTES
    per_platform = Counter(post.platform for post in posts)
    assert per_platform["youtube"] <= 80  # 80 % of YouTube's 100 uploads a day per project
    assert set(per_platform) == set(day.MIX)
    assert len({post.account for post in posts}) > 900
    # Time-zone peaks: the busiest UTC hour holds well over an even share of the day, the
    # quietest (when it is night in the Americas and Europe) well under.
    per_hour = Counter(int(post.minute // 60) for post in posts)
    assert max(per_hour.values()) > 1.4 * 10_000 / 24
    assert min(per_hour.values()) < 0.5 * 10_000 / 24


def test_day_plan_of_a_big_day_is_its_busiest_stretch() -> None:
    posts, minutes = day.plan(posts_per_day=10_000_000, accounts=1_000_000, count=5_000)
    assert len(posts) == 5_000
    assert 0 < minutes < 60
    assert all(0 <= post.minute < minutes for post in posts)


def test_violations_counts_windows_over_their_limit() -> None:
    # tiktok allows an account 6 starts a minute; compressed 60x, 6 a second.
    ok = [("a", i * 200.0) for i in range(12)]
    assert day.violations({"tiktok": ok}, factor=60) == 0
    seven_in_a_second = [("a", i * 100.0) for i in range(7)]
    assert day.violations({"tiktok": seven_in_a_second}, factor=60) == 1
    other_accounts = [(f"acct-{i}", i * 10.0) for i in range(20)]
    assert day.violations({"tiktok": other_accounts}, factor=60) == 0


def test_the_performance_page_describes_every_scenario() -> None:
    from bench.__main__ import SCENARIOS

    page = (ROOT / "docs" / "performance.md").read_text()
    described = set(re.findall(r"^\| `([a-z-]+)` \|", page, re.MULTILINE))
    assert described == set(SCENARIOS), (set(SCENARIOS) - described, described - set(SCENARIOS))

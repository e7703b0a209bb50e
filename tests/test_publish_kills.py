"""Publish once under crashes, the suite's small run of ``python -m bench publish-kills``
(issue 29's guarantee; the full 1,500 posts and 30 kills are in bench/RESULTS.md): 150 posts
over the six built-in publishers, a worker process per platform SIGKILLed at least 4 times,
the simulator losing answers after taking the request, dropping connections, answering past
the 1 s timeout and failing requests with a 5xx. No post twice, none lost, no job recorded
dead whose post exists, every job final, and replaying every dead letter adds no post."""

from __future__ import annotations

import pytest

from bench.scenarios.publish_kills import Plan, run_kills

# The engine's tests cover both engines; this one checks publishers and worker processes.
pytestmark = [pytest.mark.slow, pytest.mark.any_engine]


def test_posts_under_worker_kills_and_lost_answers_are_each_published_once(
    redis_url: str,
) -> None:
    figures = run_kills(redis_url, Plan(posts=150, kills=4, limit=60.0))
    row = figures.row()
    assert figures.kills >= 4, row  # the kills really happened during the run
    # The faults really happened too: the guarantee was exercised, not dodged.
    assert figures.sim["lost_answers"] + figures.sim["dropped"] + figures.sim["hung"] > 0, row
    assert figures.not_final == 0, row
    assert figures.duplicates == 0, row
    assert figures.lost == 0, row
    assert figures.dead_posted == 0, row
    assert figures.replay_added == 0, row
    assert figures.sim["key_lookups"] == 0, row  # no publisher asks the simulator's _sim/lookup
    assert figures.sim["posts"] == 150 - figures.dead + figures.duplicates, row

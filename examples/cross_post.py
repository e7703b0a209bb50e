"""A cross-post: one post to Facebook, X and LinkedIn at 09:00 tomorrow, as one flow, and a
word to the app once all three are final. A post one platform refuses (Instagram has no
text-only posts) is refused before anything is enqueued. The flow is then moved and
cancelled, so nothing here ever publishes."""

import asyncio
from datetime import UTC, datetime, time, timedelta

import streamq
from streamq.errors import PayloadError

POST = {"text": "Launch day! https://example.com/launch"}
PLATFORMS = ["facebook", "x", "linkedin"]


async def main() -> None:
    async with streamq.connect() as q:
        tomorrow = datetime.now(UTC).date() + timedelta(days=1)
        nine_am = datetime.combine(tomorrow, time(9), tzinfo=UTC)
        try:  # Instagram needs a picture: refused in one line, nothing enqueued
            await q.cross_post(POST, [*PLATFORMS, "instagram"], account="acme", run_at=nine_am)
        except PayloadError as refused:
            print("refused:", refused)
        flow = await q.cross_post(
            POST,
            PLATFORMS,
            account="acme",
            run_at=nine_am,
            on_complete=streamq.Step(name="notify", stream="app-hooks", payload={"post": 42}),
        )
        print(flow.id, flow.jobs)  # one job per platform (and the notify step), by step name
        info = await q.flow(flow.id)
        print(info.state, {name: step.state for name, step in info.steps.items()})
        assert info.state == "scheduled"
        assert [info.steps[p].state for p in PLATFORMS] == ["scheduled"] * 3
        assert info.steps["notify"].state == "held"  # released once all three are final
        assert await q.reschedule_flow(flow.id, nine_am + timedelta(hours=1)) == 3
        assert await q.cancel_flow(flow.id) == "cancelled"  # none of the steps will run


asyncio.run(main())

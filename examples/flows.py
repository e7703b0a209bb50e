"""A flow: upload, then publish, then the first comment on what the publish returned, and a
word to the app once every step is final. Workers run here until the flow ends."""

import asyncio
import time
from datetime import UTC, datetime, timedelta

import streamq
from streamq import Step
from streamq.worker import Worker, WorkerOptions


async def run(job: streamq.Job) -> dict[str, str]:
    if job.flow is not None and job.flow.results:  # what the steps it ran after returned
        print(job.flow.step, "after", job.flow.results)
    return {"post_id": f"{job.stream}-{job.attempt}"}  # your upload or publish goes here


async def main() -> None:
    async with streamq.connect() as q:
        now = datetime.now(UTC)
        flow = await q.enqueue_flow(
            [
                Step(name="upload", stream="videos", payload={"file": "launch.mp4"}),
                Step(name="publish", stream="posts", payload={"text": "Out now"}, after=["upload"]),
                Step(
                    name="first_comment",
                    stream="posts",
                    payload={"comment": "#launch #spring"},
                    after=["publish"],
                    on_failure="ignore",  # the flow can still end done without it
                ),
            ],
            run_at=now + timedelta(seconds=1),
            on_complete=Step(name="notify", stream="app-hooks", payload={"post": 42}),
            key="launch-42",
        )
        print(flow.id, flow.jobs["upload"])  # the flow's id; each step's job id
        deadline = time.monotonic() + 60
        while (info := await q.flow(flow.id)).state not in ("done", "failed", "partially_done"):
            assert time.monotonic() < deadline, info
            for stream in ("videos", "posts", "app-hooks"):  # until each stream is empty
                await Worker(q.redis, stream, run, WorkerOptions(burst=True)).run()
            await asyncio.sleep(0.2)  # the 1 s delay, and the release of the next steps
        print(info.state, {name: step.state for name, step in info.steps.items()})
        assert info.state == "done"


asyncio.run(main())

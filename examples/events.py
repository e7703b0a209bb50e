"""Keep your app's table of posts in step with streamq: read each job's lifecycle events, and
resume from the last one seen (nothing missed, nothing twice)."""

import asyncio

import streamq
from streamq.worker import Worker, WorkerOptions


async def publish(job: streamq.Job) -> dict[str, str]:
    return {"post_id": "p-1"}


async def main() -> None:
    async with streamq.connect() as q:
        job_id = await q.enqueue("events-demo", {"text": "hi"})
        await Worker(q.redis, "events-demo", publish, WorkerOptions(burst=True)).run()
        last_seen: dict[str, str] = {}  # your app keeps this: {stream: last event id}
        async for ev in q.events(["events-demo"], since=last_seen or None, wait=False):
            print(ev.type, ev.job, ev.attempt, ev.result, ev.error)  # update your table here
            last_seen[ev.stream] = ev.id  # resume from here next time
        # queued, started, done: one run that succeeded
        async for ev in q.events("events-demo", since=last_seen, wait=False):
            raise AssertionError(f"seen twice: {ev}")
        # Or let app instances split the events: each goes to one member of the group, and is
        # acknowledged when the loop body that got it returns.
        async for ev in q.events("events-demo", group="sync", consumer="app-1", wait=False):
            assert ev.job == job_id


asyncio.run(main())

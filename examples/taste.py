"""A taste of the Python API: enqueue, run a worker until the stream is empty, read the result."""

import asyncio
from datetime import timedelta

import streamq
from streamq.worker import Worker, WorkerOptions


async def publish(job: streamq.Job) -> dict[str, str]:
    return {"post_id": f"post-{job.payload['text']}"}  # your call to the platform goes here


async def main() -> None:
    async with streamq.connect() as q:  # $STREAMQ_REDIS_URL, else the embedded server
        job_id = await q.enqueue("taste", {"text": "hello"}, key="post-42", priority="high")
        later = await q.enqueue("taste", {"text": "tomorrow"}, delay=timedelta(days=1))
        await Worker(q.redis, "taste", publish, WorkerOptions(burst=True)).run()
        print(await q.result(job_id, timeout=30))  # {'post_id': 'post-hello'}
        print((await q.job(later)).state)  # scheduled
        print(await q.cancel(later))  # cancelled


asyncio.run(main())

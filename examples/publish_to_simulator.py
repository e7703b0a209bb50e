"""The built-in X publisher as an ordinary handler, against the local platform simulator: the
same code publishes to the real X API once STREAMQ_PLATFORM_URL is unset and real tokens are in
tokens.toml. The account's token comes from examples/tokens.toml ([x.bistro])."""

import asyncio
import os

import streamq
from streamq.platforms.client import Session
from streamq.platforms.credentials import FileCredentials
from streamq.simulator import ThreadedSimulator
from streamq.worker import Worker, WorkerOptions


async def main() -> None:
    credentials = FileCredentials("examples/tokens.toml")
    async with streamq.connect() as q, Session(credentials=credentials) as s:
        post_id = await q.enqueue("x", {"text": "Hello from streamq"}, account="bistro")
        await Worker(q.redis, "x", s.publisher("x"), WorkerOptions(burst=True)).run()
        print(await q.result(post_id, timeout=30))  # {'platform': 'x', 'post_id': '...'}


with ThreadedSimulator() as simulator:  # or `streamq simulate`, or nothing: the real API
    os.environ["STREAMQ_PLATFORM_URL"] = simulator.url
    asyncio.run(main())
    assert len(simulator.posts) == 1, simulator.posts

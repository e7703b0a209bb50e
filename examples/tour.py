"""The Python API in one go: enqueue (now, at a wall time in a time zone, in bulk, with a key),
edit, inspect, move, cancel, retry and replay jobs, recurring schedules, and the figures."""

import asyncio
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import streamq


async def main() -> None:
    async with streamq.connect() as q:  # the same server as the CLI
        post = {"text": "hi", "image_url": "https://example.com/a.jpg"}
        job_id = await q.enqueue("instagram", post, key="post-42", priority="high")
        texts = ["one", "two", "three"]
        ids = await q.enqueue_many("linkedin", [{"text": t} for t in texts])  # pipelined
        paris = ZoneInfo("Europe/Paris")
        tomorrow = datetime.now(paris).date() + timedelta(days=1)
        tomorrow_9am = datetime.combine(tomorrow, time(9), tzinfo=paris)
        later = await q.enqueue(
            "x",
            {"text": "morning!"},
            key="post-43",
            run_at=tomorrow_9am,  # a wall time in Paris; a naive datetime is refused
            expire_after="6h",
            max_attempts=5,
            job_timeout="2m",
        )
        # A job still scheduled takes a new payload and time under its key ("edit my post").
        await q.enqueue("x", {"text": "edited"}, key="post-43", on_conflict="replace")
        info = await q.job(later)  # JobInfo: state, attempt, times, error, result
        print(info.state, info.run_at)  # scheduled, tomorrow 09:00 Paris time
        await q.reschedule(later, delay=timedelta(minutes=30))
        print(await q.cancel(later))  # "cancelled", or "cancelling" if already running
        await q.retry(later)  # a dead, cancelled or expired job runs again
        await q.cancel(later)  # (and no more: this tour runs again as it is)
        letters = await q.dead("instagram")  # dead letters, with their reasons
        print(len(ids), len(letters))
        await q.replay("instagram")  # every dead letter runs again
        await q.schedule_recurring(
            "digest", "linkedin", cron="30 8 * * 1-5", tz="Europe/Paris", payload={"text": "Digest"}
        )
        snapshot = await q.stats()
        print([(s.stream, s.depth) for s in snapshot.streams])
        print(job_id)


asyncio.run(main())

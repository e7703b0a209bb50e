"""Handlers to try streamq with before writing your own.

streamq consume --stream instagram --handler streamq.examples:print_post
"""

from __future__ import annotations

from streamq.job import Job


async def print_post(job: Job) -> dict[str, str]:
    """Print the post instead of publishing it, and return what a publisher would."""
    text = job.payload.get("text", "") if isinstance(job.payload, dict) else job.payload
    print(f"[{job.stream}] {job.id} attempt {job.attempt}: {text}", flush=True)
    return {"post_id": f"printed-{job.id}"}

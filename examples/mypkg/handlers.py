"""A handler as the README sketches it, publishing nowhere: it prints the post and returns an
id, so the README's ``streamq consume`` examples run as written."""

from __future__ import annotations

import hashlib
from typing import Any

import streamq


async def publish(job: streamq.Job) -> dict[str, Any]:
    print(f"{job.stream}: {job.payload}", flush=True)
    return {"post_id": hashlib.sha256(job.id.encode()).hexdigest()[:12]}

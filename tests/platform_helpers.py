"""What the publisher tests share: a post each platform takes, credentials, settings."""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import msgspec

from streamq.client import Queue
from streamq.config import Backoff, Config
from streamq.control import JobInfo
from streamq.platforms.base import PlatformSettings
from streamq.platforms.client import Session, resolve_settings
from streamq.platforms.credentials import CallableCredentials, Credentials
from streamq.worker import Worker, WorkerOptions

PLATFORMS = ("facebook", "instagram", "linkedin", "x", "tiktok", "youtube")
USER_IDS = {
    "facebook": "104000000000001",
    "instagram": "17841400000000001",
    "linkedin": "urn:li:organization:5515715",
}


def post_for(platform: str, sim_url: str, text: str) -> dict[str, Any]:
    """A valid post for ``platform`` whose text contains ``text``."""
    media = f"{sim_url}/_sim/media"
    if platform == "instagram":
        return {"text": text, "image_url": f"{media}/a.jpg"}
    if platform == "tiktok":
        return {"text": text, "video_url": f"{media}/clip.mp4"}
    if platform == "youtube":
        return {"title": text, "video_url": f"{media}/video.mp4?bytes=200000"}
    return {"text": text}


def new_token(platform: str) -> str:
    return f"sekrit-{platform}-{uuid.uuid4().hex}"


def credentials(tokens: dict[str, str]) -> CallableCredentials:
    """A token per platform and account: the platform's from ``tokens``, then the account."""

    def find(platform: str, account: str | None) -> Credentials | None:
        token = tokens.get(platform)
        if token is None:
            return None
        return Credentials(f"{token}-{account}", USER_IDS.get(platform))

    return CallableCredentials(find)


def settings_for(
    platform: str, sim_url: str, *, timeout: float = 5.0, lookup: bool | None = None
) -> PlatformSettings:
    """The platform's settings pointed at the simulator, as STREAMQ_PLATFORM_URL does (lookup
    as for the real platforms, unless given)."""
    settings = resolve_settings(platform, Config(), {"STREAMQ_PLATFORM_URL": sim_url})
    if lookup is None:
        lookup = settings.lookup
    return msgspec.structs.replace(
        settings, timeout=timeout, lookup=lookup, poll_interval=0.02, ready_timeout=10.0
    )


def publisher_worker_options(platform: str) -> WorkerOptions:
    """A worker for one platform's publisher against the simulator: quick retries, short reads."""
    return WorkerOptions(
        publisher=platform,
        limits=(),
        backoff=Backoff(base=0.05, factor=1, max=0.05, jitter=0),
        visibility_timeout=5.0,
        block_seconds=0.2,
        grace=5.0,
    )


async def run_publisher_until(
    q: Queue,
    session: Session,
    stream: str,
    platform: str,
    job_ids: list[str],
    until: tuple[str, ...],
    limit: float = 20,
) -> list[JobInfo]:
    """Run a worker with ``platform``'s publisher on ``stream`` until every job's state is in
    ``until`` (within ``limit`` seconds); the jobs as they ended."""
    worker = Worker(
        q.redis, stream, session.publisher(platform), publisher_worker_options(platform)
    )
    infos: list[JobInfo] = []
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(worker.run)
        with anyio.fail_after(limit):
            while True:
                infos = [await q.job(job_id) for job_id in job_ids]
                if all(info.state in until for info in infos):
                    break
                await anyio.sleep(0.03)
        worker.stop()
    return infos

"""``streamq demo``: the whole system in one command, on this machine only.

It starts an embedded server in a temporary STREAMQ_HOME (never the user's), the platform
simulator on a free loopback port (latency, transient errors, lost answers, a rate limit), one
worker per platform running the built-in publishers, and a producer that schedules a day of
posts for accounts in five time zones — compressed into ``--duration`` (60 s: a day passes
1,440 times faster, and so do the platforms' daily limits). Every account's tokens live in the
token store (encrypted with a throwaway key) and expire every few seconds: workers refresh
them, once per account per expiry, as they would every two hours on X. On the way, one
account's user revokes the app's consent: its refresh is refused, the account pauses with
``reauth_required`` and its posts wait until the user "signs in again" (a put), a few
posts are refused at enqueue, a few break the content policy (dead letters), and a few come
due long after they were meant for (expired). A few pieces of content go out as flows
(streamq.flows): cross-posts to facebook, linkedin and x (``q.cross_post``), and a launch on
instagram, x and linkedin whose instagram step is followed by the first comment, made on the
media id that step returned (``q.enqueue_flow``).

At the end it counts, against the simulator's record of every post (and comment) it received:
published, retried, rate-limited, dead, expired, flows done and failed, duplicates and lost —
the last two should be 0 — then
stops the workers, the simulator and the server (by PID) and deletes the temporary home.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo

import anyio
import msgspec
from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from streamq import keys, limiter, server
from streamq.client import Queue
from streamq.config import Backoff, Config, StreamConfig, TokensConfig
from streamq.errors import PayloadError
from streamq.flows import FINAL, Step
from streamq.platforms.base import PlatformSettings
from streamq.platforms.client import Session
from streamq.platforms.credentials import Secret
from streamq.platforms.keeper import TokenKeeper
from streamq.platforms.refresh import Client, simulated_token_url
from streamq.simulator import Fault, SimOptions, Simulator
from streamq.tokens import put_tokens
from streamq.tokenstore import Keyring, TokenSet, TokenStore
from streamq.worker import Worker, WorkerOptions

DAY: Final = 86_400.0
PLATFORMS: Final = ("instagram", "facebook", "linkedin", "x", "tiktok", "youtube")
ACCOUNTS: Final = {
    "acme": "America/New_York",
    "bistro": "Europe/Paris",
    "kaiten": "Asia/Tokyo",
    "koala": "Australia/Sydney",
    "samba": "America/Sao_Paulo",
}
POST_TIMES: Final = ("07:30", "09:00", "11:15", "12:30", "15:00", "17:45", "19:30", "21:00")
"""Local wall times each account posts at on each platform."""
LAUNCH_TIME: Final = "10:00"
"""One account's product launch: a burst on x at one instant, over the simulator's limit."""
LAUNCH_POSTS: Final = 6
TOKEN_VICTIM: Final = ("x", "bistro")
"""The account whose user revokes consent: a refresh refused, a new sign-in needed."""
POLICY_TAG: Final = "#freemoney"
CROSS_POSTS: Final = (("acme", 6), ("kaiten", 9), ("samba", 14))
"""Accounts that post one text to CROSS_PLATFORMS at once, and when (hours into the day)."""
CROSS_PLATFORMS: Final = ("facebook", "linkedin", "x")
# After the simulated day, the demo waits for its last jobs as long as they keep finishing: on a
# busy machine the tail takes longer, and a job still in the queue is late, not lost. It gives up
# once nothing has finished for STALL_SECONDS.
STALL_SECONDS: Final = 15.0
LAUNCH_FLOW: Final = ("koala", 11, ("instagram", "x", "linkedin"))
"""One account's launch as a flow: a post per platform, then a first comment on instagram."""
FIRST_COMMENT: Final = "#koala #launch #spring"
COMMENT_STEP: Final = "first_comment"


class DemoOptions(msgspec.Struct, kw_only=True):
    duration: float = 60.0
    """How long the compressed day takes."""
    latency: float = 0.08
    error_rate: float = 0.02
    lost_answer_rate: float = 0.01
    rate_limit: tuple[int, float] = (3, 1.0)
    concurrency: int = 16
    seed: int | None = None
    json: bool = False


# -- the plan ---------------------------------------------------------------------------------


@dataclass(slots=True)
class PlannedPost:
    platform: str
    account: str
    due: datetime
    """When it is due, in compressed time."""
    payload: Any
    expire_after: float | None = None
    job_id: str = ""


@dataclass(slots=True)
class PlannedFlow:
    """Posts that go out as one flow: a step per platform (named after it), and maybe an
    instagram first comment after the instagram step."""

    account: str
    due: datetime
    posts: dict[str, PlannedPost]
    comment: str | None = None
    flow_id: str = ""
    comment_job: str = ""

    def steps(self) -> list[Step]:
        steps = [
            Step(name=name, stream=post.platform, payload=post.payload, account=self.account)
            for name, post in self.posts.items()
        ]
        if self.comment is not None:
            steps.append(
                Step(
                    name=COMMENT_STEP,
                    stream="instagram",
                    payload={"comment": self.comment},
                    after=["instagram"],
                    account=self.account,
                )
            )
        return steps


@dataclass(slots=True)
class Plan:
    posts: list[PlannedPost]
    refused: list[tuple[str, Any]]
    """Posts the producer tries and enqueue refuses (platform, payload)."""
    flows: list[PlannedFlow] = field(default_factory=list)

    def every_post(self) -> list[PlannedPost]:
        """The posts on their own and the flows' posts (not the comments)."""
        return [*self.posts, *(post for flow in self.flows for post in flow.posts.values())]

    @property
    def jobs(self) -> int:
        """How many jobs the plan enqueues: posts, flows' posts and comments."""
        return len(self.every_post()) + sum(flow.comment is not None for flow in self.flows)


def _payload(platform: str, text: str, media: str, n: int) -> dict[str, Any]:
    if platform == "instagram":
        return {"text": text, "image_url": f"{media}/photo-{n}.jpg"}
    if platform == "tiktok":
        return {"text": text, "video_url": f"{media}/clip-{n}.mp4"}
    if platform == "youtube":
        return {
            "title": text[:90],
            "text": "Posted by streamq's demo",
            "video_url": f"{media}/v.mp4",
        }
    return {"text": text}


def _compressed(start: datetime, instant: datetime, factor: float) -> datetime:
    return start + (instant - start) / factor


def _next_local(start: datetime, wall: str, zone: ZoneInfo) -> datetime:
    """The first instant at or after ``start`` when the clocks in ``zone`` show ``wall``."""
    hour, minute = (int(part) for part in wall.split(":"))
    local = start.astimezone(zone)
    for days in range(3):
        candidate = (local + timedelta(days=days)).replace(
            hour=hour, minute=minute, second=0, microsecond=0
        )
        if candidate.astimezone(UTC) >= start:
            return candidate.astimezone(UTC)
    raise AssertionError("unreachable")


def make_plan(start: datetime, factor: float, media: str, rng: random.Random) -> Plan:
    """A day of posts: every account on every platform at its local POST_TIMES."""
    posts: list[PlannedPost] = []
    n = 0
    for account, zone_name in ACCOUNTS.items():
        zone = ZoneInfo(zone_name)
        for platform in PLATFORMS:
            for wall in POST_TIMES:
                n += 1
                instant = _next_local(start, wall, zone) + timedelta(minutes=rng.randint(0, 9))
                text = f"{account} on {platform} at {wall} {zone_name.split('/')[-1]} (#{n})"
                if n % 41 == 0:
                    text += f" {POLICY_TAG}"  # the simulator refuses these: content policy
                posts.append(
                    PlannedPost(
                        platform,
                        account,
                        _compressed(start, instant, factor),
                        _payload(platform, text, media, n),
                    )
                )
    launch = _next_local(start, LAUNCH_TIME, ZoneInfo(ACCOUNTS["acme"]))
    for i in range(LAUNCH_POSTS):
        n += 1
        text = f"acme launch, part {i + 1} of {LAUNCH_POSTS} (#{n})"
        posts.append(PlannedPost("x", "acme", _compressed(start, launch, factor), {"text": text}))
    # Posts a producer meant for hours ago, held somewhere meanwhile: too late now.
    for i, platform in enumerate(("facebook", "linkedin", "x")):
        n += 1
        text = f"yesterday's news #{n}"
        late = start - timedelta(seconds=30 + i)
        posts.append(PlannedPost(platform, "samba", late, {"text": text}, expire_after=5.0))
    flows = []
    for account, hours in CROSS_POSTS:
        n += 1
        due = _compressed(start, start + timedelta(hours=hours), factor)
        text = f"{account} everywhere at once (#{n})"
        steps = {p: PlannedPost(p, account, due, {"text": text}) for p in CROSS_PLATFORMS}
        flows.append(PlannedFlow(account, due, steps))
    account, hours, platforms = LAUNCH_FLOW
    n += 1
    due = _compressed(start, start + timedelta(hours=hours), factor)
    text = f"{account} launches its spring menu (#{n})"
    steps = {p: PlannedPost(p, account, due, _payload(p, text, media, n)) for p in platforms}
    flows.append(PlannedFlow(account, due, steps, comment=FIRST_COMMENT))
    refused = [
        ("x", {"text": "x" * 300}),
        ("instagram", {"text": "a caption but no picture"}),
        ("youtube", {"title": "", "video_url": f"{media}/v.mp4"}),
    ]
    return Plan(sorted(posts, key=lambda p: p.due), refused, flows)


def demo_config(factor: float) -> Config:
    """Streams named after the platforms, their built-in limits compressed like the day."""
    streams = {}
    for platform in PLATFORMS:
        limits = tuple(
            msgspec.structs.replace(limit, per=max(0.001, (limit.per or 0) / factor))
            if limit.per is not None
            else limit
            for limit in limiter.DEFAULT_LIMITS.get(platform, ())
        )
        streams[platform] = StreamConfig(
            limits=limits,
            max_attempts=10,
            backoff=Backoff(base=0.25, factor=2, max=2.0, jitter=0.2),
            job_timeout=30.0,
        )
    return Config(streams=streams)


# -- running ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Progress:
    started: float = field(default_factory=time.monotonic)
    events: list[str] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    enqueued: dict[str, int] = field(default_factory=dict)
    flows: dict[str, int] = field(default_factory=dict)
    """Flows by state, once every job finished."""
    reauth_required: int = 0

    def note(self, text: str) -> None:
        self.events.append(f"{time.monotonic() - self.started:5.1f}s  {text}")


@contextlib.contextmanager
def temporary_home() -> Iterator[Path]:
    """A short-lived STREAMQ_HOME (short enough for the server's unix socket path)."""
    base = "/tmp" if os.path.isdir("/tmp") else None
    home = Path(tempfile.mkdtemp(prefix="sqdemo-", dir=base))
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _stop_server(home: Path, pid: int | None) -> None:
    """Stop the demo's server: a clean SHUTDOWN, then by PID if it is still there."""
    with contextlib.suppress(Exception):
        server.stop(home)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


async def run(options: DemoOptions, console: Console) -> int:
    """Run the demo; returns the exit code (0 when every job finished, none lost or duplicated)."""
    # The live view is the output: workers' and the server's own lines would tear it.
    logging.getLogger("streamq").setLevel(logging.ERROR)
    logging.getLogger("httpx").setLevel(logging.ERROR)
    with temporary_home() as home:
        state = server.start(home)
        try:
            summary = await _run(options, console, server.url_for(home))
        finally:
            _stop_server(home, state.pid)
        summary["home"] = str(home)  # removed on the way out, with everything in it
        summary["server_pid"] = state.pid
    if options.json:
        console.print_json(msgspec.json.encode(summary).decode())
    else:
        console.print(_summary_table(summary))
    failed = summary["lost"] or summary["unfinished"] or summary["duplicates"]
    return 1 if failed else 0


async def _run(options: DemoOptions, console: Console, redis_url: str) -> dict[str, Any]:
    rng = random.Random(options.seed)
    factor = DAY / options.duration
    simulator = Simulator(
        SimOptions(
            latency=options.latency,
            error_rate=options.error_rate,
            lost_answer_rate=options.lost_answer_rate,
            rate_limit=options.rate_limit,
            processing=0.15,
            seed=options.seed,
            # Tokens expire about six times in the demo: refreshes, not pauses, keep it going.
            access_ttl=max(5.0, options.duration / 6),
            # Meta's tokens cannot be renewed once expired (their real life is 60 days): a
            # loaded machine's late refresh would cost the account a sign-in.
            access_ttls={"facebook": 3600.0, "instagram": 3600.0},
            ig_min_age=0.0,
        )
    )
    simulator.add_fault(Fault(kind="policy", match=POLICY_TAG, times=0))

    config = demo_config(factor)
    progress = Progress()
    async with simulator.serve() as sim_url:
        settings = {
            p: PlatformSettings(
                base_url=f"{sim_url}/{p}",
                api_version="v2" if p == "tiktok" else "2" if p == "x" else "v21.0",
                timeout=2.0,
                lookup=True,
                poll_interval=0.05,
                ready_timeout=10.0,
                token_url=simulated_token_url(sim_url, p),
            )
            for p in PLATFORMS
        }
        settings["linkedin"] = msgspec.structs.replace(settings["linkedin"], api_version="202411")
        settings["youtube"] = msgspec.structs.replace(settings["youtube"], api_version="v3")
        start = datetime.now(UTC)
        plan = make_plan(start, factor, f"{sim_url}/_sim/media", rng)
        async with Queue(redis_url, config=config) as q:
            # The token store, sealed with a key that lives as long as the demo.
            keeper = TokenKeeper(
                TokenStore(q.redis, Keyring.parse(Keyring.generate("demo"))),
                # Refreshed in the last 30 % of their life, so that even a short demo shows it.
                config=TokensConfig(refresh_before=0.3, instagram_min_age=0.0),
                clients={p: Client("demo-app", Secret(f"demo-secret-{p}")) for p in PLATFORMS},
            )
            for platform in PLATFORMS:
                for account in ACCOUNTS:
                    await _sign_in(q, keeper, simulator, platform, account)
            async with Session(config, credentials=keeper, settings=settings) as s:
                workers = [
                    Worker(
                        q.redis,
                        platform,
                        s.publisher(platform),
                        WorkerOptions(
                            **{
                                **msgspec.structs.asdict(config.stream(platform)),
                                "concurrency": options.concurrency,
                            }
                        ),
                    )
                    for platform in PLATFORMS
                ]
                await _enqueue(q, plan, progress)
                day_ends = time.monotonic() + options.duration
                async with anyio.create_task_group() as tasks:
                    for worker in workers:
                        tasks.start_soon(worker.run)
                    async with anyio.create_task_group() as story:
                        story.start_soon(
                            _token_drama, q, keeper, simulator, progress, options.duration
                        )
                        # Accounts that post less often than their tokens expire.
                        story.start_soon(keeper.keep_alive, settings, 0.3)
                        await _watch(
                            q, plan, simulator, progress, options, console, start, factor, day_ends
                        )
                        story.cancel_scope.cancel()  # over, whatever point it had reached
                    for worker in workers:
                        worker.stop()
                    tasks.cancel_scope.deadline = anyio.current_time() + 10
                return await _summarize(q, plan, simulator, progress)


def _user(platform: str, account: str) -> str:
    """Who the account is at the platform: a Page, an Instagram user, an organization."""
    number = sorted(ACCOUNTS).index(account)
    if platform == "facebook":
        return f"10400000000{number}"
    if platform == "instagram":
        return f"1784140000000{number}"
    if platform == "linkedin":
        return f"urn:li:organization:{sum(map(ord, account)) * 7919 % 10**8}"
    return f"{platform}-{account}"


async def _sign_in(
    q: Queue, keeper: TokenKeeper, simulator: Simulator, platform: str, account: str
) -> int:
    """The user signs in: the app puts the platform's tokens (resuming a paused account)."""
    answer = simulator.oauth.sign_in(platform, _user(platform, account))
    found = TokenSet.from_answer(answer)
    tokens = TokenSet(
        access_token=found.access_token,
        refresh_token=found.refresh_token,
        expires_at_ms=found.expires_at_ms,
        user_id=_user(platform, account),
        issued_at_ms=found.issued_at_ms,
    )
    return await put_tokens(q, keeper.store, platform, account, tokens)


async def _enqueue(q: Queue, plan: Plan, progress: Progress) -> None:
    for post in plan.posts:
        post.job_id = await q.enqueue(
            post.platform,
            post.payload,
            account=post.account,
            run_at=post.due,
            expire_after=post.expire_after,
        )
        progress.enqueued[post.platform] = progress.enqueued.get(post.platform, 0) + 1
    for planned in plan.flows:
        if planned.comment is None:  # one post to several platforms
            content = next(iter(planned.posts.values())).payload  # the same on each
            flow = await q.cross_post(
                content, list(planned.posts), account=planned.account, run_at=planned.due
            )
        else:
            flow = await q.enqueue_flow(planned.steps(), run_at=planned.due)
            planned.comment_job = flow.jobs[COMMENT_STEP]
            progress.enqueued["instagram"] = progress.enqueued.get("instagram", 0) + 1
        planned.flow_id = flow.id
        for name, post in planned.posts.items():
            post.job_id = flow.jobs[name]
            progress.enqueued[post.platform] = progress.enqueued.get(post.platform, 0) + 1
    launches = sum(flow.comment is not None for flow in plan.flows)
    progress.note(
        f"{len(plan.flows)} flows: {len(plan.flows) - launches} cross-posts to "
        f"{'+'.join(CROSS_PLATFORMS)}, {launches} launch with a first comment on instagram"
    )
    for platform, payload in plan.refused:
        try:
            await q.enqueue(platform, payload, account="acme")
        except PayloadError as exc:
            progress.note(f"refused at enqueue: {exc}")
        else:
            raise AssertionError(f"enqueue took a bad {platform} post")


async def _token_drama(
    q: Queue,
    keeper: TokenKeeper,
    simulator: Simulator,
    progress: Progress,
    duration: float,
) -> None:
    """One account's user revokes the app's consent: the next refresh is refused
    (invalid_grant), the account pauses with reauth_required and its posts wait, until the
    user signs in again and the app puts the new tokens, which resumes it."""
    platform, account = TOKEN_VICTIM
    await anyio.sleep(duration * 0.35)
    simulator.oauth.revoke(platform, _user(platform, account))
    current = await keeper.store.get(platform, account)
    if current is not None and current.access_token is not None:  # and its token with it
        simulator.expire_token(current.access_token.reveal())
    progress.note(f"{platform}/{account}: the user revoked the app's access")
    why_key = keys.pause_reasons(platform)
    field_name = keys.pause_field(account)
    with anyio.move_on_after(duration * 0.3):
        while await q.redis.hget(why_key, field_name) != b"reauth_required":  # noqa: ASYNC110
            await anyio.sleep(0.1)
        progress.note(f"{platform}/{account}: refresh refused → reauth_required, its posts wait")
        progress.reauth_required += 1
    await anyio.sleep(duration * 0.1)
    released = await _sign_in(q, keeper, simulator, platform, account)
    posts = "1 post" if released == 1 else f"{released} posts"
    progress.note(f"{platform}/{account}: the user signed in again: {posts} released")


async def _counts(q: Queue) -> dict[str, dict[str, int]]:
    async with q.redis.pipeline(transaction=False) as pipe:
        for platform in PLATFORMS:
            pipe.hgetall(keys.counts(platform))
        replies = await pipe.execute()
    return {
        platform: {k.decode(): int(v) for k, v in reply.items()}
        for platform, reply in zip(PLATFORMS, replies, strict=True)
    }


def _finished(counts: dict[str, int]) -> int:
    return counts.get("done", 0) + counts.get("dead", 0) + counts.get("expired", 0)


async def _watch(
    q: Queue,
    plan: Plan,
    simulator: Simulator,
    progress: Progress,
    options: DemoOptions,
    console: Console,
    start: datetime,
    factor: float,
    day_ends: float,
) -> None:
    """Refresh the live view until every job is finished and every flow has ended, or, once the
    simulated day is over, nothing has finished for STALL_SECONDS."""
    total = plan.jobs

    def view() -> Group:
        return _live_view(plan, simulator, progress, start, factor)

    live: contextlib.AbstractContextManager[Any] = (
        contextlib.nullcontext()
        if options.json
        else Live(view(), console=console, refresh_per_second=4, transient=False)
    )
    with live as shown:
        last_finished, last_progress = -1, time.monotonic()
        while max(day_ends, last_progress + STALL_SECONDS) > time.monotonic():
            progress.counts = await _counts(q)
            if shown is not None:
                shown.update(view())
            finished = sum(_finished(c) for c in progress.counts.values())
            if finished != last_finished:
                last_finished, last_progress = finished, time.monotonic()
            if finished >= total:
                progress.flows = await _flow_states(q, plan)
                if all(state in FINAL for state in progress.flows):
                    break
            await anyio.sleep(0.25)
        progress.counts = await _counts(q)
        progress.flows = await _flow_states(q, plan)
        if shown is not None:
            shown.update(view())


async def _flow_states(q: Queue, plan: Plan) -> dict[str, int]:
    """How many of the plan's flows are in each state."""
    states: dict[str, int] = {}
    for planned in plan.flows:
        state = (await q.flow(planned.flow_id)).state
        states[state] = states.get(state, 0) + 1
    return states


def _live_view(
    plan: Plan, simulator: Simulator, progress: Progress, start: datetime, factor: float
) -> Group:
    elapsed = time.monotonic() - progress.started
    now = start + timedelta(seconds=elapsed * factor)
    clocks = "  ".join(
        f"{zone.split('/')[-1].replace('_', ' ')} {now.astimezone(ZoneInfo(zone)):%H:%M}"
        for zone in ACCOUNTS.values()
    )
    table = Table(title=f"streamq demo — a day in {DAY / factor:g}s   {clocks}", expand=False)
    columns = (
        "platform", "scheduled", "published", "at platform", "retried", "429s", "held",
        "paused", "dead", "expired",
    )  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column == "platform" else "right")
    table.add_column("progress")
    sim = simulator.summary()
    for platform in PLATFORMS:
        counts = progress.counts.get(platform, {})
        scheduled = progress.enqueued.get(platform, 0)
        figures = [
            scheduled,
            counts.get("done", 0),
            sim["by_platform"][platform]["posts"],
            counts.get("retried", 0),
            counts.get("deferred", 0),
            counts.get("limited", 0),
            counts.get("parked", 0),
            counts.get("dead", 0),
            counts.get("expired", 0),
        ]
        bar = ProgressBar(total=max(1, scheduled), completed=_finished(counts), width=20)
        table.add_row(platform, *map(str, figures), bar)
    table.caption = (
        f"simulator: {sim['requests']} requests, {sim['rate_limited']} answered 429, "
        f"{sim['transient']} 5xx, {sim['lost_answers']} answers lost after the post was taken, "
        f"{sim['lookups']} lookups, {sim['comments']} comments, "
        f"duplicates {sim['duplicates']}"
    )
    events = Text("\n".join(progress.events[-6:]) or "…", style="dim")
    return Group(table, events)


async def _summarize(
    q: Queue, plan: Plan, simulator: Simulator, progress: Progress
) -> dict[str, Any]:
    """Every planned job's end, checked against what the simulator received."""
    states: dict[str, int] = {}
    lost = 0
    unfinished = 0  # still queued when the demo gave up waiting: late, not lost
    ghosts = 0
    recovered = 0  # done with the post an earlier send made, found by the platform's own API
    posted = {post.key: post for post in simulator.posts if post.key is not None}
    everything = plan.every_post()
    for post in everything:
        info = await q.job(post.job_id)
        states[info.state] = states.get(info.state, 0) + 1
        at_platform = posted.get(post.job_id)
        if info.state == "done":
            result = info.result if isinstance(info.result, dict) else {}
            if at_platform is None or result.get("post_id") != at_platform.id:
                lost += 1  # recorded as published, but the platform has no such post
            recovered += result.get("recovered") is True
        elif info.state in ("dead", "expired"):
            ghosts += at_platform is not None  # on the platform, though recorded as not
        else:
            unfinished += 1
    commented = {c.key: c for c in simulator.comments if c.key is not None}
    comments = 0
    for planned in plan.flows:
        if not planned.comment_job:
            continue
        info = await q.job(planned.comment_job)
        on_platform = commented.get(planned.comment_job)
        media = planned.posts["instagram"]
        if info.state == "done":
            result = info.result if isinstance(info.result, dict) else {}
            published = posted.get(media.job_id)
            if (
                on_platform is None
                or result.get("post_id") != on_platform.id
                or published is None
                or on_platform.media_id != published.id
            ):
                lost += 1  # recorded as commented, but not on the media the flow published
            else:
                comments += 1
                recovered += result.get("recovered") is True
        elif info.state in ("dead", "expired", "cancelled"):
            ghosts += on_platform is not None
        else:
            unfinished += 1
    flows = progress.flows
    counts = progress.counts
    sim = simulator.summary()
    return {
        "scheduled": len(everything),
        "refused_at_enqueue": len(plan.refused),
        "published": states.get("done", 0),
        "recovered_by_lookup": recovered,
        "retried": sum(c.get("retried", 0) for c in counts.values()),
        "rate_limited": sum(c.get("deferred", 0) for c in counts.values()),
        "held_by_limits": sum(c.get("limited", 0) for c in counts.values()),
        "paused": sum(c.get("parked", 0) for c in counts.values()),
        "dead": states.get("dead", 0),
        "expired": states.get("expired", 0),
        "flows": len(plan.flows),
        "flows_done": flows.get("done", 0),
        "flows_failed": sum(n for state, n in flows.items() if state != "done"),
        "comments": comments,
        "duplicates": sim["duplicates"] + ghosts,
        "lost": lost,
        "unfinished": unfinished,
        "token_refreshes": sim["refreshes"],
        "reauth_required": progress.reauth_required,
        "simulator": {k: v for k, v in sim.items() if k != "by_platform"},
        "events": progress.events,
    }


def _summary_table(summary: dict[str, Any]) -> Table:
    table = Table(title="streamq demo — summary", show_header=False)
    table.add_column("what")
    table.add_column("count", justify="right")
    rows = [
        ("scheduled", "scheduled"),
        ("refused at enqueue (bad posts)", "refused_at_enqueue"),
        ("published", "published"),
        ("  of which found by lookup after a lost answer", "recovered_by_lookup"),
        ("retried (transient errors, timeouts)", "retried"),
        ("rate-limited by the platform (429)", "rate_limited"),
        ("held back by streamq's own limits", "held_by_limits"),
        ("token refreshes (tokens expire every few seconds)", "token_refreshes"),
        ("accounts that needed a new sign-in", "reauth_required"),
        ("paused (waiting for a sign-in)", "paused"),
        ("dead (content policy)", "dead"),
        ("expired (due too long ago)", "expired"),
        ("flows (cross-posts, a launch with a first comment)", "flows"),
        ("  done", "flows_done"),
        ("  failed (or not ended)", "flows_failed"),
        ("first comments on instagram", "comments"),
        ("duplicates found by the simulator", "duplicates"),
        ("lost", "lost"),
        ("unfinished (still queued when the demo stopped waiting)", "unfinished"),
    ]
    for label, name in rows:
        value = summary[name]
        alarming = name in ("lost", "unfinished", "duplicates", "flows_failed")
        style = "bold red" if alarming and value else None
        table.add_row(label, Text(str(value), style=style or ""))
    return table

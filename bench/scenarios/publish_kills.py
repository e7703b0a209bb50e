"""publish-kills: publish once under crashes (issue 29's guarantee). Posts over the six
built-in publishers, one worker process per platform, SIGKILLed again and again while the
simulator loses answers after taking the post (502), drops connections mid-answer, answers
past the client's timeout and fails requests with a 5xx; settings as for the real platforms
(lookup on, checkpoints) but for a 1 s request timeout. Counted from the simulator's own
record: duplicates, lost posts, jobs recorded dead whose post exists, jobs not final; then
every dead letter is replayed and run again, and the posts it adds to a job that already had
one are counted. ``tests/test_publish_kills.py`` runs a small one with the same checks."""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import msgspec
import redis as sync_redis

from bench.common import Section, engine_label, servers
from bench.report import UI
from streamq import keys
from streamq.platforms.credentials import EnvCredentials

PLATFORMS = ("facebook", "instagram", "linkedin", "x", "tiktok", "youtube")
USER_IDS = {
    "facebook": "104000000000001",
    "instagram": "17841400000000001",
    "linkedin": "urn:li:organization:5515715",
}
FINAL = (b"done", b"dead")
COLUMNS = ["engine", "posts", "kills", "seconds", "duplicates", "lost", "dead", "dead posted",
           "not final", "replayed", "replay added", "lost answers", "dropped", "slow",
           "5xx", "twice on"]  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--posts", type=int, help="posts over the six platforms (1,500; quick 300)")
    parser.add_argument("--kills", type=int, help="worker SIGKILLs at least (30; quick 8)")
    parser.add_argument("--accounts", type=int, default=10, help="accounts per platform (10)")
    parser.add_argument("--seed", type=int, default=29)


@dataclass
class Plan:
    posts: int = 1_500
    kills: int = 30
    kill_every: float = 0.4
    """Seconds between two kills (a random worker each time)."""
    concurrency: int = 8
    timeout: float = 1.0
    """The publishers' request timeout; slow answers come after twice that."""
    accounts: int = 10
    """Accounts per platform: a real account does not post 150 times in a minute; with one, a
    lookup reads back through a few hundred of the account's posts (``--accounts 1``)."""
    seed: int = 29
    limit: float = 600.0
    """Seconds before the run is abandoned (jobs then count as not final)."""


@dataclass
class Figures:
    posts: int = 0
    kills: int = 0
    seconds: float = 0.0
    duplicates: int = 0
    lost: int = 0
    dead: int = 0
    dead_posted: int = 0
    not_final: int = 0
    replayed: int = 0
    replay_added: int = 0
    sim: dict[str, Any] = field(default_factory=dict)
    twice: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per job posted more than once: its platform, record and posts (to diagnose)."""
    dead_why: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per job recorded dead: its platform, whether its post exists, and its record's error."""
    replay_twice: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per job that had a post and got another after the run's end (the replay, or a request
    still on its way): its platform, record and posts (to diagnose)."""

    def row(self) -> dict[str, Any]:
        return {
            "posts": self.posts,
            "kills": self.kills,
            "seconds": self.seconds,
            "duplicates": self.duplicates,
            "lost": self.lost,
            "dead": self.dead,
            "dead posted": self.dead_posted,
            "not final": self.not_final,
            "replayed": self.replayed,
            "replay added": self.replay_added,
            "lost answers": self.sim.get("lost_answers", 0),
            "dropped": self.sim.get("dropped", 0),
            "slow": self.sim.get("hung", 0),
            "5xx": self.sim.get("transient", 0),
            "twice on": ", ".join(
                f"{platform} {count}"
                for platform, count in Counter(
                    job["platform"] for job in self.twice.values()
                ).most_common()
            )
            or "-",
        }


def _post(platform: str, media: str, text: str) -> dict[str, Any]:
    if platform == "instagram":
        return {"text": text, "image_url": f"{media}/a.jpg"}
    if platform == "tiktok":
        return {"text": text, "video_url": f"{media}/clip.mp4"}
    if platform == "youtube":
        return {"title": text, "video_url": f"{media}/video.mp4?bytes=20000"}
    return {"text": text}


class Workers:
    """One ``streamq consume`` process per platform's stream; kill one, start it again."""

    def __init__(self, redis_url: str, streams: dict[str, str], env: dict[str, str], logs: Path):
        self.redis_url = redis_url
        self.streams = streams
        self.env = {**os.environ, **env}
        self.logs = logs
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self.started = 0

    def start(self, platform: str, concurrency: int) -> None:
        log = (self.logs / f"{platform}-{self.started}.log").open("wb")
        self.started += 1
        self.running[platform] = subprocess.Popen(
            [sys.executable, "-m", "streamq", "consume", "--redis-url", self.redis_url,
             "--stream", self.streams[platform], "--publisher", platform,
             "--concurrency", str(concurrency), "--visibility-timeout", "2s",
             "--log-level", "ERROR"],
            env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()

    def kill(self, platform: str) -> None:
        process = self.running.pop(platform)
        process.kill()  # SIGKILL: no grace, no ack of what it holds
        process.wait()

    def stop_all(self) -> None:
        for platform in list(self.running):
            self.kill(platform)


def _states(client: sync_redis.Redis, jobs: dict[str, tuple[str, str]]) -> dict[str, bytes]:
    pipe = client.pipeline(transaction=False)
    for job_id, (_, stream) in jobs.items():
        pipe.hget(keys.job(stream, job_id), "state")
    return {job_id: state or b"" for job_id, state in zip(jobs, pipe.execute(), strict=True)}


def _drive(
    workers: Workers,
    client: sync_redis.Redis,
    jobs: dict[str, tuple[str, str]],
    plan: Plan,
    kills_wanted: int,
    rng: random.Random,
) -> tuple[int, dict[str, bytes]]:
    """Run the workers until every job is final, killing one every ``kill_every`` s until
    ``kills_wanted``; the kills made and the states at the end."""
    for platform in PLATFORMS:
        workers.start(platform, plan.concurrency)
    kills = 0
    deadline = time.monotonic() + plan.limit
    next_kill = time.monotonic() + plan.kill_every
    try:
        while True:
            states = _states(client, jobs)
            if all(state in FINAL for state in states.values()):
                return kills, states
            if time.monotonic() > deadline:
                return kills, states
            if kills < kills_wanted and time.monotonic() >= next_kill:
                # A platform with jobs still running, so the kill lands on work in flight.
                busy = sorted({jobs[j][0] for j, state in states.items() if state not in FINAL})
                victim = rng.choice(busy)
                workers.kill(victim)
                workers.start(victim, plan.concurrency)
                kills += 1
                next_kill = time.monotonic() + plan.kill_every
            time.sleep(0.05)
    finally:
        workers.stop_all()


def run_kills(redis_url: str, plan: Plan) -> Figures:
    """Post ``plan.posts`` over the six platforms with at least ``plan.kills`` SIGKILLs (fewer
    only if every job ended first); the figures of the run."""
    from streamq.client import Queue
    from streamq.simulator import SimOptions, ThreadedSimulator

    rng = random.Random(plan.seed)
    options = SimOptions(
        latency=0.03,
        error_rate=0.02,
        lost_answer_rate=0.03,
        drop_rate=0.02,
        slow_rate=0.02,
        slow_seconds=plan.timeout * 2,
        processing=0.05,
        seed=plan.seed,
    )
    tag = os.urandom(3).hex()
    accounts = [f"acct{n}" for n in range(plan.accounts)]
    streams = {platform: f"kills-{platform}-{tag}" for platform in PLATFORMS}
    figures = Figures(posts=plan.posts)
    with ThreadedSimulator(options) as sim, tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "streamq.toml"
        config.write_text(
            "".join(f"[platforms.{p}]\ntimeout = {plan.timeout}\n\n" for p in PLATFORMS)
            + "".join(f'[streams."{s}"]\npublisher = "{p}"\n\n' for p, s in streams.items())
        )
        env = {"STREAMQ_CONFIG": str(config), "STREAMQ_PLATFORM_URL": sim.url}
        for platform in PLATFORMS:
            for account in accounts:
                token = f"bench-{platform}-{account}-{tag}"
                env[EnvCredentials.variable(platform, account)] = token
                if platform in USER_IDS:
                    user_id = EnvCredentials.variable(platform, account, "USER_ID")
                    env[user_id] = USER_IDS[platform]
        media = f"{sim.url}/_sim/media"
        jobs: dict[str, tuple[str, str]] = {}

        async def enqueue() -> None:
            async with Queue(redis_url) as q:
                for n, (platform, stream) in enumerate(streams.items()):
                    count = plan.posts // len(PLATFORMS) + (n < plan.posts % len(PLATFORMS))
                    texts = [f"{platform} {tag} post {i}" for i in range(count)]
                    ids = await q.enqueue_many(
                        stream,
                        [_post(platform, media, t) for t in texts],
                        accounts=[accounts[i % len(accounts)] for i in range(count)],
                    )
                    jobs.update((job_id, (platform, stream)) for job_id in ids)

        async def replay() -> int:
            async with Queue(redis_url) as q:
                total = 0
                for stream in streams.values():
                    replayed, _ = await q.replay_dead(stream, None)
                    total += replayed
                return total

        anyio.run(enqueue)
        client = sync_redis.Redis.from_url(redis_url)
        workers = Workers(redis_url, streams, env, Path(tmp))
        started = time.perf_counter()
        figures.kills, states = _drive(workers, client, jobs, plan, plan.kills, rng)
        figures.seconds = time.perf_counter() - started
        posts = {job_id: len(sim.posts_for(job_id)) for job_id in jobs}
        figures.duplicates = sum(n - 1 for n in posts.values() if n > 1)
        for job_id, n in posts.items():
            if n > 1:
                platform, stream = jobs[job_id]
                saved: dict[bytes, bytes] = client.hgetall(keys.job(stream, job_id))  # type: ignore[assignment]
                figures.twice[job_id] = {
                    "platform": platform,
                    "record": {k.decode(): v.decode() for k, v in saved.items()},
                    "posts": [msgspec.to_builtins(post) for post in sim.posts_for(job_id)],
                }
        figures.lost = sum(1 for job_id, n in posts.items() if n == 0 and states[job_id] != b"dead")
        figures.dead = sum(1 for state in states.values() if state == b"dead")
        figures.dead_posted = sum(
            1 for job_id, state in states.items() if state == b"dead" and posts[job_id]
        )
        for job_id, state in states.items():
            if state == b"dead":
                platform, stream = jobs[job_id]
                error = client.hget(keys.job(stream, job_id), "error")
                figures.dead_why[job_id] = {
                    "platform": platform,
                    "posted": posts[job_id],
                    "error": error.decode()[:300] if isinstance(error, bytes) else None,
                }
        figures.not_final = sum(1 for state in states.values() if state not in FINAL)
        figures.sim = dict(sim.summary())
        # Every dead letter again, run to the end without kills: a job whose post exists must
        # not post again.
        dead_before = {job_id for job_id, state in states.items() if state == b"dead"}
        figures.replayed = anyio.run(replay)
        if figures.replayed:
            _, states = _drive(workers, client, jobs, plan, 0, rng)
            figures.not_final = sum(1 for state in states.values() if state not in FINAL)
        figures.replay_added = sum(
            len(sim.posts_for(job_id)) - n for job_id, n in posts.items() if n
        )
        for job_id, n in posts.items():
            if n and len(sim.posts_for(job_id)) > n:
                platform, stream = jobs[job_id]
                saved = client.hgetall(keys.job(stream, job_id))  # type: ignore[assignment]
                figures.replay_twice[job_id] = {
                    "platform": platform,
                    "dead before": job_id in dead_before,
                    "record": {k.decode(): v.decode() for k, v in saved.items()},
                    "posts": [msgspec.to_builtins(post) for post in sim.posts_for(job_id)],
                }
        client.close()
    return figures


def run(args: argparse.Namespace, ui: UI) -> list[Section]:
    plan = Plan(
        posts=args.posts or (300 if args.quick else 1_500),
        kills=args.kills or (8 if args.quick else 30),
        accounts=args.accounts,
        seed=args.seed,
    )
    section = Section(
        "publish-kills",
        f"publish-kills: {plan.posts:,} posts over six platforms, a worker process per "
        f"platform ({plan.accounts} accounts each) SIGKILLed every {plan.kill_every} s (at "
        f"least {plan.kills} kills); the "
        "simulator loses 3 % of answers after taking the request (502), drops 2 %, answers 2 % "
        f"after {plan.timeout * 2:g} s (timeout {plan.timeout:g} s), fails 2 % with a 5xx",
        COLUMNS,
    )
    with servers(args.engines) as started:
        for engine, srv in started:
            ui.say(f"{engine}: {plan.posts} posts, {plan.kills} kills")
            figures = run_kills(srv.url, plan)
            row = {
                "engine": engine_label(engine, srv),
                **figures.row(),
                "twice": figures.twice,
                "dead why": figures.dead_why,
                "replay twice": figures.replay_twice,
            }
            section.rows.append(row)
    return [section]

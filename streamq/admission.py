"""Whether the jobs a worker read may start: rate limits, platform holds and account pauses.

One :class:`Gate` per worker keeps what it has been told and answers questions; it never
touches the worker's buffers (the worker moves its jobs as the answers say).

    gated(jobs)            which jobs the admission script must see (rate limits, pauses)
    admit(lane, jobs)      asks admit_jobs: which of them may start now
    load_platform_hold()   a platform hold from before the worker started
    platform_wait_ms()     how long the platform is held (RateLimited(scope="platform"))
    pausing_accounts       the accounts a handler is pausing (Fail(pause_account=True)), and
                           why: their jobs already read are parked too, until it is recorded
    settle()               the accounts whose pause is recorded now: park what is read of
                           them, admission parks the rest from here on
    held_back(job)         why a job read may not start after all (platform held, account
                           pausing): the outcome to record instead of running it
    pausing(jobs)          which of the jobs just admitted belong to a pausing account
    heed(outcome)          what a run's outcome asks of this worker: hold the platform, or
                           pause the account
    not_started(job)       an admitted job that will not run here: its logged start goes back
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from streamq import channel, codec, keys, outcomes, scripts
from streamq.connection import TRANSIENT_ERRORS
from streamq.job import Job
from streamq.limiter import StreamLimits


@dataclass(eq=False)
class Gate:
    redis: Redis
    stream: str
    consumer: str
    limits: StreamLimits
    clock: channel.ServerClock
    platform_paused_until_ms: int = 0
    """Read nothing until then (server clock); 0: not held."""
    pausing_accounts: dict[str, str] = field(default_factory=dict)
    """Accounts a handler just paused (Fail(pause_account=True)) -> why: their jobs already
    read are parked too, until the pause is recorded and admission takes over."""
    _recorded: set[str] = field(default_factory=set)
    _admitting: int = 0  # admissions in flight
    _unstarted: list[Job] = field(default_factory=list)  # admitted, then not run

    def __post_init__(self) -> None:
        self._packed_limits = self.limits.packed()

    # -- platform holds -------------------------------------------------------------------------

    async def load_platform_hold(self) -> None:
        """A platform hold from before this worker started (later ones come by the control
        stream, which the worker follows from before this read)."""
        paused_until: Any = await self.redis.hget(keys.paused(self.stream), "platform")
        if paused_until is not None:
            self.hold_platform(int(paused_until))

    def hold_platform(self, until_ms: int) -> None:
        """The platform asked every worker to hold off until ``until_ms`` (server clock)."""
        self.platform_paused_until_ms = max(self.platform_paused_until_ms, until_ms)

    def platform_wait_ms(self) -> int:
        """How long the platform is still held, 0 when it is not."""
        if not self.platform_paused_until_ms:
            return 0
        wait = self.platform_paused_until_ms - self.clock.now_ms()
        if wait <= 0:
            self.platform_paused_until_ms = 0
            return 0
        return wait

    def held_back(self, job: Job) -> codec.Deferred | codec.Parked | None:
        """The outcome of a job read that may not start now after all: read before the
        platform asked to hold off, or of an account a handler is pausing. None: it may."""
        if self.platform_paused_until_ms:
            wait_ms = self.platform_wait_ms()
            if wait_ms:
                return outcomes.held_back(job, self.clock.now_ms(), wait_ms)
        account = job.envelope.account
        if account is not None and account in self.pausing_accounts:
            return outcomes.parked(job, self.pausing_accounts[account])
        return None

    def heed(self, outcome: codec.Outcome, now_ms: int) -> None:
        """A run ended in ``outcome``: a deferral that holds the platform holds it here too,
        and a parked run pauses its account (see ``pause``)."""
        if isinstance(outcome, codec.Deferred):
            if outcome.hold == keys.pause_field(None):
                self.hold_platform(now_ms + outcome.delay_ms)
        elif isinstance(outcome, codec.Parked):
            self.pause(outcome.account, outcome.reason)

    # -- rate limits ----------------------------------------------------------------------------

    def gated(self, jobs: list[Job]) -> tuple[list[Job], list[Job]]:
        """The jobs admission must see, and those free to start (no limit concerns them)."""
        if self.limits.platform:
            return jobs, []
        gated = [job for job in jobs if job.envelope.account is not None]
        if not gated:
            return [], jobs
        return gated, [job for job in jobs if job.envelope.account is None]

    async def admit(self, lane: int, jobs: Sequence[Job], *, reclaimed: bool) -> list[Job]:
        """Ask admit_jobs about ``jobs`` (all gated); returns those that may start now, flagged
        as cancelled where the script found them so. The others left this worker's hands."""
        rows: list[codec.AdmitRow] = []
        for job in jobs:
            env = job.envelope
            fields = (lane + 1, job._entry.decode(), env.id, env.account or "", env.enqueued_at_ms)
            if reclaimed:  # its attempt counts the crashed runs: keep that if it is deferred
                rows.append(codec.ReclaimedAdmitRow(*fields, codec.envelope_text(env)))
            else:
                rows.append(codec.AdmitRow(*fields))
        reply = await scripts.admit_jobs(
            self.redis, self.stream, self.consumer, rows, limits=self._packed_limits
        )
        self.hold_platform(reply.platform_paused_until_ms)
        admitted = []
        for job, verdict in zip(jobs, reply.verdicts, strict=True):
            if verdict:
                job.cancelled = job.cancelled or verdict == 2
                if verdict == 1 and self.limits.any:
                    job._admitted_ms = reply.now_ms
                admitted.append(job)
        return admitted

    @contextlib.contextmanager
    def admitting(self) -> Iterator[None]:
        """Around an admission (all its tries): a pause recorded meanwhile settles after it."""
        self._admitting += 1
        try:
            yield
        finally:
            self._admitting -= 1

    def not_started(self, job: Job) -> None:
        """An admitted job will not run here after all: give its logged start back."""
        if job._admitted_ms:
            self._unstarted.append(job)

    async def give_back_starts(self) -> None:
        """Remove the logged starts of admitted jobs that did not run, so no capacity is lost
        (best effort: a start left logged only delays the next ones by its window)."""
        jobs, self._unstarted = self._unstarted, []
        if not jobs:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for job in jobs:
                member = f"{job.id}@{job._admitted_ms}"
                if self.limits.platform:
                    pipe.zrem(keys.rate_log(self.stream), member)
                if self.limits.account and job.envelope.account is not None:
                    pipe.zrem(keys.rate_log(self.stream, job.envelope.account), member)
            with contextlib.suppress(*TRANSIENT_ERRORS):
                await pipe.execute()

    # -- account pauses -------------------------------------------------------------------------

    def pause(self, account: str, reason: str) -> None:
        """A handler paused ``account``: park its jobs already read until the pause is
        recorded and admission takes over."""
        self.pausing_accounts[account] = reason

    def pausing(self, jobs: list[Job]) -> tuple[list[Job], list[tuple[Job, str]]]:
        """Split jobs just admitted: those that may run, and those of accounts a handler is
        pausing, with why (the worker parks them)."""
        keep, parked = [], []
        for job in jobs:
            reason = self.pausing_accounts.get(job.envelope.account or "")
            if reason is None:
                keep.append(job)
            else:
                parked.append((job, reason))
        return keep, parked

    def recorded(self, outcomes: Sequence[codec.Outcome]) -> None:
        """A batch of outcomes is recorded: the pauses among them are in force."""
        for outcome in outcomes:
            if isinstance(outcome, codec.Parked) and outcome.account in self.pausing_accounts:
                self._recorded.add(outcome.account)

    def settle(self) -> list[tuple[str, str]]:
        """Once a pause is recorded and no admission that began before it is still on its
        way, admission parks the account's jobs: returns (account, reason) of those whose
        jobs already read the worker parks now, and stops watching them."""
        if not self._recorded or self._admitting:
            return []
        settled = [(account, self.pausing_accounts.pop(account)) for account in self._recorded]
        self._recorded.clear()
        return settled

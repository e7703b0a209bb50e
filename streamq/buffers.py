"""What a worker holds, per lane: the entries it claimed and the jobs waiting for a consumer.

    held[lane]    entry ids this worker claimed and has not finished (running, or waiting in
                  ``ready``): the refresher keeps their claims fresh. An id is unique only
                  within its lane.
    ready[lane]   fetched jobs waiting for a free consumer, one queue per lane, so a higher
                  lane's job fetched later still starts before a lower lane's fetched earlier
    idle          consumers parked waiting for work

The fetcher and the reclaimer fill it and consumers take from it; each side waits on an event
the other sets (work for the consumers, room for the fetcher).
"""

from __future__ import annotations

from collections import deque

import anyio

from streamq import keys
from streamq.job import Job


class LaneBuffers:
    def __init__(self) -> None:
        self.held: list[set[bytes]] = [set() for _ in keys.LANES]
        self.ready: list[deque[Job]] = [deque() for _ in keys.LANES]
        self.idle = 0
        self.ready_event = anyio.Event()
        """Set (and replaced) when jobs were added: parked consumers look again."""
        self.room_event: anyio.Event | None = None
        """Set when a job leaves this worker's hands, while the fetcher waits for room."""

    @property
    def claimed(self) -> int:
        """Entries held: running, or fetched and waiting for a free consumer."""
        return sum(map(len, self.held))

    def add(self, lane: int, jobs: list[Job]) -> None:
        self.ready[lane].extend(jobs)
        self.wake_consumers()

    def wake_consumers(self) -> None:
        event, self.ready_event = self.ready_event, anyio.Event()
        event.set()

    def let_go(self, job: Job) -> None:
        """The job no longer occupies this worker: stop refreshing its claim, and let the
        fetcher know there is room (it may be waiting for exactly that)."""
        self.held[job._lane].discard(job._entry)
        if self.room_event is not None:
            self.room_event.set()

    def make_room(self) -> None:
        """End the fetcher's wait for room (the worker is stopping)."""
        if self.room_event is not None:
            self.room_event.set()

    def lowest_waiting(self) -> int:
        """The lowest lane (highest number) with jobs waiting; 0 when none wait below the top."""
        return max((lane for lane, jobs in enumerate(self.ready) if jobs), default=0)

    def take_account(self, account: str) -> list[Job]:
        """Remove and return the waiting jobs of ``account``."""
        taken = []
        for lane_jobs in self.ready:
            mine = [job for job in lane_jobs if job.envelope.account == account]
            for job in mine:
                lane_jobs.remove(job)
            taken += mine
        return taken

    def forget(self, entry_ids: list[bytes]) -> None:
        """Entries taken over by another consumer: no longer this worker's to refresh."""
        for entry_id in entry_ids:
            for lane_ids in self.held:
                lane_ids.discard(entry_id)

"""Loads the Lua scripts in ``streamq/lua`` once and calls them by SHA.

Every script lives in its own ``verb_noun.lua`` file whose header lists KEYS, ARGV and the reply.
A line ``-- @include "name.lua"`` is replaced by ``lua/include/name.lua``, so helpers several
scripts need (the server's clock, freeing a dedup key) are written once.
Scripts are sent with EVALSHA; a server that has not seen one (a restart, SCRIPT FLUSH, a new
cluster node) answers NOSCRIPT and the script is loaded and the call repeated.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

EncodableArg = bytes | str | int | float


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    source: bytes
    sha: str

    async def __call__(self, redis: Redis, keys: list[str], args: list[EncodableArg]) -> Any:
        try:
            return await redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await redis.script_load(self.source)
            return await redis.evalsha(self.sha, len(keys), *keys, *args)


def lane_args(by_lane: Sequence[Iterable[bytes]]) -> list[EncodableArg]:
    """Entry ids grouped by lane as the scripts take them: the count of each lane, then the ids."""
    lanes = [list(ids) for ids in by_lane]
    counts: list[EncodableArg] = [len(ids) for ids in lanes]
    return counts + [i for ids in lanes for i in ids]


_INCLUDE = re.compile(rb'^-- @include "([\w.]+)"$', re.MULTILINE)


@cache
def load(name: str) -> Script:
    lua = resources.files("streamq").joinpath("lua")
    source = lua.joinpath(f"{name}.lua").read_bytes()
    source = _INCLUDE.sub(lambda m: lua.joinpath("include", m[1].decode()).read_bytes(), source)
    return Script(name, source, hashlib.sha1(source).hexdigest())


enqueue_jobs = load("enqueue_jobs")
finish_jobs = load("finish_jobs")
promote_due = load("promote_due")
cancel_job = load("cancel_job")
reschedule_job = load("reschedule_job")
replace_job = load("replace_job")
revive_job = load("revive_job")
dead_letter = load("dead_letter")
reclaim_jobs = load("reclaim_jobs")
refresh_claims = load("refresh_claims")
refresh_pending = load("refresh_pending")
release_jobs = load("release_jobs")
retire_consumer = load("retire_consumer")
admit_jobs = load("admit_jobs")
resume_account = load("resume_account")
purge_records = load("purge_records")
sample_counts = load("sample_counts")
lease_token = load("lease_token")
write_token = load("write_token")

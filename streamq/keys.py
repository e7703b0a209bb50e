"""The one place Redis key names are built.

Every key of a stream carries the stream name as a hash tag (``streamq:{instagram}:...``) so all
of one platform's keys live in one Redis Cluster slot and a Lua script may touch them together.

    streamq:streams                      set of stream names ever used (for stats and discovery)
    streamq:{S}:lane:high|normal|low     the ready jobs, one Redis stream per priority lane
    streamq:{S}:dead                     dead letters: entries that will not be run again
    streamq:{S}:keys                     hash: dedup key -> id of the live job holding it
    streamq:{S}:delayed                  sorted set: scheduled jobs and delayed retries, by due ms
    streamq:{S}:job:<id>                 hash: the job's record (state, attempts, times, result)
    streamq:{S}:counts                   hash: counters (expired, ...) and the retrying gauge
    streamq:{S}:control                  stream, capped: wake-ups and cancellations for workers
    streamq:{S}:cron                     hash: recurring schedule name -> its definition
    streamq:{S}:cron:last                hash: recurring schedule name -> last fire time added
"""

from __future__ import annotations

import re
from typing import Final, Literal

PREFIX: Final = "streamq"
GROUP: Final = "streamq"
"""The consumer group every worker of every stream reads through."""

Priority = Literal["high", "normal", "low"]
LANES: Final[tuple[Priority, ...]] = ("high", "normal", "low")
"""Priority lanes, highest first: a worker always drains earlier lanes before later ones."""

STREAM_REGISTRY: Final = f"{PREFIX}:streams"

_STREAM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")


def check_stream_name(name: str) -> str:
    """Return ``name`` if it can be a stream name, else raise ValueError.

    Names are restricted so that a job id (``<stream>:<token>``) names its stream unambiguously
    and so that a name can never break out of its hash tag.
    """
    if not _STREAM_NAME.fullmatch(name):
        raise ValueError(
            f"invalid stream name {name!r}: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


def stream_prefix(stream: str) -> str:
    return f"{PREFIX}:{{{stream}}}"


def lane(stream: str, priority: Priority) -> str:
    return f"{stream_prefix(stream)}:lane:{priority}"


def lanes(stream: str) -> list[str]:
    """All lane keys of a stream, highest priority first."""
    return [lane(stream, p) for p in LANES]


def dead(stream: str) -> str:
    return f"{stream_prefix(stream)}:dead"


def dedup(stream: str) -> str:
    return f"{stream_prefix(stream)}:keys"


def stream_of_job(job_id: str) -> str:
    """The stream a job id belongs to: ids are ``<stream>:<token>``."""
    stream, sep, token = job_id.partition(":")
    if not sep or not token:
        raise ValueError(f"invalid job id {job_id!r}: expected '<stream>:<token>'")
    return check_stream_name(stream)


def delayed(stream: str) -> str:
    return f"{stream_prefix(stream)}:delayed"


def job(stream: str, job_id: str) -> str:
    return f"{stream_prefix(stream)}:job:{job_id}"


def counts(stream: str) -> str:
    return f"{stream_prefix(stream)}:counts"


def control(stream: str) -> str:
    return f"{stream_prefix(stream)}:control"


def cron(stream: str) -> str:
    return f"{stream_prefix(stream)}:cron"


def cron_fired(stream: str) -> str:
    return f"{stream_prefix(stream)}:cron:last"

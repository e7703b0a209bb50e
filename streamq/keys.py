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
    streamq:{S}:control                  stream, capped: wake-ups, cancellations, platform pauses
    streamq:{S}:events                   stream, capped: lifecycle events of the stream's jobs
    streamq:{S}:meta                     hash: settings every writer follows (the events' cap)
    streamq:{S}:cron                     hash: recurring schedule name -> its definition
    streamq:{S}:cron:last                hash: recurring schedule name -> last fire time added
    streamq:{S}:rate:p | rate:a:<A>      sorted set: when jobs were admitted (platform, account A)
    streamq:{S}:plan:p | plan:a:<A>      sorted set: jobs waiting for capacity -> planned time
    streamq:{S}:paused                   hash: 'platform' or 'a:<A>' -> paused until ms (-1: until
                                         resumed); streamq:{S}:paused:why holds the reasons
    streamq:{S}:parked:<A>               sorted set: jobs of paused account A, by enqueue time
    streamq:{S}:turns:<A>                sorted set: A's jobs in the platform's plan (its turn)
    streamq:{S}:held:<A>                 sorted set: A's jobs waiting for that turn, by enqueue time
    streamq:{S}:order:<L>:<A>            sorted set: A's jobs a resume sent back to lane L, and its
                                         later ones waiting behind them, by id (all scored 0)
    streamq:{S}:holding                  sorted set: accounts with held jobs (all scored 0)
    streamq:{S}:due:<A>                  sorted set: A's members of the delayed set, same due ms
                                         (listings of one account's scheduled jobs)
    streamq:{S}:finished:<state>         sorted set: jobs that ended done, cancelled or expired,
                                         by finish ms, for the records' retention (listings)
    streamq:{S}:lateness                 hash: consumer -> its recent lateness summary (health)
    streamq:{S}:workers                  hash: consumer -> its card, rewritten every heartbeat
    streamq:{S}:workers:gone             stream, capped: jobs reclaimed from a consumer, and the
                                         consumers dropped from the group once they owned none
    streamq:{S}:liveness                 hash: 'alive:<C>' -> until when (server ms) consumer C
                                         counts as alive, written by its heartbeat thread;
                                         'fenced:<C>' -> when C's entries were taken from it for
                                         a lapsed heartbeat; 'epoch:run', 'epoch:since',
                                         'epoch:beat' -> the server's run id, when the current
                                         epoch began (a restart, or a gap in the heartbeats) and
                                         the latest heartbeat (streamq.heartbeat)
    streamq:{S}:samples                  sorted set: timestamped copies of the counts (health, top)
    streamq:{S}:series:<minute ms>       hash, 25 h: the counts and depth at the minute's start and
                                         its lateness histogram (the dashboard's charts)
    streamq:{S}:flows:outbox             sorted set: '<job id> <flow id> <step>' of the
                                         stream's flow steps that ended, by finish ms, until
                                         their flow is told
    streamq:{S}:flows:told               sorted set: flows whose end event this stream wrote,
                                         by end ms (each is written once)
    streamq:autoscaler:leader:<S,...>    string: the token of the autoscaler leading those streams;
                                         its :fence counts the leaders (the fencing token)

Tokens (streamq.tokenstore) are kept per account, not per stream, each account's keys under a
hash tag of their own, so one account's record and lease share a Cluster slot:

    streamq:tokens                       set of '<platform>:<account>' with a stored token
    streamq:{token:<P>:<A>}:record       hash: sealed tokens, expiry, scopes, state, version, fence
    streamq:{token:<P>:<A>}:lease        string, expiring: the fence of the one refresh under way

Flows (streamq.flows) span several streams, so several Cluster slots: each flow's own keys
share a hash tag of the flow id (``flow:<token>``), and no script touches a flow and a stream
together:

    streamq:{flow:<F>}:flow              hash: the flow's steps (spec), each step's state, result
                                         and error, the flow's state and its counters
    streamq:{flowkey:<K>}                string: the id of the flow that dedup key K names

A stream split into partitions (``partitions = N`` in its config) is N such streams, named
``S:0`` ... ``S:N-1``: each has every key above under its own hash tag (``{instagram:3}``),
so partitions spread over a cluster's shards while each one's keys stay in one slot.

The per-account keys (``rate:a:``, ``plan:a:``, ``parked:``, ``turns:``, ``held:``, ``due:``), the
``finished:`` sets and the records
of jobs a script finds by id are built inside the scripts from ``script_prefix`` (an account is
only known once a job is read), by the functions of one include, ``lua/include/stream_keys.lua``;
they share the stream's hash tag, so they live in the same slot. ``tests/test_keys.py`` holds
each of those functions to the one here, checks no script builds a name anywhere else, and
holds the docs' data-layout table (docs/concepts.md) to this module.
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
"""Set of every stream name ever used (for stats and discovery)."""
TOKEN_REGISTRY: Final = f"{PREFIX}:tokens"
"""Set of '<platform>:<account>' with a stored token (streamq.tokenstore)."""

_STREAM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}(:[0-9]{1,4})?")
_PARTITION_SUFFIX = re.compile(r":([0-9]{1,4})$")
MAX_PARTITIONS: Final = 1024


MAX_ACCOUNT_LENGTH: Final = 200
MAX_KEY_LENGTH: Final = 512


def check_key(key: str) -> str:
    """Return ``key`` if it can be a job's dedup key, else raise ValueError."""
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise ValueError(
            f"invalid job key {key[:40]!r}: use 1-{MAX_KEY_LENGTH} printable characters"
        )
    return key


def check_account(account: str) -> str:
    """Return ``account`` if it can name an account, else raise ValueError."""
    if not account or len(account) > MAX_ACCOUNT_LENGTH or not account.isprintable():
        raise ValueError(
            f"invalid account {account!r}: use 1-{MAX_ACCOUNT_LENGTH} printable characters"
        )
    return account


def check_stream_name(name: str) -> str:
    """Return ``name`` if it can be a stream name, else raise ValueError.

    Names are restricted so that a job id (``<stream>:<token>``) names its stream unambiguously
    and so that a name can never break out of its hash tag. ``S:<n>`` names partition n of S.
    """
    if not _STREAM_NAME.fullmatch(name):
        raise ValueError(
            f"invalid stream name {name!r}: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit (and ':<n>' for one of its partitions)"
        )
    return name


def partition(stream: str, index: int) -> str:
    """The name of partition ``index`` of ``stream``."""
    return f"{stream}:{index}"


def partitions(stream: str, count: int) -> list[str]:
    """The streams that hold ``stream``'s jobs: itself, or its ``count`` partitions."""
    return [stream] if count <= 1 else [partition(stream, i) for i in range(count)]


def base_stream(name: str) -> str:
    """The stream a partition belongs to (a stream that is not a partition is its own)."""
    return _PARTITION_SUFFIX.sub("", name)


def partition_index(name: str) -> int | None:
    """Which partition ``name`` is, or None for a stream that is not split."""
    found = _PARTITION_SUFFIX.search(name)
    return None if found is None else int(found[1])


def stream_prefix(stream: str) -> str:
    return f"{PREFIX}:{{{stream}}}"


def script_prefix(stream: str) -> str:
    """What scripts build per-account key names from: ``streamq:{S}:``."""
    return f"{stream_prefix(stream)}:"


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
    """The stream (or partition) a job id belongs to: ids are ``<stream>:<token>``, and tokens
    hold no colon."""
    stream, sep, token = job_id.rpartition(":")
    if not sep or not token or not stream:
        raise ValueError(f"invalid job id {job_id!r}: expected '<stream>:<token>'")
    return check_stream_name(stream)


def delayed(stream: str) -> str:
    return f"{stream_prefix(stream)}:delayed"


def job(stream: str, job_id: str) -> str:
    return f"{stream_prefix(stream)}:job:{job_id}"


def counts(stream: str) -> str:
    return f"{stream_prefix(stream)}:counts"


def lateness(stream: str) -> str:
    return f"{stream_prefix(stream)}:lateness"


def workers(stream: str) -> str:
    """The cards of the stream's workers (streamq.workers), by consumer name."""
    return f"{stream_prefix(stream)}:workers"


def workers_gone(stream: str) -> str:
    """What reclaim_jobs took from which consumer, and the consumers it dropped."""
    return f"{stream_prefix(stream)}:workers:gone"


def liveness(stream: str) -> str:
    """Which consumers are alive by their heartbeat threads, which lost their entries to a
    lapsed heartbeat (the fence), and the server's epoch (streamq.heartbeat)."""
    return f"{stream_prefix(stream)}:liveness"


def samples(stream: str) -> str:
    return f"{stream_prefix(stream)}:samples"


def series(stream: str, minute_ms: int) -> str:
    """One minute of the stream's time series (streamq.series): a key per minute, so it expires
    on its own after a day and the series stays bounded without any trimming."""
    return f"{stream_prefix(stream)}:series:{minute_ms}"


def control(stream: str) -> str:
    return f"{stream_prefix(stream)}:control"


def events(stream: str) -> str:
    return f"{stream_prefix(stream)}:events"


def meta(stream: str) -> str:
    """The stream's settings shared by every process (the events' cap), from its workers."""
    return f"{stream_prefix(stream)}:meta"


def cron(stream: str) -> str:
    return f"{stream_prefix(stream)}:cron"


def cron_fired(stream: str) -> str:
    return f"{stream_prefix(stream)}:cron:last"


def rate_log(stream: str, account: str | None = None) -> str:
    scope = "p" if account is None else f"a:{account}"
    return f"{stream_prefix(stream)}:rate:{scope}"


def plan(stream: str, account: str | None = None) -> str:
    scope = "p" if account is None else f"a:{account}"
    return f"{stream_prefix(stream)}:plan:{scope}"


def paused(stream: str) -> str:
    return f"{stream_prefix(stream)}:paused"


def pause_reasons(stream: str) -> str:
    """Why the platform or an account is paused: the reason of each field of ``paused``."""
    return f"{stream_prefix(stream)}:paused:why"


def parked(stream: str, account: str) -> str:
    return f"{stream_prefix(stream)}:parked:{account}"


def turns(stream: str, account: str) -> str:
    return f"{stream_prefix(stream)}:turns:{account}"


def held(stream: str, account: str) -> str:
    return f"{stream_prefix(stream)}:held:{account}"


def holding(stream: str) -> str:
    """The accounts that have jobs in their held set: what a listing of held jobs merges."""
    return f"{stream_prefix(stream)}:holding"


def due(stream: str, account: str) -> str:
    """Account's jobs in the delayed set (scheduled, deferred, retrying), with the same scores:
    what a listing of one account's scheduled jobs pages through."""
    return f"{stream_prefix(stream)}:due:{account}"


def finished(stream: str, state: str) -> str:
    """Jobs that ended in ``state`` (done, cancelled, expired), by finish time, kept as long as
    their records: what a listing of finished jobs pages through."""
    return f"{stream_prefix(stream)}:finished:{state}"


def order(stream: str, lane: Priority, account: str) -> str:
    """The account's jobs a resume sent back to ``lane``, and those waiting behind them."""
    return f"{stream_prefix(stream)}:order:{lane}:{account}"


def autoscaler_leader(streams: list[str]) -> str:
    """The lock of the autoscaler leading ``streams`` (one lock per set of streams)."""
    return f"{PREFIX}:autoscaler:leader:" + ",".join(sorted(streams))


def autoscaler_fence(streams: list[str]) -> str:
    """The counter that numbers each new leader of ``streams`` (its fencing token)."""
    return f"{autoscaler_leader(streams)}:fence"


def pause_field(account: str | None) -> str:
    """The field of the paused hash for an account, or for the whole platform (None)."""
    return "platform" if account is None else f"a:{account}"


def token_prefix(platform: str, account: str) -> str:
    """The hash tag shared by one account's token keys."""
    return f"{PREFIX}:{{token:{platform}:{account}}}"


def token_record(platform: str, account: str) -> str:
    return f"{token_prefix(platform, account)}:record"


def token_lease(platform: str, account: str) -> str:
    return f"{token_prefix(platform, account)}:lease"


def token_member(platform: str, account: str) -> str:
    """How TOKEN_REGISTRY names an account (platforms have no ':')."""
    return f"{platform}:{account}"


def flow_outbox(stream: str) -> str:
    """The stream's flow steps that ended and whose flow may not have been told yet: written
    by finish_jobs in the step's own atomic finish, drained (idempotently) by streamq.flows."""
    return f"{stream_prefix(stream)}:flows:outbox"


def flow(flow_id: str) -> str:
    """A flow's record; its hash tag is the flow id, so it has a Cluster slot of its own."""
    return f"{PREFIX}:{{{flow_id}}}:flow"


def flow_key(key: str) -> str:
    """Which flow a flow's dedup key names (a string, under a hash tag of the key)."""
    return f"{PREFIX}:{{flowkey:{key}}}"


def flows_told(stream: str) -> str:
    """Flows whose end event the stream's events hold already: announce_flow writes it once."""
    return f"{stream_prefix(stream)}:flows:told"

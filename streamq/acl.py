"""The least-privilege ACL rules of each kind of streamq client, as docs/security.md gives them.

Every role may touch streamq's keys only (``~streamq:*``) and no pub/sub channel, and may run
only the commands it needs; scripts run their commands with the caller's permissions, so the
commands inside them are listed too. The test suite runs producers, workers and the
autoscaler under exactly these users (tests/test_acl.py).
"""

from __future__ import annotations

from typing import Final

_COMMON: Final = (
    "resetkeys ~streamq:* resetchannels -@all "
    "+ping +hello +info +time +evalsha +script|load +multi +exec +discard "
    # A cluster client learns the slot map and the command table (for the keys' positions).
    "+cluster|slots +command"
)
_READ_STREAMS: Final = (
    "+xrange +xrevrange +xread +xlen +xpending +xinfo|stream +xinfo|groups +xinfo|consumers"
)
_JOBS: Final = (
    "+xadd +xdel +xack +xreadgroup +xgroup|create +xtrim "
    "+hset +hsetnx +hget +hmget +hgetall +hdel +hincrby +hlen +exists +pexpire +persist +del "
    "+zadd +zrem +zrange +zrangebyscore +zscore +zcard +zcount +zremrangebyscore "
    "+sadd +smembers +sismember"
)

ROLES: Final = {
    # Apps that enqueue and steer jobs and read stats and events; also `streamq admin`.
    "producer": f"{_COMMON} {_READ_STREAMS} {_JOBS} +hkeys +hvals +scan",
    # `streamq consume`, and `streamq autoscale --target local` (its workers share its URL).
    # +set +pttl: the token store's refresh lease (lease_token.lua); +hexists: the health
    # report's per-minute series (record_minute.lua).
    "worker": f"{_COMMON} {_READ_STREAMS} {_JOBS} "
    "+xautoclaim +xclaim +xgroup|createconsumer +xgroup|delconsumer +set +pttl +hexists",
    # `streamq autoscale --target kubernetes`: it reads figures and holds its leader lock.
    "autoscaler": f"{_COMMON} {_READ_STREAMS} "
    "+set +get +incr +incrby +pexpire +del +hmget +hget +zcount +zcard +smembers +sismember",
}
"""Role -> the ACL SETUSER rules after ``on >password``."""

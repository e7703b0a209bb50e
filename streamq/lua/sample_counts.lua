--[[ sample_counts: keep a timestamped copy of a stream's outcome counts, at most one per interval.

KEYS[1]     counts hash          streamq:{S}:counts
KEYS[2]     samples sorted set   streamq:{S}:samples
ARGV[1]     least time between two samples, ms
ARGV[2]     how long samples are kept, ms
Every worker calls this every few seconds; only the first call of each interval adds a sample,
so the set holds one sample per interval whatever the number of workers. A member is
'<ms>:<done>:<retried>:<dead>' scored by the server's ms: `streamq health` and `streamq top`
subtract an older sample from the current counts to get rates over a recent window.
Returns 1 when a sample was added, 0 when the last one is recent enough.
]]
-- @include "server_now.lua"
local now = server_now_ms()
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
if last[2] and now - tonumber(last[2]) < tonumber(ARGV[1]) then
  return 0
end
local c = redis.call('HMGET', KEYS[1], 'done', 'retried', 'dead')
redis.call('ZADD', KEYS[2], now,
  now .. ':' .. (c[1] or 0) .. ':' .. (c[2] or 0) .. ':' .. (c[3] or 0))
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1

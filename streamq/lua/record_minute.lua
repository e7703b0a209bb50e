--[[ record_minute: add to one minute of a stream's time series (streamq.series).

KEYS[1]     counts hash                 streamq:{S}:counts
KEYS[2]     the minute's series hash    streamq:{S}:series:<minute ms>
KEYS[3..5]  lanes high, normal, low     streamq:{S}:lane:<priority>
ARGV[1]     how long the minute is kept, ms
ARGV[2]     the consumer group
ARGV[3..]   lateness histogram buckets seen since the caller's last call: index, count pairs
Every worker calls this every few seconds. The first call of a minute copies the outcome
counters (done, retried, dead) and the depth (waiting plus in flight, as `streamq stats`
counts it) into the minute's hash with the server's time ('at'), so the runs of a minute are
the next copy's counters minus this one's, whatever the number of workers; every call adds
its lateness buckets ('l<index>'), which readers merge into a percentile. The key expires
ARGV[1] after its last write: the series is bounded without trimming.
Returns 1 when this call copied the counters, 0 when an earlier call of the minute did.
]]
-- @include "server_now.lua"
local minute = KEYS[2]
local copied = 0
if redis.call('HEXISTS', minute, 'at') == 0 then
  local c = redis.call('HMGET', KEYS[1], 'done', 'retried', 'dead')
  local depth = 0
  for i = 3, 5 do
    local length = redis.call('XLEN', KEYS[i])
    local pending = 0
    if length > 0 then
      -- A lane whose group is not made yet has nothing in flight.
      local summary = redis.pcall('XPENDING', KEYS[i], ARGV[2])
      if type(summary) == 'table' and summary[1] then
        pending = tonumber(summary[1])
      end
    end
    depth = depth + math.max(length, pending)
  end
  redis.call('HSET', minute, 'at', server_now_ms(), 'done', c[1] or 0, 'retried', c[2] or 0,
    'dead', c[3] or 0, 'depth', depth)
  copied = 1
end
for i = 3, #ARGV, 2 do
  redis.call('HINCRBY', minute, 'l' .. ARGV[i], ARGV[i + 1])
end
redis.call('PEXPIRE', minute, ARGV[1])
return copied

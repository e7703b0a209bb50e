--[[ ack_jobs: acknowledge finished entries, delete them, and free their dedup keys.

KEYS[1..L]  lane streams, highest priority first
KEYS[L+1]   dedup hash
ARGV[1]     consumer group
ARGV[2..L+1] number of entry ids given for each lane
ARGV[...]   the entry ids, lane by lane
ARGV[...]   pairs of (dedup key, job id) to free; a key is only freed while it still names that job

Acknowledged entries are deleted at once, so a stream holds only waiting and in-flight entries:
its length is the depth and its memory stays flat however many jobs pass through.
Returns the number of entries acknowledged.
]]
local lanes = #KEYS - 1
local dedup = KEYS[lanes + 1]
local group = ARGV[1]
local at = lanes + 2
local acked = 0
for l = 1, lanes do
  local n = tonumber(ARGV[l + 1])
  local i = 0
  while i < n do
    -- unpack() is bounded by the Lua C stack, so large batches go in slices.
    local last = at + math.min(n - i, 1000) - 1
    acked = acked + redis.call('XACK', KEYS[l], group, unpack(ARGV, at + i, last))
    redis.call('XDEL', KEYS[l], unpack(ARGV, at + i, last))
    i = last - at + 1
  end
  at = at + n
end
for k = at, #ARGV, 2 do
  if redis.call('HGET', dedup, ARGV[k]) == ARGV[k + 1] then
    redis.call('HDEL', dedup, ARGV[k])
  end
end
return acked

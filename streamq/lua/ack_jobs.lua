--[[ ack_jobs: acknowledge finished entries, delete them, and free their dedup keys.

KEYS[1..L]  lane streams, highest priority first
KEYS[L+1]   dedup hash
ARGV[1]     consumer group
ARGV[2..L+1] for each lane, its entry ids joined by single spaces ('' for none)
ARGV[...]   pairs of (dedup key, job id) to free; a key is only freed while it still names that job

The ids of a lane travel as one argument because this is the hot path: one string costs the
client a join instead of packing thousands of arguments, and splitting it here is cheap.
Acknowledged entries are deleted at once, so a stream holds only waiting and in-flight entries:
its length is the depth and its memory stays flat however many jobs pass through.
Returns the number of entries acknowledged.
]]
local lanes = #KEYS - 1
local dedup = KEYS[lanes + 1]
local group = ARGV[1]
local acked = 0

local function ack(lane, ids)
  acked = acked + redis.call('XACK', lane, group, unpack(ids))
  redis.call('XDEL', lane, unpack(ids))
end

for l = 1, lanes do
  local ids = {}
  for id in string.gmatch(ARGV[l + 1], '%S+') do
    ids[#ids + 1] = id
    -- unpack() is bounded by the Lua C stack, so large batches go in slices.
    if #ids == 1000 then
      ack(KEYS[l], ids)
      ids = {}
    end
  end
  if #ids > 0 then
    ack(KEYS[l], ids)
  end
end
for k = lanes + 2, #ARGV, 2 do
  if redis.call('HGET', dedup, ARGV[k]) == ARGV[k + 1] then
    redis.call('HDEL', dedup, ARGV[k])
  end
end
return acked

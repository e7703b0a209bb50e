--[[ refresh_pending: keep fresh every entry pending for one consumer, from the heartbeat
thread of a worker whose event loop is stalled.

KEYS[1..L]  lane streams, highest priority first
ARGV[1]     consumer group
ARGV[2]     consumer name
ARGV[3]     most entries looked at per lane

Unlike refresh_claims, it takes no list of ids: a stalled loop may hold entries it has not seen
yet (delivered into a blocking read whose reply it has not processed) and finished ones it has
not acknowledged; all are this consumer's, and it will deal with them once it runs again.
XCLAIM ... JUSTID resets their idle time without counting a delivery.
Returns the number of entries refreshed.
]]
local group, consumer, most = ARGV[1], ARGV[2], tonumber(ARGV[3])
local refreshed = 0
for l = 1, #KEYS do
  local pending = redis.call('XPENDING', KEYS[l], group, '-', '+', most, consumer)
  local ids = {}
  for i, entry in ipairs(pending) do
    ids[i] = entry[1]
  end
  -- unpack() is bounded by the Lua C stack, so claims go in slices.
  for first = 1, #ids, 1000 do
    local slice = { unpack(ids, first, math.min(first + 999, #ids)) }
    slice[#slice + 1] = 'JUSTID'
    redis.call('XCLAIM', KEYS[l], group, consumer, 0, unpack(slice))
  end
  refreshed = refreshed + #ids
end
return refreshed

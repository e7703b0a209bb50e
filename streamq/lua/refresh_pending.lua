--[[ refresh_pending: keep a stalled worker's entries fresh, from its heartbeat thread.

KEYS[1..L]   lane streams, highest priority first
ARGV[1]      consumer group
ARGV[2]      consumer name
ARGV[3]      how long the loop has been stalled, ms
ARGV[4..L+3] number of entry ids given for each lane (those the loop holds or has not yet
             acknowledged)
ARGV[...]    the entry ids, lane by lane

Refreshed: the ids given that this consumer still owns, and every entry pending for it that was
delivered (or refreshed) after the stall began: a blocking read the stalled loop had sent
receives entries it has not seen yet. An entry older than the stall that the loop does not hold
is left to age (its read's reply was lost; another worker reclaims it as usual).
XCLAIM ... JUSTID resets the idle time without counting a delivery.
Returns the number of entries refreshed.
]]
local lanes = #KEYS
local group, consumer, stalled_ms = ARGV[1], ARGV[2], tonumber(ARGV[3])
local at = lanes + 4
local refreshed = 0
for l = 1, lanes do
  local mine, seen = {}, {}
  for _, entry in ipairs(redis.call('XPENDING', KEYS[l], group, '-', '+', 100000, consumer)) do
    seen[entry[1]] = true
    if entry[3] <= stalled_ms then
      mine[#mine + 1] = entry[1]
      seen[entry[1]] = false
    end
  end
  local n = tonumber(ARGV[l + 3])
  for i = at, at + n - 1 do
    if seen[ARGV[i]] then
      mine[#mine + 1] = ARGV[i]
      seen[ARGV[i]] = false
    end
  end
  at = at + n
  -- unpack() is bounded by the Lua C stack, so claims go in slices.
  for first = 1, #mine, 1000 do
    local slice = { unpack(mine, first, math.min(first + 999, #mine)) }
    slice[#slice + 1] = 'JUSTID'
    redis.call('XCLAIM', KEYS[l], group, consumer, 0, unpack(slice))
  end
  refreshed = refreshed + #mine
end
return refreshed

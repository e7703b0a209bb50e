--[[ refresh_claims: keep a live worker's claims fresh so nobody reclaims a job still running.

KEYS[1..L]  lane streams, highest priority first
ARGV[1]     consumer group
ARGV[2]     consumer name
ARGV[3..L+2] number of entry ids given for each lane
ARGV[...]   the entry ids, lane by lane

Only entries this consumer still owns are touched (XCLAIM ... JUSTID resets their idle time
without counting a delivery); an entry another consumer has taken over is left with it.
Returns the ids, over all lanes, that this consumer no longer owns.
]]
local lanes = #KEYS
local group, consumer = ARGV[1], ARGV[2]
local at = lanes + 3
local lost = {}
for l = 1, lanes do
  local n = tonumber(ARGV[l + 2])
  local mine = {}
  for i = at, at + n - 1 do
    local pending = redis.call('XPENDING', KEYS[l], group, ARGV[i], ARGV[i], 1)
    if pending[1] and pending[1][2] == consumer then
      mine[#mine + 1] = ARGV[i]
    else
      lost[#lost + 1] = ARGV[i]
    end
  end
  -- unpack() is bounded by the Lua C stack, so claims go in slices.
  for first = 1, #mine, 1000 do
    local slice = { unpack(mine, first, math.min(first + 999, #mine)) }
    slice[#slice + 1] = 'JUSTID'
    redis.call('XCLAIM', KEYS[l], group, consumer, 0, unpack(slice))
  end
  at = at + n
end
return lost

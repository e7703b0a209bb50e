--[[ reclaim_jobs: take over entries whose consumer has gone quiet for too long.

KEYS[1..L]  lane streams, highest priority first
ARGV[1]     consumer group
ARGV[2]     consumer name (the new owner)
ARGV[3]     minimum idle time in ms (the visibility timeout)
ARGV[4]     how many entries at most, over all lanes (0 claims nothing: a heartbeat only)
ARGV[5..]   the XAUTOCLAIM cursor of each lane ('0-0' to start over)

The budget is spent from the highest lane down, so a busy worker never takes more than it can
run. With none left it still touches the group (a claim that can match nothing), which keeps
it counted as alive.
Returns one item per lane: { next cursor, entries, delivery counts }, where entries is
XAUTOCLAIM's list of {entry id, fields} and delivery counts[i] is how many times entries[i] has
now been delivered (this claim included), so the caller can dead-letter crash loops.
]]
local group, consumer, min_idle = ARGV[1], ARGV[2], ARGV[3]
local budget = tonumber(ARGV[4])
local out = {}
for l = 1, #KEYS do
  local reply
  if budget > 0 then
    reply = redis.call('XAUTOCLAIM', KEYS[l], group, consumer, min_idle, ARGV[4 + l],
      'COUNT', budget)
  else
    -- An idle time no entry can have: claims nothing, refreshes the consumer's seen-time.
    reply = redis.call('XAUTOCLAIM', KEYS[l], group, consumer, 9007199254740991, '0-0',
      'COUNT', 1)
    reply[1] = ARGV[4 + l]
  end
  local entries = reply[2]
  local deliveries = {}
  for i, entry in ipairs(entries) do
    local pending = redis.call('XPENDING', KEYS[l], group, entry[1], entry[1], 1)
    deliveries[i] = pending[1] and pending[1][4] or 1
  end
  budget = budget - #entries
  out[l] = { reply[1], entries, deliveries }
end
return out

--[[ claim_flow_key: make a dedup key name a flow, unless it names another one.

KEYS[1]  the key's slot          streamq:{flowkey:<K>}
ARGV[1]  the flow id to claim it for
ARGV[2]  '' to claim a free key; or the id of a flow the caller found finished: the key is
         taken from it only if it still names that flow (two producers cannot both take it)
ARGV[3]  how long the claim lasts, ms (the flows' retention)

Returns the id the key names after the call: ARGV[1] when claimed, else the holder's.
]]
local slot, flow, finished = KEYS[1], ARGV[1], ARGV[2]
local holder = redis.call('GET', slot)
if holder and holder ~= finished then
  return holder
end
redis.call('SET', slot, flow, 'PX', ARGV[3])
return flow

--[[ mark_flow_released: note that a drain enqueued these steps of a flow.

KEYS[1]  the flow's record       streamq:{flow:<F>}:flow
ARGV...  step names

A step still 'releasing' becomes 'released' and its held envelope is dropped (its job record
has it now); a step in any other state (already final, or cancelled meanwhile) is left alone.
Returns the names of the steps cancelled meanwhile (cancel_flow ran between the drain's read
and this call): the drain has just enqueued their jobs, and cancels them.
]]
local record = KEYS[1]
local cancelled = {}
for _, name in ipairs(ARGV) do
  local state = redis.call('HGET', record, 's:' .. name)
  if state == 'releasing' then
    redis.call('HSET', record, 's:' .. name, 'released')
    redis.call('HDEL', record, 'env:' .. name)
  elseif state == 'cancelled' then
    cancelled[#cancelled + 1] = name
  end
end
return cancelled

--[[ mark_flow_released: note that a drain enqueued these steps of a flow.

KEYS[1]  the flow's record       streamq:{flow:<F>}:flow
ARGV...  step names

A step still 'releasing' becomes 'released' and its held envelope is dropped (its job record
has it now); a step in any other state (already final, or cancelled meanwhile) is left alone.
Returns how many were marked.
]]
local record = KEYS[1]
local marked = 0
for _, name in ipairs(ARGV) do
  if redis.call('HGET', record, 's:' .. name) == 'releasing' then
    redis.call('HSET', record, 's:' .. name, 'released')
    redis.call('HDEL', record, 'env:' .. name)
    marked = marked + 1
  end
end
return marked

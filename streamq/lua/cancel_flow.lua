--[[ cancel_flow: cancel every step of a flow that has not been enqueued yet.

KEYS[1]  the flow's record       streamq:{flow:<F>}:flow
ARGV[1]  retention of the finished flow's record, ms

Held and releasing steps become 'cancelled' (a drain enqueues only 'releasing' ones, so none
of them will run); the flow is marked so that it ends 'cancelled'. Steps already enqueued are
returned for the caller to cancel through their own streams (cancel_job: another slot); their
outcomes reach the flow as any step's do. The on_complete step still runs once every step is
final.
Returns { the flow's state, 1 if this call ended the flow else 0, job ids of enqueued steps
not final... }; false when the record is gone.
]]
-- @include "server_now.lua"
-- @include "flow_state.lua"
local record = KEYS[1]
local spec = flow_spec(record)
if not spec then
  return false
end
local now = server_now_ms()
local left = tonumber(redis.call('HGET', record, 'left'))
local enqueued = {}
if redis.call('HGET', record, 'state') == 'running' then
  redis.call('HSET', record, 'cancel', now)
end
for _, step in ipairs(spec.steps) do
  local state = step_state(record, step.name)
  if not step.last and (state == 'held' or state == 'releasing') then
    redis.call('HSET', record, 's:' .. step.name, 'cancelled', 'e:' .. step.name,
      'cancelled with its flow')
    redis.call('HDEL', record, 'env:' .. step.name)
    left = left - 1
  elseif not step.last and state == 'released' then
    enqueued[#enqueued + 1] = step.job
  end
end
redis.call('HSET', record, 'left', left)
local ended = finish_flow(record, spec, left, now)
expire_when_final(record, spec, ARGV[1])
return { redis.call('HGET', record, 'state'), ended, unpack(enqueued) }

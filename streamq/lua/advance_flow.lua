--[[ advance_flow: tell a flow that one of its steps ended, and release what that allows.

KEYS[1]  the flow's record       streamq:{flow:<F>}:flow
ARGV[1]  the step's name
ARGV[2]  its final state: 'done', 'failed' or 'cancelled'
ARGV[3]  its result as JSON, or ''
ARGV[4]  its error, or ''
ARGV[5]  retention of the finished flow's record, ms

Idempotent: a step already final is left as it is, so a drain repeated after a crash (or run
by two workers at once) changes nothing twice. Otherwise the step's state, result and error
are written, and each held step after it is decided: cancelled (with its own dependents, in
turn) when a step it is after was cancelled or failed with on_failure 'fail_flow'; released
('releasing') once every step it is after is final. When no counted step is left, the flow
ends (flow_state.lua) and its on_complete step is released, once.
Returns { the flow's state, 1 if this call ended the flow else 0 }; { '', 0 } when the record
is gone.
]]
-- @include "server_now.lua"
-- @include "flow_state.lua"
local record, name, outcome = KEYS[1], ARGV[1], ARGV[2]
local spec = flow_spec(record)
if not spec then
  return { '', 0 }
end
local step = spec.by_name[name]
if not step or FINAL[step_state(record, name)] then
  return { redis.call('HGET', record, 'state'), 0 }
end
local now = server_now_ms()
local left = tonumber(redis.call('HGET', record, 'left'))
redis.call('HSET', record, 's:' .. name, outcome)
if ARGV[3] ~= '' then
  redis.call('HSET', record, 'r:' .. name, ARGV[3])
end
if ARGV[4] ~= '' then
  redis.call('HSET', record, 'e:' .. name, ARGV[4])
end
redis.call('HDEL', record, 'env:' .. name)
if not step.last then
  left = left - 1
end

-- Whether a final step keeps the steps after it from running.
local function stops_dependents(before)
  local state = step_state(record, before)
  return state == 'cancelled'
    or (state == 'failed' and spec.by_name[before].on_failure == 'fail_flow')
end

local todo = { name }
while #todo > 0 do
  local ended = table.remove(todo)
  for _, dependent in ipairs(spec.dependents[ended]) do
    if step_state(record, dependent) == 'held' then
      local stopped_by, ready = nil, true
      for _, before in ipairs(spec.by_name[dependent].after) do
        if not FINAL[step_state(record, before)] then
          ready = false
        elseif stops_dependents(before) then
          stopped_by = before
        end
      end
      if stopped_by then
        redis.call('HSET', record, 's:' .. dependent, 'cancelled', 'e:' .. dependent,
          'not run: step ' .. stopped_by .. ' ' .. step_state(record, stopped_by))
        redis.call('HDEL', record, 'env:' .. dependent)
        left = left - 1
        todo[#todo + 1] = dependent
      elseif ready then
        redis.call('HSET', record, 's:' .. dependent, 'releasing')
      end
    end
  end
end
redis.call('HSET', record, 'left', left)
local ended = finish_flow(record, spec, left, now)
expire_when_final(record, spec, ARGV[5])
return { redis.call('HGET', record, 'state'), ended }

--[[ create_flow: write a new flow's record: its steps, held or due to be released.

KEYS[1]  the flow's record       streamq:{flow:<F>}:flow
ARGV[1]  the spec, JSON: { steps = [ { name, job, stream, priority, after = [names],
         on_failure, due, last } ], on_complete = name or null }
ARGV[2]  the envelopes, JSON: step name -> the step's envelope (JSON text, without results)
ARGV[3]  run_at ms, or 0
ARGV[4]  the flow's dedup key, or ''

Steps after nothing are 'releasing' (a drain enqueues them, at their due time); the others
'held', and the on_complete step too. A record that exists is left as it is: the same flow
id sent again (a retry of an enqueue whose answer was lost, or a second producer adopting a
claimed key) creates nothing twice.
Returns 1 when created, 0 when the record existed.
]]
-- @include "server_now.lua"
local record = KEYS[1]
if redis.call('EXISTS', record) == 1 then
  return 0
end
local spec = cjson.decode(ARGV[1])
local envelopes = cjson.decode(ARGV[2])
local left = 0
local fields = { 'spec', ARGV[1], 'state', 'running', 'created_at', server_now_ms(),
  'run_at', ARGV[3] }
for _, step in ipairs(spec.steps) do
  local state = 'held'
  if not step.last then
    left = left + 1
    if #step.after == 0 then
      state = 'releasing'
    end
  end
  fields[#fields + 1], fields[#fields + 2] = 's:' .. step.name, state
  fields[#fields + 1], fields[#fields + 2] = 'env:' .. step.name, envelopes[step.name]
end
fields[#fields + 1], fields[#fields + 2] = 'left', left
if ARGV[4] ~= '' then
  fields[#fields + 1], fields[#fields + 2] = 'key', ARGV[4]
end
redis.call('HSET', record, unpack(fields))
return 1

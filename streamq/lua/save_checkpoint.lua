--[[ save_checkpoint: keep one step's result in a job's record, for the job's later runs.

KEYS[1]  the job's record
ARGV[1]  the checkpoint's name
ARGV[2]  its value

The record's 'checkpoints' field is a JSON object, name -> value: a later attempt, a
redelivery after a crash, `dead replay` and `job retry` all read it at their start (start_jobs)
and resume from the step it names instead of starting over. Nothing but this script writes it,
and nothing clears it while the record lives. A record that is gone (its retention passed, or
the job never had one) is not created.
Returns the checkpoints as JSON after the write, or false when the record is gone.
]]
local record, name, value = KEYS[1], ARGV[1], ARGV[2]
if redis.call('EXISTS', record) == 0 then
  return false
end
local saved = redis.call('HGET', record, 'checkpoints')
local checkpoints = saved and cjson.decode(saved) or {}
checkpoints[name] = value
local text = cjson.encode(checkpoints)
redis.call('HSET', record, 'checkpoints', text)
return text

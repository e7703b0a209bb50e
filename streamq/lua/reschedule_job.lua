--[[ reschedule_job: move a waiting job to another due time.

KEYS[1]  the job's record
KEYS[2]  delayed set
KEYS[3]  control stream
KEYS[4]  events stream
KEYS[5]  stream settings (the events' cap)
ARGV[1]  job id
ARGV[2]  new due time, ms
ARGV[3]  the job's envelope re-encoded with the new due time
ARGV[4]  the envelope that was read to make ARGV[3]
ARGV[5]  key prefix of the stream, 'streamq:{S}:'

Only a scheduled or retrying job can move (in the delayed set and its account's due index); wakes workers when it becomes the earliest. If the
envelope changed since it was read (a retry or a replace landed in between), nothing is
written and 'changed' comes back, so the caller reads again rather than writing an old one.
A job waiting for rate-limit capacity leaves the plans: it passes the limits again when due.
A job moved appends a 'scheduled' event with its new due time.
Returns the job's state, 'changed', or false when there is no record.
]]
-- @include "stream_keys.lua"
-- @include "tell_workers.lua"
-- @include "delayed_head.lua"
-- @include "server_now.lua"
-- @include "emit_event.lua"
-- @include "release_held.lua"
-- @include "stored_envelope.lua"
local record, delayed, control = KEYS[1], KEYS[2], KEYS[3]
local id, due = ARGV[1], ARGV[2]
local state = redis.call('HGET', record, 'state')
if state ~= 'scheduled' and state ~= 'retrying' then
  return state
end
if redis.call('HGET', record, 'env') ~= ARGV[4] then
  return 'changed'
end
local head = delayed_head_ms(delayed)
redis.call('ZADD', delayed, 'XX', due, id)
local f = redis.call('HMGET', record, 'account', 'attempt', 'key')
if f[1] then
  redis.call('ZADD', due_key(ARGV[5], f[1]), 'XX', due, id)
end
forget_waiting(ARGV[5], id, f[1])
redis.call('HSET', record, 'run_at', due, 'env', scheduled_envelope(id, ARGV[3]))
emit_event(KEYS[4], events_settings(KEYS[5]), 'scheduled', id, server_now_ms(), f[2], f[3], f[1],
  { 'run_at', due })
if tonumber(due) < head then
  tell_workers(control, 'w', due)
end
return state

--[[ reschedule_job: move a waiting job to another due time.

KEYS[1]  the job's record
KEYS[2]  delayed set
KEYS[3]  control stream
KEYS[4]  events stream
KEYS[5]  stream settings (the events' cap)
KEYS[6]  counts hash
ARGV[1]  job id
ARGV[2]  new due time, ms
ARGV[3]  the job's envelope re-encoded with the new due time
ARGV[4]  the envelope that was read to make ARGV[3] (from the record, or from its entry when
         it is queued)
ARGV[5]  key prefix of the stream, 'streamq:{S}:'
ARGV[6]  consumer group

Only a scheduled or retrying job can move (in the delayed set and its account's due index); wakes workers when it becomes the earliest. A queued job
that is not due yet (its envelope's 'r' is later than TIME: promote_due.lua promoted it ahead)
moves too: its entry is deleted (if a worker read it, that worker holds it until check_due.lua,
which then deletes it and tells the worker the job is gone), and it is scheduled (or retrying,
after a failed attempt) again, as if it had never been promoted. If the
envelope changed since it was read (a retry or a replace landed in between), nothing is
written and 'changed' comes back, so the caller reads again rather than writing an old one.
A job waiting for rate-limit capacity leaves the plans: it passes the limits again when due.
A job moved appends a 'scheduled' event with its new due time.
Returns the job's state (as it waits now), 'changed', or false when there is no record.
]]
-- @include "stream_keys.lua"
-- @include "tell_workers.lua"
-- @include "delayed_head.lua"
-- @include "server_now.lua"
-- @include "emit_event.lua"
-- @include "release_held.lua"
-- @include "stored_envelope.lua"
-- @include "listing_index.lua"
local record, delayed, control = KEYS[1], KEYS[2], KEYS[3]
local id, due = ARGV[1], ARGV[2]
local state = redis.call('HGET', record, 'state')
local head = delayed_head_ms(delayed)
if state == 'queued' then
  local q = redis.call('HMGET', record, 'entry', 'priority', 'account')
  local lane = lane_key(ARGV[5], q[2] or 'normal')
  local found = q[1] and redis.call('XRANGE', lane, q[1], q[1])[1]
  if not found or found[2][1] ~= 'j' then
    return state
  end
  if found[2][2] ~= ARGV[4] then
    return 'changed'
  end
  local env = cjson.decode(found[2][2])
  if not env.r or tonumber(env.r) <= server_now_ms() then
    return state -- due already: it runs (or is about to), as any queued job
  end
  -- pcall: a lane no worker has read yet has no group (NOGROUP): nothing was delivered.
  local read = redis.pcall('XPENDING', lane, ARGV[6], q[1], q[1], 1)
  if not (type(read) == 'table' and not read.err and read[1]) then
    redis.call('XDEL', lane, q[1])
  end
  -- (A worker that read it holds it: check_due.lua acknowledges and deletes it for that worker
  -- when it asks, so the entry stays pending until its holder lets go.)
  redis.call('HDEL', record, 'entry')
  state = (tonumber(env.a) or 1) > 1 and 'retrying' or 'scheduled'
  if state == 'retrying' then
    redis.call('HINCRBY', KEYS[6], 'retrying', 1)
  end
  redis.call('HSET', record, 'state', state)
  redis.call('ZADD', delayed, env.r, id)
  index_due(ARGV[5], q[3], env.r, id)
elseif state ~= 'scheduled' and state ~= 'retrying' then
  return state
elseif redis.call('HGET', record, 'env') ~= ARGV[4] then
  return 'changed'
end
redis.call('ZADD', delayed, 'XX', due, id)
local f = redis.call('HMGET', record, 'account', 'attempt', 'key')
if f[1] then
  redis.call('ZADD', due_key(ARGV[5], f[1]), 'XX', due, id)
end
forget_waiting(ARGV[5], id, f[1])
redis.call('HSET', record, 'run_at', due, 'env', scheduled_envelope(id, ARGV[3], f[3], f[1]))
emit_event(KEYS[4], events_settings(KEYS[5]), 'scheduled', id, server_now_ms(), f[2], f[3], f[1],
  { 'run_at', due })
if tonumber(due) < head then
  tell_workers(control, 'w', due)
end
return state

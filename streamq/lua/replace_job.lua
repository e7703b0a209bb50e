--[[ replace_job: give a scheduled job a new envelope and due time ("edit my scheduled post").

KEYS[1]  the job's record
KEYS[2]  delayed set
KEYS[3]  dedup hash
KEYS[4]  control stream
KEYS[5]  events stream
KEYS[6]  stream settings (the events' cap)
ARGV[1]  job id
ARGV[2]  dedup key that must still name this job
ARGV[3]  new envelope (same job id)
ARGV[4]  new due time, ms ('' keeps the current one)
ARGV[5]  key prefix of the stream, 'streamq:{S}:'
ARGV[6]  the account that publishes it now ('' for none)

The job moves to its new account's due index. A replaced job appends a 'scheduled' event (its new due time, or the one it keeps).
Replaces only while the job is scheduled (not a retry, whose attempts would be lost) and still
holds the key; a job already queued or running keeps its payload. Returns 1 if replaced, 0 if
not. A job waiting for rate-limit capacity leaves the plans (under its old account): it passes
the limits again, as its new account's, when due.
]]
-- @include "stream_keys.lua"
-- @include "listing_index.lua"
-- @include "tell_workers.lua"
-- @include "delayed_head.lua"
-- @include "server_now.lua"
-- @include "emit_event.lua"
-- @include "release_held.lua"
-- @include "stored_envelope.lua"
local record, delayed, dedup, control = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, key, envelope, due = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local state = redis.call('HGET', record, 'state')
if redis.call('HGET', dedup, key) ~= id or state ~= 'scheduled' then
  return 0
end
redis.call('HSET', record, 'env', scheduled_envelope(id, envelope, key, ARGV[6]))
local was = redis.call('HGET', record, 'account')
forget_waiting(ARGV[5], id, was)
unindex_due(ARGV[5], was, id)
if ARGV[6] ~= '' then
  redis.call('HSET', record, 'account', ARGV[6])
else
  redis.call('HDEL', record, 'account')
end
if due ~= '' then
  local head = delayed_head_ms(delayed)
  redis.call('ZADD', delayed, 'XX', due, id)
  if tonumber(due) < head then
    tell_workers(control, 'w', due)
  end
end
local run_at = redis.call('ZSCORE', delayed, id)
-- A new envelope that keeps the due time does not hold it ('r'): the record does (a replace is
-- rare, so the field costs the backlog nothing).
redis.call('HSET', record, 'run_at', run_at)
index_due(ARGV[5], ARGV[6], run_at, id)
emit_event(KEYS[5], events_settings(KEYS[6]), 'scheduled', id, server_now_ms(), 1, key, ARGV[6],
  { 'run_at', run_at })
return 1

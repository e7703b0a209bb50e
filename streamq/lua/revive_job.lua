--[[ revive_job: run a dead, cancelled or expired job again, attempts reset.

KEYS[1]  the job's record
KEYS[2]  the lane stream to put it on
KEYS[3]  dead-letter stream
KEYS[4]  dedup hash
KEYS[5]  events stream
KEYS[6]  stream settings (the events' cap)
ARGV[1]  job id
ARGV[2]  envelope with attempt 1
ARGV[3]  priority name of the lane
ARGV[4]  dead-letter entry id to remove ('' for none)
ARGV[5]  dedup key ('' for none)

The job keeps its id. Its record loses its expiry and its last outcome; its dead letter, if
any, leaves the dead-letter stream; it takes its dedup key back if no live job holds it.
It appends a 'queued' event. Returns the new entry id, or the job's state when that state cannot be revived.
]]
-- @include "server_now.lua"
-- @include "emit_event.lua"
local record, lane, dead, dedup = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, envelope, priority, dead_entry, key = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local state = redis.call('HGET', record, 'state')
if state and state ~= 'dead' and state ~= 'cancelled' and state ~= 'expired' then
  return { state }
end
local entry = redis.call('XADD', lane, '*', 'j', envelope)
redis.call('HDEL', record, 'error', 'finished_at', 'started_at', 'cancel', 'env', 'dead_entry',
  'result')
redis.call('HSET', record, 'state', 'queued', 'attempt', 1, 'priority', priority,
  'entry', entry)
redis.call('PERSIST', record)
if dead_entry ~= '' then
  redis.call('XDEL', dead, dead_entry)
end
if key ~= '' then
  redis.call('HSETNX', dedup, key, id)
  redis.call('HSET', record, 'key', key)
end
emit_event(KEYS[5], events_settings(KEYS[6]), 'queued', id, server_now_ms(), 1, key,
  redis.call('HGET', record, 'account'))
return entry

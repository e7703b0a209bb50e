--[[ cancel_job: stop a job from running.

KEYS[1]     the job's record
KEYS[2]     delayed set
KEYS[3..5]  lane streams: high, normal, low
KEYS[6]     dedup hash
KEYS[7]     counts hash
KEYS[8]     control stream
KEYS[9]     events stream
KEYS[10]    stream settings (the events' cap)
ARGV[1]     job id
ARGV[2]     consumer group
ARGV[3]     retention of finished records, ms
ARGV[4]     key prefix of the stream, 'streamq:{S}:' (a paused job's parked set is built from it)

A scheduled or retrying job leaves the delayed set (and its account's due index), a paused or held one its account's set; a queued job nobody has read yet is deleted
from its lane: either way it never starts, and ends as cancelled. A job already delivered to a
worker is running (or about to): it is flagged, its workers are told through the control stream
(the handler sees job.cancelled), and it will not be retried.
A job cancelled here appends a 'cancelled' event; a running one's comes with its outcome.
A step of a flow (its record's 'flow' field, streamq.flows) cancelled here joins the stream's
flow outbox, so its flow is told.
Returns { outcome, state before }: outcome is 'cancelled', 'cancelling' (it was running),
'unchanged' (already finished) or 'missing'.
]]
-- @include "stream_keys.lua"
-- @include "listing_index.lua"
-- @include "tell_workers.lua"
-- @include "server_now.lua"
-- @include "free_dedup_key.lua"
-- @include "emit_event.lua"
-- @include "release_held.lua"
local record, delayed, dedup, counts, control = KEYS[1], KEYS[2], KEYS[6], KEYS[7], KEYS[8]
local lanes = { high = KEYS[3], normal = KEYS[4], low = KEYS[5] }
local id, group, retention = ARGV[1], ARGV[2], ARGV[3]
local f = redis.call('HMGET', record, 'state', 'priority', 'entry', 'key', 'account', 'attempt',
  'flow')
local state = f[1]
if not state then
  return { 'missing', '' }
end
local now = server_now_ms()

local function cancelled()
  redis.call('HSET', record, 'state', 'cancelled', 'finished_at', now)
  redis.call('PEXPIRE', record, retention)
  redis.call('HINCRBY', counts, 'cancelled', 1)
  index_finished(ARGV[4], 'cancelled', id, now)
  trim_finished(ARGV[4], 'cancelled', now, retention)
  free_dedup_key(dedup, f[4], id)
  emit_event(KEYS[9], events_settings(KEYS[10]), 'cancelled', id, now, f[6], f[4], f[5])
  if f[7] then
    redis.call('ZADD', flow_outbox_key(ARGV[4]), 'NX', now, f[7])
  end
  return { 'cancelled', state }
end

if state == 'scheduled' or state == 'retrying' then
  redis.call('ZREM', delayed, id)
  unindex_due(ARGV[4], f[5], id)
  forget_waiting(ARGV[4], id, f[5])
  if state == 'retrying' then
    redis.call('HINCRBY', counts, 'retrying', -1)
  end
  return cancelled()
end
if state == 'paused' or state == 'held' then
  redis.call('ZREM', ARGV[4] .. (state == 'paused' and 'parked:' or 'held:') .. (f[5] or ''), id)
  if state == 'held' and redis.call('ZCARD', held_key(ARGV[4], f[5] or '')) == 0 then
    redis.call('ZREM', holding_key(ARGV[4]), f[5] or '')
  end
  return cancelled()
end
if state == 'queued' then
  local lane = lanes[f[2]] or lanes.normal
  -- pcall: a lane no worker has read yet has no group (NOGROUP): nothing was delivered.
  local pending = f[3] and redis.pcall('XPENDING', lane, group, f[3], f[3], 1)
  local delivered = type(pending) == 'table' and not pending.err and pending[1]
  if delivered then
    redis.call('HSET', record, 'cancel', 1)
    tell_workers(control, 'c', id)
    return { 'cancelling', 'active' }
  end
  if f[3] then
    local found = redis.call('XRANGE', lane, f[3], f[3])
    if found[1] and found[1][2][1] == 'j' then
      redis.call('HSET', record, 'env', found[1][2][2])
    end
    redis.call('XDEL', lane, f[3])
  end
  redis.call('HDEL', record, 'entry')
  forget_waiting(ARGV[4], id, f[5])
  return cancelled()
end
return { 'unchanged', state }

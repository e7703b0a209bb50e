--[[ enqueue_jobs: add jobs to a stream, now or at a due time, honouring dedup keys.

KEYS[1]     lane stream          streamq:{S}:lane:<priority>
KEYS[2]     dedup hash           streamq:{S}:keys
KEYS[3]     delayed set          streamq:{S}:delayed
KEYS[4]     control stream       streamq:{S}:control
KEYS[5]     recurring fire times streamq:{S}:cron:last
KEYS[6]     events stream        streamq:{S}:events
KEYS[7]     stream settings      streamq:{S}:meta
KEYS[8..]   one record key per job, in order   streamq:{S}:job:<id>
ARGV[1]     priority name (stored so promotion knows the lane)
ARGV[2]     expire_after in ms, or '' (stored so promotion can expire the job)
ARGV[3]     '' or, for an occurrence of a recurring schedule, its name: the job is added only
            if its due time is later than the last occurrence added for that name, so a
            reconciler working from a stale view cannot add an occurrence twice
ARGV[4]     the jobs, msgpack: an array of { job id, dedup key ('' for none), envelope,
            due ms (0 = now) [, account] }, one per record key; one argument instead of four per job
            because packing arguments is most of a producer's work. A job with a due time may
            come in the form its record keeps ('^', stored_envelope.lua: the producer cuts it,
            streamq.codec.scheduled_form), and is put back whole if it goes onto a lane
ARGV[5]     key prefix of the stream, 'streamq:{S}:' (an account's due index is built from it)

A job due later than the server's clock (TIME) waits in the delayed set with its envelope in
its record (and its account's due index); any other goes straight onto the lane. The record
holds no enqueue or due time of its own: the envelope has both ('t', 'r'), and a record that
repeats them costs a backlog of millions their bytes twice. A job due before everything else waiting
appends a wake-up to the control stream, so sleeping workers re-plan.
A job whose record exists already is skipped: job ids are new for every enqueue, so that record
means this very call was carried out before and its answer lost on the way; a producer sending
it again (see streamq.producer) adds nothing twice.
Returns a flat array of (1-based position, existing job id) for every job NOT added because its
dedup key is held by a live job; an empty array when all were added.
Each job added appends a 'queued' or 'scheduled' event.
]]
-- @include "stream_keys.lua"
-- @include "listing_index.lua"
-- @include "tell_workers.lua"
-- @include "server_now.lua"
-- @include "delayed_head.lua"
-- @include "emit_event.lua"
-- @include "stored_envelope.lua"
local lane, dedup, delayed, control, fired = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local priority, expire_after, recurring, prefix = ARGV[1], ARGV[2], ARGV[3], ARGV[5]
local jobs = cmsgpack.unpack(ARGV[4])
local events, event_settings = KEYS[6], events_settings(KEYS[7])
if recurring ~= '' then
  if redis.call('EXISTS', KEYS[8]) == 1 then
    return {}
  end
  if jobs[1][4] <= tonumber(redis.call('HGET', fired, recurring) or '-1') then
    return { 1, '' }
  end
end
local now = server_now_ms()
local head = delayed_head_ms(delayed)
local earliest = math.huge
local taken = {}
for job, fields in ipairs(jobs) do
  local id, key, envelope, due = fields[1], fields[2], fields[3], fields[4]
  local record = KEYS[7 + job]
  local existing = false
  if key ~= '' then
    existing = redis.call('HGET', dedup, key)
  end
  if redis.call('EXISTS', record) == 1 then
    -- Added by an earlier delivery of this same call.
  elseif existing then
    taken[#taken + 1] = job
    taken[#taken + 1] = existing
  else
    if recurring ~= '' then
      redis.call('HSET', fired, recurring, math.max(due, now))
    end
    if key ~= '' then
      redis.call('HSET', dedup, key, id)
      redis.call('HSET', record, 'key', key)
    end
    if fields[5] then
      redis.call('HSET', record, 'account', fields[5])
    end
    if expire_after ~= '' then
      redis.call('HSET', record, 'expire_after', expire_after)
    end
    -- A record without 'attempt' is on attempt 1, and without 'priority' on the normal lane:
    -- every field left out is work saved on the hot path of bulk imports.
    if priority ~= 'normal' then
      redis.call('HSET', record, 'priority', priority)
    end
    if due > now then
      redis.call('ZADD', delayed, due, id)
      index_due(prefix, fields[5], due, id)
      -- The envelope holds the enqueue time ('t') and the due time ('r'): the record keeps
      -- them once, there (streamq.control.from_record reads them from it), and keeps the
      -- envelope without the id its key names. Each byte of a waiting job's record is memory
      -- the whole backlog pays (docs/capacity.md).
      redis.call('HSET', record, 'state', 'scheduled', 'env',
        scheduled_envelope(id, envelope, key, fields[5]))
      earliest = math.min(earliest, due)
      emit_event(events, event_settings, 'scheduled', id, now, 1, key, fields[5], { 'run_at', due })
    else
      if string.byte(envelope) ~= 123 then -- not '{': sent in the record's form, put back whole
        envelope = entry_envelope(id, envelope, key, fields[5])
      end
      local entry = redis.call('XADD', lane, '*', 'j', envelope)
      -- The enqueue time is the entry's (its id is the server's ms) and the envelope's. A due
      -- time already past (a recurring occurrence fired late) is kept: the envelope leaves the
      -- record with the entry, and the scheduler reads it back (scheduler._due_ms).
      if due > 0 then
        redis.call('HSET', record, 'state', 'queued', 'entry', entry, 'run_at', due)
      else
        redis.call('HSET', record, 'state', 'queued', 'entry', entry)
      end
      emit_event(events, event_settings, 'queued', id, now, 1, key, fields[5])
    end
  end
end
if earliest < head then
  tell_workers(control, 'w', earliest)
end
return taken

--[[ dead_letter: move entries of one lane to the dead-letter stream, atomically.

KEYS[1]  lane stream
KEYS[2]  dead-letter stream
KEYS[3]  dedup hash
KEYS[4]  counts hash
KEYS[5]  events stream
KEYS[6]  stream settings (the events' cap)
KEYS[7]  the stream's flow outbox (a step of a flow that ends here joins it: streamq.flows)
KEYS[8..] record keys of the entries that carry a job id (see the record index below)
ARGV[1]  consumer group
ARGV[2]  retention of finished records, ms
ARGV[3..] quintuples: entry id, reason, dedup key ('' for none), job id ('' for none),
          1-based index of its record key after KEYS[7] (0 for an entry without a job id)

Each entry's fields are copied verbatim (foreign or undecodable bytes included, so nothing is
lost), followed by _reason, _source and _entry; then it is acknowledged and deleted, its dedup
key freed and its record marked dead, with a 'dead' event. An entry already gone from the lane still leaves a dead
letter with its reason. Returns the number of dead letters written.
]]
-- @include "server_now.lua"
-- @include "free_dedup_key.lua"
-- @include "emit_event.lua"
local lane, dead, dedup, counts = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local events = KEYS[5]
local event_settings = events_settings(KEYS[6])
local group, retention = ARGV[1], ARGV[2]
local written = 0
local now = server_now_ms()
for q = 3, #ARGV, 5 do
  local id, reason, key, job, index = ARGV[q], ARGV[q + 1], ARGV[q + 2], ARGV[q + 3],
    tonumber(ARGV[q + 4])
  local found = redis.call('XRANGE', lane, id, id)
  local fields = {}
  local envelope = false
  if found[1] then
    fields = found[1][2]
    if fields[1] == 'j' then
      envelope = fields[2]
    end
  end
  if #fields > 1000 then
    -- Too many fields to pass to XADD one by one (the Lua stack is bounded): keep them all,
    -- packed as one msgpack value, so even a pathological entry cannot stop a worker.
    fields = { '_fields', cmsgpack.pack(fields) }
  end
  fields[#fields + 1] = '_reason'
  fields[#fields + 1] = reason
  fields[#fields + 1] = '_source'
  fields[#fields + 1] = lane
  fields[#fields + 1] = '_entry'
  fields[#fields + 1] = id
  local dead_entry = redis.call('XADD', dead, '*', unpack(fields))
  written = written + 1
  redis.call('XACK', lane, group, id)
  redis.call('XDEL', lane, id)
  free_dedup_key(dedup, key, job)
  if index > 0 then
    local record = KEYS[7 + index]
    redis.call('HSET', record, 'state', 'dead', 'error', reason, 'finished_at', now,
      'dead_entry', dead_entry)
    if envelope then
      redis.call('HSET', record, 'env', envelope)
    end
    redis.call('PEXPIRE', record, retention)
    local more = redis.call('HMGET', record, 'attempt', 'account', 'flow')
    emit_event(events, event_settings, 'dead', job, now, more[1], key, more[2], { 'error', reason })
    if more[3] then
      redis.call('ZADD', KEYS[7], 'NX', now, more[3])
    end
  end
end
redis.call('HINCRBY', counts, 'dead', written)
return written

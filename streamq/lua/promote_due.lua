--[[ promote_due: move due jobs from the delayed set onto their lanes, by the server's clock.

KEYS[1]     delayed set
KEYS[2..4]  lane streams: high, normal, low
KEYS[5]     dedup hash
KEYS[6]     counts hash
KEYS[7]     events stream
KEYS[8]     stream settings (the events' cap)
KEYS[9..]   record keys of the candidate jobs, in ARGV order
ARGV[1]     retention of finished records, ms
ARGV[2]     key prefix of the stream, 'streamq:{S}:'
ARGV[3]     how far ahead of its due time a job is promoted, ms (0: only when due)
ARGV[4..]   candidate job ids (the earliest members of the delayed set, read just before)

A candidate is promoted only if it is still in the delayed set and due by TIME plus ARGV[3]; it
leaves the set in the same step, so however many workers promote at once, each job moves exactly
once. A job promoted ahead is 'queued' with its due time in its envelope ('r'): a worker that
reads it holds it until check_due.lua, by TIME, says it is due (streamq.fetcher), so promoting
early moves the work of promotion before the due time, never the start.
A job whose record holds expire_after and that is later than that past its due time is not
run: it ends as expired (a step of a flow, whose record holds 'flow', joins the stream's flow
outbox then, so its flow is told).
A member '@held:<account>' is not a job but a safety net of admit_jobs: due when the account's
job waiting for the platform should long have started, it releases a held job if that one
never came back.
A job leaves its account's due index with the delayed set; an expired one joins the finished
index. Each job promoted appends a 'queued' event, each expired one an 'expired' event.
Returns { promoted, expired, server now ms, due ms of the next waiting job or -1 }.
]]
-- @include "stream_keys.lua"
-- @include "listing_index.lua"
-- @include "server_now.lua"
-- @include "free_dedup_key.lua"
-- @include "emit_event.lua"
-- @include "release_held.lua"
-- @include "stored_envelope.lua"
local delayed, dedup, counts = KEYS[1], KEYS[5], KEYS[6]
local lanes = { high = KEYS[2], normal = KEYS[3], low = KEYS[4] }
local retention, prefix, ahead = ARGV[1], ARGV[2], tonumber(ARGV[3])
local events = KEYS[7]
local event_settings = events_settings(KEYS[8])
local now = server_now_ms()
local promoted, expired = 0, 0
-- As admit_jobs: a job waiting for the platform this long past its time is not coming back.
local STALE_MS = 60000

local function check_held(marker)
  local account = string.sub(marker, 7)
  local turns = turns_key(prefix, account)
  redis.call('ZREMRANGEBYSCORE', turns, '-inf', now + ahead - STALE_MS)
  if redis.call('ZCARD', turns) == 0 then
    release_held(prefix, account)
  end
  if redis.call('ZCARD', held_key(prefix, account)) > 0 then
    redis.call('ZADD', delayed, now + STALE_MS, marker)
  end
end

for i = 4, #ARGV do
  local id = ARGV[i]
  local due = redis.call('ZSCORE', delayed, id)
  -- (A marker is looked at up to ARGV[3] early too: it is a 60 s safety net, and a head the
  -- promoter may not take would have it come back at once until it is due.)
  if due and tonumber(due) <= now + ahead and string.sub(id, 1, 6) == '@held:' then
    redis.call('ZREM', delayed, id)
    check_held(id)
  elseif due and tonumber(due) <= now + ahead then
    local record = KEYS[5 + i]
    redis.call('ZREM', delayed, id)
    local f = redis.call('HMGET', record, 'state', 'env', 'priority', 'expire_after', 'key',
      'account', 'attempt', 'flow')
    unindex_due(prefix, f[6], id)
    if f[1] == 'retrying' then
      redis.call('HINCRBY', counts, 'retrying', -1)
    end
    -- A member whose record is not waiting (or has lost its envelope) is stale: dropped.
    if (f[1] == 'scheduled' or f[1] == 'retrying') and f[2] then
      if f[4] and now > tonumber(due) + tonumber(f[4]) then
        redis.call('HSET', record, 'state', 'expired', 'finished_at', now)
        redis.call('PEXPIRE', record, retention)
        redis.call('HINCRBY', counts, 'expired', 1)
        index_finished(prefix, 'expired', id, now)
        trim_finished(prefix, 'expired', now, retention)
        free_dedup_key(dedup, f[5], id)
        forget_waiting(prefix, id, f[6])
        expired = expired + 1
        emit_event(events, event_settings, 'expired', id, now, f[7], f[5], f[6])
        if f[8] then
          redis.call('ZADD', flow_outbox_key(prefix), 'NX', now, f[8])
        end
      else
        local entry = redis.call('XADD', lanes[f[3]] or lanes.normal, '*', 'j',
          entry_envelope(id, f[2], f[5], f[6]))
        redis.call('HSET', record, 'state', 'queued', 'entry', entry)
        redis.call('HDEL', record, 'env')
        promoted = promoted + 1
        emit_event(events, event_settings, 'queued', id, now, f[7], f[5], f[6])
      end
    end
  end
end
local head = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')[2]
return { promoted, expired, now, head and tonumber(head) or -1 }

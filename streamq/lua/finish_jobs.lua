--[[ finish_jobs: record what happened to a batch of delivered jobs, in one atomic step.

KEYS[1..3]  lane streams: high, normal, low
KEYS[4]     dedup hash
KEYS[5]     delayed set
KEYS[6]     dead-letter stream
KEYS[7]     counts hash
KEYS[8]     control stream
KEYS[9]     events stream
KEYS[10]    stream settings (the events' cap and age)
            (each outcome's record is named from ARGV[7] and its job id, and is in this slot
            too: the worker sends no key a job)
ARGV[1]     consumer group
ARGV[2..4]  for each lane, the entry ids of the batch joined by single spaces ('' for none)
ARGV[5]     retention of finished records, ms
ARGV[6]     the outcomes, msgpack: an array of
              { code, job id, dedup key or '', attempt, started ms, a, b, c }
            code 'd' done       a = result as JSON ('' for none), b = the entry's envelope as
                                the record keeps it (streamq.codec.stored_envelope; '' or
                                left out: it is read from the entry)
                 'r' retry      a = envelope of the next attempt, b = delay ms, c = error,
                                d = the traceback's last frames
                 'l' deferred   a = envelope (attempt unchanged), b = delay ms, c = reason,
                                d = '' or the scope to pause until then ('platform', 'a:<A>')
                 'p' parked     a = envelope, b = reason, c = account, d = enqueued ms: the
                                account is paused until resumed, the job waits for it
                 'x' dead       a = envelope, b = reason, c = the traceback's last frames
                 'e' expired    a = envelope (not run: it came due too long ago)
                 'c' cancelled  a = envelope
            every outcome but 'd' ends with { lane index (1-3), entry id }
ARGV[7]     key prefix of the stream, 'streamq:{S}:' (records and per-account keys are built
            from it)
ARGV[8]     the worker's consumer name (recorded with each run)
ARGV[9]     how many failed runs a record's attempts history keeps (the latest)
ARGV[10]    '' or, for the batch's jobs that are steps of a flow, their outbox members
            '<job id> <flow id> <step>' joined by newlines (streamq.flows)
ARGV[11]    '' (or left out) or one character per outcome, '1' where the run's start was
            still queued in the worker when the outcome was sent (streamq.starts): folded into
            this call instead of a start_jobs call of its own

Acknowledging, deleting the entries and rescheduling happen together, so a crash can neither
lose a retry nor run a finished job again. The ids of a lane travel as one argument and the
outcomes as one msgpack value because this is the hot path: the client joins and packs in C
instead of sending thousands of arguments. A retry or deferral of a job whose cancellation was
requested while it ran ends it as cancelled instead.
An outcome other than done whose entry is no longer pending is stale (this worker stalled, and
another took the entry over and finished it; or the server restarted from an AOF that lacked
the delivery): it is dropped, so a late retry cannot run a finished job again, and its entry is
left in its lane, where a restarted server's next reader runs it. A done outcome for a job
whose record already says done is stale too, so a run is counted, and its events written, once.
A worker fenced ('fenced:<C>' in the liveness hash: reclaim_lapsed took entries from it when its
heartbeat lapsed) has every outcome, done included, for an entry another consumer owns now
dropped as stale, and that entry is neither acknowledged nor deleted: it is the new owner's.
The counts hash also sums `ran` (outcomes of runs) and `busy_ms` (their handler time).
Every outcome appends its event: 'started' (at the time the handler started: a start is not a
step on the server, so its event is written with the outcome; skipped by default), then 'done',
'retried', 'rate-limited', 'paused', 'dead', 'expired' or 'cancelled', which carries the run's
'started_at' when it ran: one event a run, where nobody asked for 'started'. A stale outcome
writes none.
A retry or deferral joins its account's due index with the delayed set; a job that ends done,
cancelled or expired joins the finished index of that state.
A run that did not end done (retried, rate-limited, paused, dead, cancelled while running) is
appended to the record's `attempts`: a JSON array of { n, worker, started_ms, finished_ms,
outcome, error, trace }, the latest ARGV[9] kept. A done run writes only `worker` beside its
started_at and finished_at (the hot path: no read, no JSON); readers add it to the history.
A done job's record also keeps its envelope (`env`, as the worker sends it: the shortest form
streamq.codec.entry_envelope reads back, '~' and the payload for a job on its first entry;
from an older caller, copied from its entry before the entry is deleted, without the id its
key names: stored_envelope.lua), so its payload can be shown while the record is retained.
A done record drops the run count start_jobs kept ('runs', 'run_entry': the budget of an
entry now gone; 'run_entry' repeated 'entry'), so every done record has one shape.
A folded start (ARGV[11]) counts nothing for an outcome recorded here: its entry is
acknowledged and deleted, and the runs start_jobs counts are those of a live entry (the
delivery budget of a reclaimed one). A stale outcome's entry lives on, another consumer's or
left in its lane: its folded start is counted as start_jobs would have (count_run.lua).
A flow step whose job ends here (done, dead, expired, cancelled) joins the stream's flow
outbox in this same step, so a worker dying before its flow is told loses nothing: the outbox
is drained idempotently (streamq.flows). Jobs of no flow pay one comparison per batch.
Returns the number of entries acknowledged.
]]
-- @include "stream_keys.lua"
-- @include "listing_index.lua"
-- @include "tell_workers.lua"
-- @include "server_now.lua"
-- @include "delayed_head.lua"
-- @include "free_dedup_key.lua"
-- @include "emit_event.lua"
-- @include "release_held.lua"
-- @include "stored_envelope.lua"
-- @include "count_run.lua"
local dedup, delayed, dead, counts, control = KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local group, retention, prefix = ARGV[1], ARGV[5], ARGV[7]
local worker, attempts_kept = ARGV[8], tonumber(ARGV[9])
local paused = paused_key(prefix)
local events = KEYS[9]
local event_settings = events_settings(KEYS[10])
local acked = 0
local outcomes = cmsgpack.unpack(ARGV[6])
local records = {} -- each outcome's record key, named once
for i, o in ipairs(outcomes) do
  records[i] = job_key(prefix, o[2])
end
local stale = {}
local NONE = {}
local keep = nil -- per lane, the entries of stale outcomes: not acknowledged, not deleted
local accounts = {} -- read with a done job's state, so its event costs no second read
local envelopes = {} -- of done jobs, as their records keep them
local stale_entries = {} -- of stale done outcomes, for a folded start
local counted = {} -- done outcomes whose record counts runs (start_jobs): dropped when done
local LANE_OF = { high = 1, normal = 2, low = 3 }
-- The fence (reclaim_lapsed): a worker whose entries were taken over because its heartbeat
-- lapsed may have been frozen, not dead. Its outcome for an entry another consumer owns now is
-- stale whatever it is: the entry is the new owner's to finish. One read per batch otherwise.
local fenced = worker ~= '' and redis.call('HEXISTS', liveness_key(prefix), 'fenced:' .. worker)
  == 1
-- Who owns an entry in the group's pending list now (nil: it is acknowledged, or gone).
local function owner(lane, entry)
  local p = redis.call('XPENDING', KEYS[lane], group, entry, entry, 1)[1]
  return p and p[2]
end
local function keep_entry(lane, entry)
  keep = keep or { {}, {}, {} }
  keep[lane][entry] = true
end
for i, o in ipairs(outcomes) do
  if o[1] ~= 'd' then
    local lane, entry = o[#o - 1], o[#o]
    local who = owner(lane, entry)
    if not who or (fenced and who ~= worker) then
      stale[i] = true
      keep_entry(lane, entry)
    end
  else
    local f = redis.call('HMGET', records[i], 'state', 'account', 'entry', 'priority', 'runs')
    accounts[i] = f[2]
    counted[i] = f[5] ~= false
    local lane = LANE_OF[f[4]] or 2
    local who = fenced and f[3] and owner(lane, f[3])
    if who and who ~= worker then
      stale[i] = true
      stale_entries[i] = f[3]
      keep_entry(lane, f[3])
    elseif f[1] == 'done' then
      -- Another worker took the entry over and finished it first: its run is the one on
      -- record, so this late one writes neither a second outcome nor a second event.
      stale[i] = true
      stale_entries[i] = f[3]
    elseif f[3] then
      if o[7] and o[7] ~= '' then
        envelopes[i] = o[7]
      else
        -- The envelope lives in the lane entry, deleted below: the record keeps the payload.
        local found = redis.call('XRANGE', KEYS[lane], f[3], f[3])
        if found[1] and found[1][2][1] == 'j' then
          envelopes[i] = stored_envelope(o[2], found[1][2][2])
        end
      end
    end
  end
end

local folded = ARGV[11] or ''
if folded ~= '' then
  for i in pairs(stale) do
    if string.byte(folded, i) == 49 then -- '1'
      local entry = outcomes[i][1] == 'd' and stale_entries[i] or outcomes[i][#outcomes[i]]
      if entry then
        count_run(records[i], entry)
      end
    end
  end
end

local function ack(lane, ids)
  acked = acked + redis.call('XACK', lane, group, unpack(ids))
  redis.call('XDEL', lane, unpack(ids))
end

for l = 1, 3 do
  local ids = {}
  local kept = keep and keep[l] or NONE
  for id in string.gmatch(ARGV[l + 1], '%S+') do
    if not kept[id] then
      ids[#ids + 1] = id
    end
    -- unpack() is bounded by the Lua C stack, so large batches go in slices.
    if #ids == 1000 then
      ack(KEYS[l], ids)
      ids = {}
    end
  end
  if #ids > 0 then
    ack(KEYS[l], ids)
  end
end

local now = server_now_ms()
local head = delayed_head_ms(delayed)
local earliest = math.huge
local tally = {}

-- The job whose outcome is being written, for its events; job_started: its run's start, or nil
-- (not run: expired, cancelled before it ran).
local job_id, job_dedup_key, job_attempt, job_account, job_started

local function event(kind, extra)
  if job_started then
    extra = extra or {}
    extra[#extra + 1], extra[#extra + 2] = 'started_at', job_started
  end
  emit_event(events, event_settings, kind, job_id, now, job_attempt, job_dedup_key, job_account, extra)
end

local listed = { done = true, cancelled = true, expired = true }
-- Where each kind of outcome carries its error and traceback (see the header).
local ERROR_AT = { r = 8, l = 8, p = 7, x = 7 }
local TRACE_AT = { r = 9, x = 8 }
local RAN_AS = { r = 'retried', l = 'rate-limited', p = 'paused', x = 'dead', c = 'cancelled' }

local function remember_run(record, o, code, n)
  local raw = redis.call('HGET', record, 'attempts')
  local runs = raw and cjson.decode(raw) or {}
  runs[#runs + 1] = {
    n = n, worker = worker, started_ms = o[5], finished_ms = now, outcome = RAN_AS[code],
    error = ERROR_AT[o[1]] and o[ERROR_AT[o[1]]] or '',
    trace = TRACE_AT[o[1]] and o[TRACE_AT[o[1]]] or '',
  }
  while #runs > attempts_kept do
    table.remove(runs, 1)
  end
  redis.call('HSET', record, 'attempts', cjson.encode(runs))
end

local ended = {} -- per listed state, the ids that ended in it: indexed in one ZADD each
local function finish(record, id, key, state)
  redis.call('PEXPIRE', record, retention)
  free_dedup_key(dedup, key, id)
  tally[state] = (tally[state] or 0) + 1
  if listed[state] then
    local ids = ended[state]
    if not ids then
      ids = {}
      ended[state] = ids
    end
    ids[#ids + 1] = id
  end
end

for i, o in ipairs(outcomes) do
  local record = records[i]
  local code, id, key, attempt = o[1], o[2], o[3], o[4]
  -- The start is the worker's estimate of the server's clock: never after the outcome. Clamped
  -- once, so the record, the run's history and the events give the same start.
  local started = math.min(o[5], now)
  o[5] = started
  if stale[i] then
    code = 'stale'
  end
  if (code == 'r' or code == 'l' or code == 'p') and redis.call('HGET', record, 'cancel') then
    code = 'c'
  end
  -- Events name the attempt they are about: a retry's outcome carries the next one's number.
  job_id, job_dedup_key, job_account, job_started = id, key, nil, nil
  job_attempt = o[1] == 'r' and attempt - 1 or attempt
  if event_settings.cap > 0 and code ~= 'stale' then
    job_account = accounts[i]
    if job_account == nil then
      job_account = redis.call('HGET', record, 'account')
    end
    if started > 0 then
      job_started = started
      emit_event(events, event_settings, 'started', id, started, job_attempt, key, job_account)
    end
  end
  if started > 0 and code ~= 'stale' then
    -- Handler time, summed: the autoscaler's service time (busy_ms / ran).
    tally.ran = (tally.ran or 0) + 1
    tally.busy_ms = (tally.busy_ms or 0) + math.max(0, now - started)
    if code ~= 'd' then
      remember_run(record, o, code, job_attempt)
    end
  end
  if code == 'd' then
    -- The record already holds attempt 1, or the retry's number: write it only when a
    -- crash redelivery raised it, to spare the common case a field.
    -- One HSET for all of it: this is the hot path.
    local fields = { 'state', 'done', 'started_at', started, 'finished_at', now, 'worker', worker }
    if attempt > 1 then
      fields[#fields + 1], fields[#fields + 2] = 'attempt', attempt
    end
    if o[6] ~= '' then
      fields[#fields + 1], fields[#fields + 2] = 'result', o[6]
    end
    if envelopes[i] then
      fields[#fields + 1], fields[#fields + 2] = 'env', envelopes[i]
    end
    redis.call('HSET', record, unpack(fields))
    if counted[i] then
      redis.call('HDEL', record, 'runs', 'run_entry')
    end
    finish(record, id, key, 'done')
    event('done', { 'result', o[6] })
  elseif code == 'r' or code == 'l' then
    local due = now + o[7]
    redis.call('ZADD', delayed, due, id)
    index_due(prefix, job_account or redis.call('HGET', record, 'account'), due, id)
    redis.call('HSET', record, 'state', code == 'r' and 'retrying' or 'scheduled',
      'attempt', attempt, 'started_at', started, 'run_at', due, 'env', o[6], 'error', o[8])
    redis.call('HDEL', record, 'entry')
    if code == 'r' then
      redis.call('HINCRBY', counts, 'retrying', 1)
      tally.retried = (tally.retried or 0) + 1
      event('retried', { 'run_at', due, 'error', o[8] })
    else
      event('rate-limited', { 'run_at', due, 'error', o[8] })
      tally.deferred = (tally.deferred or 0) + 1
      local scope = o[9]
      local held = scope ~= '' and tonumber(redis.call('HGET', paused, scope) or '0')
      if held and held ~= -1 and held < due then
        redis.call('HSET', paused, scope, due)
        redis.call('HSET', paused .. ':why', scope, o[8])
        if scope == 'platform' then
          tell_workers(control, 'p', due)
        end
      end
    end
    earliest = math.min(earliest, due)
  elseif code == 'p' then
    local account = o[8]
    redis.call('HSET', paused, 'a:' .. account, -1)
    redis.call('HSET', paused .. ':why', 'a:' .. account, o[7])
    redis.call('ZADD', parked_key(prefix, account), o[9], id)
    redis.call('HSET', record, 'state', 'paused', 'attempt', attempt, 'started_at', started,
      'env', o[6], 'error', o[7])
    redis.call('HDEL', record, 'entry')
    tally.parked = (tally.parked or 0) + 1
    event('paused', { 'error', o[7] })
  elseif code == 'x' then
    local lane, entry = KEYS[o[#o - 1]], o[#o]
    local dead_entry = redis.call('XADD', dead, '*', 'j', o[6], '_reason', o[7],
      '_source', lane, '_entry', entry)
    redis.call('HSET', record, 'state', 'dead', 'attempt', attempt, 'started_at', started,
      'finished_at', now, 'error', o[7], 'env', o[6], 'dead_entry', dead_entry)
    finish(record, id, key, 'dead')
    event('dead', { 'error', o[7] })
  elseif code == 'e' then
    redis.call('HSET', record, 'state', 'expired', 'finished_at', now, 'env', o[6])
    forget_waiting(prefix, id, redis.call('HGET', record, 'account'))
    finish(record, id, key, 'expired')
    event('expired')
  elseif code == 'c' then
    redis.call('HSET', record, 'state', 'cancelled', 'finished_at', now, 'env', o[6])
    forget_waiting(prefix, id, redis.call('HGET', record, 'account'))
    finish(record, id, key, 'cancelled')
    event('cancelled')
  end
end
for state, n in pairs(tally) do
  redis.call('HINCRBY', counts, state, n)
  if listed[state] then
    index_finished_all(prefix, state, ended[state], now)
    trim_finished(prefix, state, now, retention)
  end
end
if earliest < head then
  tell_workers(control, 'w', earliest)
end
if ARGV[10] ~= '' then
  local outbox = flow_outbox_key(prefix)
  local ENDED = { done = true, dead = true, expired = true, cancelled = true }
  for member in string.gmatch(ARGV[10], '[^\n]+') do
    local id = string.match(member, '^%S+')
    if ENDED[redis.call('HGET', job_key(prefix, id), 'state')] then
      redis.call('ZADD', outbox, 'NX', now, member)
    end
  end
end
if event_settings.cap > 0 and event_settings.age > 0 then
  redis.call('XTRIM', events, 'MINID', '~', (now - event_settings.age) .. '-0')
end
return acked

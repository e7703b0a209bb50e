--[[ reclaim_jobs: take over entries whose consumer has gone quiet for too long, and drop the
consumers that are gone from the group.

KEYS[1..3]  lane streams, highest priority first
KEYS[4]     workers: hash, consumer -> its card (JSON, see streamq.workers)
KEYS[5]     workers gone: stream, capped: what was reclaimed from whom, and who was dropped
KEYS[6]     liveness: hash (see streamq.keys and beat.lua)
ARGV[1]     consumer group
ARGV[2]     consumer name (the new owner)
ARGV[3]     minimum idle time in ms (the visibility timeout)
ARGV[4]     how many entries at most, over all lanes (0 claims nothing: a heartbeat only)
ARGV[5..7]  the XAUTOCLAIM cursor of each lane ('0-0' to start over)
ARGV[8]     about how many records the gone log keeps
ARGV[9]     gap, ms (see epoch.lua)

The budget is spent from the highest lane down, so a busy worker never takes more than it can
run. With none left it still touches the group (a claim that can match nothing), which keeps
it counted as alive.
Entries taken over are logged per previous owner: { kind 'reclaimed', from, by, jobs (the job
ids, space-separated), at }. Then every other consumer idle for the minimum idle time that owns
no entry on any lane, and whose heartbeat deadline ('alive:<C>') is not still ahead, is
deleted from every lane's group, its card removed and logged: { kind 'gone', consumer, card,
at }. XGROUP DELCONSUMER drops a consumer's pending entries, so one
that still owns any stays until they are reclaimed. A worker that was only stalled loses
nothing: it owned nothing, and its next read adds it to the group again. A consumer dropped
loses its liveness fields ('alive:<C>', 'fenced:<C>').
Idle time counts from the start of the server's epoch at the earliest (epoch.lua): within the
minimum idle time of a restart, or of a gap in every worker's heartbeats, nothing is claimed and
nobody is dropped, since every entry looks idle for the time the server was down.
Returns one item per lane: { next cursor, entries, delivery counts }, where entries is
XAUTOCLAIM's list of {entry id, fields} and delivery counts[i] is how many times entries[i] has
now been delivered (this claim included), so the caller can dead-letter crash loops.
]]
-- @include "server_now.lua"
-- @include "epoch.lua"
-- @include "reclaimed_log.lua"
local group, consumer, min_idle = ARGV[1], ARGV[2], ARGV[3]
local budget = tonumber(ARGV[4])
local workers, gone, keep, liveness = KEYS[4], KEYS[5], ARGV[8], KEYS[6]
local now = server_now_ms()
local since = epoch_since(liveness, now, tonumber(ARGV[9]))
local settled = not since or now - since >= tonumber(min_idle)
if not settled then
  budget = 0
end
local out = {}
local taken, owners = {}, {}
for l = 1, 3 do
  local reply
  if budget > 0 then
    -- XAUTOCLAIM does not say whose entries it took: ask first, over the same range.
    local owner_of = {}
    local idle = redis.call('XPENDING', KEYS[l], group, 'IDLE', min_idle, ARGV[4 + l], '+',
      budget)
    for _, p in ipairs(idle) do
      owner_of[p[1]] = p[2]
    end
    reply = redis.call('XAUTOCLAIM', KEYS[l], group, consumer, min_idle, ARGV[4 + l],
      'COUNT', budget)
    for _, entry in ipairs(reply[2]) do
      local from = owner_of[entry[1]] or '?'
      if not taken[from] then
        taken[from] = {}
        owners[#owners + 1] = from
      end
      table.insert(taken[from], job_of_entry(entry))
    end
  else
    -- An idle time no entry can have: claims nothing, refreshes the consumer's seen-time.
    reply = redis.call('XAUTOCLAIM', KEYS[l], group, consumer, 9007199254740991, '0-0',
      'COUNT', 1)
    reply[1] = ARGV[4 + l]
  end
  local entries = reply[2]
  local deliveries = {}
  for i, entry in ipairs(entries) do
    local pending = redis.call('XPENDING', KEYS[l], group, entry[1], entry[1], 1)
    deliveries[i] = pending[1] and pending[1][4] or 1
  end
  budget = budget - #entries
  out[l] = { reply[1], entries, deliveries }
end

for _, from in ipairs(owners) do
  log_reclaimed(gone, keep, from, consumer, taken[from], now)
end

local function owns_nothing(name)
  for l = 1, 3 do
    local ok, pending = pcall(redis.call, 'XPENDING', KEYS[l], group, '-', '+', 1, name)
    if ok and #pending > 0 then
      return false
    end
  end
  return true
end

-- A consumer whose heartbeat says it is alive stays, however idle: an empty stream leaves a
-- live worker idle (Redis before 7.2 counts only reads that delivered), and dropping it would
-- log a live worker as gone.
local function beating(name)
  local deadline = redis.call('HGET', liveness, 'alive:' .. name)
  return deadline and tonumber(deadline) > now
end

local looked = { [consumer] = true }
for l = 1, settled and 3 or 0 do
  local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[l], group)
  if ok then
    for _, flat in ipairs(consumers) do
      local info = {}
      for i = 1, #flat, 2 do
        info[flat[i]] = flat[i + 1]
      end
      local name = info['name']
      if not looked[name] then
        looked[name] = true
        if info['idle'] >= tonumber(min_idle) and not beating(name) and owns_nothing(name) then
          for m = 1, 3 do
            pcall(redis.call, 'XGROUP', 'DELCONSUMER', KEYS[m], group, name)
          end
          local card = redis.call('HGET', workers, name) or ''
          redis.call('HDEL', workers, name)
          redis.call('HDEL', liveness, 'alive:' .. name, 'fenced:' .. name)
          redis.call('XADD', gone, 'MAXLEN', '~', keep, '*', 'kind', 'gone', 'consumer', name,
            'card', card, 'at', now)
        end
      end
    end
  end
end
return out

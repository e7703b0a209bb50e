--[[ reclaim_lapsed: take over at once the entries of consumers whose heartbeat has lapsed.

KEYS[1..3]  lane streams, highest priority first
KEYS[4]     liveness: hash (see streamq.keys and beat.lua)
KEYS[5]     workers gone: stream, capped: what was reclaimed from whom
ARGV[1]     consumer group
ARGV[2]     consumer name (the new owner)
ARGV[3]     how many entries at most, over all lanes
ARGV[4]     liveness timeout, ms: the grace after a new epoch begins
ARGV[5]     gap, ms (see epoch.lua)
ARGV[6]     about how many records the gone log keeps

A consumer is dead when its 'alive:<C>' deadline has passed: its heartbeat thread, which beats
while its event loop is blocked by a slow handler, has not beaten for the liveness timeout (the
process was killed, frozen or cut off, or its loop stalled past the job timeout and the thread
gave up). Every entry it owns, on every lane, is claimed by this consumer (XCLAIM counts a
delivery) up to the budget, highest lane first, whatever its idle time; it is logged in the gone
log as reclaim_jobs logs, and 'fenced:<C>' is set to now.

The fence: XCLAIM moves each entry's ownership in the group's pending list, in this same atomic
step that saw the deadline passed. finish_jobs drops as stale every outcome of a fenced
consumer for an entry another consumer owns now, so a worker that was frozen, not dead, and
comes back neither acknowledges nor records the jobs taken from it: their outcome is the new
owner's. (An outcome other than done is checked so for every consumer.)

Nothing is taken while this consumer's own deadline has passed (its own heartbeat is not
reaching the server: it may be the one cut off), nor within a liveness timeout of a new epoch
(a server restart or a gap in every worker's heartbeats: live workers need a beat to say so).
A lapsed consumer that owns nothing is forgotten ('alive:<C>'; its fence stays until it is
dropped from the group or retires).
Returns one item per lane: { '0-0', entries, delivery counts }, as reclaim_jobs does.
]]
-- @include "server_now.lua"
-- @include "epoch.lua"
-- @include "reclaimed_log.lua"
local group, consumer = ARGV[1], ARGV[2]
local budget, grace, gap = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local liveness, gone, keep = KEYS[4], KEYS[5], ARGV[6]
local out = { { '0-0', {}, {} }, { '0-0', {}, {} }, { '0-0', {}, {} } }
local now = server_now_ms()
local since = epoch_since(liveness, now, gap)
if not since or now - since < grace then
  return out
end
local own = tonumber(redis.call('HGET', liveness, 'alive:' .. consumer))
if not own or own < now then
  return out
end

local seen = redis.call('HGETALL', liveness)
for i = 1, #seen, 2 do
  local name = string.match(seen[i], '^alive:(.+)$')
  if name and name ~= consumer and tonumber(seen[i + 1]) < now then
    local jobs, owns = {}, false
    for l = 1, 3 do
      if budget > 0 then
        local pending = redis.call('XPENDING', KEYS[l], group, '-', '+', budget, name)
        if #pending > 0 then
          local ids, deliveries = {}, {}
          for _, p in ipairs(pending) do
            ids[#ids + 1] = p[1]
            deliveries[p[1]] = p[4] + 1
          end
          local lane = out[l]
          -- unpack() is bounded by the Lua C stack, so claims go in slices.
          for first = 1, #ids, 1000 do
            local slice = { unpack(ids, first, math.min(first + 999, #ids)) }
            for _, entry in ipairs(redis.call('XCLAIM', KEYS[l], group, consumer, 0,
              unpack(slice))) do
              -- An entry deleted meanwhile is dropped from the pending list, not returned.
              if type(entry) == 'table' and entry[2] then
                lane[2][#lane[2] + 1] = entry
                lane[3][#lane[3] + 1] = deliveries[entry[1]]
                jobs[#jobs + 1] = job_of_entry(entry)
              end
            end
          end
          budget = budget - #ids
        end
      end
      if #redis.call('XPENDING', KEYS[l], group, '-', '+', 1, name) > 0 then
        owns = true
      end
    end
    if #jobs > 0 then
      redis.call('HSET', liveness, 'fenced:' .. name, now)
      log_reclaimed(gone, keep, name, consumer, jobs, now, 'heartbeat lapsed')
    end
    if not owns then
      redis.call('HDEL', liveness, 'alive:' .. name)
    end
  end
end
return out

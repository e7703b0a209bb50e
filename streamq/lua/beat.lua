--[[ beat: a worker's heartbeat thread says its consumer is alive, and notices a new epoch.

KEYS[1]  liveness: hash (see streamq.keys)
ARGV[1]  consumer name
ARGV[2]  liveness timeout, ms: the consumer counts as alive until now + this
ARGV[3]  the server's run id, as INFO gave it on this same connection just before
ARGV[4]  gap, ms: no heartbeat by any worker for this long starts a new epoch

A new epoch begins when the run id differs from the one last seen (the server restarted, or a
replica took over) or when no worker beat for the gap (the server was down, or every worker
was): 'epoch:since' is set to now. Until a whole liveness timeout has passed since then,
reclaim_lapsed takes nothing (each live worker has had time to beat again, its entry having
lapsed through no fault of its own), and reclaim_jobs counts idle time only from 'epoch:since'
(the time the server was down is not time a worker failed to refresh its claims).
Returns { now, epoch since (server ms), how many consumers are alive now (this one too) }: the
worker shares a burst promoted ahead with the others by it (streamq.fetcher.HOLD_BURST).
]]
-- @include "server_now.lua"
-- @include "epoch.lua"
local liveness, consumer = KEYS[1], ARGV[1]
local timeout, run, gap = tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local now = server_now_ms()
local since = epoch_since(liveness, now, gap)
if not since or redis.call('HGET', liveness, 'epoch:run') ~= run then
  since = now
  redis.call('HSET', liveness, 'epoch:run', run, 'epoch:since', since)
end
redis.call('HSET', liveness, 'epoch:beat', now, 'alive:' .. consumer, now + timeout)
local fields = redis.call('HGETALL', liveness)
local live = 0
for i = 1, #fields, 2 do
  if string.sub(fields[i], 1, 6) == 'alive:' and tonumber(fields[i + 1]) > now then
    live = live + 1
  end
end
return { now, since, live }

-- The server's epoch as the liveness hash records it (see beat.lua): when the current one
-- began, in server ms, or nil when no worker of this stream ever beat (workers that keep no
-- liveness: nothing is gated). No heartbeat by any worker for longer than `gap` ms means the
-- server or every worker was away: a new epoch begins now, so that the heartbeats that lapsed
-- meanwhile, and the idle time that accumulated, are not taken for dead workers.
local function epoch_since(liveness, now, gap)
  local seen = redis.call('HMGET', liveness, 'epoch:beat', 'epoch:since')
  if not seen[1] then
    return nil
  end
  local since = tonumber(seen[2]) or now
  if now - tonumber(seen[1]) > gap and since < now then
    since = now
    redis.call('HSET', liveness, 'epoch:since', since)
  end
  return since
end

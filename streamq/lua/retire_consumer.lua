--[[ retire_consumer: remove a consumer from the group of every lane, if it holds nothing.

KEYS[1..3]  lane streams
KEYS[4]     workers: hash, consumer -> its card
KEYS[5]     liveness: hash (see streamq.keys and beat.lua)
ARGV[1]     consumer group
ARGV[2]     consumer name

Deleting a consumer drops its pending entries from the group, which would strand them; so a
lane where it still owns entries keeps it. Its card goes once it is gone from every lane (a
worker that stopped is no longer listed), and its liveness fields with it. One that still owns
entries keeps its 'alive:<C>' deadline: its heartbeat has stopped, so the deadline passes and
a live worker takes them over at once (reclaim_lapsed). Returns the number of lanes it was removed from.
]]
local group, consumer = ARGV[1], ARGV[2]
local removed = 0
for l = 1, 3 do
  local pending = redis.call('XPENDING', KEYS[l], group, '-', '+', 1, consumer)
  if #pending == 0 then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[l], group, consumer)
    removed = removed + 1
  end
end
if removed == 3 then
  redis.call('HDEL', KEYS[4], consumer)
  redis.call('HDEL', KEYS[5], 'alive:' .. consumer, 'fenced:' .. consumer)
end
return removed

--[[ release_leadership: give up the autoscaler's leadership lock, if this controller holds it.

KEYS[1]  the leadership lock (string: the holder's token)
ARGV[1]  this controller's token

Returns 1 if released, 0 if another controller holds the lock (or nobody does).
]]
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0

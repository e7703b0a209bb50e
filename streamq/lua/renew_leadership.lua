--[[ renew_leadership: extend the autoscaler's leadership lock, if this controller holds it.

KEYS[1]  the leadership lock (string: the holder's token)
ARGV[1]  this controller's token
ARGV[2]  time to live, ms

Returns 1 if renewed, 0 if another controller holds the lock (or nobody does).
]]
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0

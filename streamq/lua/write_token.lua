--[[ write_token: store an account's token (or its need of a new sign-in) as one atomic step.

KEYS[1]     the account's token record (hash)
KEYS[2]     the account's refresh lease
ARGV[1]     fence: the one lease_token granted, or 0 for a put by the app (sign-in, import)
ARGV[2..]   field, value pairs to set (sealed tokens, expiry, scopes, state, reason, ...)

A refresh's write (fence > 0) lands only if its fence is still the record's latest: a put or
a later lease since then means the answer is stale, and it is discarded, never written over
the newer token. A put (fence 0) always lands and bumps the fence, so any refresh still under
way is discarded in its turn; it also clears the 'reason' of an earlier state and 'told'
(an account.reauth_required event was written for it).
Either way the record's 'version' goes up by one and the lease is freed.
Returns { 1, new version } when written, { 0, current version } when discarded.
]]
local record, lease = KEYS[1], KEYS[2]
local fence = tonumber(ARGV[1])
local version = tonumber(redis.call('HGET', record, 'version') or '0')
if fence > 0 then
  local latest = tonumber(redis.call('HGET', record, 'fence') or '0')
  if latest ~= fence then
    return { 0, version }
  end
else
  redis.call('HINCRBY', record, 'fence', 1)
  redis.call('HDEL', record, 'reason', 'told')
end
local fields = {}
for i = 2, #ARGV, 2 do
  fields[#fields + 1] = ARGV[i]
  fields[#fields + 1] = ARGV[i + 1]
end
version = version + 1
redis.call('HSET', record, 'version', version, unpack(fields))
redis.call('DEL', lease)
return { 1, version }

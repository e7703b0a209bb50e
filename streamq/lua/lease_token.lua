--[[ lease_token: let one worker, of all, refresh an account's token.

KEYS[1]     the account's token record (hash)
KEYS[2]     the account's refresh lease (string: the fence it was granted with)
ARGV[1]     the record's version the caller read (and found due or refused)
ARGV[2]     how long the lease lasts, ms (a holder that dies frees it by expiry)

Both keys share the account's hash tag, so they live in one Cluster slot.
Every grant bumps the record's 'fence'; the holder writes its refreshed token with that fence
(write_token), and any write that is not the latest fence is discarded, so a holder whose
lease ran out can never overwrite what a later holder (or an app's put) stored.
Returns { code, value }:
  { 0, fence }    granted: refresh, then write_token with this fence
  { 1, version }  the record is already newer than ARGV[1]: use it, no refresh needed
  { 2, ms }       another worker holds the lease for this many more ms: wait for a new version
  { 3, 0 }        no record
  { 4, version }  the account needs a new sign-in (state 'reauth_required'): do not refresh
]]
local record, lease = KEYS[1], KEYS[2]
local seen, lease_ms = ARGV[1], tonumber(ARGV[2])
local found = redis.call('HMGET', record, 'version', 'state')
if not found[1] then
  return { 3, 0 }
end
if found[2] == 'reauth_required' then
  return { 4, tonumber(found[1]) }
end
if found[1] ~= seen then
  return { 1, tonumber(found[1]) }
end
local left = redis.call('PTTL', lease)
if left > 0 then
  return { 2, left }
end
local fence = redis.call('HINCRBY', record, 'fence', 1)
redis.call('SET', lease, fence, 'PX', lease_ms)
return { 0, fence }

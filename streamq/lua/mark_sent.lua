--[[ mark_sent: set or clear a job's "may have been sent" mark, in its record.

KEYS[1]  the job's record
ARGV[1]  '1' to set the mark, '0' to clear it

The mark ('sent_since', ms by the server's clock) is set before any request that can create
something, and keeps the first time it was set: a later run sees that an earlier one may have
reached the platform, and since when (a lookup by listing the account's posts starts there).
It is cleared only when the outcome is known to have sent nothing (the platform refused the
request; or a verify run's lookup found nothing): a job whose mark is set is never recorded dead
without a lookup first, and every run after it (a retry, a redelivery, `dead replay`, `job
retry`) looks before sending. A record that is gone is not created.
Returns the mark (ms) after the call, 0 when cleared, or -1 when the record is gone.
]]
-- @include "server_now.lua"
local record = KEYS[1]
if redis.call('EXISTS', record) == 0 then
  return -1
end
if ARGV[1] == '0' then
  redis.call('HDEL', record, 'sent_since')
  return 0
end
redis.call('HSETNX', record, 'sent_since', server_now_ms())
return tonumber(redis.call('HGET', record, 'sent_since'))

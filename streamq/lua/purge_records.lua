--[[ purge_records: delete the records of finished jobs, from a batch of candidate record keys.

KEYS[1..]  job record keys (one SCAN page of the stream's streamq:{S}:job:* keys)
ARGV[1]    keep records that finished less than this many ms ago (0: purge them all)
ARGV[2..]  the states to purge (a subset of done, dead, cancelled, expired)

A record is deleted only if its state, checked here, is one of those given and it has a
finished time old enough: a job revived or still running between the SCAN and this call is
left alone. Returns the number of records deleted.
]]
-- @include "server_now.lua"
local cutoff = server_now_ms() - tonumber(ARGV[1])
local purgeable = {}
for i = 2, #ARGV do
  purgeable[ARGV[i]] = true
end
local deleted = 0
for _, record in ipairs(KEYS) do
  local f = redis.call('HMGET', record, 'state', 'finished_at')
  if f[1] and purgeable[f[1]] and f[2] and tonumber(f[2]) <= cutoff then
    deleted = deleted + redis.call('DEL', record)
  end
end
return deleted

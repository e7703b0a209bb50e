--[[ release_jobs: hand back entries a stopping worker fetched but never started.

KEYS[1]   lane stream
KEYS[2..] the record of each entry's job, in ARGV order
ARGV[1]   consumer group
ARGV[2]   consumer name (the current owner)
ARGV[3..] entry ids

Streams cannot un-deliver an entry, so each one this consumer still owns is appended again to
the tail of its lane (same fields, a new entry id) and the old entry acknowledged and deleted, in
one step: other workers get it at once instead of after the visibility timeout. The record
follows the entry to its new id, so the job can still be found and cancelled.
Returns the number of entries released.
]]
local lane, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local released = 0
for i = 3, #ARGV do
  local id = ARGV[i]
  local pending = redis.call('XPENDING', lane, group, id, id, 1)
  if pending[1] and pending[1][2] == consumer then
    local found = redis.call('XRANGE', lane, id, id)
    if found[1] then
      local entry = redis.call('XADD', lane, '*', unpack(found[1][2]))
      redis.call('HSET', KEYS[i - 1], 'entry', entry)
    end
    redis.call('XACK', lane, group, id)
    redis.call('XDEL', lane, id)
    released = released + 1
  end
end
return released

--[[ release_jobs: hand back entries a stopping worker fetched but never started.

KEYS[1]   lane stream
KEYS[2..] the record of each entry's job, in ARGV order
ARGV[1]   consumer group
ARGV[2]   consumer name (the current owner)
ARGV[3..] entry ids

Streams cannot un-deliver an entry, so each one this consumer still owns is appended again to
the tail of its lane (same fields, a new entry id) and the old entry acknowledged and deleted, in
one step: other workers get it at once instead of after the visibility timeout. The record
follows the entry to its new id, so the job can still be found and cancelled. The copy drops the
envelope's first-run flag (the text ',"f":true' that ends it, see codec.Envelope.first_run): an
entry taken over from a worker that died may have run, so the run after it reads the record.
Returns the number of entries released.
]]
local lane, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local FIRST_RUN = ',"f":true}'
local released = 0
for i = 3, #ARGV do
  local id = ARGV[i]
  local pending = redis.call('XPENDING', lane, group, id, id, 1)
  if pending[1] and pending[1][2] == consumer then
    local found = redis.call('XRANGE', lane, id, id)
    if found[1] then
      local fields = found[1][2]
      if fields[1] == 'j' and string.sub(fields[2], -#FIRST_RUN) == FIRST_RUN then
        fields[2] = string.sub(fields[2], 1, -#FIRST_RUN - 1) .. '}'
      end
      local entry = redis.call('XADD', lane, '*', unpack(fields))
      redis.call('HSET', KEYS[i - 1], 'entry', entry)
    end
    redis.call('XACK', lane, group, id)
    redis.call('XDEL', lane, id)
    released = released + 1
  end
end
return released

--[[ dead_letter: move entries of one lane to the dead-letter stream, atomically.

KEYS[1]  lane stream
KEYS[2]  dead-letter stream
KEYS[3]  dedup hash
ARGV[1]  consumer group
ARGV[2..] quadruples: entry id, reason, dedup key ('' for none), job id ('' for none)

Each entry's fields are copied verbatim (foreign or undecodable bytes included, so nothing is
lost), followed by _reason, _source and _entry; then it is acknowledged and deleted, and its
dedup key freed. An entry already gone from the lane still leaves a dead letter with its reason.
Returns the number of dead letters written.
]]
local lane, dead, dedup = KEYS[1], KEYS[2], KEYS[3]
local group = ARGV[1]
local written = 0
for q = 2, #ARGV, 4 do
  local id, reason, key, job = ARGV[q], ARGV[q + 1], ARGV[q + 2], ARGV[q + 3]
  local found = redis.call('XRANGE', lane, id, id)
  local fields = {}
  if found[1] then
    fields = found[1][2]
  end
  fields[#fields + 1] = '_reason'
  fields[#fields + 1] = reason
  fields[#fields + 1] = '_source'
  fields[#fields + 1] = lane
  fields[#fields + 1] = '_entry'
  fields[#fields + 1] = id
  redis.call('XADD', dead, '*', unpack(fields))
  written = written + 1
  redis.call('XACK', lane, group, id)
  redis.call('XDEL', lane, id)
  if key ~= '' and redis.call('HGET', dedup, key) == job then
    redis.call('HDEL', dedup, key)
  end
end
return written

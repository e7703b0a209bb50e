--[[ enqueue_jobs: add jobs to one priority lane of a stream, honouring dedup keys.

KEYS[1]  lane stream        streamq:{S}:lane:<priority>
KEYS[2]  dedup hash         streamq:{S}:keys
ARGV[1]  number of jobs n
ARGV[2..] n triples: job id, dedup key ('' for none), encoded envelope

Returns a flat array of (1-based position, existing job id) for every job NOT added because its
dedup key is held by a live job; an empty array when all were added. A key repeated within one
call resolves to the first job that claimed it.
]]
local lane, dedup = KEYS[1], KEYS[2]
local taken = {}
local n = tonumber(ARGV[1])
for i = 0, n - 1 do
  local at = 2 + i * 3
  local id, key = ARGV[at], ARGV[at + 1]
  local existing = false
  if key ~= '' then
    existing = redis.call('HGET', dedup, key)
  end
  if existing then
    taken[#taken + 1] = i + 1
    taken[#taken + 1] = existing
  else
    if key ~= '' then
      redis.call('HSET', dedup, key, id)
    end
    redis.call('XADD', lane, '*', 'j', ARGV[at + 2])
  end
end
return taken

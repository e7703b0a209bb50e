--[[ fetch_jobs: read up to COUNT new entries for one consumer, highest priority lane first.

KEYS[1..L]  lane streams, highest priority first
ARGV[1]     consumer group
ARGV[2]     consumer name
ARGV[3]     how many entries at most

Returns a flat array of (lane index, entries) for each lane that gave entries, where entries is
XREADGROUP's reply for that lane: { {entry id, {field, value, ...}}, ... }. A lower lane is only
read when the higher ones could not fill the batch, so priorities hold within one batch.
Errors with NOGROUP when a lane has lost its group (the caller recreates the groups).
]]
local group, consumer = ARGV[1], ARGV[2]
local want = tonumber(ARGV[3])
local out = {}
for l = 1, #KEYS do
  if want <= 0 then
    break
  end
  local reply = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', want,
    'STREAMS', KEYS[l], '>')
  if reply then
    local entries = reply[1][2]
    out[#out + 1] = l
    out[#out + 1] = entries
    want = want - #entries
  end
end
return out

--[[ page_members: the next members of a sorted set after a cursor, in (score, member) order.

KEYS[1]     the sorted set a listing pages through (delayed, due, parked, held, finished)
ARGV[1]     lowest score listed: a number or '-inf' (the listing's since)
ARGV[2]     highest score listed: a number or '+inf' (the listing's until)
ARGV[3]     the cursor's score, or '' for the first page
ARGV[4]     the cursor's member (the last job the previous page listed)
ARGV[5]     how many members at most
Read only. Members with equal scores are kept in byte order of the member, and a cursor names
both, so a page resumes just after the last job listed in O(log n + page) however many jobs
share its score (jobs scheduled for the same minute), where ZRANGE BYSCORE from the score
would re-read every tie before it. The cursor's member is usually still there, at its score:
ZRANK gives its place. When it has left (promoted, cancelled) or moved, a binary search over
the members tied at that score (ZRANGE by rank, O(log n) each) finds the first one after it.
One call, so no member moves between finding the place and reading from it.
Returns { member, score, member, score, ... }, scores as the server prints them; fewer than
ARGV[5] members when none is left within the bounds.
]]
local set, count = KEYS[1], tonumber(ARGV[5])
local high = ARGV[2] == '+inf' and math.huge or tonumber(ARGV[2])
local low = ARGV[1] == '-inf' and -math.huge or tonumber(ARGV[1])
local score = ARGV[3] ~= '' and tonumber(ARGV[3]) or nil

if score == nil or score < low then
  return redis.call('ZRANGE', set, ARGV[1], ARGV[2], 'BYSCORE', 'LIMIT', 0, count, 'WITHSCORES')
end
if score > high then
  return {}
end

-- Byte order, as the sorted set keeps ties (Lua's own < on strings follows the locale).
local function before(a, b)
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then
      return x < y
    end
  end
  return #a < #b
end

local member = ARGV[4]
local start
local held = redis.call('ZSCORE', set, member)
if held and tonumber(held) == score then
  start = redis.call('ZRANK', set, member) + 1
else
  -- Ranks lo .. hi-1 hold the members tied at the cursor's score: the first after it.
  local lo = redis.call('ZCOUNT', set, '-inf', '(' .. ARGV[3])
  local hi = redis.call('ZCOUNT', set, '-inf', ARGV[3])
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    local at = redis.call('ZRANGE', set, mid, mid)[1]
    if before(member, at) then
      hi = mid
    else
      lo = mid + 1
    end
  end
  start = lo
end

local found = redis.call('ZRANGE', set, start, start + count - 1, 'WITHSCORES')
local page = {}
for i = 1, #found, 2 do
  if tonumber(found[i + 1]) > high then
    break
  end
  page[#page + 1] = found[i]
  page[#page + 1] = found[i + 1]
end
return page

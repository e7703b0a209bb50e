-- The indexes listings page through (streamq.listing), kept by the scripts that move jobs, in
-- the same step. Needs stream_keys.lua included before it.
-- An account's members of the delayed set, with the same scores: one ZADD or ZREM beside each
-- one on the delayed set, so one account's scheduled jobs page in O(log n + page).
local function index_due(prefix, account, due, id)
  if account and account ~= '' then
    redis.call('ZADD', due_key(prefix, account), due, id)
  end
end
local function unindex_due(prefix, account, id)
  if account and account ~= '' then
    redis.call('ZREM', due_key(prefix, account), id)
  end
end
-- Jobs that ended done, cancelled or expired, by finish time. A listing skips a member whose
-- record says otherwise (revived, purged); trim_finished drops those older than the records'
-- retention, so the set lives as long as the records it points to.
local function index_finished(prefix, state, id, now)
  redis.call('ZADD', finished_key(prefix, state), now, id)
end
-- index_finished for many jobs that ended at one time: one ZADD per 500 (a batch's outcomes;
-- unpack() is bounded by the Lua C stack).
local function index_finished_all(prefix, state, ids, now)
  local key = finished_key(prefix, state)
  local args = {}
  for i, id in ipairs(ids) do
    args[#args + 1], args[#args + 2] = now, id
    if #args == 1000 or i == #ids then
      redis.call('ZADD', key, unpack(args))
      args = {}
    end
  end
end
local function trim_finished(prefix, state, now, retention)
  local ended = finished_key(prefix, state)
  redis.call('ZREMRANGEBYSCORE', ended, '-inf', '(' .. (now - tonumber(retention)))
  redis.call('PEXPIRE', ended, retention)
end

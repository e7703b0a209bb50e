-- Free a dedup key, but only while it still names this job: a newer job may hold it by now.
local function free_dedup_key(dedup, key, id)
  if key and key ~= '' and redis.call('HGET', dedup, key) == id then
    redis.call('HDEL', dedup, key)
  end
end

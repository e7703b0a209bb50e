-- When the earliest waiting job is due (ms), or infinity: a job due before it must wake workers.
local function delayed_head_ms(delayed)
  local head = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')[2]
  return head and tonumber(head) or math.huge
end

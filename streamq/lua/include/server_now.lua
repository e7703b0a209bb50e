-- The server's clock in ms: every due time is compared with it, never with a worker's clock.
local function server_now_ms()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end

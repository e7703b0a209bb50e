-- Send an account's oldest held job (waiting for its turn on the platform) back to its lane.
local function release_held(lanes, prefix, account)
  local held = prefix .. 'held:' .. account
  local id = redis.call('ZRANGE', held, 0, 0)[1]
  if not id then
    return
  end
  redis.call('ZREM', held, id)
  local record = prefix .. 'job:' .. id
  local f = redis.call('HMGET', record, 'state', 'env', 'priority')
  if f[1] == 'held' and f[2] then
    local lane = ({ high = lanes[1], normal = lanes[2], low = lanes[3] })[f[3] or 'normal']
    local entry = redis.call('XADD', lane or lanes[2], '*', 'j', f[2])
    redis.call('HSET', record, 'state', 'queued', 'entry', entry)
    redis.call('HDEL', record, 'env')
  end
end

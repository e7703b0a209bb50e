-- Send an account's oldest held job (waiting for its turn on the platform) back to its lane,
-- with a 'queued' event. Needs stream_keys.lua, server_now.lua and emit_event.lua included
-- before it.
local function release_held(prefix, account)
  local held = held_key(prefix, account)
  local id = redis.call('ZRANGE', held, 0, 0)[1]
  if not id then
    redis.call('ZREM', holding_key(prefix), account)
    return
  end
  redis.call('ZREM', held, id)
  if redis.call('ZCARD', held) == 0 then
    redis.call('ZREM', holding_key(prefix), account)
  end
  local record = job_key(prefix, id)
  local f = redis.call('HMGET', record, 'state', 'env', 'priority')
  if f[1] == 'held' and f[2] then
    local entry = redis.call('XADD', lane_key(prefix, f[3] or 'normal'), '*', 'j', f[2])
    redis.call('HSET', record, 'state', 'queued', 'entry', entry)
    redis.call('HDEL', record, 'env')
    -- It takes the account's turn from now on: a later job of the account read before it (it
    -- joins the lane's end) must be held behind it, not go first. admit_jobs passes the turn
    -- on when it starts, and forget_waiting if it never does.
    local turns = turns_key(prefix, account)
    redis.call('ZADD', turns, server_now_ms(), id)
    if redis.call('PTTL', turns) < 60000 then
      redis.call('PEXPIRE', turns, 60000)
    end
    local more = redis.call('HMGET', record, 'attempt', 'key')
    emit_event(events_key(prefix), events_settings(meta_key(prefix)), 'queued', id,
      server_now_ms(), more[1], more[2], account)
  end
end

-- The job no longer waits for capacity (cancelled, moved, expired, parked): out of the plans
-- and its account's order sets, so no newcomer queues behind it, and its account's turn on the
-- platform passes to the next job.
local function forget_waiting(prefix, id, account)
  redis.call('ZREM', platform_plan_key(prefix), id)
  if account and account ~= '' then
    redis.call('ZREM', plan_key(prefix, account), id)
    local turns = turns_key(prefix, account)
    if redis.call('ZREM', turns, id) == 1 and redis.call('ZCARD', turns) == 0 then
      release_held(prefix, account)
    end
    for _, lane in ipairs({ 'high', 'normal', 'low' }) do
      redis.call('ZREM', order_key(prefix, lane, account), id)
    end
  end
end

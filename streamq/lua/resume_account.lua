--[[ resume_account: lift an account's pause and send its parked jobs back to run.

KEYS[1]     paused hash
KEYS[2]     delayed set
KEYS[3]     control stream
KEYS[4]     the account's parked set
KEYS[5]     events stream
KEYS[6]     stream settings (the events' cap)
ARGV[1]     key prefix of the stream, 'streamq:{S}:'
ARGV[2]     the account

Parked jobs go to the delayed set due now (each with a 'scheduled' event), in the order they
were enqueued, so they pass the
rate limits again like any other job; their attempt numbers are unchanged.
Returns { 1 if the account was paused else 0, number of jobs sent back }.
]]
-- @include "tell_workers.lua"
-- @include "server_now.lua"
-- @include "emit_event.lua"
local paused, delayed, control, parked = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local prefix, account = ARGV[1], ARGV[2]
local field = 'a:' .. account
local was_paused = redis.call('HDEL', paused, field)
redis.call('HDEL', paused .. ':why', field)
local now = server_now_ms()
local settings = events_settings(KEYS[6])
local ids = redis.call('ZRANGE', parked, 0, -1)
for i, id in ipairs(ids) do
  -- A millisecond apart keeps the enqueue order through the delayed set.
  local due = now + i - 1
  local record = prefix .. 'job:' .. id
  local f = redis.call('HMGET', record, 'state', 'attempt', 'key')
  if f[1] == 'paused' then
    redis.call('ZADD', delayed, due, id)
    redis.call('HSET', record, 'state', 'scheduled', 'run_at', due)
    emit_event(KEYS[5], settings, 'scheduled', id, now, f[2], f[3], account, { 'run_at', due })
  end
end
redis.call('DEL', parked)
if #ids > 0 then
  tell_workers(control, 'w', now)
end
return { was_paused, #ids }

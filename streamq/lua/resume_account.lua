--[[ resume_account: lift an account's pause and send its parked jobs back to run.

KEYS[1]     paused hash
KEYS[2]     delayed set (no longer written: kept so callers stay as they are)
KEYS[3]     control stream
KEYS[4]     the account's parked set
KEYS[5]     events stream
KEYS[6]     stream settings (the events' cap)
ARGV[1]     key prefix of the stream, 'streamq:{S}:'
ARGV[2]     the account

Parked jobs go straight back onto their lanes (each with a 'queued' event), in the order they
were enqueued (the parked set's order: enqueue time, then job id, which sorts in creation
order), ahead of any job enqueued after this call; they pass the rate limits again like any
other job when read; their attempt numbers are unchanged. (Through the delayed set, a job
enqueued just after the resume could reach its lane before them.) Each also joins its
account's order set for its lane ('order:<lane>:<account>', scored 0 so it sorts by id): a
job of the account still unread in the lane, ahead of them, is held back by admit_jobs until
they have started, so the account's jobs start in enqueue order within the lane.
Returns { 1 if the account was paused else 0, number of jobs sent back }.
]]
-- @include "stream_keys.lua"
-- @include "server_now.lua"
-- @include "emit_event.lua"
-- An order set outlives any wait it orders; it only bounds what a job purged unseen leaves.
local ORDER_TTL_MS = 7 * 86400000
local paused, parked = KEYS[1], KEYS[4]
local prefix, account = ARGV[1], ARGV[2]
local field = 'a:' .. account
local was_paused = redis.call('HDEL', paused, field)
redis.call('HDEL', paused .. ':why', field)
local now = server_now_ms()
local settings = events_settings(KEYS[6])
local ids = redis.call('ZRANGE', parked, 0, -1)
for _, id in ipairs(ids) do
  local record = job_key(prefix, id)
  local f = redis.call('HMGET', record, 'state', 'attempt', 'key', 'env', 'priority')
  if f[1] == 'paused' and f[4] then
    local entry = redis.call('XADD', lane_key(prefix, f[5] or 'normal'), '*', 'j', f[4])
    redis.call('HSET', record, 'state', 'queued', 'entry', entry)
    redis.call('HDEL', record, 'env')
    -- A later job of the account still unread in the lane (it joins the lane's end, behind
    -- them) must wait for it: admit_jobs holds back any job of the account and lane whose id
    -- is later than the first one here still on its way, and takes each out when it starts.
    local order = order_key(prefix, f[5] or 'normal', account)
    redis.call('ZADD', order, 0, id)
    redis.call('PEXPIRE', order, ORDER_TTL_MS)
    emit_event(KEYS[5], settings, 'queued', id, now, f[2], f[3], account)
  end
end
redis.call('DEL', parked)
return { was_paused, #ids }

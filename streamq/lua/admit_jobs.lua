--[[ admit_jobs: decide, for a batch of jobs a worker just read, which may start now.

KEYS[1..3]  lane streams: high, normal, low
KEYS[4]     delayed set
KEYS[5]     counts hash
KEYS[6]     control stream
KEYS[7]     paused hash ('platform' or 'a:<account>' -> until ms, -1 = until resumed)
KEYS[8]     the platform's admission log
KEYS[9]     the platform's waiting plan
KEYS[10]    events stream
KEYS[11]    stream settings (the events' cap)
ARGV[1]     consumer group
ARGV[2]     consumer name (a job is deferred only while its entry is still pending to it)
ARGV[3]     key prefix of the stream, 'streamq:{S}:' (per-account keys are built from it)
ARGV[4]     the limits, msgpack: { platform limits, account limits }, each an array of
            { count, window ms }
ARGV[5]     the jobs, msgpack: an array of { lane (1-3), entry id, job id, account or '',
            enqueued ms [, envelope to keep instead of the entry's (a reclaimed job's, whose
            attempt counts the crashed runs)] }

An admission log holds the times jobs started. A limit (count n, window w) allows a start at
`now` only if the log's n-th latest start is at least w ago, so no window of length w, wherever
it is placed, ever holds more than n starts: a sliding window, exact, with no boundary bursts.
A job that may not start now leaves its lane for the delayed set (and its account's due index),
due when its turn comes; it
keeps its attempt number. Its turn is planned, not just "when the next slot frees": a plan holds
the jobs waiting on a log with their expected start, and a newcomer counts those as made, so
waiting jobs keep their place and a thousand deferred posts wake one by one, not all at once.
Plans only pick wake-up times; every start is still checked against the log, so a wrong guess
costs a second deferral, never an excess start.
Accounts take turns on the platform: while one of an account's jobs waits for the platform,
its next ones are held aside (state 'held', not timed) and one is sent back to the lane each
time the account's waiting job starts, so a newcomer waits behind one job per account, not
behind another account's thousands.
An account's jobs keep their enqueue order (job ids sort in creation order): a newcomer is
planned after its account's waiting jobs, a job deferred again takes its account's later jobs
planned before its new turn along with it, a job does not start while an earlier one of its
account is due but not started (it waits a moment behind it), and a job sent back from the
held set takes the account's turn at once, so a later one read before it is held behind it;
a job does not start while an earlier one of its account that a resume sent back to the same
lane (or that waits behind one) has not started: it waits a moment behind it (the account's
order set for the lane, 'order:<lane>:<account>').
A job of a paused account is parked until the account is resumed (or deferred to the end of a
timed pause); a platform pause defers every job of the stream.
A job deferred or held back appends a 'rate-limited' event, a parked one a 'paused' event.
Returns { per job: 1 run, 2 run but it was cancelled, 0 not here (deferred, parked, or no longer
this consumer's), platform paused until ms or 0, now }: a start is logged as '<job id>@<now>'.
]]
-- @include "stream_keys.lua"
-- @include "listing_index.lua"
-- @include "tell_workers.lua"
-- @include "server_now.lua"
-- @include "delayed_head.lua"
-- @include "emit_event.lua"
-- @include "release_held.lua"
local delayed, counts, control, paused = KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local platform_log, platform_plan = KEYS[8], KEYS[9]
local group, consumer, prefix = ARGV[1], ARGV[2], ARGV[3]
local limits = cmsgpack.unpack(ARGV[4])
local platform_limits, account_limits = limits[1], limits[2]
local jobs = cmsgpack.unpack(ARGV[5])
local now = server_now_ms()
local events = KEYS[10]
local event_settings = events_settings(KEYS[11])

local function event(kind, id, record, account, extra)
  if event_settings.cap > 0 then
    local f = redis.call('HMGET', record, 'attempt', 'key')
    emit_event(events, event_settings, kind, id, now, f[1], f[2], account, extra)
  end
end
-- A plan entry this far past its time belongs to a job that never came back (cancelled,
-- expired, stuck behind a backlog): it no longer holds anyone up.
local STALE_MS = 60000

local function longest(set)
  local w = 0
  for _, limit in ipairs(set) do
    w = math.max(w, limit[2])
  end
  return w
end
local platform_window, account_window = longest(platform_limits), longest(account_limits)

local function paused_until(field)
  local until_ms = redis.call('HGET', paused, field)
  if not until_ms then
    return 0
  end
  until_ms = tonumber(until_ms)
  if until_ms ~= -1 and until_ms <= now then
    redis.call('HDEL', paused, field)
    redis.call('HDEL', paused .. ':why', field)
    return 0
  end
  return until_ms
end

-- When a job may start under every limit of a set: for a job already waiting in the plan, as
-- soon as the log allows; for a newcomer, after everyone waiting (their planned starts count as
-- if made), so the k-th waiter is due when k more slots will have freed and a thousand deferred
-- posts wake one by one instead of all at once.
local function turn(log, plan, set, newcomer)
  local planned = 0
  if newcomer then
    redis.call('ZREMRANGEBYSCORE', plan, '-inf', now - STALE_MS)
    planned = redis.call('ZCARD', plan)
  end
  local at = now
  for _, limit in ipairs(set) do
    local n, w = limit[1], limit[2]
    -- The log always has its say: a plan entry left in the past (its job is late) must not
    -- let newcomers start over the limit.
    local started = redis.call('ZRANGE', log, -n, -n, 'WITHSCORES')[2]
    if started then
      at = math.max(at, tonumber(started) + w)
    end
    if planned > 0 then
      local start
      if planned >= n then
        start = redis.call('ZRANGE', plan, -n, -n, 'WITHSCORES')[2]
      else
        start = redis.call('ZRANGE', log, planned - n, planned - n, 'WITHSCORES')[2]
      end
      if start then
        at = math.max(at, tonumber(start) + w)
      end
    end
  end
  return at
end

local function record_start(log, plan, window, id)
  redis.call('ZREMRANGEBYSCORE', log, '-inf', now - window)
  redis.call('ZADD', log, now, id .. '@' .. now)
  redis.call('PEXPIRE', log, window + 1000)
  redis.call('ZREM', plan, id)
end

-- Take the entry off its lane, returning its envelope, if it is still this consumer's.
local function take(lane, entry, replacement)
  if not redis.call('XPENDING', lane, group, entry, entry, 1, consumer)[1] then
    return nil
  end
  local found = redis.call('XRANGE', lane, entry, entry)[1]
  redis.call('XACK', lane, group, entry)
  redis.call('XDEL', lane, entry)
  return replacement or (found and found[2][2])
end

-- How long a job waits, at the least, behind an earlier job of its account whose turn has come
-- but that has not started yet (it is on its way back to its lane, or held by a worker that
-- died until its visibility timeout passes).
local BEHIND_MS = 10

-- An account's order set for a lane ('order:<lane>:<account>', scored 0, so by id) holds the
-- jobs a resume sent back to the lane's end and the account's later ones that came to wait
-- behind them. The earliest of them still on its way (queued, deferred or held) goes first: a
-- later job of the account and lane waits behind it, joining the set. A member that started
-- leaves it; one that ended otherwise (cancelled, expired, dead, parked again) is dropped here.
local LANE_NAMES = { 'high', 'normal', 'low' }
local ORDER_TTL_MS = 7 * 86400000
local BEHIND_MAX_MS = 1000

local function earlier_in_order(order, id)
  while true do
    local first = redis.call('ZRANGE', order, 0, 0)[1]
    if not first or first >= id then
      return nil
    end
    local state = redis.call('HGET', job_key(prefix, first), 'state')
    if state == 'queued' or state == 'scheduled' or state == 'held' then
      return first
    end
    redis.call('ZREM', order, first)
  end
end

-- How many jobs of one account may wait for the platform at once: 1 is strict round robin.
local TURNS_PER_ACCOUNT = 1

-- Whether other jobs of the account than `id` wait for the platform.
local function has_turn_waiting(turns, id)
  redis.call('ZREMRANGEBYSCORE', turns, '-inf', now - STALE_MS)
  local mine = redis.call('ZSCORE', turns, id) and 1 or 0
  return redis.call('ZCARD', turns) - mine >= TURNS_PER_ACCOUNT
end

-- The account's job no longer waits for the platform: its next held job takes its turn.
local function leave_platform_queue(turns, account, id)
  redis.call('ZREM', turns, id)
  if not has_turn_waiting(turns, id) then
    release_held(prefix, account)
  end
end

-- A plan lives as long as its latest entry needs it.
local function keep_for_last(plan)
  local last = redis.call('ZRANGE', plan, -1, -1, 'WITHSCORES')[2]
  if last then
    redis.call('PEXPIRE', plan, math.max(1, tonumber(last) - now + STALE_MS))
  end
end

local head = delayed_head_ms(delayed)
local earliest = math.huge
local deferred, parked = 0, 0
local platform_hold = paused_until('platform')
local codes = {}
for i, job in ipairs(jobs) do
  local lane, entry, id, account, enqueued = KEYS[job[1]], job[2], job[3], job[4], job[5]
  local replacement = job[6]
  local record = job_key(prefix, id)
  local hold = platform_hold
  if account ~= '' then
    local account_hold = paused_until('a:' .. account)
    hold = account_hold == -1 and -1 or math.max(hold, account_hold)
  end
  local order = account ~= '' and order_key(prefix, LANE_NAMES[job[1]], account)
  codes[i] = 0
  if redis.call('HGET', record, 'cancel') then
    codes[i] = 2 -- cancelled while waiting: the worker ends it
    if order then
      redis.call('ZREM', order, id)
    end
  elseif hold == -1 then
    local envelope = take(lane, entry, replacement)
    if envelope then
      forget_waiting(prefix, id, account)
      redis.call('ZADD', parked_key(prefix, account), enqueued, id)
      redis.call('HSET', record, 'state', 'paused', 'env', envelope)
      redis.call('HDEL', record, 'entry')
      parked = parked + 1
      event('paused', id, record, account, { 'error', redis.call('HGET', paused .. ':why',
        'a:' .. account) })
    end
  else
    local by_account = account ~= '' and #account_limits > 0
    local by_platform = #platform_limits > 0
    local account_log, account_plan, account_reentry
    local account_turn, platform_turn = now, now
    local platform_waits = false
    if by_account then
      account_log = rate_key(prefix, account)
      account_plan = plan_key(prefix, account)
      local planned_at = redis.call('ZSCORE', account_plan, id)
      account_turn = turn(account_log, account_plan, account_limits, not planned_at)
      -- The account's jobs keep their order: a newcomer goes after every job of the account
      -- waiting already, and a waiting job no earlier than its planned turn (moved back when
      -- an earlier job of the account was deferred again, below).
      if not planned_at then
        planned_at = redis.call('ZRANGE', account_plan, -1, -1, 'WITHSCORES')[2]
        account_reentry = false
      else
        account_reentry = true
      end
      account_turn = math.max(account_turn, tonumber(planned_at or now))
      -- An earlier job of the account still waiting (due, on its way back to a lane) goes
      -- first: this one waits behind it, looking again less often the later that one is, and
      -- not at all once it is as late as a plan entry that never comes back. (Ids of one
      -- stream sort in creation order.)
      local head = redis.call('ZRANGE', account_plan, 0, 0, 'WITHSCORES')
      if head[1] and head[1] ~= id and head[1] < id then
        local late = now - tonumber(head[2])
        if late < STALE_MS then
          account_turn = math.max(account_turn, tonumber(head[2]) + 1,
            now + math.max(BEHIND_MS, math.floor(late / 2)))
        end
      end
    end
    -- An earlier job of the account sent back to this lane by a resume (or waiting behind one)
    -- has not started yet: this one waits behind it, looking again less often the longer. It
    -- takes no place in the plans meanwhile (nor the account's turn on the platform, which the
    -- earlier one would then be held behind): it joins them when nothing earlier is left.
    local queued_behind = order and earlier_in_order(order, id)
    if queued_behind then
      redis.call('HSETNX', record, 'behind', now)
      local waited = now - tonumber(redis.call('HGET', record, 'behind'))
      account_turn = math.max(account_turn,
        now + math.min(BEHIND_MAX_MS, math.max(BEHIND_MS, math.floor(waited / 2))))
      redis.call('ZADD', order, 0, id)
      redis.call('PEXPIRE', order, ORDER_TTL_MS)
    end
    if by_platform then
      platform_waits = redis.call('ZSCORE', platform_plan, id)
      platform_turn = turn(platform_log, platform_plan, platform_limits, not platform_waits)
    end
    local due = math.max(hold, account_turn, platform_turn)
    local platform_held = not queued_behind and by_platform and platform_turn > now
      and platform_turn >= math.max(hold, account_turn)
    local turns = account ~= '' and by_platform and turns_key(prefix, account)
    -- Another job of the account waits for the platform (or was just sent back to take its
    -- turn): this one goes behind it, even if the platform has room now.
    local behind = turns and not platform_waits and has_turn_waiting(turns, id)
    if due <= now and not behind then
      if by_account then
        record_start(account_log, account_plan, account_window, id)
      end
      if by_platform then
        record_start(platform_log, platform_plan, platform_window, id)
      end
      if turns then
        leave_platform_queue(turns, account, id)
      end
      if order and redis.call('ZREM', order, id) == 1 then
        redis.call('HDEL', record, 'behind')
      end
      codes[i] = 1
    elseif behind and (platform_held or due <= now) then
      -- The account already has a job waiting for the platform: this one waits behind it, off
      -- the platform's queue, which so holds one job per account and serves accounts in turn.
      local envelope = take(lane, entry, replacement)
      if envelope then
        redis.call('ZADD', held_key(prefix, account), enqueued, id)
        redis.call('ZADD', holding_key(prefix), 0, account)
        redis.call('HSET', record, 'state', 'held', 'env', envelope)
        redis.call('HDEL', record, 'entry')
        if by_account then
          redis.call('ZREM', account_plan, id)
        end
        -- Released when the account's waiting job starts; this wake-up is the safety net for
        -- when that job never comes back (cancelled, expired).
        local last = redis.call('ZRANGE', turns, -1, -1, 'WITHSCORES')[2]
        redis.call('ZADD', delayed, tonumber(last or now) + STALE_MS, '@held:' .. account)
        deferred = deferred + 1
        event('rate-limited', id, record, account, { 'error', "waiting for the account's turn" })
      end
    else
      local envelope = take(lane, entry, replacement)
      if envelope then
        if queued_behind then
          if by_account then
            redis.call('ZREM', account_plan, id)
          end
        elseif by_account then
          redis.call('ZADD', account_plan, due, id)
          keep_for_last(account_plan)
          if account_reentry then
            -- Deferred again (a job before it started late): the account's later jobs planned
            -- before its new turn move back to it, so none overtakes it. (Ids of one stream
            -- sort in creation order; a sorted set orders equal scores by id.)
            for _, other in ipairs(redis.call('ZRANGEBYSCORE', account_plan, '-inf', '(' .. due)) do
              if other > id then
                redis.call('ZADD', account_plan, due, other)
                if redis.call('ZADD', delayed, 'XX', 'CH', due, other) == 1 then
                  redis.call('ZADD', due_key(prefix, account), 'XX', due, other)
                  redis.call('HSET', job_key(prefix, other), 'run_at', due)
                end
              end
            end
          end
        end
        -- Only jobs the platform holds back queue on the platform: one held back by its
        -- account (or a pause) must not make every other account's jobs wait behind it.
        if platform_held then
          redis.call('ZADD', platform_plan, due, id)
          keep_for_last(platform_plan)
          if turns then
            redis.call('ZADD', turns, due, id)
            keep_for_last(turns)
          end
        elseif platform_waits then
          redis.call('ZREM', platform_plan, id)
          if turns then
            leave_platform_queue(turns, account, id)
          end
        end
        redis.call('ZADD', delayed, due, id)
        index_due(prefix, account, due, id)
        redis.call('HSET', record, 'state', 'scheduled', 'run_at', due, 'env', envelope)
        redis.call('HDEL', record, 'entry')
        earliest = math.min(earliest, due)
        deferred = deferred + 1
        event('rate-limited', id, record, account, { 'run_at', due })
      end
    end
  end
end
if deferred > 0 then
  redis.call('HINCRBY', counts, 'limited', deferred)
end
if parked > 0 then
  redis.call('HINCRBY', counts, 'parked', parked)
end
if earliest < head then
  tell_workers(control, 'w', earliest)
end
return { codes, platform_hold, now }

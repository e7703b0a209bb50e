-- The names a script builds itself: per-account keys (an account is known only once a job is
-- read), the records of jobs found by id, and the lanes and settings release_held reaches. Each
-- is the stream's prefix 'streamq:{S}:' (passed in ARGV) plus what streamq/keys.py appends, and
-- shares the stream's hash tag, so it lives in the slot of the script's KEYS. This is the only
-- place a script spells a key name; tests/test_keys.py holds each one to keys.py.
local function job_key(prefix, id) return prefix .. 'job:' .. id end
local function lane_key(prefix, priority) return prefix .. 'lane:' .. priority end
local function events_key(prefix) return prefix .. 'events' end
local function meta_key(prefix) return prefix .. 'meta' end
local function paused_key(prefix) return prefix .. 'paused' end
local function rate_key(prefix, account) return prefix .. 'rate:a:' .. account end
local function platform_plan_key(prefix) return prefix .. 'plan:p' end
local function plan_key(prefix, account) return prefix .. 'plan:a:' .. account end
local function parked_key(prefix, account) return prefix .. 'parked:' .. account end
local function turns_key(prefix, account) return prefix .. 'turns:' .. account end
local function held_key(prefix, account) return prefix .. 'held:' .. account end
local function holding_key(prefix) return prefix .. 'holding' end
local function due_key(prefix, account) return prefix .. 'due:' .. account end
local function flow_outbox_key(prefix) return prefix .. 'flows:outbox' end
local function liveness_key(prefix) return prefix .. 'liveness' end
local function finished_key(prefix, state) return prefix .. 'finished:' .. state end
local function order_key(prefix, lane, account)
  return prefix .. 'order:' .. lane .. ':' .. account
end

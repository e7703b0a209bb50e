--[[ start_jobs: count the run of each job whose handler has started.

KEYS[1..n]  the record of each job started
ARGV[1]     msgpack: an array of the entry each job was delivered from, in KEYS order (one
            argument, not n: the worker sends this call for every job it runs)

A run is counted per entry ('runs', with 'run_entry' naming the entry it counts for: a retry, a
deferral or a replay comes back as a new entry and starts from 1 again). Runs, not deliveries,
are what the delivery budget (max_deliveries) and a crash's attempts count: an entry fetched
into a worker's read-ahead and lost with that worker was delivered but never ran, so it uses
up nothing. A record that is gone (a hand-written entry) is not created, and counts no run;
nor does a done one (the start came after its outcome: count_run.lua).
A start still queued when its job's outcome is sent is not sent here: finish_jobs takes it
(ARGV[11] there), and counts it only where the outcome is stale (the entry lives on).
Returns how many runs were counted (the jobs that have a record not done).
]]
-- @include "count_run.lua"
local entries = cmsgpack.unpack(ARGV[1])
local counted = 0
for i, record in ipairs(KEYS) do
  counted = counted + count_run(record, entries[i])
end
return counted

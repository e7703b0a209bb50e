--[[ start_jobs: count the run of each job whose handler has started.

KEYS[1]     the stream's high lane (it only routes the call to the stream's slot: each job's
            record, in that slot too, is named from the prefix)
ARGV[1]     key prefix of the stream, 'streamq:{S}:'
ARGV[2]     msgpack: an array of the ids of the jobs started
ARGV[3]     the entry each job was delivered from, in ARGV[2]'s order, joined by single spaces
            (three arguments, not one a job: the worker sends this call for every job it runs,
            and joins and packs them in C)

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
-- @include "stream_keys.lua"
-- @include "count_run.lua"
local prefix = ARGV[1]
local ids = cmsgpack.unpack(ARGV[2])
local counted, i = 0, 0
for entry in string.gmatch(ARGV[3], '%S+') do
  i = i + 1
  counted = counted + count_run(job_key(prefix, ids[i]), entry)
end
return counted

--[[ check_due: whether jobs a worker read ahead of their due time may start now.

KEYS[1]    the stream's high lane (it only routes the call to the stream's slot: each job's
           record, in that slot too, is named from the prefix)
ARGV[1]    key prefix of the stream, 'streamq:{S}:'
ARGV[2]    consumer group
ARGV[3]    msgpack: per job, { job id, due time ms (its envelope's 'r'), entry id, lane (high,
           normal, low) } (one argument, packed before the due time: a worker sends this for
           every job it held, and at the due time it only joins the rows it packed then)

promote_due.lua promotes a job a little before it is due; the worker that reads it holds it and
asks here, when its local timer says the time has come, before the job goes any further. The
answer is by the server's clock (TIME, read in this step), and the worker starts nothing before
the answer comes back, so a job never starts before its due time by the server's clock,
whatever the worker's clock says.
Verdict per job: 0 not due yet (ask again later); 1 due: run; 2 due, but cancelled while it
waited (cancel_job.lua flagged it: it ends as cancelled without running); 3 taken back while it
waited (reschedule_job.lua put it back in the delayed set; it may have been promoted again
since, as a new entry): its entry is acknowledged and deleted here, and the worker lets go of
it. A cancel or a reschedule that lands before the due time is seen here, because
this step runs at or after the due time.
Returns { server now in µs, { verdict... } } (µs: the worker plans its next wait from it).
]]
-- @include "stream_keys.lua"
local prefix, group = ARGV[1], ARGV[2]
local rows = cmsgpack.unpack(ARGV[3])
local time = redis.call('TIME')
local now_us = tonumber(time[1]) * 1000000 + tonumber(time[2])
local verdicts = {}
for i = 1, #rows do
  local verdict = 0
  local id, due, entry, lane = rows[i][1], rows[i][2], rows[i][3], rows[i][4]
  if tonumber(due) * 1000 <= now_us then
    local f = redis.call('HMGET', job_key(prefix, id), 'state', 'cancel', 'entry')
    if f[1] == 'scheduled' or f[1] == 'retrying' or (f[1] == 'queued' and f[3] ~= entry) then
      redis.call('XACK', lane_key(prefix, lane), group, entry)
      redis.call('XDEL', lane_key(prefix, lane), entry)
      verdict = 3
    elseif f[2] then
      verdict = 2
    else
      verdict = 1
    end
  end
  verdicts[i] = verdict
end
return { now_us, verdicts }

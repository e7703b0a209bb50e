-- A run of the job whose record is `record`, started from lane entry `entry`, counted in the
-- record: 'runs' counts the starts of the entry 'run_entry' names (a retry, a deferral or a
-- replay comes back as a new entry and starts from 1 again). A record that is gone (a
-- hand-written entry) is not created, and a done one counts nothing: a start that reached the
-- server after its outcome (another connection) counts for an entry deleted with that
-- outcome, and a done record keeps no run count (finish_jobs). Returns 1 if counted, else 0.
-- (start_jobs; finish_jobs for a start folded into a stale outcome's call.)
local function count_run(record, entry)
  local f = redis.call('HMGET', record, 'state', 'run_entry')
  if not f[1] or f[1] == 'done' then
    return 0
  end
  if f[2] == entry then
    redis.call('HINCRBY', record, 'runs', 1)
  else
    redis.call('HSET', record, 'run_entry', entry, 'runs', 1)
  end
  return 1
end

-- Append to the control stream every worker reads ('w' due-ms: wake up and re-plan; 'c' job id:
-- cancelled). Capped so it stays small, yet long enough that no burst outruns the readers.
local function tell_workers(control, field, value)
  redis.call('XADD', control, 'MAXLEN', '~', 10000, '*', field, value)
end

-- What a reclaim took, as the gone log keeps it (reclaim_jobs, reclaim_lapsed): the job ids a
-- consumer lost, by who took them.
-- The job id of a lane entry: its envelope's id, or the entry's own id for one streamq cannot
-- read (an operator's stray XADD is reclaimed like any other entry).
local function job_of_entry(entry)
  local fields = entry[2]
  if fields[1] == 'j' then
    local ok, envelope = pcall(cjson.decode, fields[2])
    if ok and type(envelope) == 'table' and type(envelope.id) == 'string' then
      return envelope.id
    end
  end
  return entry[1]
end
-- One 'reclaimed' record: { from, by, jobs (space-separated), at[, why] }.
local function log_reclaimed(gone, keep, from, by, jobs, now, why)
  local fields = { 'kind', 'reclaimed', 'from', from, 'by', by, 'jobs', table.concat(jobs, ' '),
    'at', now }
  if why then
    fields[#fields + 1], fields[#fields + 2] = 'why', why
  end
  redis.call('XADD', gone, 'MAXLEN', '~', keep, '*', unpack(fields))
end

-- A waiting job's envelope as its record keeps it, and back. The record's key already names
-- the job, so a scheduled job's record keeps its envelope without the leading '"id":"<id>",'
-- (a backlog pays each byte once per job: docs/capacity.md), and so does a done job's record
-- (finish_jobs). promote_due, the one script that puts a stored envelope on a lane, puts the
-- id back (the records of paused, held and retrying jobs keep whole envelopes, written from
-- their entries, and go back to a lane from there). An envelope is JSON whose first field is always the id (msgspec
-- writes fields in order, streamq.codec.Envelope), so a stored one without it starts
-- '{"payload":', never '{"id":'. Ids hold no character JSON escapes (streamq.keys), so the
-- prefix is the id as it is. streamq.codec.entry_envelope is entry_envelope for Python
-- readers (codec.record_envelope decodes through it); Python never writes a stored one.
local ID_FIELD = '{"id":"'
local function stored_envelope(id, envelope)
  local head = ID_FIELD .. id .. '",'
  if string.sub(envelope, 1, #head) == head then
    return '{' .. string.sub(envelope, #head + 1)
  end
  return envelope
end
local function entry_envelope(id, envelope)
  if string.sub(envelope, 1, #ID_FIELD) == ID_FIELD then
    return envelope
  end
  return ID_FIELD .. id .. '",' .. string.sub(envelope, 2)
end

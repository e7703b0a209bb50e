-- A waiting job's envelope as its record keeps it, and back. The record's key already names
-- the job, so a record keeps its envelope without what the key says, in one of two forms
-- (a backlog pays each byte once per job: docs/capacity.md):
--   scheduled_envelope: a job enqueued for later (enqueue_jobs, reschedule_job, replace_job)
--     keeps '~' and the envelope's text between '"payload":' and ',"f":true}': the id, the
--     enqueue time 't' (the time its id spells: streamq.codec.new_job_id) and the first-run
--     flag (set on every job enqueued) are rebuilt. 'payload' follows 'id' and 't' because
--     streamq.codec.Envelope writes its fields in that order; readers take any order. A 14-byte
--     shorter value keeps a small post's record within hash-max-listpack-value (64): the
--     server's compact hash encoding, half the memory of a hash table.
--   stored_envelope: any other (a done job's record, finish_jobs; a scheduled envelope not of
--     that shape, e.g. a retry's) keeps it without the leading '"id":"<id>",'; an envelope
--     is JSON whose first field is always the id, so it starts '{"t":' or, from an earlier
--     version, '{"payload":', never '{"id":'.
-- promote_due, the one script that puts a stored envelope on a lane, puts them back with
-- entry_envelope (the records of paused, held and retrying jobs keep whole envelopes, written
-- from their entries, and go back to a lane from there). Ids hold no character JSON escapes
-- (streamq.keys), so the prefix is the id as it is. streamq.codec.entry_envelope is
-- entry_envelope for Python readers (codec.record_envelope decodes through it); Python never
-- writes a stored one.
local ID_FIELD = '{"id":"'
local SCHEDULED = '~'
local FIRST_RUN_END = ',"f":true}'
local function stored_envelope(id, envelope)
  local head = ID_FIELD .. id .. '",'
  if string.sub(envelope, 1, #head) == head then
    return '{' .. string.sub(envelope, #head + 1)
  end
  return envelope
end
-- The enqueue time an id spells ('<stream>:<ms hex>-<counter and random hex>'), as JSON
-- writes it; nil for an id of another shape.
local function id_ms_text(id)
  local hex = string.match(id, ':(%x+)%-%x+$')
  if not hex then
    return nil
  end
  return string.format('%.0f', tonumber(hex, 16))
end
local function scheduled_envelope(id, envelope)
  local ms = id_ms_text(id)
  if ms then
    local head = ID_FIELD .. id .. '","t":' .. ms .. ',"payload":'
    if string.sub(envelope, 1, #head) == head
        and string.sub(envelope, -#FIRST_RUN_END) == FIRST_RUN_END then
      return SCHEDULED .. string.sub(envelope, #head + 1, -#FIRST_RUN_END - 1)
    end
  end
  return stored_envelope(id, envelope)
end
local function entry_envelope(id, envelope)
  if string.sub(envelope, 1, #ID_FIELD) == ID_FIELD then
    return envelope
  end
  if string.sub(envelope, 1, 1) == SCHEDULED then
    return ID_FIELD .. id .. '","t":' .. id_ms_text(id) .. ',"payload":' .. string.sub(envelope, 2)
      .. FIRST_RUN_END
  end
  return ID_FIELD .. id .. '",' .. string.sub(envelope, 2)
end

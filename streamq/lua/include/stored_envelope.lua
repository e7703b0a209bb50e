-- A waiting job's envelope as its record keeps it, and back. The record's key already names
-- the job, so a record keeps its envelope without what the key says, in one of two forms
-- (a backlog pays each byte once per job: docs/capacity.md):
--   scheduled_envelope: a job enqueued for later (enqueue_jobs, reschedule_job, replace_job)
--     keeps '^' and the envelope's text between '"payload":' and ',"f":true}': the id, the
--     enqueue time 't' (the time its id spells: streamq.codec.new_job_id), the dedup key 'k'
--     and the account 'u' (the record's 'key' and 'account' fields hold them) and the
--     first-run flag (set on every job enqueued) are rebuilt. streamq.codec.Envelope writes
--     'id', 't', 'k', 'u', then 'payload', so all of them drop by prefix; readers take any
--     order. A producer sends this form itself (streamq.codec.scheduled_form), so enqueue does
--     no string work for it; a full envelope is cut here. Without the key and the account a
--     small post's record stays within hash-max-listpack-value (64): the server's compact hash
--     encoding, half the memory of a hash table.
--     The '~' form is the same without 'k' and 'u' taken out (they sit in its text after the
--     payload): the release before wrote it for scheduled jobs; a done job's record keeps it
--     when the worker sends it so (streamq.codec.stored_envelope: a job that ran from its
--     first entry and has no key or account), so finish_jobs reads no entry.
--   stored_envelope: any other (a done job's record whose worker sent no envelope, finish_jobs;
--     a scheduled envelope not of that shape, e.g. a retry's) keeps it without the leading
--     '"id":"<id>",'; an envelope
--     is JSON whose first field is always the id, so it starts '{"t":' or, from an earlier
--     version, '{"payload":', never '{"id":'.
-- promote_due, the one script that puts a stored envelope on a lane, puts them back with
-- entry_envelope (the records of paused, held and retrying jobs keep whole envelopes, written
-- from their entries, and go back to a lane from there). Ids hold no character JSON escapes
-- (streamq.keys), so the prefix is the id as it is. streamq.codec.entry_envelope is
-- entry_envelope for Python readers (codec.record_envelope decodes through it).
local ID_FIELD = '{"id":"'
local SCHEDULED = '~'
local KEYED = '^'
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
-- A key or an account as JSON text, as streamq.codec writes it: both are printable
-- (streamq.keys.check_key), so '"' and '\\' are all that is escaped.
local function json_text(value)
  return '"' .. (string.gsub(value, '[\\"]', '\\%0')) .. '"'
end
-- What a new job's envelope holds between its enqueue time and "payload": ('' or false: none).
local function owner_fields(key, account)
  local text = ''
  if key and key ~= '' then
    text = '"k":' .. json_text(key) .. ','
  end
  if account and account ~= '' then
    text = text .. '"u":' .. json_text(account) .. ','
  end
  return text
end
local function scheduled_envelope(id, envelope, key, account)
  if string.sub(envelope, 1, 1) == KEYED then
    return envelope -- the producer sent it stored already
  end
  local ms = id_ms_text(id)
  if ms then
    local head = ID_FIELD .. id .. '","t":' .. ms .. ',' .. owner_fields(key, account)
      .. '"payload":'
    if string.sub(envelope, 1, #head) == head
        and string.sub(envelope, -#FIRST_RUN_END) == FIRST_RUN_END then
      return KEYED .. string.sub(envelope, #head + 1, -#FIRST_RUN_END - 1)
    end
  end
  return stored_envelope(id, envelope)
end
-- key and account: the record's (or the enqueue row's) 'key' and 'account', '' or false
-- for none; only the '^' form needs them.
local function entry_envelope(id, envelope, key, account)
  if string.sub(envelope, 1, #ID_FIELD) == ID_FIELD then
    return envelope
  end
  if string.sub(envelope, 1, 1) == KEYED then
    return ID_FIELD .. id .. '","t":' .. id_ms_text(id) .. ',' .. owner_fields(key, account)
      .. '"payload":' .. string.sub(envelope, 2) .. FIRST_RUN_END
  end
  if string.sub(envelope, 1, 1) == SCHEDULED then
    return ID_FIELD .. id .. '","t":' .. id_ms_text(id) .. ',"payload":' .. string.sub(envelope, 2)
      .. FIRST_RUN_END
  end
  return ID_FIELD .. id .. '",' .. string.sub(envelope, 2)
end

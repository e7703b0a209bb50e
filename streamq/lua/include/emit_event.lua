-- Lifecycle events: appended by the very script that makes a change, so an event exists
-- exactly when its change happened.
-- The stream's settings (streamq:{S}:meta, written by its workers from their config): the
-- events stream's cap in entries (0: events off), the age in ms past which they are trimmed
-- (0: only the cap), and the event types not recorded (comma-separated). These defaults are
-- streamq.config.EventsConfig's.
local function events_settings(meta)
  local s = redis.call('HMGET', meta, 'events_cap', 'events_age_ms', 'events_skip')
  local skip = {}
  -- No settings published yet: EventsConfig's default skip (DEFAULT_EVENTS_SKIP).
  for kind in string.gmatch(s[3] or 'started', '[^,]+') do
    skip[kind] = true
  end
  return { cap = tonumber(s[1] or '100000'), age = tonumber(s[2] or '604800000'), skip = skip }
end

-- Append one event, capped near the settings' cap (MAXLEN ~, trimmed a node at a time).
-- `extra` is a flat array of more field, value pairs (run_at, result, error); empty values
-- are left out.
local function emit_event(events, settings, kind, id, at, attempt, key, account, extra)
  if settings.cap == 0 or settings.skip[kind] then
    return
  end
  local fields = { 'type', kind, 'job', id, 'at', at, 'attempt', attempt or 1 }
  if key and key ~= '' then
    fields[#fields + 1] = 'key'
    fields[#fields + 1] = key
  end
  if account and account ~= '' then
    fields[#fields + 1] = 'account'
    fields[#fields + 1] = account
  end
  if extra then
    for i = 1, #extra, 2 do
      if extra[i + 1] and extra[i + 1] ~= '' then
        fields[#fields + 1] = extra[i]
        fields[#fields + 1] = extra[i + 1]
      end
    end
  end
  redis.call('XADD', events, 'MAXLEN', '~', settings.cap, '*', unpack(fields))
end

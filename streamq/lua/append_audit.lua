--[[ append_audit: record an operator's action in the stream's events.

KEYS[1]  events stream
KEYS[2]  stream settings (the events' cap and skipped types)
ARGV[1]  who: the admin token's name (never its value)
ARGV[2]  the action: retry, cancel, reschedule, promote, replay, purge-dead, purge-finished,
         pause-account, resume-account
ARGV[3]  its target: a job id, a stream, or '<platform>/<account>'
ARGV[4]  the job id, or '' when the target is not one job
ARGV[5]  the account, or ''
ARGV[6]  details ('' for none): a new due time, a reason, how many were touched
Appends an 'admin' event (fields by, action, target, detail) under the stream's cap, unless
events are off or skip 'admin'. An action's own effects append their own events (a retry's
'queued', a reschedule's 'scheduled'); this one says who asked. Returns nothing.
]]
-- @include "server_now.lua"
-- @include "emit_event.lua"
emit_event(KEYS[1], events_settings(KEYS[2]), 'admin', ARGV[4], server_now_ms(), 1, nil, ARGV[5],
  { 'by', ARGV[1], 'action', ARGV[2], 'target', ARGV[3], 'detail', ARGV[6] })

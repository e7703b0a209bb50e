--[[ announce_flow: write a flow's end event into a stream's events, once.

KEYS[1]  events stream           streamq:{S}:events
KEYS[2]  stream settings         streamq:{S}:meta (the events' cap, age and skipped types)
KEYS[3]  the flows told          streamq:{S}:flows:told
ARGV[1]  the flow's id
ARGV[2]  the event type: 'flow.done', 'flow.failed', 'flow.partially_done', 'flow.cancelled'
ARGV[3]  when the flow ended, ms
ARGV[4]  each step's final state, JSON (the event's result)
ARGV[5]  how long a flow is remembered as told, ms

The flow's end event is always written to one stream (its first step's), and this script
writes it only if that stream has not told the flow yet: a teller and a sweep, or a teller that
died after the write and the sweep after it, write it once between them. Told flows are
forgotten after ARGV[5] (by then no teller of the flow is left).
Returns 1 when written (or skipped by the stream's settings), 0 when told already.
]]
-- @include "emit_event.lua"
local told, flow = KEYS[3], ARGV[1]
if redis.call('ZSCORE', told, flow) then
  return 0
end
local at = tonumber(ARGV[3])
redis.call('ZADD', told, at, flow)
redis.call('ZREMRANGEBYSCORE', told, '-inf', at - tonumber(ARGV[5]))
emit_event(KEYS[1], events_settings(KEYS[2]), ARGV[2], flow, at, 1, '', '', { 'result', ARGV[4] })
return 1

-- A flow's record (streamq:{flow:<F>}:flow) as the flow scripts read it: its spec (the steps,
-- what each is after, its failure policy) and the states of its steps, 's:<step>'. A step is
-- 'held' (waiting for the steps it is after), 'releasing' (its turn came: a drain enqueues it),
-- 'released' (enqueued: its job record tells how it goes), or final: 'done', 'failed',
-- 'cancelled'. The on_complete step ('last') is not counted in 'left'.
local FINAL = { done = true, failed = true, cancelled = true }

local function flow_spec(record)
  local raw = redis.call('HGET', record, 'spec')
  if not raw then
    return nil
  end
  local spec = cjson.decode(raw)
  if spec.on_complete == cjson.null then
    spec.on_complete = nil
  end
  spec.by_name, spec.dependents = {}, {}
  for _, step in ipairs(spec.steps) do
    spec.by_name[step.name] = step
    spec.dependents[step.name] = {}
  end
  for _, step in ipairs(spec.steps) do
    for _, before in ipairs(step.after) do
      table.insert(spec.dependents[before], step.name)
    end
  end
  return spec
end

local function step_state(record, name)
  return redis.call('HGET', record, 's:' .. name)
end

-- Once no counted step is left: the flow's final state, and the on_complete step's release.
-- Returns 1 when this call ended the flow, 0 otherwise.
local function finish_flow(record, spec, left, now)
  if left > 0 or redis.call('HGET', record, 'state') ~= 'running' then
    return 0
  end
  local state
  if redis.call('HEXISTS', record, 'cancel') == 1 then
    state = 'cancelled'
  else
    state = 'done'
    for _, step in ipairs(spec.steps) do
      if not step.last then
        local s = step_state(record, step.name)
        if s == 'failed' and step.on_failure == 'fail_flow' then
          state = 'failed'
          break
        elseif s == 'cancelled' or (s == 'failed' and step.on_failure == 'continue') then
          state = 'partially_done'
        end
      end
    end
  end
  -- 'announce': the flow's end event is still to be written (streamq.flows.announce).
  redis.call('HSET', record, 'state', state, 'finished_at', now, 'announce', state)
  if spec.on_complete then
    redis.call('HSET', record, 's:' .. spec.on_complete, 'releasing')
  end
  return 1
end

-- The record outlives the flow by the retention, once the on_complete step is final too.
local function expire_when_final(record, spec, retention)
  if redis.call('HGET', record, 'state') == 'running' then
    return
  end
  if spec.on_complete and not FINAL[step_state(record, spec.on_complete)] then
    return
  end
  redis.call('PEXPIRE', record, retention)
end

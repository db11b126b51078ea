-- Shared by the scripts that change a job's state or its wait (prepended by
-- `kie_covers.store.scripts`): the indexes the cluster overview counts from without
-- scanning job keys (`kie_covers/store/overview.py`). Each change moves the job's entry
-- in the same step as its record, so a job is in exactly one state index.
-- index_state(state index prefix, job id, old state or '', new state, score ms): out of
-- the old state's sorted set, into the new one's. Score: when a live state (queued,
-- submitted) began; when an ended record (succeeded, failed) expires.
local function index_state(prefix, id, old, new, score)
  if old and old ~= '' and old ~= new then redis.call('ZREM', prefix .. old, id) end
  redis.call('ZADD', prefix .. new, score, id)
end

-- index_wait(wait index prefix, job id, old reason or '', new reason or '', since ms):
-- out of the old reason's sorted set, into the new one's. A wait that goes on for the
-- same reason keeps the time it began (NX).
local function index_wait(prefix, id, old, new, since)
  if old and old ~= '' and old ~= new then redis.call('ZREM', prefix .. old, id) end
  if new and new ~= '' then redis.call('ZADD', prefix .. new, 'NX', since, id) end
end


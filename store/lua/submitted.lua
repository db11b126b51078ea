-- Record Kie's cover task id for a queued job, and note it on the job's timeline
-- (`add_timeline`, in front of this text, as are the indexes).
-- KEYS 1 job, 2 cover key, 3 due, 4 early-callback key, 5 lock, 6 the job's timeline,
-- 7 (optional) the held set of the worker process that runs it, left with the lock
-- (kie_covers.store.liveness)
-- ARGV 1 job id, 2 cover id, 3 now, 4 due ms, 5 lock token, 6 state index prefix,
--      7 wait index prefix, 8.. a timeline block (timeline.lua), noted only if recorded
-- Returns {changed, early callback body or false}. Without an early callback the run
-- is over, so the lock is released here too. An early callback is kept as
-- '<job id its URL named>\n<body>' (finish.lua); only that job (or, for one kept
-- without a name, any) takes it.
if redis.call('HGET', KEYS[1], 'state') ~= 'queued' then return {0, false} end
local now_ms = math.floor(tonumber(ARGV[3]) * 1000)
index_state(ARGV[6], ARGV[1], 'queued', 'submitted', now_ms)
index_wait(ARGV[7], ARGV[1], redis.call('HGET', KEYS[1], 'wait_reason') or '', '', now_ms)
redis.call('HSET', KEYS[1], 'state', 'submitted', 'cover_task_id', ARGV[2],
           'submitted_at', ARGV[3], 'updated_at', ARGV[3], 'faults', 0, 'retries', 0,
           'wait_reason', '', 'hold_since', '')
redis.call('SET', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
add_timeline(KEYS[6], 8)
local body = false
local kept = redis.call('GET', KEYS[4])
if kept then
  local cut = string.find(kept, '\n', 1, true)
  local named = cut and string.sub(kept, 1, cut - 1) or ''
  if named == '' or named == ARGV[1] then
    body = cut and string.sub(kept, cut + 1) or kept
    redis.call('DEL', KEYS[4])
  end
end
if not body and redis.call('GET', KEYS[5]) == ARGV[5] then
  redis.call('DEL', KEYS[5])
end
if not body and KEYS[7] then redis.call('SREM', KEYS[7], ARGV[1]) end
return {1, body}

-- Record Kie's cover task id for a queued job.
-- KEYS 1 job, 2 cover key, 3 due, 4 early-callback key, 5 lock
-- ARGV 1 job id, 2 cover id, 3 now, 4 due ms, 5 lock token
-- Returns {changed, early callback or false}. Without an early callback the run is
-- over, so the lock is released here too.
if redis.call('HGET', KEYS[1], 'state') ~= 'queued' then return {0, false} end
redis.call('HSET', KEYS[1], 'state', 'submitted', 'cover_task_id', ARGV[2],
           'submitted_at', ARGV[3], 'updated_at', ARGV[3], 'faults', 0, 'retries', 0,
           'wait_reason', '', 'hold_since', '')
redis.call('SET', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
local early = redis.call('GET', KEYS[4])
if early then
  redis.call('DEL', KEYS[4])
elseif redis.call('GET', KEYS[5]) == ARGV[5] then
  redis.call('DEL', KEYS[5])
end
return {1, early}

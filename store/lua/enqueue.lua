-- Record a new job unless one for its music task is queued, submitted or succeeded.
-- A failed job it replaces leaves the failure index (`unindex_failure`): the music task
-- is being tried again, and its new job's ending is the one to list.
-- KEYS 1 music, 2 due, 3 failures, 4 retry-due
-- ARGV 1 job key prefix, 2 new job id, 3 due ms (its first lease), 4 kind prefix,
--      5 code prefix, 6 state index prefix, 7 now ms, 8.. field, value
-- Returns {job id, 1 if created else 0}.
local existing = redis.call('GET', KEYS[1])
if existing then
  local state = redis.call('HGET', ARGV[1] .. existing, 'state')
  if state and state ~= 'failed' then return {existing, 0} end
  if state == 'failed' then
    unindex_failure(ARGV[1], existing, {KEYS[3], ARGV[4], ARGV[5], KEYS[4]})
  end
end
redis.call('HSET', ARGV[1] .. ARGV[2], unpack(ARGV, 8))
redis.call('SET', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
index_state(ARGV[6], ARGV[2], '', 'queued', ARGV[7])
return {ARGV[2], 1}

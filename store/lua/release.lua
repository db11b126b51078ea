-- The end of a run that leaves the job waiting: set fields, look again at due ms,
-- release the run lock. A job that ended meanwhile (a callback) is left as it is.
-- KEYS 1 job, 2 due, 3 lock, 4 (optional) the held set of the worker process that ran
-- it: the job leaves it (kie_covers.store.liveness)
-- ARGV 1 job id, 2 due ms, 3 token, 4.. field, value
local state = redis.call('HGET', KEYS[1], 'state')
if state and state ~= 'succeeded' and state ~= 'failed' then
  if #ARGV > 3 then redis.call('HSET', KEYS[1], unpack(ARGV, 4)) end
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
end
if redis.call('GET', KEYS[3]) == ARGV[3] then redis.call('DEL', KEYS[3]) end
if KEYS[4] then redis.call('SREM', KEYS[4], ARGV[1]) end
return 0

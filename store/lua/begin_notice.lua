-- Take a job's notice lock to deliver its notice, and keep the due set from handing
-- the notice to another process while this one tries.
-- KEYS 1 notice lock, 2 job, 3 notify-due
-- ARGV 1 lock ms, 2 job id, 3 lock token, 4 due ms (now + lock + margin: when the due
--      set may hand the notice on if this caller dies mid-try)
-- Returns the record when this caller is to deliver; 'busy' if another is on it;
-- 'nothing' if there is nothing to deliver (no job, not ended, delivered, given up).
if not redis.call('SET', KEYS[1], ARGV[3], 'NX', 'PX', ARGV[1]) then return 'busy' end
local f = redis.call('HMGET', KEYS[2], 'state', 'notified_at', 'notice_error')
if (f[1] ~= 'succeeded' and f[1] ~= 'failed') or (f[2] or '') ~= '' or (f[3] or '') ~= '' then
  redis.call('ZREM', KEYS[3], ARGV[2])
  redis.call('DEL', KEYS[1])
  return 'nothing'
end
-- The lease runs from here, not from whenever the dispatcher last claimed the entry.
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[2])
return redis.call('HGETALL', KEYS[2])

-- The end of a run that leaves the job waiting: set fields, look again at due ms,
-- release the run lock, and note the step on the job's timeline (`add_timeline`, in
-- front of this text, as are the indexes). A job that ended meanwhile (a callback) is
-- left as it is. A change of ``wait_reason`` moves the job between the wait indexes
-- (`index_wait`).
-- KEYS 1 job, 2 due, 3 lock, 4 the job's timeline, 5 (optional) the held set of the
-- worker process that ran it: the job leaves it (kie_covers.store.liveness)
-- ARGV 1 job id, 2 due ms, 3 token, 4 wait index prefix, 5 now ms, 6.. a timeline block
--      (timeline.lua; no entries: nothing noted), then field, value pairs
local fields = after_timeline(6)
local state = redis.call('HGET', KEYS[1], 'state')
if state and state ~= 'succeeded' and state ~= 'failed' then
  for i = fields, #ARGV, 2 do
    if ARGV[i] == 'wait_reason' then
      index_wait(ARGV[4], ARGV[1], redis.call('HGET', KEYS[1], 'wait_reason') or '',
                 ARGV[i + 1], ARGV[5])
    end
  end
  if #ARGV >= fields then redis.call('HSET', KEYS[1], unpack(ARGV, fields)) end
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
end
add_timeline(KEYS[4], 6)
if redis.call('GET', KEYS[3]) == ARGV[3] then redis.call('DEL', KEYS[3]) end
if KEYS[5] then redis.call('SREM', KEYS[5], ARGV[1]) end
return 0

-- The start of one task run, in one round trip: adopt a raw message's job if it has
-- no record, stop if the job has ended, take its run lock, renew its lease, read it.
-- KEYS 1 job, 2 music, 3 due, 4 lock; optional (kie_covers.store.liveness): 5 the held
-- set of the worker process that runs it (the job is tied to it), 6 the held set of the
-- process that reserved the message (the job leaves it: the run holds it now)
-- ARGV 1 job id, 2 lease due ms, 3 token, 4 lock ms, 5 state index prefix, 6 now ms,
--      7.. field, value of a new record
-- Returns {'go' | 'ended' | 'busy', the record or {}}, or {'new', {}} when the job has no
-- record and none was given: the caller asks again with one (only raw messages, so the
-- common run does not carry a record it does not need).
if redis.call('EXISTS', KEYS[1]) == 0 then
  if #ARGV < 7 then return {'new', {}} end
  redis.call('HSET', KEYS[1], unpack(ARGV, 7))
  redis.call('SET', KEYS[2], ARGV[1], 'NX')
  index_state(ARGV[5], ARGV[1], '', 'queued', ARGV[6])
end
if KEYS[6] then redis.call('SREM', KEYS[6], ARGV[1]) end
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'succeeded' or state == 'failed' then
  return {'ended', redis.call('HGETALL', KEYS[1])}
end
if not redis.call('SET', KEYS[4], ARGV[3], 'NX', 'PX', ARGV[4]) then
  -- The lock holds this very token only when this call is a retry of one whose answer
  -- was lost (a connection cut after Redis ran it): that run is this run, go on.
  if redis.call('GET', KEYS[4]) ~= ARGV[3] then return {'busy', {}} end
  redis.call('PEXPIRE', KEYS[4], ARGV[4])
end
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
if KEYS[5] then redis.call('SADD', KEYS[5], ARGV[1]) end
return {'go', redis.call('HGETALL', KEYS[1])}

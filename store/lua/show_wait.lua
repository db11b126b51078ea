-- Show a waiting job's state in Celery's result backend, unless the job has ended:
-- the ending's outcome (written after the record turned final) must never be covered
-- by a wait that a slower run shows later.
-- KEYS 1 job, 2 the job's Celery result key; ARGV 1 encoded meta, 2 TTL seconds
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'succeeded' or state == 'failed' then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
return 1

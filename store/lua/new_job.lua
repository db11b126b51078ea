-- Shared by enqueue.lua and enqueue_admit.lua (prepended by `kie_covers.store.scripts`,
-- after failure_rows.lua and indexes.lua): a new job's record, unless one for its music
-- task is queued, submitted or succeeded. A failed job it replaces leaves the failure
-- index (`unindex_failure`): the music task is being tried again, and its new job's
-- ending is the one to list.
-- new_job(k, a) reads its KEYS and ARGV from offsets k and a (each script has its own):
-- KEYS k+1 music, k+2 due, k+3 failures, k+4 retry-due
-- ARGV a+1 job key prefix, a+2 new job id, a+3 due ms (its first lease), a+4 kind prefix,
--      a+5 code prefix, a+6 state index prefix, a+7 now ms, a+8.. field, value (the last
--      ARGV)
-- Returns the job id and 1 if it was made, or the live job's id and 0.
local function new_job(k, a)
  local prefix, id = ARGV[a + 1], ARGV[a + 2]
  local existing = redis.call('GET', KEYS[k + 1])
  if existing then
    local state = redis.call('HGET', prefix .. existing, 'state')
    if state and state ~= 'failed' then return existing, 0 end
    if state == 'failed' then
      unindex_failure(prefix, existing, {KEYS[k + 3], ARGV[a + 4], ARGV[a + 5], KEYS[k + 4]})
    end
  end
  redis.call('HSET', prefix .. id, unpack(ARGV, a + 8))
  redis.call('SET', KEYS[k + 1], id)
  redis.call('ZADD', KEYS[k + 2], ARGV[a + 3], id)
  index_state(ARGV[a + 6], id, '', 'queued', ARGV[a + 7])
  return id, 1
end

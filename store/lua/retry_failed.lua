-- Queue a failed job again (failed -> queued), unless its music task has since got
-- another job (live or succeeded: a retry would pay twice; failed: that newer failure is
-- the music task's row, and the one to retry).
-- KEYS 1 job, 2 failures, 3 retry-due, 4 due
-- ARGV 1 job id, 2 now s, 3 due ms, 4 job prefix, 5 music prefix, 6 kind prefix,
--      7 code prefix, 8 state index prefix, 9 wait index prefix,
--      10.. field, value to reset (the record's RETRY_RESETS)
-- Returns 'ok', 'not_failed', 'unknown', 'superseded' or 'invalid_payload'.
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'failed' then return state and 'not_failed' or 'unknown' end
local music_task_id = redis.call('HGET', KEYS[1], 'music_task_id')
if not music_task_id or music_task_id == '' then return 'invalid_payload' end
local music = ARGV[5] .. music_task_id
local owner = redis.call('GET', music)
if owner and owner ~= ARGV[1] and redis.call('EXISTS', ARGV[4] .. owner) == 1 then
  return 'superseded'
end
unindex_failure(ARGV[4], ARGV[1], {KEYS[2], ARGV[6], ARGV[7], KEYS[3]})
local now_ms = math.floor(tonumber(ARGV[2]) * 1000)
index_state(ARGV[8], ARGV[1], 'failed', 'queued', now_ms)
index_wait(ARGV[9], ARGV[1], redis.call('HGET', KEYS[1], 'wait_reason') or '', '', now_ms)
redis.call('HSET', KEYS[1], 'updated_at', ARGV[2], unpack(ARGV, 10))
redis.call('HINCRBY', KEYS[1], 'retry_rounds', 1)
redis.call('PERSIST', KEYS[1])
redis.call('SET', music, ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
return 'ok'

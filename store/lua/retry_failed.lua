-- Queue a failed job again (failed -> queued), unless its music task has since got
-- another live or succeeded job (that would pay twice).
-- KEYS 1 job, 2 failures, 3 retry-due, 4 due
-- ARGV 1 job id, 2 now s, 3 due ms, 4 job prefix, 5 music prefix, 6 kind prefix,
--      7 code prefix, 8.. field, value to reset (the record's RETRY_RESETS)
-- Returns 'ok', 'not_failed', 'unknown', 'superseded' or 'invalid_payload'.
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'failed' then return state and 'not_failed' or 'unknown' end
local music_task_id = redis.call('HGET', KEYS[1], 'music_task_id')
if not music_task_id or music_task_id == '' then return 'invalid_payload' end
local music = ARGV[5] .. music_task_id
local owner = redis.call('GET', music)
if owner and owner ~= ARGV[1] then
  local other = redis.call('HGET', ARGV[4] .. owner, 'state')
  if other and other ~= 'failed' then return 'superseded' end
end
local err = redis.call('HGET', KEYS[1], 'error')
local kind, code = 'error', 'none'
if err and err ~= '' then
  local decoded = cjson.decode(err)
  kind = decoded['kind'] or kind
  if decoded['code'] and decoded['code'] ~= cjson.null then code = tostring(decoded['code']) end
end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[2], unpack(ARGV, 8))
redis.call('HINCRBY', KEYS[1], 'retry_rounds', 1)
redis.call('PERSIST', KEYS[1])
redis.call('SET', music, ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', ARGV[6] .. kind, ARGV[1])
redis.call('ZREM', ARGV[7] .. code, ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
return 'ok'

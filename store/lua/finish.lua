-- End a job once. Its id is ARGV[1]; or, for a callback (ARGV[1] empty), the owner of
-- the cover key ARGV[14]: if no job owns it yet, the callback body ARGV[16] is kept
-- under ARGV[15] for ARGV[17] s (the submit's record picks it up) and 'unknown' is
-- returned. One script, so a callback and the submit's record cannot pass each other.
-- KEYS 1 due, 2 failures, 3 kind index, 4 code index, 5 retry-due, 6 notify-due
-- ARGV 1 job id, 2 state, 3 images json, 4 error json, 5 now (s), 6 ttl s, 7 cover prefix,
--      8 retryable (1/0), 9 first retry delay ms, 10 longest retry delay ms,
--      11 music prefix, 12 notice lease ms (0: the app is not sent notices),
--      13 notice lock ms, 14-17 see above, 18 job prefix, 19 lock prefix,
--      20 notice lock prefix
-- Returns {the ended record, 1 if the notice lock was taken}, false if the job had
-- already ended (or is unknown), or 'unknown'.
local id = ARGV[1]
if id == '' then
  id = redis.call('GET', ARGV[14])
  if not id then
    redis.call('SET', ARGV[15], ARGV[16], 'EX', ARGV[17])
    return 'unknown'
  end
end
local job = ARGV[18] .. id
local state = redis.call('HGET', job, 'state')
if not state or state == 'succeeded' or state == 'failed' then return false end
redis.call('HSET', job, 'state', ARGV[2], 'images', ARGV[3], 'error', ARGV[4],
           'finished_at', ARGV[5], 'updated_at', ARGV[5], 'wait_reason', '')
redis.call('EXPIRE', job, ARGV[6])
redis.call('ZREM', KEYS[1], id)
redis.call('DEL', ARGV[19] .. id)
local music = ARGV[11] .. (redis.call('HGET', job, 'music_task_id') or '')
if redis.call('GET', music) == id then redis.call('EXPIRE', music, ARGV[6]) end
local cover = redis.call('HGET', job, 'cover_task_id')
if cover and cover ~= '' then redis.call('EXPIRE', ARGV[7] .. cover, ARGV[6]) end
if ARGV[2] == 'failed' then
  local now_ms = math.floor(tonumber(ARGV[5]) * 1000)
  if (redis.call('HGET', job, 'first_failed_at') or '') == '' then
    redis.call('HSET', job, 'first_failed_at', ARGV[5])
  end
  redis.call('HSET', job, 'last_failed_at', ARGV[5])
  redis.call('ZADD', KEYS[2], now_ms, id)
  redis.call('ZADD', KEYS[3], now_ms, id)
  redis.call('ZADD', KEYS[4], now_ms, id)
  if ARGV[8] == '1' then
    local rounds = tonumber(redis.call('HGET', job, 'retry_rounds') or '0') or 0
    local delay = math.min(tonumber(ARGV[10]), tonumber(ARGV[9]) * (2 ^ math.min(rounds, 30)))
    redis.call('ZADD', KEYS[5], now_ms + delay, id)
  end
end
-- The app's notice is due from the moment the job ends, so no crash can lose it; the
-- process that ended the job takes the notice's lock here, delivers it at once and
-- takes it out of the due set again.
local lease = tonumber(ARGV[12])
local locked = 0
if lease > 0 and (redis.call('HGET', job, 'callback_url') or '') ~= '' then
  redis.call('ZADD', KEYS[6], math.floor(tonumber(ARGV[5]) * 1000) + lease, id)
  if redis.call('SET', ARGV[20] .. id, '1', 'NX', 'PX', ARGV[13]) then locked = 1 end
end
return {redis.call('HGETALL', job), locked}

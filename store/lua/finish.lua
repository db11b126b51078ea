-- End a job once. Its id is ARGV[1]; or, for a callback (ARGV[1] empty), the owner of
-- the cover key ARGV[14], which must be the job ARGV[21] named by the callback's URL
-- when that is given ('mismatch' otherwise, changing nothing). If no job owns the cover
-- yet, the callback body ARGV[16] is kept under ARGV[15] for ARGV[17] s, as
-- '<named job id>\n<body>' (the submit's
-- record picks it up) and 'unknown' is returned; with ARGV[21] given, only while that
-- job waits for its submit's answer. One script, so a callback and the submit's record
-- cannot pass each other.
-- Kept bodies are capped: all kept and unexpired ones together hold at most ARGV[23]
-- bytes ('full' otherwise, keeping nothing), counted in KEYS 7-9.
-- KEYS 1 due, 2 failures, 3 kind index, 4 code index, 5 retry-due, 6 notify-due,
--      7 early bytes (string), 8 early expiry (zset cover id -> ms), 9 early sizes (hash),
--      10 metric counters (hash), 11 job duration histogram (hash)
-- ARGV 1 job id, 2 state, 3 images json, 4 error json, 5 now (s), 6 ttl s, 7 cover prefix,
--      8 retryable (1/0), 9 first retry delay ms, 10 longest retry delay ms,
--      11 music prefix, 12 notice lease ms (0: the app is not sent notices),
--      13 notice lock ms, 14-17 see above, 18 job prefix, 19 lock prefix,
--      20 notice lock prefix, 21 expected job id ('' any), 22 cover id,
--      23 early bytes cap, 24 kind index prefix, 25 code index prefix,
--      26 state index prefix, 27 wait index prefix, 28 the ending's counter field,
--      29 the histogram's bucket bounds (s, comma-separated, as their field names)
-- The ending is counted here (KEYS 10-11), once, by whichever process ended the job.
-- Returns {the ended record, 1 if the notice lock was taken}, false if the job had
-- already ended (or is unknown), 'unknown', 'mismatch' or 'full'.

local function keep_early()
  local t = redis.call('TIME')
  local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  -- Forget the sizes of kept bodies that have expired (a bounded number per call, so
  -- one call never does much work; a backlog only over-counts for a while).
  local expired = redis.call('ZRANGEBYSCORE', KEYS[8], '-inf', now_ms, 'LIMIT', 0, 100)
  for _, gone in ipairs(expired) do
    redis.call('DECRBY', KEYS[7], tonumber(redis.call('HGET', KEYS[9], gone) or '0'))
    redis.call('HDEL', KEYS[9], gone)
    redis.call('ZREM', KEYS[8], gone)
  end
  -- Kept with the job the callback's URL named, so that only that job's submit can
  -- take it (`submitted.lua`): a token for one job cannot plant an ending for another.
  local value = ARGV[21] .. '\n' .. ARGV[16]
  local size = string.len(ARGV[16])  -- the body: the job id before it is bounded (128)
  local replaced = tonumber(redis.call('HGET', KEYS[9], ARGV[22]) or '0')
  local total = tonumber(redis.call('GET', KEYS[7]) or '0')
  if total - replaced + size > tonumber(ARGV[23]) then return 'full' end
  local ttl_ms = tonumber(ARGV[17]) * 1000
  redis.call('SET', ARGV[15], value, 'PX', ttl_ms)
  redis.call('INCRBY', KEYS[7], size - replaced)
  redis.call('HSET', KEYS[9], ARGV[22], size)
  redis.call('ZADD', KEYS[8], now_ms + ttl_ms, ARGV[22])
  -- The counting keys live as long as the newest body they count, never longer: when
  -- they expire, so has every body in them.
  for k = 7, 9 do
    if redis.call('PTTL', KEYS[k]) < ttl_ms then redis.call('PEXPIRE', KEYS[k], ttl_ms) end
  end
  return 'unknown'
end

-- The ending's counter, and enqueue-to-end seconds in the duration histogram.
local function count_ending(job)
  redis.call('HINCRBY', KEYS[10], ARGV[28], 1)
  local created = tonumber(redis.call('HGET', job, 'created_at') or '')
  if not created then return end
  local seconds = math.max(0, tonumber(ARGV[5]) - created)
  for bound in string.gmatch(ARGV[29], '[^,]+') do
    if seconds <= tonumber(bound) then redis.call('HINCRBY', KEYS[11], 'le=' .. bound, 1) end
  end
  redis.call('HINCRBY', KEYS[11], 'count', 1)
  redis.call('HINCRBYFLOAT', KEYS[11], 'sum', tostring(seconds))
end

local id = ARGV[1]
if id == '' then
  local expected = ARGV[21]
  id = redis.call('GET', ARGV[14])
  if id and expected ~= '' and id ~= expected then return 'mismatch' end
  if not id and expected ~= '' then
    local named = ARGV[18] .. expected
    local named_state = redis.call('HGET', named, 'state')
    local named_cover = redis.call('HGET', named, 'cover_task_id') or ''
    if not named_state then return 'mismatch' end
    if named_cover == ARGV[22] then
      id = expected  -- its cover's key has expired; its record says it is this cover
    elseif named_state ~= 'queued' then
      -- Not waiting for a submit's answer: a job with another cover is not this
      -- callback's; one that ended without a cover has nothing left to end.
      if named_cover ~= '' then return 'mismatch' end
      return false
    end
  end
  if not id then return keep_early() end
end
local job = ARGV[18] .. id
local state = redis.call('HGET', job, 'state')
if not state or state == 'succeeded' or state == 'failed' then return false end
local now_ms = math.floor(tonumber(ARGV[5]) * 1000)
index_state(ARGV[26], id, state, ARGV[2], now_ms + tonumber(ARGV[6]) * 1000)
-- Ended records expire on their own: drop the index entries of those that have.
redis.call('ZREMRANGEBYSCORE', ARGV[26] .. ARGV[2], '-inf', now_ms)
index_wait(ARGV[27], id, redis.call('HGET', job, 'wait_reason') or '', '', now_ms)
count_ending(job)
redis.call('HSET', job, 'state', ARGV[2], 'images', ARGV[3], 'error', ARGV[4],
           'finished_at', ARGV[5], 'updated_at', ARGV[5], 'wait_reason', '')
redis.call('EXPIRE', job, ARGV[6])
redis.call('ZREM', KEYS[1], id)
redis.call('DEL', ARGV[19] .. id)
local music_task_id = redis.call('HGET', job, 'music_task_id') or ''
local music = ARGV[11] .. music_task_id
local owner = redis.call('GET', music)
-- A music task has at most one failure row, its newest job's. A job that is not its
-- music task's own (a raw message's, started while that job was live) takes the music
-- task over if that job has failed since (dropping its row), and otherwise gets no
-- failure row: the music task's own job, live or succeeded, speaks for it.
local listed = true
if owner == id then
  redis.call('EXPIRE', music, ARGV[6])
elseif owner and music_task_id ~= '' then
  local owner_state = redis.call('HGET', ARGV[18] .. owner, 'state')
  if not owner_state or owner_state == 'failed' then
    if owner_state then
      unindex_failure(ARGV[18], owner, {KEYS[2], ARGV[24], ARGV[25], KEYS[5]})
    end
    redis.call('SET', music, id, 'EX', ARGV[6])
  else
    listed = false
  end
end
local cover = redis.call('HGET', job, 'cover_task_id')
if cover and cover ~= '' then redis.call('EXPIRE', ARGV[7] .. cover, ARGV[6]) end
if ARGV[2] == 'failed' then
  local now_ms = math.floor(tonumber(ARGV[5]) * 1000)
  if (redis.call('HGET', job, 'first_failed_at') or '') == '' then
    redis.call('HSET', job, 'first_failed_at', ARGV[5])
  end
  redis.call('HSET', job, 'last_failed_at', ARGV[5])
  if listed then
    redis.call('ZADD', KEYS[2], now_ms, id)
    redis.call('ZADD', KEYS[3], now_ms, id)
    redis.call('ZADD', KEYS[4], now_ms, id)
  end
  if listed and ARGV[8] == '1' then
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

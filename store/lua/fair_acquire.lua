-- One job asks the fair limiter for a slot (see kie_covers/store/fair.py); fair_lib.lua
-- and fair_admit.lua are in front of this text. KEYS 1-11 and ARGV 1-10 as in
-- fair_lib.lua, then:
-- KEYS 12 (optional) a hash whose counter ARGV[18] gets one more call when it is 'ok'
-- ARGV 11 job id, 12 lane, 13 tenant ('-': the default), 14 arrival (unix us), 15 probe ms,
--      16 shortest park ms, 17 longest park ms, 18 counter field ('' for none),
--      19 '1' to admit a new job (`FairLimiter.admit`): {0, `admit`'s answer}; never ok
-- Returns {wait ms, answer}: {0, 'ok'} (call now), {0, 'probe'}, {ms, 'queued'} (parked:
-- a grant will make it due), {ms, 'granted'} (granted, early: the window has room in
-- ms), or {ms, pause or hold reason}.
local job = ARGV[11]
if ARGV[19] == '1' then return {0, admit(job, ARGV[12], ARGV[13], ARGV[14])} end
local now = clock()
local stop = stopped()
-- The limit in force is the one of the workers that send: others read it here.
redis.call('HSET', STATE, 'limit', LIMIT, 'window', WINDOW)
if stop and stop[2] == 'out_of_credits' then
  if redis.call('SET', KEYS[10], job, 'NX', 'PX', ARGV[15]) then return {0, 'probe'} end
  return {math.max(redis.call('PTTL', KEYS[10]), 1), 'out_of_credits'}
end
if stop then return stop end

local function go()
  redis.call('ZREM', GRANTS, job)
  redis.call('HDEL', WAITING, job)
  redis.call('ZADD', SENT, now, job .. ':' .. now)
  redis.call('PEXPIRE', SENT, WINDOW * 2)
  if KEYS[12] then redis.call('HINCRBY', KEYS[12], ARGV[18], 1) end
  return {0, 'ok'}
end

-- With its grant, it goes as soon as the window of calls sent has room (a grant is
-- handed out up to LEAD ms before that; the limit is this check).
local function go_when_room()
  local wait = until_sent_room(now)
  if wait > 0 then return {wait, 'granted'} end
  return go()
end

local held = redis.call('ZSCORE', GRANTS, job)
if held and tonumber(held) >= now then return go_when_room() end
if held then redis.call('ZREM', GRANTS, job) end  -- expired: it queues again
enqueue(job, ARGV[12], ARGV[13], ARGV[14])
for _, granted in ipairs(grant(now, job)) do
  if granted == job then return go_when_room() end
end
-- Parked until granted; the park is only a safety net (a lost grant, lost keys).
local park = math.floor(redis.call('HLEN', WAITING) * WINDOW / LIMIT)
park = math.min(math.max(park, tonumber(ARGV[16])), tonumber(ARGV[17]))
return {park, 'queued'}

-- One job asks the fair limiter for a slot (see kie_covers/store/fair.py); fair_lib.lua
-- is in front of this text. KEYS and ARGV 1-8 as there, then:
-- KEYS 11 (optional) a hash whose counter ARGV[16] gets one more call when it is 'ok'
-- ARGV 9 job id, 10 lane, 11 tenant ('-': the default), 12 arrival (unix µs), 13 probe ms,
--      14 shortest park ms, 15 longest park ms, 16 counter field
-- Returns {wait ms, answer}: {0, 'ok'} (call now), {0, 'probe'}, {ms, 'queued'} (parked:
-- a grant will make it due), {ms, 'rate_slot'}, or {ms, pause or hold reason}.
local job = ARGV[9]
local now = clock()
-- The limit in force is the one of the workers that send: grant rounds read it here.
redis.call('HSET', STATE, 'limit', LIMIT, 'window', WINDOW)
local stop = stopped()
if stop and stop[2] == 'out_of_credits' then
  if redis.call('SET', KEYS[10], job, 'NX', 'PX', ARGV[13]) then return {0, 'probe'} end
  return {math.max(redis.call('PTTL', KEYS[10]), 1), 'out_of_credits'}
end
if stop then return stop end

local function go()
  redis.call('ZREM', GRANTS, job)
  redis.call('HDEL', WAITING, job)
  redis.call('ZADD', SENT, now, job .. ':' .. now)
  redis.call('PEXPIRE', SENT, WINDOW * 2)
  if KEYS[11] then redis.call('HINCRBY', KEYS[11], ARGV[16], 1) end
  return {0, 'ok'}
end

local held = redis.call('ZSCORE', GRANTS, job)
if held and tonumber(held) >= now then
  -- Its grant: room was kept for it, so the window has room (checked all the same).
  redis.call('ZREMRANGEBYSCORE', SENT, '-inf', now - WINDOW)
  if redis.call('ZCARD', SENT) >= LIMIT then
    local oldest = redis.call('ZRANGE', SENT, 0, 0, 'WITHSCORES')
    return {tonumber(oldest[2]) + WINDOW - now + 1, 'rate_slot'}
  end
  return go()
end
if held then redis.call('ZREM', GRANTS, job) end  -- expired: it queues again
enqueue(job, ARGV[10], ARGV[11], ARGV[12])
for _, granted in ipairs(grant(now, job)) do
  if granted == job then return go() end
end
-- Parked until granted; the park is only a safety net (a lost grant, lost keys).
local park = math.floor(redis.call('HLEN', WAITING) * WINDOW / LIMIT)
park = math.min(math.max(park, tonumber(ARGV[14])), tonumber(ARGV[15]))
return {park, 'queued'}

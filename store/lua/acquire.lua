-- One decision of the cluster-wide limiter (see kie_covers/store/limiter.py).
-- KEYS: 1 sent, 2 slots, 3 tickets, 4 pause, 5 credits hold, 6 credits probe,
--       7 (optional) a hash whose counter ARGV[7] gets one more call when it is 'ok'
-- ARGV: 1 job id, 2 limit, 3 window ms, 4 gate on credits (1/0), 5 probe ms, 6 tickets ttl ms,
--       7 counter field
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local paused = redis.call('PTTL', KEYS[4])
if paused > 0 then return {paused, redis.call('GET', KEYS[4]) or 'paused'} end
if ARGV[4] == '1' and redis.call('EXISTS', KEYS[5]) == 1 then
  if redis.call('SET', KEYS[6], ARGV[1], 'NX', 'PX', ARGV[5]) then return {0, 'probe'} end
  return {math.max(redis.call('PTTL', KEYS[6]), 1), 'out_of_credits'}
end
local limit = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
-- A ticket (the job's reserved slot) is kept only while its holder has to wait.
local held = redis.call('HGET', KEYS[3], ARGV[1])
local slot
if held then
  slot = tonumber(held)
else
  slot = now
  local n = redis.call('ZCARD', KEYS[2])
  if n >= limit then
    local kth = redis.call('ZRANGE', KEYS[2], n - limit, n - limit, 'WITHSCORES')
    slot = math.max(now, tonumber(kth[2]) + window)
  end
  redis.call('ZADD', KEYS[2], slot, ARGV[1] .. ':' .. slot)
end
local wait = 0
if slot > now then
  wait = slot - now
elseif redis.call('ZCARD', KEYS[1]) >= limit then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  wait = tonumber(oldest[2]) + window - now + 1
end
if wait > 0 then
  if not held then
    redis.call('HSET', KEYS[3], ARGV[1], slot)
    redis.call('PEXPIRE', KEYS[3], ARGV[6])
  end
  return {wait, 'rate_slot'}
end
redis.call('ZADD', KEYS[1], now, ARGV[1] .. ':' .. now)
redis.call('PEXPIRE', KEYS[1], window * 2)
if held then redis.call('HDEL', KEYS[3], ARGV[1]) end
if KEYS[7] then redis.call('HINCRBY', KEYS[7], ARGV[7], 1) end
return {0, 'ok'}

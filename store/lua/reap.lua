-- Hand back the jobs of every worker process whose heartbeat lapsed, in one step: its
-- held jobs become due now and its run locks are released (hand_back), then its held
-- set and heartbeat are removed, so exactly one dispatcher hands each dead holder back.
-- Nothing is reaped while Redis itself has been up less than the dead-after time: after
-- a restart every beat is old, and live processes need that long to beat again.
-- KEYS 1 beats, 2 due
-- ARGV 1 dead-after ms, 2 now ms (the due set's clock), 3 held-set prefix,
--      4 lock prefix, 5 most holders per call
-- Returns flat {holder, jobs handed back, ...}.
local dead_after = tonumber(ARGV[1])
local uptime = tonumber(string.match(redis.call('INFO', 'server'),
                                     'uptime_in_seconds:(%d+)') or '0')
if uptime * 1000 < dead_after then return {} end
local t = redis.call('TIME')
local redis_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_ms = tonumber(ARGV[2])
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', redis_ms - dead_after,
                        'LIMIT', 0, tonumber(ARGV[5]))
local out = {}
for _, holder in ipairs(dead) do
  local held = ARGV[3] .. holder
  local count = hand_back(holder, redis.call('SMEMBERS', held), KEYS[2], now_ms, ARGV[4])
  redis.call('DEL', held)
  redis.call('ZREM', KEYS[1], holder)
  out[#out + 1] = holder
  out[#out + 1] = count
end
return out

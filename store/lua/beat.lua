-- One heartbeat of a worker process, scored by Redis's own clock (so hosts whose
-- clocks disagree still agree on who is late).
-- KEYS 1 beats; ARGV 1 holder id
-- Returns 1 when the holder was not registered (its first beat, or it had been taken
-- for dead and its jobs handed back), else 0.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZADD', KEYS[1], now_ms, ARGV[1])

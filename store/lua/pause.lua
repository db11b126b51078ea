-- KEYS[1] pause; ARGV ms, reason. Keeps the longer of the current and the new pause.
local left = redis.call('PTTL', KEYS[1])
if left < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
  return 1
end
return 0

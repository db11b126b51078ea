-- Set fields of a record that still exists; never recreate an expired or forgotten one.
-- KEYS[1] job; ARGV field, value, ...
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1

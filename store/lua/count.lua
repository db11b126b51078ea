-- Add one to a counter of a record that still exists; never recreate an expired or
-- forgotten one. KEYS[1] job; ARGV[1] field. Returns the new value, or -1 if gone.
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
return redis.call('HINCRBY', KEYS[1], ARGV[1], 1)

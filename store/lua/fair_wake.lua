-- After a parked job's run has put it back in the due set for its park: if it was
-- granted meanwhile (between its ask and that), make it due now again.
-- KEYS 1 grants, 2 due; ARGV 1 job id. Returns 1 if it was granted.
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
local t = redis.call('TIME')
redis.call('ZADD', KEYS[2], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), ARGV[1])
return 1

-- A worker process leaves (warm shutdown): the jobs it gives back become due now and
-- their run locks, if it took them, are released (hand_back); its held set and its
-- heartbeat are removed.
-- KEYS 1 beats, 2 due, 3 its held set
-- ARGV 1 holder id, 2 now ms (the due set's clock), 3 lock prefix,
--      4 '1' to give back every held job, '0' only those listed, 5.. job ids
-- Returns how many jobs went back to the due set.
local jobs
if ARGV[4] == '1' then
  jobs = redis.call('SMEMBERS', KEYS[3])
else
  jobs = {unpack(ARGV, 5)}
end
local count = hand_back(ARGV[1], jobs, KEYS[2], tonumber(ARGV[2]), ARGV[3])
redis.call('DEL', KEYS[3])
redis.call('ZREM', KEYS[1], ARGV[1])
return count

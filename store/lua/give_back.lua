-- A live worker process gives back jobs it holds but no longer runs (a run whose end
-- could not be recorded, say, while Redis was out of reach): they become due now, their
-- run locks are released if it took them (hand_back), and they leave its held set.
-- KEYS 1 due, 2 its held set
-- ARGV 1 holder id, 2 now ms (the due set's clock), 3 lock prefix, 4.. job ids
-- Returns how many jobs went back to the due set.
local jobs = {unpack(ARGV, 4)}
local count = hand_back(ARGV[1], jobs, KEYS[1], tonumber(ARGV[2]), ARGV[3])
for _, job_id in ipairs(jobs) do redis.call('SREM', KEYS[2], job_id) end
return count

-- Record a new job unless one for its music task is queued, submitted or succeeded
-- (`new_job`, in front of this text with the libraries it uses).
-- KEYS 1 music, 2 due, 3 failures, 4 retry-due
-- ARGV 1 job key prefix, 2 new job id, 3 due ms (its first lease), 4 kind prefix,
--      5 code prefix, 6 state index prefix, 7 now ms, 8.. field, value
-- Returns {job id, 1 if created else 0}.
local job, created = new_job(0, 0)
return {job, created}

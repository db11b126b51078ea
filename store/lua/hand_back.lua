-- Shared by reap.lua and leave.lua: give a worker process's held jobs back.
-- Each job still in the due set (not ended) becomes due at now_ms, unless it is due
-- sooner already; the job's run lock is deleted when the holder took it (its token
-- starts with '<holder>#'), so the next run can start at once. Returns how many jobs
-- went back to the due set.
local function hand_back(holder, jobs, due_key, now_ms, lock_prefix)
  local mine = holder .. '#'
  local count = 0
  for _, job_id in ipairs(jobs) do
    local score = redis.call('ZSCORE', due_key, job_id)
    if score then
      if tonumber(score) > now_ms then redis.call('ZADD', due_key, now_ms, job_id) end
      count = count + 1
    end
    local token = redis.call('GET', lock_prefix .. job_id)
    if token and string.sub(token, 1, #mine) == mine then
      redis.call('DEL', lock_prefix .. job_id)
    end
  end
  return count
end

-- Shared by fair_acquire.lua and enqueue_admit.lua, after fair_lib.lua (prepended by
-- `kie_covers.store.scripts`): a new job (its record exists, state queued) takes its
-- place in the fair order (`FairLimiter.admit`).
-- admit(job, lane, tenant, arrival us): queue it, and answer 'granted' if its turn has
-- come (it is then sent), 'send' if no worker has asked yet (sent, not queued: the limit
-- in force is unknown here, so its run asks and queues it with the worker's own limit),
-- else 'queued' (nothing is sent: a grant will make it due; its record says rate_slot).
local function admit(job, lane, tenant, arrival)
  if not use_known_limit() then return 'send' end
  enqueue(job, lane, tenant, arrival)
  if not stopped() then
    for _, granted in ipairs(grant(clock(), job)) do
      if granted == job then return 'granted' end
    end
  end
  redis.call('HSET', JOBS .. job, 'wait_reason', 'rate_slot')
  return 'queued'
end

-- admitted(job): admit's answer again for a job it admitted, from what it left (a
-- grant held, or a place kept): for a script that redis-py sent again after its answer
-- was lost.
local function admitted(job)
  if redis.call('ZSCORE', GRANTS, job) then return 'granted' end
  if redis.call('HEXISTS', WAITING, job) == 1 then return 'queued' end
  return 'send'
end

-- The fair limiter's waiting room (see kie_covers/store/fair.py), shared by
-- fair_acquire.lua and fair_grant.lua: each is run with this text in front of it.
-- KEYS 1 sent, 2 grants, 3 waiting, 4 fair state, 5 interactive ring, 6 bulk ring, 7 due,
--      8 pause, 9 credits hold, 10 credits probe, 11 grant log
-- ARGV 1 limit, 2 window ms, 3 gate on credits (1/0), 4 grant ttl ms,
--      5 bulk share (thousandths), 6 queue key prefix, 7 job key prefix,
--      8 most entries looked at per call, 9 lead ms (grants go out this much before the
--      room opens, so the granted job is at the door when it does), 10 grant log length
local LIMIT, WINDOW = tonumber(ARGV[1]), tonumber(ARGV[2])
local LEAD, LOG_LENGTH = tonumber(ARGV[9]), tonumber(ARGV[10])
local GRANT_TTL, SHARE = tonumber(ARGV[4]), tonumber(ARGV[5])
local QUEUES, JOBS, MAX_LOOKS = ARGV[6], ARGV[7], tonumber(ARGV[8])
local SENT, GRANTS, WAITING, STATE, DUE = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[7]
local RINGS = {interactive = KEYS[5], bulk = KEYS[6]}
local GRANT_LOG = KEYS[11]

-- Use the limit of the workers that last asked (fair_acquire.lua stores it), not the
-- caller's, should their settings differ (a producer's, a dispatcher's).
-- Returns false when no worker has asked yet (the limit in force is unknown).
local function use_known_limit()
  local known = redis.call('HMGET', STATE, 'limit', 'window')
  if not known[1] then return false end
  LIMIT, WINDOW = tonumber(known[1]), tonumber(known[2])
  return true
end

local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A pause or a credits hold in force: {wait ms, reason}, or nil.
local function stopped()
  local paused = redis.call('PTTL', KEYS[8])
  if paused > 0 then return {paused, redis.call('GET', KEYS[8]) or 'paused'} end
  if ARGV[3] == '1' and redis.call('EXISTS', KEYS[9]) == 1 then
    return {-1, 'out_of_credits'}
  end
  return nil
end

local function is_queued(job)
  return redis.call('HGET', JOBS .. job, 'state') == 'queued'
end

-- Queue a job (idempotent): its tenant's queue by arrival (first come, first served),
-- its tenant at the back of its lane's ring unless already there.
local function enqueue(job, lane, tenant, arrival)
  redis.call('HSET', WAITING, job, lane .. '\t' .. tenant .. '\t' .. arrival)
  redis.call('ZADD', QUEUES .. lane .. ':' .. tenant, 'NX', arrival, job)
  if not redis.call('ZSCORE', RINGS[lane], tenant) then
    redis.call('ZADD', RINGS[lane], redis.call('HINCRBY', STATE, 'turn', 1), tenant)
  end
end

-- Grants not used in time (the job's worker died, its message was lost): the job goes
-- back to its place in its queue, or leaves if it is no longer queued.
local function reclaim(now)
  local expired = redis.call('ZRANGEBYSCORE', GRANTS, '-inf', now - 1, 'LIMIT', 0, MAX_LOOKS)
  for _, job in ipairs(expired) do
    redis.call('ZREM', GRANTS, job)
    local entry = redis.call('HGET', WAITING, job)
    if entry and is_queued(job) then
      local lane, tenant, arrival = string.match(entry, '^([^\t]*)\t([^\t]*)\t(.*)$')
      enqueue(job, lane, tenant, arrival)
    else
      redis.call('HDEL', WAITING, job)
    end
  end
end

-- Slots free LEAD ms from now: the limit less the calls sent that will still be in the
-- window then, and the grants not yet used.
local function room(now)
  redis.call('ZREMRANGEBYSCORE', SENT, '-inf', now - WINDOW)
  local staying = redis.call('ZCOUNT', SENT, '(' .. (now + LEAD - WINDOW), '+inf')
  return LIMIT - staying - redis.call('ZCARD', GRANTS)
end

-- Ms until the window of calls really sent has room (0: room now). A granted job that
-- comes early waits this out (in its run, or in the due set).
local function until_sent_room(now)
  redis.call('ZREMRANGEBYSCORE', SENT, '-inf', now - WINDOW)
  if redis.call('ZCARD', SENT) < LIMIT then return 0 end
  local oldest = redis.call('ZRANGE', SENT, 0, 0, 'WITHSCORES')
  return tonumber(oldest[2]) + WINDOW - now + 1
end

-- The lane of the next grant: interactive first, but while both lanes have jobs bulk
-- earns SHARE thousandths of a slot per grant and takes one whenever it has earned it.
local function next_lane()
  local interactive = redis.call('ZCARD', RINGS.interactive) > 0
  local bulk = redis.call('ZCARD', RINGS.bulk) > 0
  if interactive and bulk then
    if redis.call('HINCRBY', STATE, 'bulk_credit', SHARE) >= 1000 then
      redis.call('HINCRBY', STATE, 'bulk_credit', -1000)
      return 'bulk'
    end
    return 'interactive'
  end
  if not (interactive or bulk) then return nil end
  redis.call('HDEL', STATE, 'bulk_credit')  -- no credit saved up while one lane idles
  return interactive and 'interactive' or 'bulk'
end

-- The next job of `lane`: the oldest of the tenant whose turn it is (round robin).
-- Returns the job and its tenant.
local function next_job(lane)
  local ring = RINGS[lane]
  local tenant = redis.call('ZRANGE', ring, 0, 0)[1]
  local queue = QUEUES .. lane .. ':' .. tenant
  local job = redis.call('ZPOPMIN', queue)[1]
  if redis.call('ZCARD', queue) == 0 then
    redis.call('ZREM', ring, tenant)
  else
    redis.call('ZADD', ring, redis.call('HINCRBY', STATE, 'turn', 1), tenant)
  end
  return job, tenant
end

-- Hand out the free slots, each to the next job by lane, then tenant, then arrival.
-- A granted job is made due now, so a dispatcher sends it at once (`self`, the job
-- asking, if any, is not: it goes in this same step). Returns the jobs granted.
local function grant(now, self)
  reclaim(now)
  local free = room(now)
  local granted = {}
  local looks = 0
  while free > 0 and looks < MAX_LOOKS do
    looks = looks + 1
    local lane = next_lane()
    if not lane then break end
    local job, tenant = next_job(lane)
    if job and is_queued(job) then
      redis.call('ZADD', GRANTS, now + GRANT_TTL, job)
      redis.call('RPUSH', GRANT_LOG, now .. '\t' .. lane .. '\t' .. tenant .. '\t' .. job)
      -- Due in grant order (a dispatcher sends what is due by score): already due,
      -- a ms apart, the first granted the earliest
      if job ~= self then redis.call('ZADD', DUE, now - MAX_LOOKS + #granted, job) end
      granted[#granted + 1] = job
      free = free - 1
    elseif job then
      redis.call('HDEL', WAITING, job)  -- ended or forgotten while it waited
    end
  end
  if #granted > 0 then redis.call('LTRIM', GRANT_LOG, -LOG_LENGTH, -1) end
  return granted
end

-- Ms until room may open again (LEAD ms before a sent call leaves the window, or when a
-- grant expires), 0 if there is room now, -1 if no job waits.
local function next_room(now)
  if redis.call('ZCARD', RINGS.interactive) + redis.call('ZCARD', RINGS.bulk) == 0 then
    return -1
  end
  if room(now) > 0 then return 0 end
  local at = nil
  local oldest = redis.call('ZRANGE', SENT, 0, 0, 'WITHSCORES')[2]
  if oldest then at = tonumber(oldest) + WINDOW + 1 - LEAD end
  local expiry = redis.call('ZRANGE', GRANTS, 0, 0, 'WITHSCORES')[2]
  if expiry and (not at or tonumber(expiry) + 1 < at) then at = tonumber(expiry) + 1 end
  if not at then return 0 end
  return math.max(1, at - now)
end

-- Put jobs recorded before the overview's indexes existed into them (`store/reindex.py`),
-- each from its record as it is now, in one step per batch: a job already in a state
-- index (indexed by its scripts) is left alone, so this races with no live change.
-- ARGV 1 job key prefix, 2 state index prefix, 3 wait index prefix, 4 now ms, 5.. job ids
-- Returns how many jobs it indexed.
local now = tonumber(ARGV[4])
local states = {'queued', 'submitted', 'succeeded', 'failed'}
local indexed = 0
for i = 5, #ARGV do
  local id = ARGV[i]
  local job = ARGV[1] .. id
  local f = redis.call('HMGET', job, 'state', 'wait_reason', 'updated_at')
  local listed = false
  for _, state in ipairs(states) do
    if redis.call('ZSCORE', ARGV[2] .. state, id) then listed = true end
  end
  if f[1] and not listed then
    local since = math.floor((tonumber(f[3] or '') or now / 1000) * 1000)
    local score = since
    if f[1] == 'succeeded' or f[1] == 'failed' then
      local ttl = redis.call('PTTL', job)
      score = ttl >= 0 and now + ttl or '+inf'
    elseif (f[2] or '') ~= '' then
      redis.call('ZADD', ARGV[3] .. f[2], 'NX', since, id)
    end
    redis.call('ZADD', ARGV[2] .. f[1], score, id)
    indexed = indexed + 1
  end
end
return indexed

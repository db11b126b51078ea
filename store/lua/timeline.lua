-- Shared by the scripts that write a job's timeline (`kie_covers.store.history`;
-- prepended by `kie_covers.store.scripts`).
-- add_timeline(key, cap, ttl ms, entry, ...): append the entries (JSON text), keep the
-- newest `cap`, and let the list live `ttl` ms from now.
local function add_timeline(key, cap, ttl, ...)
  redis.call('RPUSH', key, ...)
  redis.call('LTRIM', key, -tonumber(cap), -1)
  redis.call('PEXPIRE', key, ttl)
end

-- Shared by the scripts that write a job's timeline (`kie_covers.store.history`;
-- prepended by `kie_covers.store.scripts`). A timeline block of ARGV, from index `at`
-- (`History.script_args`): at the number of entries n, at+1 cap, at+2 ttl ms, then the
-- n entries (JSON text).
-- add_timeline(key, at): append the block's entries (if any), keep the newest `cap`,
-- let the list live `ttl` ms from now.
local function add_timeline(key, at)
  local n = tonumber(ARGV[at])
  if n == 0 then return end
  redis.call('RPUSH', key, unpack(ARGV, at + 3, at + 2 + n))
  redis.call('LTRIM', key, -tonumber(ARGV[at + 1]), -1)
  redis.call('PEXPIRE', key, ARGV[at + 2])
end

-- after_timeline(at): the index of the first ARGV after the block at `at`.
local function after_timeline(at)
  return at + 3 + tonumber(ARGV[at])
end

-- Shared by the scripts that give a music task a newer job (enqueue, finish,
-- retry_failed; prepended by `kie_covers.store.scripts`): a music task has at most one
-- failure row, its newest job's, so the job a newer one replaces leaves every index.
-- unindex_failure(job prefix, failed job id, {all key, kind prefix, code prefix,
-- retry-due key}) takes job `id` out of the failure index (all, its kind, its code) and
-- off the schedule of automatic retries. Its record stays, readable until it expires.
local function unindex_failure(job_prefix, id, index)
  local err = redis.call('HGET', job_prefix .. id, 'error')
  local kind, code = 'error', 'none'
  if err and err ~= '' then
    local ok, decoded = pcall(cjson.decode, err)
    if ok and type(decoded) == 'table' then
      if type(decoded['kind']) == 'string' then kind = decoded['kind'] end
      if decoded['code'] and decoded['code'] ~= cjson.null then
        code = tostring(decoded['code'])
      end
    end
  end
  redis.call('ZREM', index[1], id)
  redis.call('ZREM', index[2] .. kind, id)
  redis.call('ZREM', index[3] .. code, id)
  redis.call('ZREM', index[4], id)
end


-- One dispatcher round. Due entries of the job, notice and image-copy sets get a new
-- lease (they are not removed), so a dispatcher that dies after claiming loses nothing.
-- KEYS 1 due, 2 notify-due, 3 images-due; ARGV 1 now ms, 2 lease ms, 3 limit, 4 job prefix
-- Returns {jobs, notices, copies, earliest due ms or -1}: jobs as flat
-- {id, music task id, callback url, queue, ...}, notices and copies as {id, queue, ...};
-- an ended or vanished job is taken out of the due set instead.
local now, lease, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local out = {{}, {}, {}}
for i = 1, 3 do
  local ids = redis.call('ZRANGEBYSCORE', KEYS[i], '-inf', now, 'LIMIT', 0, limit)
  for _, id in ipairs(ids) do
    local f = redis.call('HMGET', ARGV[4] .. id, 'state', 'music_task_id', 'callback_url',
                         'queue')
    if i == 1 and (not f[1] or f[1] == 'succeeded' or f[1] == 'failed') then
      redis.call('ZREM', KEYS[1], id)
    else
      redis.call('ZADD', KEYS[i], now + lease, id)
      local row = out[i]
      row[#row + 1] = id
      if i == 1 then
        row[#row + 1] = f[2] or ''
        row[#row + 1] = f[3] or ''
      end
      row[#row + 1] = f[4] or ''
    end
  end
end
local earliest = -1
for i = 1, 3 do
  local first = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
  if first[2] and (earliest < 0 or tonumber(first[2]) < earliest) then
    earliest = tonumber(first[2])
  end
end
out[4] = earliest
return out

-- A dispatcher's round of the fair limiter (see kie_covers/store/fair.py): hand out the
-- free slots to the jobs waiting. fair_lib.lua is in front of this text (KEYS, ARGV).
-- Returns {ms until it is worth asking again or -1, job granted, ...} (in grant order).
local now = clock()
-- Hand out room by the limit of the workers that last asked (fair_acquire.lua), not
-- this dispatcher's, should their settings differ.
local known = redis.call('HMGET', STATE, 'limit', 'window')
if known[1] then LIMIT, WINDOW = tonumber(known[1]), tonumber(known[2]) end
local stop = stopped()
if stop then return {stop[1]} end
local granted = grant(now, '')
return {next_room(now), unpack(granted)}

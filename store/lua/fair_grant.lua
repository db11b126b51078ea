-- A dispatcher's round of the fair limiter (see kie_covers/store/fair.py): hand out the
-- free slots to the jobs waiting. fair_lib.lua is in front of this text (KEYS, ARGV).
-- Returns {ms until it is worth asking again or -1, job granted, ...} (in grant order).
local now = clock()
use_known_limit()
local stop = stopped()
if stop then return {stop[1]} end
local granted = grant(now, '')
return {next_room(now), unpack(granted)}

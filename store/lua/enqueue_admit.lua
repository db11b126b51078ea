-- A producer's new job, in one step (`JobStore.enqueue_and_admit`): its record as
-- enqueue.lua makes it (`new_job`), the first entry of its timeline (`add_timeline`),
-- and its place in the fair generate limiter's order (`admit`). The libraries are in
-- front of this text: failure_rows, indexes, new_job, timeline, fair_lib, fair_admit.
-- KEYS 1-11 as in fair_lib.lua, 12 the job's timeline, 13-16 as KEYS 1-4 of enqueue.lua
-- ARGV 1-10 as in fair_lib.lua, 11 lane, 12 tenant ('-': the default), 13 arrival (unix
--      us), 14-17 a timeline block of one entry (timeline.lua: 14 is 1), 18.. as ARGV 1..
--      of enqueue.lua (19 the new job id)
-- Returns {job id, answer}: '' when a live job of the music task was found (nothing
-- changed), else `admit`'s answer: 'granted' or 'send' (send its message now), 'queued'.
local job, created = new_job(12, 17)
if created == 1 then
  add_timeline(KEYS[12], 14)
  return {job, admit(job, ARGV[11], ARGV[12], ARGV[13])}
end
-- This very call again (redis-py sent it again after a connection cut took its answer):
-- answer as the first time, and add nothing twice.
if job == ARGV[19] then return {job, admitted(job)} end
return {job, ''}

-- A producer's new job, in one step (`JobStore.enqueue_and_admit`): its record as
-- enqueue.lua makes it (`new_job`), the first entry of its timeline (`add_timeline`),
-- and its place in the fair generate limiter's order (`admit`). The libraries are in
-- front of this text: failure_rows, indexes, new_job, timeline, fair_lib, fair_admit.
-- KEYS 1-10 as in fair_lib.lua, 11 the job's timeline, 12-15 as KEYS 1-4 of enqueue.lua
-- ARGV 1-9 as in fair_lib.lua, 10 lane, 11 tenant ('-': the default), 12 arrival (unix
--      us), 13-16 a timeline block of one entry (timeline.lua: 13 is 1), 17.. as ARGV 1..
--      of enqueue.lua (18 the new job id)
-- Returns {job id, answer}: '' when a live job of the music task was found (nothing
-- changed), else `admit`'s answer: 'granted' or 'send' (send its message now), 'queued'.
local job, created = new_job(11, 16)
if created == 1 then
  add_timeline(KEYS[11], 13)
  return {job, admit(job, ARGV[10], ARGV[11], ARGV[12])}
end
-- This very call again (redis-py sent it again after a connection cut took its answer):
-- answer as the first time, and add nothing twice.
if job == ARGV[18] then return {job, admitted(job)} end
return {job, ''}

-- Append to a job's timeline (`History.add`; `add_timeline` is in front of this text).
-- KEYS 1 the timeline; ARGV 1.. a timeline block (timeline.lua)
add_timeline(KEYS[1], 1)
return 1

-- Append to a job's timeline (`History.add`; `add_timeline` is in front of this text).
-- KEYS 1 the timeline; ARGV 1 cap, 2 ttl ms, 3.. entries (JSON text)
add_timeline(KEYS[1], ARGV[1], ARGV[2], unpack(ARGV, 3))
return 1

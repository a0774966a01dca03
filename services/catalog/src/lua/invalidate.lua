-- Drops a cache entry after its source rows changed and committed.
-- KEYS[1]: the entry's hash; KEYS[2]: its epoch counter.
-- Bumping the epoch refuses every fill that read Postgres before this point.
redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], 604800)
redis.call('DEL', KEYS[1])
return 1

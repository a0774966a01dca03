-- Stores a value read from Postgres into the cache, unless the entry changed meanwhile.
-- KEYS[1]: the entry's hash; KEYS[2]: its epoch counter.
-- ARGV[1]: the epoch the reader saw before reading Postgres; ARGV[2]: the field;
-- ARGV[3]: the value; ARGV[4]: time to live in seconds.
-- A writer bumps the epoch after its commit, so a reader that read the old row before that
-- commit finds a newer epoch here and stores nothing.
local epoch = redis.call('GET', KEYS[2]) or '0'
if epoch ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
return 1

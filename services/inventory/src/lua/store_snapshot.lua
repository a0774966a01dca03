-- Stores a SKU's availability snapshot unless a newer one is there, and resets the hot gate to
-- the snapshot's network availability.
-- KEYS[1]: snapshot hash, KEYS[2]: gate counter
-- ARGV[1]: version, ARGV[2]: encoded snapshot, ARGV[3]: ttl seconds, ARGV[4]: network available
local stored = redis.call('HGET', KEYS[1], 'v')
if stored and tonumber(stored) > tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'd', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('SET', KEYS[2], ARGV[4], 'EX', ARGV[3])
return 1

-- Stores a SKU's availability snapshot unless a newer one is there. For a hot SKU, resets its
-- admission gate to the snapshot's network availability; for any other SKU, removes the gate
-- (a SKU without a gate is decided by Postgres alone).
-- KEYS[1]: snapshot hash, KEYS[2]: gate counter
-- ARGV[1]: version, ARGV[2]: encoded snapshot, ARGV[3]: ttl seconds, ARGV[4]: network
-- available, ARGV[5]: 1 when the SKU is hot
local stored = redis.call('HGET', KEYS[1], 'v')
if stored and tonumber(stored) > tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'd', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
if ARGV[5] == '1' then
  redis.call('SET', KEYS[2], ARGV[4], 'EX', ARGV[3])
else
  redis.call('DEL', KEYS[2])
end
return 1

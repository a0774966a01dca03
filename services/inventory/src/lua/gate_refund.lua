-- Gives back units admitted by the gate that Postgres then refused.
-- KEYS[1]: gate counter, ARGV[1]: units
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('INCRBY', KEYS[1], ARGV[1])
end
return -1

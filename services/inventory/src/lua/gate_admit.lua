-- The hot-SKU admission gate: takes ARGV[1] units from the gate if it has them, and remembers
-- the request's idempotency key so a retry of an admitted request is never refused here.
-- KEYS[1]: gate counter, KEYS[2]: marker of the idempotency key (same SKU hash tag)
-- ARGV[1]: units, ARGV[2]: marker lifetime in seconds
-- Returns {verdict, units left}: 1 admitted; 0 refused (sold out as far as Redis knows);
-- -1 no gate (not a hot SKU, or Redis lost the gate: Postgres decides); 2 a retry of an
-- admitted request (Postgres replays it).
local left = redis.call('GET', KEYS[1])
if not left then
  return {-1, 0}
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {2, 0}
end
left = tonumber(left)
local wanted = tonumber(ARGV[1])
if left < wanted then
  return {0, left}
end
redis.call('DECRBY', KEYS[1], wanted)
redis.call('SET', KEYS[2], '1', 'EX', ARGV[2])
return {1, left - wanted}

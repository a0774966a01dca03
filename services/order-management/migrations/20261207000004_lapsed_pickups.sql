-- The sweeper asks every second for the orders whose clock ran out. Unpaid ones come from
-- orders_unpaid_idx; ready pickups past their deadline come from this one. Without it the
-- question read every order ever placed (a parallel scan of the whole table per sweep).
CREATE INDEX orders_lapsed_pickup_idx ON orders (pickup_deadline) WHERE status = 5;

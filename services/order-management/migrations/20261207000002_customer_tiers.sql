-- Each customer's loyalty tier as crm last announced it (crm.customer_tier_changed, consumed
-- as group order-management) or answered it (GetLoyaltyAccount, asked when no row is here or
-- the row is a day old: a rolling-spend tier also lapses with time, which crm does not
-- announce). PlaceOrder prices by this row instead of asking crm per order. A newer `as_of`
-- always wins, so a late answer never overwrites a newer announcement.
CREATE TABLE customer_tiers (
    customer_id text PRIMARY KEY,
    tier        text NOT NULL,
    as_of       timestamptz NOT NULL
);

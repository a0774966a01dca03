-- Each customer's purchase aggregate (non-cancelled orders), kept up to date as order events
-- arrive, so RFM, lifecycle and segment rules never re-aggregate every customer's orders.
CREATE TABLE customer_stats (
    customer_id TEXT PRIMARY KEY,
    first_purchase TIMESTAMPTZ NOT NULL,
    last_purchase TIMESTAMPTZ NOT NULL,
    orders BIGINT NOT NULL,
    -- Net spend (total less refunds) in minor units.
    monetary BIGINT NOT NULL
);
-- RFM ranks a customer by counting the customers below each value.
CREATE INDEX customer_stats_recency ON customer_stats (last_purchase);
CREATE INDEX customer_stats_frequency ON customer_stats (orders);
CREATE INDEX customer_stats_monetary ON customer_stats (monetary);

INSERT INTO customer_stats (customer_id, first_purchase, last_purchase, orders, monetary)
SELECT customer_id, min(placed_at), max(placed_at), count(*),
    sum(total_minor - refunded_minor)::BIGINT
FROM customer_orders WHERE status <> 8 GROUP BY customer_id;

-- When the event that set the order's status happened: an event older than that (a reclaimed
-- or re-published OrderPlaced after its OrderCancelled) does not set the status back.
ALTER TABLE customer_orders ADD COLUMN status_at TIMESTAMPTZ NOT NULL DEFAULT '-infinity';

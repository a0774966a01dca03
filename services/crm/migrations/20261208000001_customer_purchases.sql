-- Each customer's counted purchases (orders not cancelled), summed per day and per what
-- segment rules and tiers ask of them, kept by deltas as order events arrive (see
-- purchases.rs): a batch of events never re-reads a customer's order history, and a tier's
-- rolling spend or a `bought(...)` count sums days, however many orders a day holds.
--
-- Grain 0 is the order: one row per day, channel and store, with the orders and their net
-- spend (total less refunds). Grains 1 to 3 are its lines: the orders of the day, channel and
-- store with a line of a category (1), a product of a category (2) or a SKU of a product of
-- a category (3); an order counts once in each row whatever the number of such lines, so a
-- sum over rows counts distinct orders. Grain 4 is the month (`day` its first day, channel
-- and store empty), so a tier's rolling spend reads at most a year of months and a month of
-- days however often the customer buys. Days are UTC.
CREATE TABLE customer_purchases (
    customer_id  text     NOT NULL,
    grain        smallint NOT NULL CHECK (grain BETWEEN 0 AND 4),
    day          date     NOT NULL,
    channel_id   text     NOT NULL,
    channel_kind int      NOT NULL,
    store_id     text     NOT NULL,
    category_id  text     NOT NULL,
    product_id   text     NOT NULL,
    sku_id       text     NOT NULL,
    orders       bigint   NOT NULL,
    -- Grain 0 only; 0 at the line grains.
    net_minor    bigint   NOT NULL,
    PRIMARY KEY (customer_id, grain, day, channel_id, channel_kind, store_id, category_id,
                 product_id, sku_id)
);

-- What `customer_purchases` holds, aggregated from the orders and lines: the definition the
-- deltas keep, and what tests compare the table with.
CREATE VIEW customer_purchases_aggregated AS
WITH counted AS (
    SELECT order_id, customer_id, (placed_at AT TIME ZONE 'UTC')::date AS day, channel_id,
        channel_kind, store_id, total_minor - refunded_minor AS net
    FROM customer_orders WHERE status <> 8
), line_keys AS (
    SELECT DISTINCT o.order_id, k.grain, k.category_id, k.product_id, k.sku_id
    FROM counted o
    JOIN order_lines l ON l.order_id = o.order_id
    CROSS JOIN LATERAL (VALUES (1::smallint, l.category_id, ''::text, ''::text),
                               (2::smallint, l.category_id, l.product_id, ''::text),
                               (3::smallint, l.category_id, l.product_id, l.sku_id))
        AS k(grain, category_id, product_id, sku_id)
)
SELECT customer_id, 0::smallint AS grain, day, channel_id, channel_kind, store_id,
    ''::text AS category_id, ''::text AS product_id, ''::text AS sku_id,
    count(*)::bigint AS orders, sum(net)::bigint AS net_minor
FROM counted
GROUP BY customer_id, day, channel_id, channel_kind, store_id
UNION ALL
SELECT o.customer_id, k.grain, o.day, o.channel_id, o.channel_kind, o.store_id, k.category_id,
    k.product_id, k.sku_id, count(*)::bigint, 0::bigint
FROM counted o JOIN line_keys k ON k.order_id = o.order_id
GROUP BY o.customer_id, k.grain, o.day, o.channel_id, o.channel_kind, o.store_id,
    k.category_id, k.product_id, k.sku_id
UNION ALL
SELECT customer_id, 4::smallint, date_trunc('month', day)::date, '', 0, '', '', '', '',
    count(*)::bigint, sum(net)::bigint
FROM counted
GROUP BY customer_id, date_trunc('month', day)::date;

-- What `customer_stats` holds, aggregated from the orders.
CREATE VIEW customer_stats_aggregated AS
SELECT customer_id, min(placed_at) AS first_purchase, max(placed_at) AS last_purchase,
    count(*)::bigint AS orders, sum(total_minor - refunded_minor)::bigint AS monetary
FROM customer_orders WHERE status <> 8
GROUP BY customer_id;

INSERT INTO customer_purchases SELECT * FROM customer_purchases_aggregated;

-- The net spend of a customer's orders placed at or after `since`: the months after since's
-- month and the days after since's day in its month from `customer_purchases`, since's own
-- day to the instant from the orders (one day of one customer's orders, through
-- customer_orders_customer). At most a year of months and a month of days whatever the
-- window, if the window is a year.
CREATE FUNCTION rolling_spend(customer text, since timestamptz) RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT (SELECT coalesce(sum(net_minor), 0) FROM customer_purchases
            WHERE customer_id = customer AND grain = 4
              AND day > date_trunc('month', w.day)::date)
         + (SELECT coalesce(sum(net_minor), 0) FROM customer_purchases
            WHERE customer_id = customer AND grain = 0 AND day > w.day
              AND day < (date_trunc('month', w.day) + interval '1 month')::date)
         + (SELECT coalesce(sum(total_minor - refunded_minor), 0) FROM customer_orders
            WHERE customer_id = customer AND status <> 8 AND placed_at >= since
              AND placed_at < (w.day + 1)::timestamp AT TIME ZONE 'UTC')::bigint
    FROM (SELECT (since AT TIME ZONE 'UTC')::date AS day) AS w
$$;

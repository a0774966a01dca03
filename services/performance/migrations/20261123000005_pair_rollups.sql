-- performance: distinct-customer rollups that do not grow with orders (see src/spans.rs).
--
-- Buying customers, customers with two orders or more, new customers who ordered again and the
-- cohort's net sales to date are counts (sums) of pairs of days (a, b), a <= b, that fall
-- inside a report's range. Each pair is kept at four grains so a report reads a bounded number
-- of rows whatever the number of orders; the pairs of one customer are a function of its facts
-- alone, moved by "before minus after" with every change and recomputed by the rebuild.
CREATE TABLE pair_rollups (
    -- 0 everything, 1 channel, 2 channel x store, 3 channel x store x associate.
    level        smallint NOT NULL,
    -- 0 month x month, 1 day x month, 2 month x day, 3 day x day.
    grain        smallint NOT NULL,
    -- The months of a and b (first day), whatever the grain.
    am           date NOT NULL,
    bm           date NOT NULL,
    -- The pair at the grain: a day, or the month's first day.
    a            date NOT NULL,
    b            date NOT NULL,
    -- 0 orders, 1 consecutive orders, 2 orders two apart, 3 first and second order of a new
    -- customer, 4 new customer's net sales by day (value in minor units).
    family       smallint NOT NULL,
    channel_id   text NOT NULL,
    store_id     text NOT NULL,
    associate_id text NOT NULL,
    value        bigint NOT NULL,
    PRIMARY KEY (level, grain, am, bm, a, b, family, channel_id, store_id, associate_id)
);

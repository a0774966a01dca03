-- performance: facts from order, return, customer and feedback events; daily rollups kept in
-- step with them; traffic and spend inputs; scorecards.
--
-- Days are calendar days in the reporting time zone (UTC). Money is integer minor units in the
-- reporting currency.

-- Channels known from catalog events and from orders; reports refuse any other channel.
CREATE TABLE channels (
    channel_id text PRIMARY KEY,
    -- omni.common.v1.ChannelKind number; 0 when only seen on orders without a kind.
    kind       integer NOT NULL DEFAULT 0,
    name       text NOT NULL DEFAULT ''
);

-- One row per order, as the latest order event described it.
CREATE TABLE order_facts (
    order_id          text PRIMARY KEY,
    channel_id        text NOT NULL,
    store_id          text NOT NULL DEFAULT '',
    associate_id      text NOT NULL DEFAULT '',
    -- Empty for an anonymous sale.
    customer_id       text NOT NULL DEFAULT '',
    placed_at         timestamptz NOT NULL,
    day               date NOT NULL,
    -- What the customer pays: line net amounts (after discounts).
    sales             bigint NOT NULL,
    -- Unit cost x quantity over the lines.
    cost              bigint NOT NULL,
    units             bigint NOT NULL,
    cancelled         boolean NOT NULL DEFAULT false,
    promised_ready_at timestamptz,
    ready_at          timestamptz,
    -- Whether this order was counted in the rollups as its customer's first order; what the
    -- rollups hold for the order is a function of the row and this flag, so a change is applied
    -- as "remove the old contribution, add the new one".
    counted_first     boolean NOT NULL DEFAULT false
);
CREATE INDEX order_facts_customer ON order_facts (customer_id, placed_at, order_id);
CREATE INDEX order_facts_day ON order_facts (day);

-- One row per completed return, with the dimensions of the order it returns.
CREATE TABLE return_facts (
    return_id    text PRIMARY KEY,
    order_id     text NOT NULL,
    channel_id   text NOT NULL,
    store_id     text NOT NULL DEFAULT '',
    associate_id text NOT NULL DEFAULT '',
    customer_id  text NOT NULL DEFAULT '',
    -- The day the return completed: returns reduce the sales of the period they happen in.
    day          date NOT NULL,
    refund       bigint NOT NULL,
    cost         bigint NOT NULL,
    -- The returned order was a returning customer's (not a first) order when the return came.
    repeat       boolean NOT NULL
);
CREATE INDEX return_facts_day ON return_facts (day);

-- Each customer's acquisition: the first (not cancelled) order.
CREATE TABLE customers (
    customer_id              text PRIMARY KEY,
    first_order_id           text NOT NULL,
    first_day                date NOT NULL,
    acquisition_channel_id   text NOT NULL,
    acquisition_store_id     text NOT NULL DEFAULT '',
    acquisition_associate_id text NOT NULL DEFAULT ''
);
CREATE INDEX customers_first_day ON customers (first_day);

-- Sums per day and channel x store x associate, maintained with every fact change.
CREATE TABLE daily_rollups (
    day              date NOT NULL,
    channel_id       text NOT NULL,
    store_id         text NOT NULL,
    associate_id     text NOT NULL,
    orders           bigint NOT NULL DEFAULT 0,
    units            bigint NOT NULL DEFAULT 0,
    sales            bigint NOT NULL DEFAULT 0,
    returns          bigint NOT NULL DEFAULT 0,
    -- Cost of goods sold net of returned goods.
    cogs             bigint NOT NULL DEFAULT 0,
    new_customers    bigint NOT NULL DEFAULT 0,
    -- Net sales of orders by customers who had ordered before.
    repeat_net_sales bigint NOT NULL DEFAULT 0,
    pickup_orders    bigint NOT NULL DEFAULT 0,
    pickup_hits      bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (day, channel_id, store_id, associate_id)
);

-- Per customer and day: what distinct-customer KPIs (repeat rate, CLV) need.
CREATE TABLE customer_days (
    day          date NOT NULL,
    channel_id   text NOT NULL,
    store_id     text NOT NULL,
    associate_id text NOT NULL,
    customer_id  text NOT NULL,
    orders       bigint NOT NULL DEFAULT 0,
    net_sales    bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (day, channel_id, store_id, associate_id, customer_id)
);
CREATE INDEX customer_days_customer ON customer_days (customer_id, day);

CREATE TABLE traffic (
    channel_id   text NOT NULL,
    day          date NOT NULL,
    visits       bigint NOT NULL,
    impressions  bigint NOT NULL,
    interactions bigint NOT NULL,
    reach        bigint NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel_id, day)
);

CREATE TABLE spend (
    channel_id  text NOT NULL,
    day         date NOT NULL,
    category    text NOT NULL CHECK (category IN ('marketing', 'operations')),
    amount      bigint NOT NULL CHECK (amount >= 0),
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel_id, day, category)
);

-- Feedback sums per day, channel and store.
CREATE TABLE feedback_daily (
    day            date NOT NULL,
    channel_id     text NOT NULL,
    store_id       text NOT NULL,
    csat_sum       bigint NOT NULL DEFAULT 0,
    csat_count     bigint NOT NULL DEFAULT 0,
    nps_promoters  bigint NOT NULL DEFAULT 0,
    nps_detractors bigint NOT NULL DEFAULT 0,
    nps_count      bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (day, channel_id, store_id)
);

-- Inventory value per location and day, from inventory's valuation events.
CREATE TABLE inventory_values (
    location_id text NOT NULL,
    day         date NOT NULL,
    value       bigint NOT NULL,
    PRIMARY KEY (location_id, day)
);

CREATE TABLE scorecards (
    id         uuid PRIMARY KEY,
    channel_id text NOT NULL,
    -- The encoded omni.performance.v1.Scorecard (conditions and payout rules).
    body       bytea NOT NULL,
    version    bigint NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

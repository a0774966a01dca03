-- order-management: orders, returns, per-channel sourcing settings and placement attempts.
--
-- An order is an aggregate that is always read and changed whole under its row lock: its lines,
-- fulfilments, pickup clock and history live in `doc` (the encoded omni.orders.v1.Order), and
-- the columns beside it are what the service searches by. A change is one row update in the
-- same transaction as its outbox events. Reporting reads the events (performance, crm), never
-- these tables.

CREATE SEQUENCE order_number_seq;

CREATE TABLE orders (
    id                  uuid PRIMARY KEY,
    order_number        text NOT NULL,
    channel_id          text NOT NULL,
    customer_id         text NOT NULL DEFAULT '',
    -- Taken at, picked up at or fulfilled from: what a store's staff may see.
    store_ids           text[] NOT NULL DEFAULT '{}',
    status              smallint NOT NULL,
    -- PICKUP orders: the store and its clock (the pickup queue).
    pickup_store_id     text,
    promised_ready_at   timestamptz,
    ready_at            timestamptz,
    pickup_deadline     timestamptz,
    -- Unpaid by then, the order expires.
    payment_due_at      timestamptz,
    -- An exchange's replacement: the refund already credited toward its total.
    credit_minor        bigint NOT NULL DEFAULT 0,
    placed_at           timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    doc                 bytea NOT NULL,
    CONSTRAINT orders_order_number_key UNIQUE (order_number)
);
CREATE INDEX orders_customer_idx ON orders (customer_id, placed_at DESC, id DESC);
CREATE INDEX orders_channel_idx ON orders (channel_id, placed_at DESC, id DESC);
CREATE INDEX orders_placed_idx ON orders (placed_at DESC, id DESC);
CREATE INDEX orders_store_ids_idx ON orders USING gin (store_ids);
CREATE INDEX orders_unpaid_idx ON orders (payment_due_at) WHERE status = 1;
CREATE INDEX orders_pickup_idx ON orders (pickup_store_id, promised_ready_at)
    WHERE pickup_store_id IS NOT NULL AND status IN (2, 3, 4, 5);

-- One row per PlaceOrder idempotency key, written before anything else and kept whatever
-- happens next. It gives every try with that key the same order id, and a lease: one try at a
-- time works on the key (a concurrent retry waits, then gets the first try's reply), without a
-- database connection held while other services are called. Stock holds and coupon
-- redemptions are keyed by (order id, try), so a try that failed and gave them back never
-- replays them. Tries that never became an order have their coupons given back by the sweeper
-- once their lease ran out; their stock holds expire by themselves.
CREATE TABLE placement_attempts (
    scope          text NOT NULL,
    key            text NOT NULL,
    order_id       uuid NOT NULL,
    coupon_codes   text[] NOT NULL DEFAULT '{}',
    channel_id     text NOT NULL,
    tries          integer NOT NULL DEFAULT 0,
    lease_until    timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    -- The order committed.
    settled_at     timestamptz,
    -- The sweeper gave the coupons of an abandoned try back.
    released_at    timestamptz,
    PRIMARY KEY (scope, key)
);
CREATE INDEX placement_attempts_unsettled_idx ON placement_attempts (created_at)
    WHERE settled_at IS NULL AND released_at IS NULL;

CREATE TABLE returns (
    id           uuid PRIMARY KEY,
    order_id     uuid NOT NULL REFERENCES orders (id),
    customer_id  text NOT NULL DEFAULT '',
    channel_id   text NOT NULL,
    location_id  text NOT NULL,
    status       smallint NOT NULL,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    doc          bytea NOT NULL
);
CREATE INDEX returns_order_idx ON returns (order_id, created_at DESC);
CREATE INDEX returns_customer_idx ON returns (customer_id, created_at DESC, id DESC);
CREATE INDEX returns_location_idx ON returns (location_id, created_at DESC, id DESC);
CREATE INDEX returns_channel_idx ON returns (channel_id, created_at DESC, id DESC);

CREATE TABLE sourcing_configs (
    channel_id   text PRIMARY KEY,
    doc          bytea NOT NULL,
    updated_at   timestamptz NOT NULL
);

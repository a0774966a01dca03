-- performance: what cross-channel attribution needs beyond order facts.

-- Stores credited for an order they fulfilled: handed over (pickup) or shipped from.
CREATE TABLE order_store_credits (
    order_id text NOT NULL,
    store_id text NOT NULL,
    role     text NOT NULL CHECK (role IN ('pickup', 'ship_from_store')),
    PRIMARY KEY (order_id, store_id, role)
);

-- Coupons used on an order, with the channel that issued them.
CREATE TABLE order_coupons (
    order_id           text NOT NULL,
    code               text NOT NULL,
    issuing_channel_id text NOT NULL,
    discount           bigint NOT NULL,
    PRIMARY KEY (order_id, code)
);

-- performance: how each order of a sourcing experiment was fulfilled, for comparing
-- strategies (online-first against store-first) on split rate, time and store stock used.
CREATE TABLE order_fulfilment (
    order_id      text PRIMARY KEY,
    experiment_id text NOT NULL,
    variant       text NOT NULL,
    split         boolean NOT NULL,
    placed_at     timestamptz NOT NULL,
    completed_at  timestamptz,
    units         bigint NOT NULL,
    -- Units on lines leaving from a store (ship-from-store or pickup).
    store_units   bigint NOT NULL,
    cancelled     boolean NOT NULL DEFAULT false
);
CREATE INDEX order_fulfilment_experiment ON order_fulfilment (experiment_id, variant);

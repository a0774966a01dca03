-- Orders brought in by ImportOrders, by where they came from: a batch sent again imports
-- nothing twice.
CREATE TABLE imported_orders (
    channel_id         text NOT NULL,
    channel_order_ref  text NOT NULL,
    order_id           uuid NOT NULL REFERENCES orders (id),
    imported_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel_id, channel_order_ref)
);

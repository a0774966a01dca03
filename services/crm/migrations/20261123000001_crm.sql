-- crm: customers fed by identity events, their orders fed by order events, the points ledger.

CREATE TABLE customers (
    customer_id TEXT PRIMARY KEY,
    member_number TEXT NOT NULL DEFAULT '',
    name TEXT NOT NULL DEFAULT '',
    phone TEXT NOT NULL DEFAULT '',
    email TEXT NOT NULL DEFAULT '',
    erased BOOLEAN NOT NULL DEFAULT false,
    -- Set when identity merged this customer away; reads follow it to the survivor.
    merged_into TEXT,
    registered_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE customer_orders (
    order_id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    order_number TEXT NOT NULL,
    channel_id TEXT NOT NULL,
    channel_kind INT NOT NULL,
    store_id TEXT NOT NULL,
    status INT NOT NULL,
    total_minor BIGINT NOT NULL,
    currency TEXT NOT NULL,
    refunded_minor BIGINT NOT NULL DEFAULT 0,
    item_count INT NOT NULL,
    placed_at TIMESTAMPTZ NOT NULL,
    earned BOOLEAN NOT NULL DEFAULT false
);
CREATE INDEX customer_orders_customer ON customer_orders (customer_id, placed_at DESC);

CREATE TABLE loyalty_accounts (
    customer_id TEXT PRIMARY KEY,
    balance BIGINT NOT NULL DEFAULT 0,
    CONSTRAINT loyalty_accounts_balance_not_negative CHECK (balance >= 0)
);

CREATE TABLE points_entries (
    id UUID PRIMARY KEY,
    customer_id TEXT NOT NULL,
    kind INT NOT NULL,
    points BIGINT NOT NULL,
    balance_after BIGINT NOT NULL,
    channel_id TEXT NOT NULL DEFAULT '',
    order_id TEXT NOT NULL DEFAULT '',
    return_id TEXT NOT NULL DEFAULT '',
    reason TEXT NOT NULL DEFAULT '',
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX points_entries_customer ON points_entries (customer_id, id);

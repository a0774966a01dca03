-- inventory: unit costs from the catalog's ProductChanged events, as a history, so a past day's
-- inventory value (ListInventoryValues) uses the cost in force at the end of that day.
CREATE TABLE sku_costs (
    sku_id       text NOT NULL,
    -- When the catalog changed the cost (the event's time).
    effective_at timestamptz NOT NULL,
    -- Minor units per unit.
    unit_cost    bigint NOT NULL CHECK (unit_cost >= 0),
    currency     text NOT NULL,
    PRIMARY KEY (sku_id, effective_at)
);
COMMENT ON TABLE sku_costs IS 'Unit cost per SKU from the catalog, one row per change.';

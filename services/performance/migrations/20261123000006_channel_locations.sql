-- performance: the inventory location a channel sells from (catalog's store_location_id), so a
-- channel row's inventory turnover uses the value of its own stock.
ALTER TABLE channels ADD COLUMN location_id text NOT NULL DEFAULT '';
COMMENT ON COLUMN channels.location_id IS 'Inventory location of a store channel; empty: none linked.';

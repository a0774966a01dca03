-- A return whose items came in resellable puts them back into stock through inventory. That
-- call is made after the return commits, not under the order's lock: the commit records the
-- restock to make (its movement's idempotency key) and the time, the call clears it, and the
-- sweeper repeats a restock still recorded after a while (its key makes a repeat harmless).
ALTER TABLE returns
    ADD COLUMN restock_key text,
    ADD COLUMN restock_since timestamptz;
CREATE INDEX returns_restock_idx ON returns (restock_since) WHERE restock_key IS NOT NULL;

-- A change that calls other services (payment, cancellation, an address change that moves the
-- hold, a hand-over or shipment) is recorded on the order before the calls, in its own short
-- transaction, and cleared by the transaction that commits the outcome: no row lock and no
-- pooled connection is held while inventory or crm answer. `pending` is the encoded step
-- (order_management::app::steps::Pending); while it is set, other changes to the order wait
-- (ABORTED, retryable). A step still pending after `pending_since` plus the resume horizon
-- belongs to a process that died or gave up: the sweeper repeats its calls, which are keyed
-- by the order and step, and commits the outcome.
ALTER TABLE orders
    ADD COLUMN pending bytea,
    ADD COLUMN pending_since timestamptz;
CREATE INDEX orders_pending_idx ON orders (pending_since) WHERE pending IS NOT NULL;

-- Which stock hold and coupon redemptions a placement's tries share. A try whose hold or
-- redemptions may still stand (its reply was lost) leaves the generation as it is, so the
-- retry gets the same hold back instead of a second one; once a try gave them back, or the
-- hold it would replay has ended, the next try starts a new generation.
ALTER TABLE placement_attempts ADD COLUMN generation integer NOT NULL DEFAULT 0;

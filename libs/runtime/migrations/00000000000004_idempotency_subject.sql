-- Whose personal data a stored request or reply may carry, so erasing a customer can forget
-- them (the customer id, or the id of an aggregate that belongs to one, such as an order).
ALTER TABLE idempotency_keys ADD COLUMN subject text;
COMMENT ON COLUMN idempotency_keys.subject IS 'The customer (or their order) the request and reply are about, when they may carry personal data; erasure deletes these rows.';
CREATE INDEX idempotency_keys_subject_idx ON idempotency_keys (subject) WHERE subject IS NOT NULL;

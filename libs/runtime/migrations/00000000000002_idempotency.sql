-- Replies to mutations that carried an idempotency key, so a retry gets the first reply.
CREATE TABLE idempotency_keys (
    -- The operation, e.g. "inventory.reserve": one key space per operation.
    scope      text NOT NULL,
    key        text NOT NULL,
    -- The encoded request: a retry must send the same one.
    request    bytea NOT NULL,
    -- The encoded reply; empty until the first call commits.
    response   bytea NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);
COMMENT ON TABLE idempotency_keys IS 'First replies of mutations with an idempotency key; written in the mutation''s transaction.';
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);

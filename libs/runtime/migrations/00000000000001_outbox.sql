-- Tables the runtime owns in every service's database: the outbox that events leave through,
-- and the record of events a consumer has already applied.

CREATE TABLE outbox (
    -- Publication order.
    seq          bigserial PRIMARY KEY,
    event_id     uuid NOT NULL UNIQUE,
    event_type   text NOT NULL,
    -- An encoded omni.events.v1.Event.
    payload      bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- Set once the relay has appended the event to the service's Redis stream.
    published_at timestamptz
);
COMMENT ON TABLE outbox IS 'Events written in the same transaction as the change they describe; relayed to Redis Streams.';

CREATE INDEX outbox_unpublished_idx ON outbox (seq) WHERE published_at IS NULL;

CREATE TABLE processed_events (
    -- The consumer group that applied the event, e.g. "crm".
    consumer     text NOT NULL,
    event_id     uuid NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
COMMENT ON TABLE processed_events IS 'Written in the same transaction as an event''s effect, so each event is applied once.';

-- Where each published event landed in the stream, so the relay keeps published rows until
-- every consumer group has acknowledged them, and can publish them again if Redis loses them.
ALTER TABLE outbox ADD COLUMN stream_ms bigint, ADD COLUMN stream_seq bigint;
COMMENT ON COLUMN outbox.stream_ms IS 'The stream entry id (<ms>-<seq>) the event was last published as.';
CREATE INDEX outbox_published_idx ON outbox (stream_ms, stream_seq) WHERE published_at IS NOT NULL;

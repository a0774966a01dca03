-- The test handler's effect: how many times each event was applied.
CREATE TABLE applied (
    event_id uuid PRIMARY KEY,
    times    integer NOT NULL
);

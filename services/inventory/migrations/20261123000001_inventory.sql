-- inventory: locations, stock levels and their movement ledger, channel quotas, hot SKUs,
-- reservations and transfers.

CREATE TABLE locations (
    id                   uuid PRIMARY KEY,
    -- Short human code, e.g. "LYS-01".
    code                 text NOT NULL,
    name                 text NOT NULL,
    kind                 text NOT NULL CHECK (kind IN ('warehouse', 'store', 'in_transit')),
    address_lines        text[] NOT NULL DEFAULT '{}',
    city                 text NOT NULL DEFAULT '',
    region               text NOT NULL DEFAULT '',
    postal_code          text NOT NULL DEFAULT '',
    country_code         text NOT NULL DEFAULT '',
    latitude             double precision,
    longitude            double precision,
    -- For stores: the catalog channel of the store.
    channel_id           text NOT NULL DEFAULT '',
    pickup_enabled       boolean NOT NULL DEFAULT false,
    ships_orders         boolean NOT NULL DEFAULT false,
    time_zone            text NOT NULL DEFAULT 'UTC',
    -- Minutes after local midnight after which a pickup cannot be ready today; 0: none.
    pickup_cutoff_minute integer NOT NULL DEFAULT 0,
    active               boolean NOT NULL DEFAULT true,
    version              bigint NOT NULL DEFAULT 1,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT locations_code_key UNIQUE (code),
    CONSTRAINT locations_geo_check CHECK ((latitude IS NULL) = (longitude IS NULL))
);
COMMENT ON TABLE locations IS 'Warehouses, stores and the one in-transit location.';

-- Stock on its way between locations is held here, so levels still sum to the ledger.
INSERT INTO locations (id, code, name, kind)
VALUES ('00000000-0000-7000-8000-000000000001', 'IN-TRANSIT', 'In transit', 'in_transit');

CREATE TABLE stock_levels (
    sku_id              text NOT NULL,
    location_id         uuid NOT NULL REFERENCES locations (id),
    -- Always the sum of the ledger's quantity_delta for this SKU and location.
    on_hand             bigint NOT NULL DEFAULT 0,
    -- Units held by active reservations.
    reserved            bigint NOT NULL DEFAULT 0,
    safety_stock        bigint NOT NULL DEFAULT 0,
    low_stock_threshold bigint NOT NULL DEFAULT 0,
    -- Bumped by every change; the cache keeps the snapshot with the highest sum per SKU.
    version             bigint NOT NULL DEFAULT 1,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sku_id, location_id),
    -- Physical stock can never be promised twice or go negative.
    CONSTRAINT stock_levels_on_hand_check CHECK (on_hand >= 0),
    CONSTRAINT stock_levels_reserved_check CHECK (reserved >= 0 AND reserved <= on_hand),
    CONSTRAINT stock_levels_settings_check CHECK (safety_stock >= 0 AND low_stock_threshold >= 0)
);
CREATE INDEX stock_levels_location_idx ON stock_levels (location_id, sku_id);

CREATE TABLE movements (
    id             uuid PRIMARY KEY,
    sku_id         text NOT NULL,
    location_id    uuid NOT NULL REFERENCES locations (id),
    kind           text NOT NULL CHECK (kind IN ('receipt', 'sale', 'return', 'adjustment', 'count',
                                                 'transfer_out', 'transfer_in', 'write_off')),
    -- Signed change of on hand.
    quantity_delta bigint NOT NULL,
    reason         text NOT NULL DEFAULT '',
    -- What caused it: an order, return, transfer, reservation or count id.
    reference      text NOT NULL DEFAULT '',
    actor_id       text NOT NULL,
    occurred_at    timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE movements IS 'The ledger: every change of on hand, append only.';
CREATE INDEX movements_sku_location_idx ON movements (sku_id, location_id, occurred_at);
CREATE INDEX movements_location_idx ON movements (location_id, occurred_at);
CREATE INDEX movements_reference_idx ON movements (reference) WHERE reference <> '';

-- Rows of the three tables below are never deleted, only changed with their version bumped:
-- the sum of a SKU's versions then only grows, and orders the snapshots the cache keeps.

CREATE TABLE channel_quotas (
    sku_id     text NOT NULL,
    channel_id text NOT NULL,
    -- The cap on units the channel may have reserved or sold; NULL: no cap (removed).
    quota      bigint CHECK (quota >= 0),
    used       bigint NOT NULL DEFAULT 0 CHECK (used >= 0),
    version    bigint NOT NULL DEFAULT 1,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sku_id, channel_id)
);

CREATE TABLE hot_skus (
    sku_id   text PRIMARY KEY,
    hot      boolean NOT NULL,
    source   text NOT NULL CHECK (source IN ('operator', 'detected')),
    reason   text NOT NULL DEFAULT '',
    since    timestamptz NOT NULL DEFAULT now(),
    -- The hot mark ends by itself at this time; NULL: until cleared.
    until    timestamptz,
    version  bigint NOT NULL DEFAULT 1
);

CREATE TABLE reservations (
    id         uuid PRIMARY KEY,
    status     text NOT NULL CHECK (status IN ('active', 'fulfilled', 'released', 'expired')),
    channel_id text NOT NULL DEFAULT '',
    reference  text NOT NULL DEFAULT '',
    -- NULL: no expiry.
    expires_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reservations_expiry_idx ON reservations (expires_at) WHERE status = 'active' AND expires_at IS NOT NULL;

CREATE TABLE reservation_lines (
    reservation_id uuid NOT NULL REFERENCES reservations (id),
    line_no        integer NOT NULL,
    sku_id         text NOT NULL,
    location_id    uuid NOT NULL REFERENCES locations (id),
    quantity       bigint NOT NULL CHECK (quantity > 0),
    fulfilled      bigint NOT NULL DEFAULT 0,
    released       bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (reservation_id, line_no),
    CONSTRAINT reservation_lines_progress_check CHECK (fulfilled >= 0 AND released >= 0 AND fulfilled + released <= quantity)
);

CREATE TABLE transfers (
    id               uuid PRIMARY KEY,
    from_location_id uuid NOT NULL REFERENCES locations (id),
    to_location_id   uuid NOT NULL REFERENCES locations (id),
    status           text NOT NULL CHECK (status IN ('in_transit', 'partially_received', 'received')),
    expected_at      timestamptz,
    reason           text NOT NULL DEFAULT '',
    automatic        boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT transfers_route_check CHECK (from_location_id <> to_location_id)
);
CREATE INDEX transfers_from_idx ON transfers (from_location_id);
CREATE INDEX transfers_to_idx ON transfers (to_location_id);

CREATE TABLE transfer_lines (
    transfer_id uuid NOT NULL REFERENCES transfers (id),
    sku_id      text NOT NULL,
    quantity    bigint NOT NULL CHECK (quantity > 0),
    received    bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (transfer_id, sku_id),
    CONSTRAINT transfer_lines_received_check CHECK (received >= 0 AND received <= quantity)
);

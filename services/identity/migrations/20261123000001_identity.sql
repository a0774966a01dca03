-- identity: customers and their channel accounts, consents and merges; principals.

-- Member numbers are a sequence number plus a Luhn check digit; nine digits of sequence.
CREATE SEQUENCE member_number_seq START 100000000 MAXVALUE 999999999;

CREATE TABLE customers (
    id            uuid PRIMARY KEY,
    -- Ten digits, the last a Luhn check digit. Kept after a merge: it answers as an alias.
    member_number text NOT NULL,
    -- E.164. NULL once erased or merged away, so the number can identify someone else.
    phone         text,
    email         text,
    name          text NOT NULL DEFAULT '',
    -- Set when this customer was merged into another; lookups answer with the survivor.
    merged_into   uuid REFERENCES customers (id),
    erased_at     timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT customers_member_number_key UNIQUE (member_number),
    CONSTRAINT customers_phone_key UNIQUE (phone),
    CONSTRAINT customers_merged_into_check CHECK (merged_into IS NULL OR merged_into <> id)
);
COMMENT ON TABLE customers IS 'One row per person, whatever channel they came through.';
CREATE INDEX customers_merged_into_idx ON customers (merged_into) WHERE merged_into IS NOT NULL;

CREATE TABLE channel_accounts (
    -- omni.common.v1.ChannelKind number.
    channel_kind smallint NOT NULL,
    -- The channel's own id: e-shop account, loyalty card, social or livestream platform id.
    external_id  text NOT NULL,
    customer_id  uuid NOT NULL REFERENCES customers (id),
    linked_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel_kind, external_id)
);
CREATE INDEX channel_accounts_customer_idx ON channel_accounts (customer_id);

CREATE TABLE consents (
    customer_id      uuid NOT NULL REFERENCES customers (id),
    channel_kind     smallint NOT NULL,
    marketing_opt_in boolean NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, channel_kind)
);

CREATE TABLE merges (
    duplicate_id uuid PRIMARY KEY REFERENCES customers (id),
    survivor_id  uuid NOT NULL REFERENCES customers (id),
    reason       text NOT NULL,
    -- The principal that merged them.
    actor_id     text NOT NULL,
    merged_at    timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE merges IS 'Audit trail of merges.';

CREATE TABLE principals (
    id             uuid PRIMARY KEY,
    kind           text NOT NULL CHECK (kind IN ('staff', 'channel_app', 'service')),
    -- Staff: the login. Applications and services: their name.
    name           text NOT NULL,
    display_name   text NOT NULL DEFAULT '',
    -- Argon2id PHC string; staff only.
    password_hash  text,
    -- The public part of an API key, to find the row; the key itself is stored as a SHA-256.
    api_key_prefix text,
    api_key_hash   bytea,
    roles          text[] NOT NULL,
    scope_channels text[] NOT NULL DEFAULT '{}',
    scope_stores   text[] NOT NULL DEFAULT '{}',
    disabled       boolean NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now(),
    created_by     text NOT NULL,
    CONSTRAINT principals_credential_check CHECK (
        (kind = 'staff' AND password_hash IS NOT NULL)
        OR (kind <> 'staff' AND api_key_prefix IS NOT NULL AND api_key_hash IS NOT NULL)
    )
);
CREATE UNIQUE INDEX principals_login_key ON principals (name) WHERE kind = 'staff';
CREATE UNIQUE INDEX principals_api_key_prefix_key ON principals (api_key_prefix);

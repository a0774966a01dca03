-- catalog: channels, the category tree, products and SKUs, channel listings under a price
-- policy, competitor prices and promotions.

CREATE TABLE channels (
    id                uuid PRIMARY KEY,
    -- omni.common.v1.ChannelKind number.
    kind              smallint NOT NULL,
    name              text NOT NULL,
    -- For stores: inventory's location id of the store; '' for other kinds.
    store_location_id text NOT NULL DEFAULT '',
    -- ISO 4217; listing prices on the channel are in it.
    currency          text NOT NULL,
    active            boolean NOT NULL DEFAULT true,
    version           bigint NOT NULL DEFAULT 1,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT channels_name_key UNIQUE (name)
);
COMMENT ON TABLE channels IS 'The retailer''s sales channels; every service refers to channels by these ids.';

CREATE TABLE categories (
    id         uuid PRIMARY KEY,
    parent_id  uuid REFERENCES categories (id),
    name       text NOT NULL,
    -- Ids from the root down to this category, this one included; categories never move, so
    -- "in category X or below" is `X = ANY(path)`.
    path       uuid[] NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT categories_name_key UNIQUE NULLS NOT DISTINCT (parent_id, name)
);
CREATE INDEX categories_parent_idx ON categories (parent_id);
CREATE INDEX categories_path_idx ON categories USING gin (path);

CREATE TABLE products (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    brand       text NOT NULL DEFAULT '',
    category_id uuid NOT NULL REFERENCES categories (id),
    description text NOT NULL DEFAULT '',
    media_urls  text[] NOT NULL DEFAULT '{}',
    -- Free-form attributes, a JSON object of strings.
    attributes  jsonb NOT NULL DEFAULT '{}',
    -- omni.catalog.v1.ProductStatus number.
    status      smallint NOT NULL,
    version     bigint NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX products_category_idx ON products (category_id);

CREATE TABLE skus (
    id                 uuid PRIMARY KEY,
    product_id         uuid NOT NULL REFERENCES products (id),
    sku_code           text NOT NULL,
    -- Normalised to 13 digits (a UPC-A gets a leading 0), so one article cannot be registered
    -- once as UPC-A and once as EAN-13.
    barcode            text NOT NULL,
    variant_attributes jsonb NOT NULL DEFAULT '{}',
    list_price         bigint NOT NULL CHECK (list_price >= 0),
    currency           text NOT NULL,
    unit_cost          bigint NOT NULL CHECK (unit_cost >= 0),
    cost_currency      text NOT NULL,
    -- omni.catalog.v1.SkuStatus number.
    status             smallint NOT NULL,
    version            bigint NOT NULL DEFAULT 1,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT skus_sku_code_key UNIQUE (sku_code),
    CONSTRAINT skus_barcode_key UNIQUE (barcode)
);
CREATE INDEX skus_product_idx ON skus (product_id);

CREATE TABLE listings (
    sku_id                uuid NOT NULL REFERENCES skus (id),
    channel_id            uuid NOT NULL REFERENCES channels (id),
    price                 bigint NOT NULL CHECK (price >= 0),
    currency              text NOT NULL,
    listed                boolean NOT NULL,
    title_override        text NOT NULL DEFAULT '',
    description_override  text NOT NULL DEFAULT '',
    -- A recorded permission for the price to be outside policy; NULL reason: none.
    exception_reason      text,
    exception_approved_by text,
    exception_expires_at  timestamptz,
    version               bigint NOT NULL DEFAULT 1,
    updated_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sku_id, channel_id)
);
COMMENT ON TABLE listings IS 'Which SKU is sold on which channel, at that channel''s price.';
CREATE INDEX listings_channel_idx ON listings (channel_id, sku_id);

CREATE TABLE price_policy (
    -- One row: the retailer's policy.
    id                        boolean PRIMARY KEY DEFAULT true CHECK (id),
    max_deviation_bps         integer NOT NULL,
    flag_text_overrides       boolean NOT NULL,
    default_target_margin_bps integer NOT NULL,
    updated_at                timestamptz NOT NULL DEFAULT now()
);
INSERT INTO price_policy (max_deviation_bps, flag_text_overrides, default_target_margin_bps)
VALUES (1500, true, 4000);

CREATE TABLE competitor_prices (
    id          uuid PRIMARY KEY,
    sku_id      uuid NOT NULL REFERENCES skus (id),
    competitor  text NOT NULL,
    price       bigint NOT NULL CHECK (price >= 0),
    currency    text NOT NULL,
    -- Where it was seen: a URL, "store visit", a feed name.
    source      text NOT NULL,
    observed_on date NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX competitor_prices_sku_idx ON competitor_prices (sku_id, observed_on DESC, id DESC);

CREATE TABLE promotions (
    id             uuid PRIMARY KEY,
    name           text NOT NULL,
    description    text NOT NULL DEFAULT '',
    -- The rule (percent off, amount off, spend tiers, buy X get Y, bundle) as JSON.
    rule           jsonb NOT NULL,
    -- The currency of the rule's amounts; '' for percentage and buy-X-get-Y rules. A rule
    -- with amounts applies only on channels selling in its currency.
    currency       text NOT NULL DEFAULT '',
    -- Scope; an empty array means "no restriction".
    channel_ids    uuid[] NOT NULL DEFAULT '{}',
    sku_ids        uuid[] NOT NULL DEFAULT '{}',
    category_ids   uuid[] NOT NULL DEFAULT '{}',
    customer_tiers text[] NOT NULL DEFAULT '{}',
    -- Half-open window [starts_at, ends_at); NULL: unbounded.
    starts_at      timestamptz,
    ends_at        timestamptz,
    priority       integer NOT NULL DEFAULT 0,
    exclusive      boolean NOT NULL DEFAULT false,
    -- Set by EndPromotion.
    ended_at       timestamptz,
    version        bigint NOT NULL DEFAULT 1,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX promotions_live_idx ON promotions (id) WHERE ended_at IS NULL;

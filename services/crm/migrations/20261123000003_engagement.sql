-- crm engagement: order lines and consent (for segments, campaigns and recommendations),
-- associates, tickets and their service levels, feedback, interactions, segments, campaigns,
-- deliveries and triggered offers.

-- The channel kind of the account that first registered the customer (reachability).
ALTER TABLE customers ADD COLUMN registered_channel_kind INT NOT NULL DEFAULT 0;

-- One row per order line, from order events; re-keyed on merges like the orders.
CREATE TABLE order_lines (
    order_id TEXT NOT NULL,
    line_id TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    sku_id TEXT NOT NULL,
    product_id TEXT NOT NULL,
    category_id TEXT NOT NULL,
    quantity INT NOT NULL,
    net_minor BIGINT NOT NULL,
    PRIMARY KEY (order_id, line_id)
);
CREATE INDEX order_lines_customer ON order_lines (customer_id);
CREATE INDEX order_lines_product ON order_lines (product_id);
COMMENT ON TABLE order_lines IS 'Lines of the orders in customer_orders; placed_at and status come from the order.';

-- Catalog channels crm has heard of (catalog events, order events): campaigns name channel
-- ids, consent is per channel kind.
CREATE TABLE channels (
    channel_id TEXT PRIMARY KEY,
    kind INT NOT NULL
);

-- Marketing consent per channel kind, from identity's CustomerConsentChanged.
CREATE TABLE consents (
    customer_id TEXT NOT NULL,
    channel_kind INT NOT NULL,
    opt_in BOOLEAN NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, channel_kind)
);

CREATE TABLE associates (
    customer_id TEXT PRIMARY KEY,
    associate_id TEXT NOT NULL,
    store_id TEXT NOT NULL DEFAULT '',
    assigned_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX associates_associate ON associates (associate_id, customer_id);

-- Response and resolution targets per ticket kind; tier '' is the default for every tier.
CREATE TABLE ticket_levels (
    kind INT NOT NULL,
    tier TEXT NOT NULL DEFAULT '',
    response_secs BIGINT NOT NULL CHECK (response_secs > 0),
    resolution_secs BIGINT NOT NULL CHECK (resolution_secs > 0),
    PRIMARY KEY (kind, tier)
);
-- Built-in levels: complaint, question, after-sales; gold (the VIP tier) is answered faster.
INSERT INTO ticket_levels (kind, tier, response_secs, resolution_secs) VALUES
    (1, '', 4 * 3600, 48 * 3600),
    (2, '', 8 * 3600, 72 * 3600),
    (3, '', 8 * 3600, 120 * 3600),
    (1, 'gold', 3600, 24 * 3600),
    (2, 'gold', 2 * 3600, 24 * 3600),
    (3, 'gold', 2 * 3600, 48 * 3600);

CREATE TABLE tickets (
    id UUID PRIMARY KEY,
    customer_id TEXT NOT NULL,
    kind INT NOT NULL,
    -- The channel the ticket was opened in.
    channel_id TEXT NOT NULL,
    store_id TEXT NOT NULL DEFAULT '',
    order_id TEXT NOT NULL DEFAULT '',
    subject TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    -- TicketStatus: 1 open, 2 in progress, 3 waiting on customer, 4 resolved, 5 closed.
    status INT NOT NULL DEFAULT 1,
    assignee_id TEXT NOT NULL DEFAULT '',
    -- Fixed when the ticket is opened, from the level of its kind and the customer's tier.
    response_due_at TIMESTAMPTZ NOT NULL,
    resolution_due_at TIMESTAMPTZ NOT NULL,
    first_response_at TIMESTAMPTZ,
    resolved_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX tickets_customer ON tickets (customer_id, id DESC);
CREATE INDEX tickets_open ON tickets (status) WHERE status < 4;

CREATE TABLE ticket_notes (
    id UUID PRIMARY KEY,
    ticket_id UUID NOT NULL REFERENCES tickets (id),
    author_id TEXT NOT NULL,
    channel_id TEXT NOT NULL DEFAULT '',
    body TEXT NOT NULL,
    customer_visible BOOLEAN NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX ticket_notes_ticket ON ticket_notes (ticket_id, id);

CREATE TABLE feedback (
    id UUID PRIMARY KEY,
    -- Empty when anonymous.
    customer_id TEXT NOT NULL DEFAULT '',
    channel_id TEXT NOT NULL,
    store_id TEXT NOT NULL DEFAULT '',
    order_id TEXT NOT NULL DEFAULT '',
    ticket_id TEXT NOT NULL DEFAULT '',
    -- FeedbackScale: 1 CSAT (1..5), 2 NPS (0..10).
    scale INT NOT NULL,
    score INT NOT NULL,
    comment TEXT NOT NULL DEFAULT '',
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT feedback_score_in_scale CHECK (
        (scale = 1 AND score BETWEEN 1 AND 5) OR (scale = 2 AND score BETWEEN 0 AND 10))
);
CREATE INDEX feedback_channel ON feedback (channel_id, recorded_at);
CREATE INDEX feedback_customer ON feedback (customer_id, id DESC);

CREATE TABLE interactions (
    id UUID PRIMARY KEY,
    customer_id TEXT NOT NULL,
    kind INT NOT NULL,
    channel_id TEXT NOT NULL,
    store_id TEXT NOT NULL DEFAULT '',
    sku_id TEXT NOT NULL DEFAULT '',
    reference TEXT NOT NULL DEFAULT '',
    note TEXT NOT NULL DEFAULT '',
    occurred_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX interactions_customer ON interactions (customer_id, occurred_at DESC, id DESC);

CREATE TABLE segments (
    id UUID PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    -- Source text of the rule; parsed again on every evaluation (see segments.rs).
    rule TEXT NOT NULL,
    version BIGINT NOT NULL DEFAULT 1,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Materialised membership: recomputed for a customer when its events arrive, and for the
-- whole base when a segment changes or a campaign is sent to it.
CREATE TABLE segment_members (
    segment_id UUID NOT NULL REFERENCES segments (id),
    customer_id TEXT NOT NULL,
    PRIMARY KEY (segment_id, customer_id)
);
CREATE INDEX segment_members_customer ON segment_members (customer_id);

-- The contact policy is one row.
CREATE TABLE contact_policy (
    id BOOLEAN PRIMARY KEY DEFAULT true CHECK (id),
    max_deliveries_per_week INT NOT NULL DEFAULT 0,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO contact_policy (id, max_deliveries_per_week) VALUES (true, 3);

CREATE TABLE campaigns (
    id UUID PRIMARY KEY,
    name TEXT NOT NULL,
    segment_id UUID NOT NULL REFERENCES segments (id),
    -- omni.crm.v1.MessageContent, protobuf-encoded.
    content BYTEA NOT NULL,
    channel_ids TEXT[] NOT NULL,
    -- CampaignStatus: 1 draft, 2 sending, 3 sent, 4 cancelled.
    status INT NOT NULL DEFAULT 1,
    version BIGINT NOT NULL DEFAULT 1,
    -- Segment members when sent.
    targeted BIGINT NOT NULL DEFAULT 0,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at TIMESTAMPTZ
);

-- Why a targeted customer got no delivery of a campaign (SuppressionReason).
CREATE TABLE campaign_suppressions (
    campaign_id UUID NOT NULL REFERENCES campaigns (id),
    customer_id TEXT NOT NULL,
    reason INT NOT NULL,
    PRIMARY KEY (campaign_id, customer_id)
);

CREATE TABLE offer_rules (
    id UUID PRIMARY KEY,
    name TEXT NOT NULL,
    -- omni.crm.v1.OfferCondition and OfferAction, protobuf-encoded.
    condition BYTEA NOT NULL,
    action BYTEA NOT NULL,
    -- OfferTrigger, copied out of the condition to find the rules an event may fire.
    trigger INT NOT NULL,
    cooldown_days INT NOT NULL DEFAULT 0,
    enabled BOOLEAN NOT NULL DEFAULT true,
    version BIGINT NOT NULL DEFAULT 1,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One message to one customer through one channel; the frequency cap counts these.
CREATE TABLE deliveries (
    id UUID PRIMARY KEY,
    campaign_id UUID REFERENCES campaigns (id),
    offer_rule_id UUID REFERENCES offer_rules (id),
    customer_id TEXT NOT NULL,
    channel_id TEXT NOT NULL,
    -- omni.crm.v1.MessageContent, protobuf-encoded.
    content BYTEA NOT NULL,
    coupon_code TEXT NOT NULL DEFAULT '',
    store_id TEXT NOT NULL DEFAULT '',
    -- DeliveryStatus: 1 pending, 2 delivered, 3 failed, 4 clicked.
    status INT NOT NULL DEFAULT 1,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT deliveries_one_source CHECK ((campaign_id IS NULL) <> (offer_rule_id IS NULL))
);
-- At most one delivery per customer per campaign, whatever the channel.
CREATE UNIQUE INDEX deliveries_campaign_customer ON deliveries (campaign_id, customer_id)
    WHERE campaign_id IS NOT NULL;
CREATE INDEX deliveries_customer ON deliveries (customer_id, created_at);
CREATE INDEX deliveries_offer ON deliveries (offer_rule_id, customer_id, created_at)
    WHERE offer_rule_id IS NOT NULL;

ALTER TABLE coupons ADD COLUMN campaign_id TEXT NOT NULL DEFAULT '';
ALTER TABLE coupons ADD COLUMN offer_rule_id TEXT NOT NULL DEFAULT '';

-- A REDEMPTION_CANCELLED entry names the redemption it gives back, at most once.
ALTER TABLE points_entries ADD COLUMN cancels_entry_id UUID UNIQUE;

-- The loyalty rules an admin set (omni.crm.v1.LoyaltyRules, protobuf-encoded); without a row
-- the built-in rules apply (see tiers.rs).
CREATE TABLE loyalty_rules (
    id BOOLEAN PRIMARY KEY DEFAULT true CHECK (id),
    rules BYTEA NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Eligible SKUs and categories of a template (both empty: the whole cart); the quote applies
-- them, crm carries them in each coupon's effect.
ALTER TABLE coupon_templates ADD COLUMN sku_ids TEXT[] NOT NULL DEFAULT '{}';
ALTER TABLE coupon_templates ADD COLUMN category_ids TEXT[] NOT NULL DEFAULT '{}';

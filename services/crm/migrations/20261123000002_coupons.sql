-- Coupon templates and coupons; a coupon is redeemed at most once across all channels.

CREATE TABLE coupon_templates (
    id UUID PRIMARY KEY,
    name TEXT NOT NULL,
    amount_off_minor BIGINT,
    currency TEXT NOT NULL DEFAULT '',
    percent_off_bps INT,
    min_spend_minor BIGINT NOT NULL DEFAULT 0,
    channel_ids TEXT[] NOT NULL DEFAULT '{}',
    valid_from TIMESTAMPTZ,
    valid_until TIMESTAMPTZ,
    valid_days INT NOT NULL DEFAULT 0,
    issuing_channel_id TEXT NOT NULL DEFAULT '',
    active BOOLEAN NOT NULL DEFAULT true,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT coupon_templates_one_discount
        CHECK ((amount_off_minor IS NULL) <> (percent_off_bps IS NULL))
);

CREATE TABLE coupons (
    id UUID PRIMARY KEY,
    code TEXT NOT NULL UNIQUE,
    template_id UUID NOT NULL REFERENCES coupon_templates (id),
    customer_id TEXT NOT NULL,
    -- 1 issued, 2 redeemed (CouponStatus).
    status INT NOT NULL DEFAULT 1,
    issuing_channel_id TEXT NOT NULL DEFAULT '',
    channel_ids TEXT[] NOT NULL DEFAULT '{}',
    valid_from TIMESTAMPTZ,
    valid_until TIMESTAMPTZ,
    issued_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    redeemed_order_id TEXT,
    redeemed_channel_id TEXT,
    redeemed_at TIMESTAMPTZ,
    CONSTRAINT coupons_redeemed_has_order
        CHECK ((status = 2) = (redeemed_order_id IS NOT NULL))
);
CREATE INDEX coupons_customer ON coupons (customer_id);

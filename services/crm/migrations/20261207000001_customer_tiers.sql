-- The tier crm last announced for each customer (CustomerTierChanged): after applying a batch
-- of events, each customer it touched has its tier recomputed from the rolling spend and
-- compared with this row; a change is announced on crm's stream, so services that price by
-- tier (order-management) keep it without asking crm per order. No row: below the first tier.
CREATE TABLE customer_tiers (
    customer_id text PRIMARY KEY,
    tier        text NOT NULL,
    changed_at  timestamptz NOT NULL DEFAULT now()
);

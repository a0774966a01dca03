//! Inventory value: what a location's stock was worth at the end of a day (on hand x unit
//! cost), for performance's inventory turnover (`ListInventoryValues`).
//!
//! Unit costs are the catalog's: inventory listens to catalog's `ProductChanged` events (group
//! `inventory`) and keeps each SKU's cost history in `sku_costs`, so a past day is valued at the
//! cost in force at its end, and a later cost change does not rewrite history. On hand at the
//! end of a day comes from the ledger (`movements`), which every stock level equals. A SKU
//! whose first cost the catalog announced only after the day is valued at that first cost, so
//! stock received before the catalog event is not worth nothing.

use chrono::{DateTime, NaiveDate, Utc};
use omni_proto::events::{Event, ProductChanged, event::Payload};
use omni_runtime::Result;
use omni_runtime::consumer::Handler;
use sqlx::{FromRow, PgConnection, PgPool};
use uuid::Uuid;

/// The catalog streams inventory reads.
pub const SOURCES: &[&str] = &["catalog"];

/// Applies catalog events: records SKU unit costs.
#[derive(Debug, Clone, Default)]
pub struct Costs;

impl Handler for Costs {
    async fn handle(&self, conn: &mut PgConnection, event: &Event) -> Result<()> {
        if let Some(Payload::ProductChanged(p)) = &event.payload {
            let at = event
                .occurred_at
                .as_ref()
                .and_then(omni_runtime::time::from_timestamp)
                .unwrap_or_else(Utc::now);
            record_costs(conn, at, p).await?;
        }
        Ok(())
    }
}

/// Records the unit cost of every SKU of the product as in force from `at`, unless it is the
/// cost already in force then (a product change that left costs alone adds nothing).
async fn record_costs(
    conn: &mut PgConnection,
    at: DateTime<Utc>,
    p: &ProductChanged,
) -> Result<()> {
    for sku in &p.skus {
        let Some(cost) = &sku.unit_cost else {
            continue;
        };
        if sku.sku_id.is_empty() || cost.minor_units < 0 {
            tracing::warn!(product = %p.product_id, "sku without id or with a negative cost; ignored");
            continue;
        }
        sqlx::query(
            "INSERT INTO sku_costs (sku_id, effective_at, unit_cost, currency) \
             SELECT $1, $2, $3, $4 WHERE NOT EXISTS ( \
               SELECT 1 FROM (SELECT unit_cost, currency FROM sku_costs \
                 WHERE sku_id = $1 AND effective_at <= $2 \
                 ORDER BY effective_at DESC LIMIT 1) c \
               WHERE c.unit_cost = $3 AND c.currency = $4) \
             ON CONFLICT (sku_id, effective_at) DO UPDATE SET unit_cost = excluded.unit_cost, \
               currency = excluded.currency",
        )
        .bind(&sku.sku_id)
        .bind(at)
        .bind(cost.minor_units)
        .bind(&cost.currency)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// A location's stock at the end of a day.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct ValueRow {
    pub day: NaiveDate,
    pub location_id: Uuid,
    pub units: i64,
    pub value: i64,
    /// The unit costs' currency (a row without costed stock takes the catalog's); empty while
    /// inventory knows no cost at all.
    pub currency: String,
}

/// One page of values, ordered by day then location, from each location's first day on: days
/// `first..=last`, of `locations` (empty: every one), after `after`.
pub async fn values(
    pool: &PgPool,
    first: NaiveDate,
    last: NaiveDate,
    locations: &[Uuid],
    after: Option<(NaiveDate, Uuid)>,
    limit: i64,
) -> Result<Vec<ValueRow>> {
    let (after_day, after_location) = after.unzip();
    Ok(sqlx::query_as(
        "WITH keys AS ( \
           SELECT d::date AS day, l.id AS location_id, \
             ((d::date + 1)::timestamp AT TIME ZONE 'UTC') AS day_end \
           FROM generate_series($1::date, $2::date, interval '1 day') d CROSS JOIN locations l \
           WHERE (cardinality($3::uuid[]) = 0 OR l.id = ANY($3)) \
             AND d::date >= (l.created_at AT TIME ZONE 'UTC')::date \
             AND ($4::date IS NULL OR (d::date, l.id) > ($4, $5::uuid)) \
           ORDER BY 1, 2 LIMIT $6), \
         levels AS ( \
           SELECT k.day, k.location_id, k.day_end, m.sku_id, \
             sum(m.quantity_delta)::bigint AS on_hand \
           FROM keys k JOIN movements m ON m.location_id = k.location_id \
             AND m.occurred_at < k.day_end \
           GROUP BY 1, 2, 3, 4) \
         SELECT k.day, k.location_id, coalesce(sum(v.on_hand), 0)::bigint AS units, \
           coalesce(sum(v.on_hand * c.unit_cost), 0)::bigint AS value, \
           coalesce(max(c.currency), (SELECT max(currency) FROM sku_costs), '') AS currency \
         FROM keys k \
         LEFT JOIN levels v ON v.day = k.day AND v.location_id = k.location_id \
         LEFT JOIN LATERAL ( \
           SELECT s.unit_cost, s.currency FROM sku_costs s WHERE s.sku_id = v.sku_id \
           ORDER BY (s.effective_at < v.day_end) DESC, \
             CASE WHEN s.effective_at < v.day_end THEN s.effective_at END DESC NULLS LAST, \
             s.effective_at \
           LIMIT 1) c ON true \
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind(first)
    .bind(last)
    .bind(locations)
    .bind(after_day)
    .bind(after_location)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

//! Experiments in Postgres: definitions, exposures, recorded outcomes, and the per-variant
//! figures an analysis needs (from recorded outcomes or from order facts).

use chrono::{DateTime, NaiveDate, Utc};
use omni_runtime::Result;
use sqlx::{FromRow, PgConnection, PgPool};
use uuid::Uuid;

#[derive(Debug, Clone, FromRow)]
pub struct ExperimentRow {
    pub id: Uuid,
    pub scope: String,
    pub status: String,
    pub body: Vec<u8>,
    pub started_at: Option<DateTime<Utc>>,
    pub stopped_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, scope, status, body, started_at, stopped_at, created_at";

pub async fn insert(
    conn: &mut PgConnection,
    id: Uuid,
    scope: &str,
    body: &[u8],
) -> Result<ExperimentRow> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO experiments (id, scope, status, body) VALUES ($1, $2, 'draft', $3) \
         RETURNING {COLUMNS}"
    )))
    .bind(id)
    .bind(scope)
    .bind(body)
    .fetch_one(conn)
    .await?)
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<ExperimentRow>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM experiments WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?)
}

pub async fn list(
    pool: &PgPool,
    scope: &str,
    status: Option<&str>,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<ExperimentRow>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM experiments WHERE ($1 = '' OR scope = $1) \
           AND ($2::text IS NULL OR status = $2) AND ($3::uuid IS NULL OR id > $3) \
         ORDER BY id LIMIT $4"
    )))
    .bind(scope)
    .bind(status)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Moves `from` → `to`; `None` when the experiment was not in `from`.
pub async fn set_status(
    conn: &mut PgConnection,
    id: Uuid,
    from: &str,
    to: &str,
) -> Result<Option<ExperimentRow>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE experiments SET status = $3, \
           started_at = CASE WHEN $3 = 'running' THEN now() ELSE started_at END, \
           stopped_at = CASE WHEN $3 = 'stopped' THEN now() ELSE stopped_at END \
         WHERE id = $1 AND status = $2 RETURNING {COLUMNS}"
    )))
    .bind(id)
    .bind(from)
    .bind(to)
    .fetch_optional(conn)
    .await?)
}

/// Records the first exposure of a subject; later ones change nothing.
pub async fn expose(
    conn: &mut PgConnection,
    id: Uuid,
    subject: &str,
    variant: &str,
    channel: &str,
    at: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO exposures (experiment_id, subject_id, variant, channel_id, exposed_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .bind(subject)
    .bind(variant)
    .bind(channel)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn record_outcome(
    conn: &mut PgConnection,
    id: Uuid,
    subject: &str,
    variant: &str,
    converted: bool,
    order_value: Option<i64>,
    at: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO outcomes (experiment_id, subject_id, variant, converted, order_value, \
           occurred_at) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (experiment_id, subject_id) DO UPDATE SET converted = excluded.converted, \
           order_value = excluded.order_value, occurred_at = excluded.occurred_at",
    )
    .bind(id)
    .bind(subject)
    .bind(variant)
    .bind(converted)
    .bind(order_value)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

/// One variant's figures: exposures, conversions, and order values of the converted.
#[derive(Debug, Clone, PartialEq, FromRow)]
pub struct VariantFigures {
    pub variant: String,
    pub exposures: i64,
    pub conversions: i64,
    pub values: i64,
    pub mean_value: Option<f64>,
    pub variance_value: Option<f64>,
}

/// Per-variant figures over subjects exposed within `days` (all when `None`). With
/// `from_orders`, a subject converts with its first not-cancelled order placed after its
/// exposure (by customer id or, for order subjects, the order itself), valued at that order.
pub async fn figures(
    pool: &PgPool,
    id: Uuid,
    days: Option<(NaiveDate, NaiveDate)>,
    from_orders: bool,
    order_subject: bool,
) -> Result<Vec<VariantFigures>> {
    let outcome = if from_orders {
        let subject = if order_subject {
            "f.order_id"
        } else {
            "f.customer_id"
        };
        format!(
            "LEFT JOIN LATERAL (SELECT true AS converted, f.sales AS order_value \
               FROM order_facts f WHERE {subject} = e.subject_id AND NOT f.cancelled \
                 AND f.placed_at >= e.exposed_at \
               ORDER BY f.placed_at, f.order_id LIMIT 1) o ON true"
        )
    } else {
        "LEFT JOIN outcomes o ON o.experiment_id = e.experiment_id \
           AND o.subject_id = e.subject_id"
            .to_owned()
    };
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT e.variant, count(*)::bigint AS exposures, \
           (count(*) FILTER (WHERE o.converted))::bigint AS conversions, \
           (count(o.order_value) FILTER (WHERE o.converted))::bigint AS values, \
           (avg(o.order_value) FILTER (WHERE o.converted))::float8 AS mean_value, \
           (var_samp(o.order_value) FILTER (WHERE o.converted))::float8 AS variance_value \
         FROM exposures e {outcome} \
         WHERE e.experiment_id = $1 \
           AND ($2::date IS NULL OR (e.exposed_at AT TIME ZONE 'UTC')::date BETWEEN $2 AND $3) \
         GROUP BY e.variant"
    )))
    .bind(id)
    .bind(days.map(|d| d.0))
    .bind(days.map(|d| d.1))
    .fetch_all(pool)
    .await?)
}

/// How one order of a sourcing experiment was fulfilled, as its latest event says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FulfilmentRow {
    pub order_id: String,
    pub experiment_id: String,
    pub variant: String,
    pub split: bool,
    pub placed_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub units: i64,
    pub store_units: i64,
    pub cancelled: bool,
}

pub async fn record_fulfilment(conn: &mut PgConnection, f: &FulfilmentRow) -> Result<()> {
    sqlx::query(
        "INSERT INTO order_fulfilment (order_id, experiment_id, variant, split, placed_at, \
           completed_at, units, store_units, cancelled) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (order_id) DO UPDATE SET \
           experiment_id = excluded.experiment_id, variant = excluded.variant, \
           split = excluded.split, placed_at = excluded.placed_at, \
           completed_at = coalesce(excluded.completed_at, order_fulfilment.completed_at), \
           units = excluded.units, store_units = excluded.store_units, \
           cancelled = order_fulfilment.cancelled OR excluded.cancelled",
    )
    .bind(&f.order_id)
    .bind(&f.experiment_id)
    .bind(&f.variant)
    .bind(f.split)
    .bind(f.placed_at)
    .bind(f.completed_at)
    .bind(f.units)
    .bind(f.store_units)
    .bind(f.cancelled)
    .execute(conn)
    .await?;
    Ok(())
}

/// Per variant: orders, split orders, mean hours to completion (of completed orders), units
/// and units from stores.
#[derive(Debug, Clone, PartialEq, FromRow)]
pub struct FulfilmentFigures {
    pub variant: String,
    pub orders: i64,
    pub split: i64,
    pub mean_hours: Option<f64>,
    pub units: i64,
    pub store_units: i64,
}

pub async fn fulfilment(pool: &PgPool, experiment_id: &str) -> Result<Vec<FulfilmentFigures>> {
    Ok(sqlx::query_as(
        "SELECT variant, count(*)::bigint AS orders, \
           (count(*) FILTER (WHERE split))::bigint AS split, \
           (avg(extract(epoch FROM completed_at - placed_at) / 3600.0) \
             FILTER (WHERE completed_at IS NOT NULL))::float8 AS mean_hours, \
           sum(units)::bigint AS units, sum(store_units)::bigint AS store_units \
         FROM order_fulfilment WHERE experiment_id = $1 AND NOT cancelled \
         GROUP BY variant ORDER BY variant",
    )
    .bind(experiment_id)
    .fetch_all(pool)
    .await?)
}

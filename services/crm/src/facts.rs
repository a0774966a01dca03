//! What crm knows about each customer's purchases, loaded for RFM, lifecycle, tiers and
//! segment rules. RFM needs the whole base, so [`base`] aggregates every customer in one query;
//! the detail of orders and lines is loaded only for the customers asked for.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use omni_runtime::Error;
use sqlx::PgConnection;

use crate::rfm::{self, Aggregate, Rfm};
use crate::tiers::{self, Rules};

/// Order status that does not count as a purchase.
pub const CANCELLED: i32 = 8;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OrderFact {
    pub customer_id: String,
    pub order_id: String,
    pub channel_id: String,
    pub channel_kind: i32,
    pub store_id: String,
    pub placed_at: DateTime<Utc>,
    pub net_minor: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LineFact {
    pub customer_id: String,
    pub order_id: String,
    pub sku_id: String,
    pub product_id: String,
    pub category_id: String,
}

/// One customer as segment rules see it.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub customer_id: String,
    pub orders: Vec<OrderFact>,
    pub lines: Vec<LineFact>,
    pub rfm: Rfm,
    pub lifecycle: i32,
    pub tier: String,
    pub total_spend: i64,
}

/// The purchase aggregate of every customer with a non-cancelled order.
pub async fn base(conn: &mut PgConnection) -> Result<Vec<Aggregate>, Error> {
    type Row = (String, DateTime<Utc>, DateTime<Utc>, i64, i64);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT customer_id, min(placed_at), max(placed_at), count(*),
             sum(total_minor - refunded_minor)::BIGINT
         FROM customer_orders WHERE status <> $1
         GROUP BY customer_id ORDER BY customer_id",
    )
    .bind(CANCELLED)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(customer_id, first_purchase, last_purchase, orders, monetary)| Aggregate {
                customer_id,
                first_purchase,
                last_purchase,
                orders,
                monetary,
            },
        )
        .collect())
}

/// Every live (not merged away) customer id.
pub async fn customer_ids(conn: &mut PgConnection) -> Result<Vec<String>, Error> {
    Ok(sqlx::query_scalar(
        "SELECT customer_id FROM customers WHERE merged_into IS NULL ORDER BY customer_id",
    )
    .fetch_all(conn)
    .await?)
}

/// RFM, lifecycle and tier of one customer, given the base.
pub fn derived(
    customer_id: &str,
    base: &[Aggregate],
    scores: &HashMap<String, Rfm>,
    orders: &[OrderFact],
    rules: &Rules,
    now: DateTime<Utc>,
) -> (Rfm, i32, String) {
    let aggregate = base.iter().find(|a| a.customer_id == customer_id);
    let since = now - Duration::days(rules.window_days);
    let rolling: i64 = orders
        .iter()
        .filter(|o| o.placed_at >= since)
        .map(|o| o.net_minor)
        .sum();
    (
        scores.get(customer_id).copied().unwrap_or_default(),
        rfm::lifecycle(aggregate, now),
        rules.tier_for(rolling).0.to_owned(),
    )
}

/// The facts of `customers` (every live customer when `None`).
pub async fn load(
    conn: &mut PgConnection,
    customers: Option<&[String]>,
    now: DateTime<Utc>,
) -> Result<Vec<Facts>, Error> {
    let ids = match customers {
        Some(ids) => ids.to_vec(),
        None => customer_ids(conn).await?,
    };
    let base = base(conn).await?;
    let scores = rfm::scores(&base);
    let rules = tiers::load(conn).await?;
    let orders: Vec<OrderFact> = sqlx::query_as(
        "SELECT customer_id, order_id, channel_id, channel_kind, store_id, placed_at,
             total_minor - refunded_minor AS net_minor
         FROM customer_orders WHERE status <> $1 AND customer_id = ANY($2)",
    )
    .bind(CANCELLED)
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    let lines: Vec<LineFact> = sqlx::query_as(
        "SELECT l.customer_id, l.order_id, l.sku_id, l.product_id, l.category_id
         FROM order_lines l JOIN customer_orders o ON o.order_id = l.order_id
         WHERE o.status <> $1 AND l.customer_id = ANY($2)",
    )
    .bind(CANCELLED)
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut by_id: HashMap<String, Facts> = ids
        .iter()
        .map(|id| {
            (
                id.clone(),
                Facts {
                    customer_id: id.clone(),
                    ..Default::default()
                },
            )
        })
        .collect();
    for o in orders {
        if let Some(f) = by_id.get_mut(&o.customer_id) {
            f.total_spend += o.net_minor;
            f.orders.push(o);
        }
    }
    for l in lines {
        if let Some(f) = by_id.get_mut(&l.customer_id) {
            f.lines.push(l);
        }
    }
    let mut all: Vec<Facts> = by_id.into_values().collect();
    for f in &mut all {
        let (rfm, lifecycle, tier) =
            derived(&f.customer_id, &base, &scores, &f.orders, &rules, now);
        f.rfm = rfm;
        f.lifecycle = lifecycle;
        f.tier = tier;
    }
    all.sort_by(|a, b| a.customer_id.cmp(&b.customer_id));
    Ok(all)
}

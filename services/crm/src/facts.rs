//! What crm knows about each customer's purchases, loaded for RFM, lifecycle, tiers and
//! segment rules.
//!
//! Each customer's purchase aggregate lives in `customer_stats`, kept by [`refresh_stats`]
//! whenever one of the customer's orders changes, so nothing re-aggregates the order table of
//! the whole base. RFM scores are ranks across the base: for a few customers (a customer view)
//! they are read as counts of the customers below each value ([`scored`], index scans); for a
//! batch's customers against the base's values read once and sorted; for the whole base (a
//! segment refresh) [`base`] reads every aggregate and [`rfm::scores`] ranks them. All give
//! the same scores. The detail of orders and lines
//! is loaded only for the customers asked for.

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

type AggregateRow = (String, DateTime<Utc>, DateTime<Utc>, i64, i64);

fn aggregate(
    (customer_id, first_purchase, last_purchase, orders, monetary): AggregateRow,
) -> Aggregate {
    Aggregate {
        customer_id,
        first_purchase,
        last_purchase,
        orders,
        monetary,
    }
}

/// The purchase aggregate of every customer with a non-cancelled order.
pub async fn base(conn: &mut PgConnection) -> Result<Vec<Aggregate>, Error> {
    let rows: Vec<AggregateRow> = sqlx::query_as(
        "SELECT customer_id, first_purchase, last_purchase, orders, monetary
         FROM customer_stats ORDER BY customer_id",
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(aggregate).collect())
}

/// Recomputes the aggregates of `customer_ids` from their orders (a handful of rows each), in
/// one statement; called whenever one of their orders changes. A customer without a counted
/// order has no aggregate.
pub async fn refresh_stats(conn: &mut PgConnection, customer_ids: &[&str]) -> Result<(), Error> {
    if customer_ids.is_empty() {
        return Ok(());
    }
    // In customer order, so two transactions lock the rows in the same order.
    sqlx::query(
        "WITH agg AS (
             SELECT customer_id, min(placed_at) AS first_purchase, max(placed_at) AS last_purchase,
                 count(*) AS orders, sum(total_minor - refunded_minor)::BIGINT AS monetary
             FROM customer_orders WHERE customer_id = ANY($1) AND status <> $2
             GROUP BY customer_id ORDER BY customer_id
         ), gone AS (
             DELETE FROM customer_stats s WHERE s.customer_id = ANY($1)
                 AND NOT EXISTS (SELECT 1 FROM agg WHERE agg.customer_id = s.customer_id)
         )
         INSERT INTO customer_stats (customer_id, first_purchase, last_purchase, orders, monetary)
         SELECT * FROM agg
         ON CONFLICT (customer_id) DO UPDATE SET first_purchase = EXCLUDED.first_purchase,
             last_purchase = EXCLUDED.last_purchase, orders = EXCLUDED.orders,
             monetary = EXCLUDED.monetary",
    )
    .bind(customer_ids)
    .bind(CANCELLED)
    .execute(conn)
    .await?;
    Ok(())
}

/// Up to this many customers are ranked by index counts; more (an event batch) by one pass
/// over the base. Both give the same scores.
const COUNTED_RANKS: usize = 8;

/// The aggregates of `ids` (those with a counted order) and their RFM scores across the base,
/// the same scores [`rfm::scores`] gives over [`base`]: a score is one plus five times the share
/// of customers strictly below the value.
///
/// A few customers (a customer view) are ranked by counting, per value, the customers below it
/// (index scans). A batch's customers are ranked against one read of the base's three columns,
/// sorted in memory: under a stream of events every batch rewrites rows of `customer_stats`
/// and their indexes, and hundreds of index counts over a churning table slow down as dead
/// entries pile up between autovacuum passes (over a second per batch in a long run), while
/// one read of the base costs the same whatever the churn.
pub async fn scored(
    conn: &mut PgConnection,
    ids: &[String],
) -> Result<HashMap<String, (Aggregate, Rfm)>, Error> {
    if ids.len() > COUNTED_RANKS {
        return ranked_in_memory(conn, ids).await;
    }
    type Row = (
        String,
        DateTime<Utc>,
        DateTime<Utc>,
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT s.customer_id, s.first_purchase, s.last_purchase, s.orders, s.monetary,
             (SELECT count(*) FROM customer_stats x WHERE x.last_purchase < s.last_purchase),
             (SELECT count(*) FROM customer_stats x WHERE x.orders < s.orders),
             (SELECT count(*) FROM customer_stats x WHERE x.monetary < s.monetary),
             (SELECT count(*) FROM customer_stats)
         FROM customer_stats s WHERE s.customer_id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, first, last, orders, monetary, r, f, m, n)| {
            let rfm = Rfm {
                recency: rfm::score_below(r, n),
                frequency: rfm::score_below(f, n),
                monetary: rfm::score_below(m, n),
            };
            (
                id.clone(),
                (aggregate((id, first, last, orders, monetary)), rfm),
            )
        })
        .collect())
}

/// [`scored`] for many customers: their aggregates, ranked against the whole base's values
/// read once and sorted.
async fn ranked_in_memory(
    conn: &mut PgConnection,
    ids: &[String],
) -> Result<HashMap<String, (Aggregate, Rfm)>, Error> {
    let asked: Vec<AggregateRow> = sqlx::query_as(
        "SELECT customer_id, first_purchase, last_purchase, orders, monetary
         FROM customer_stats WHERE customer_id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    if asked.is_empty() {
        return Ok(HashMap::new());
    }
    let all: Vec<(DateTime<Utc>, i64, i64)> =
        sqlx::query_as("SELECT last_purchase, orders, monetary FROM customer_stats")
            .fetch_all(&mut *conn)
            .await?;
    let n = i64::try_from(all.len()).unwrap_or(i64::MAX);
    let sorted = |mut v: Vec<i64>| {
        v.sort_unstable();
        v
    };
    let recency = sorted(all.iter().map(|a| a.0.timestamp_micros()).collect());
    let frequency = sorted(all.iter().map(|a| a.1).collect());
    let monetary = sorted(all.iter().map(|a| a.2).collect());
    let below = |sorted: &[i64], value: i64| {
        i64::try_from(sorted.partition_point(|v| *v < value)).unwrap_or(i64::MAX)
    };
    Ok(asked
        .into_iter()
        .map(|row| {
            let rfm = Rfm {
                recency: rfm::score_below(below(&recency, row.2.timestamp_micros()), n),
                frequency: rfm::score_below(below(&frequency, row.3), n),
                monetary: rfm::score_below(below(&monetary, row.4), n),
            };
            (row.0.clone(), (aggregate(row), rfm))
        })
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

/// RFM, lifecycle and tier of one customer, given its aggregate and scores.
pub fn derived(
    scored: Option<&(Aggregate, Rfm)>,
    orders: &[OrderFact],
    rules: &Rules,
    now: DateTime<Utc>,
) -> (Rfm, i32, String) {
    let since = now - Duration::days(rules.window_days);
    let rolling: i64 = orders
        .iter()
        .filter(|o| o.placed_at >= since)
        .map(|o| o.net_minor)
        .sum();
    (
        scored.map(|(_, rfm)| *rfm).unwrap_or_default(),
        rfm::lifecycle(scored.map(|(a, _)| a), now),
        rules.tier_for(rolling).0.to_owned(),
    )
}

/// The facts of `customers` (every live customer when `None`).
pub async fn load(
    conn: &mut PgConnection,
    customers: Option<&[String]>,
    now: DateTime<Utc>,
) -> Result<Vec<Facts>, Error> {
    load_with(conn, customers, now, true).await
}

/// [`load`], with the customers' order lines only when `lines`: the lines of a customer's
/// whole history are the largest read, and most rules never look at them
/// ([`crate::segment_rule::Expr::reads_lines`]).
pub async fn load_with(
    conn: &mut PgConnection,
    customers: Option<&[String]>,
    now: DateTime<Utc>,
    lines: bool,
) -> Result<Vec<Facts>, Error> {
    let (ids, scores) = match customers {
        Some(ids) => (ids.to_vec(), scored(conn, ids).await?),
        None => {
            let ids = customer_ids(conn).await?;
            let base = base(conn).await?;
            let scores = rfm::scores(&base);
            let scored = base
                .into_iter()
                .filter_map(|a| {
                    let rfm = scores.get(&a.customer_id).copied()?;
                    Some((a.customer_id.clone(), (a, rfm)))
                })
                .collect();
            (ids, scored)
        }
    };
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
    let lines: Vec<LineFact> = if lines {
        sqlx::query_as(
            "SELECT l.customer_id, l.order_id, l.sku_id, l.product_id, l.category_id
             FROM order_lines l JOIN customer_orders o ON o.order_id = l.order_id
             WHERE o.status <> $1 AND l.customer_id = ANY($2)",
        )
        .bind(CANCELLED)
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await?
    } else {
        Vec::new()
    };
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
        let (rfm, lifecycle, tier) = derived(scores.get(&f.customer_id), &f.orders, &rules, now);
        f.rfm = rfm;
        f.lifecycle = lifecycle;
        f.tier = tier;
    }
    all.sort_by(|a, b| a.customer_id.cmp(&b.customer_id));
    Ok(all)
}

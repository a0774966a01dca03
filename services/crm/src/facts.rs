//! What crm knows about each customer's purchases, loaded for RFM, lifecycle, tiers and
//! segment rules.
//!
//! Each customer's purchase aggregate lives in `customer_stats`, and the purchases segment
//! rules and tiers count in `customer_purchases`, both kept by deltas as order events arrive
//! ([`crate::purchases`]), so nothing re-aggregates a customer's orders, let alone the order
//! table of the whole base. RFM scores are ranks across the base: for a few customers (a customer view)
//! they are read as counts of the customers below each value ([`scored`], index scans); for a
//! batch's customers against the base's values read once and sorted; for the whole base (a
//! segment refresh) [`base`] reads every aggregate and [`rfm::scores`] ranks them. All give
//! the same scores. A segment rule's `bought(...)`s are counted for the customers asked
//! for, one statement per distinct filter.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use omni_runtime::Error;
use sqlx::PgConnection;

use crate::purchases;
use crate::rfm::{self, Aggregate, Rfm};
use crate::segment_rule::PurchaseFilter;
use crate::tiers;

/// Order status that does not count as a purchase.
pub const CANCELLED: i32 = 8;

/// One customer as segment rules see it, at one moment.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub customer_id: String,
    /// Counted orders (not cancelled).
    pub order_count: i64,
    /// Net spend (total less refunds) of the counted orders.
    pub total_spend: i64,
    pub last_purchase: Option<DateTime<Utc>>,
    pub rfm: Rfm,
    pub lifecycle: i32,
    pub tier: String,
    /// The orders each purchase filter of the rules being evaluated matches.
    pub bought: HashMap<PurchaseFilter, i64>,
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

/// The facts of `customers` (every live customer when `None`) at `now`, with the orders each
/// of `filters` matches counted.
pub async fn load(
    conn: &mut PgConnection,
    customers: Option<&[String]>,
    now: DateTime<Utc>,
    filters: &[PurchaseFilter],
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
    let since = rules.window_start(now);
    let asked: Option<Vec<&str>> = customers.map(|_| ids.iter().map(String::as_str).collect());
    let spends = purchases::rolling_spends(conn, asked.as_deref(), since).await?;
    let mut counts = Vec::with_capacity(filters.len());
    for filter in filters {
        counts.push(purchases::orders_matching(conn, filter, customers, now).await?);
    }
    Ok(ids
        .into_iter()
        .map(|id| {
            let scored = scores.get(&id);
            let aggregate = scored.map(|(a, _)| a);
            let spend = spends.get(&id).copied().unwrap_or(0);
            Facts {
                order_count: aggregate.map_or(0, |a| a.orders),
                total_spend: aggregate.map_or(0, |a| a.monetary),
                last_purchase: aggregate.map(|a| a.last_purchase),
                rfm: scored.map(|(_, rfm)| *rfm).unwrap_or_default(),
                lifecycle: rfm::lifecycle(aggregate, now),
                tier: rules.tier_for(spend).0.to_owned(),
                bought: filters
                    .iter()
                    .zip(&counts)
                    .map(|(f, c)| (f.clone(), c.get(&id).copied().unwrap_or(0)))
                    .collect(),
                customer_id: id,
            }
        })
        .collect())
}

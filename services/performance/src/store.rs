//! performance's Postgres access: facts and the rollups kept in step with them, inputs, report
//! sums read from rollups or (to check them) straight from raw facts, and the rebuild.
//!
//! Every order holds a contribution to `daily_rollups` and `customer_days` that is a function
//! of its fact row and whether it is its customer's first order (`counted_first`). A change is
//! applied as "remove the old contribution, add the new one" in the event's transaction (order
//! changes a batch at a time, in [`order_facts`]), so re-sent, late or out-of-order events
//! leave the same rollups a rebuild from facts gives.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use omni_runtime::Result;
use sqlx::{FromRow, PgConnection, PgPool};

use crate::domain::{DayRange, Sums};
use crate::order_facts::{self, OrderChange};
use crate::spans;

/// One order as the latest event described it.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct OrderRow {
    pub order_id: String,
    pub channel_id: String,
    pub store_id: String,
    pub associate_id: String,
    pub customer_id: String,
    pub placed_at: DateTime<Utc>,
    pub day: NaiveDate,
    pub sales: i64,
    pub cost: i64,
    pub units: i64,
    pub cancelled: bool,
    pub promised_ready_at: Option<DateTime<Utc>>,
    pub ready_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReturnRow {
    pub return_id: String,
    pub order_id: String,
    pub order_channel_id: String,
    pub customer_id: String,
    pub day: NaiveDate,
    pub refund: i64,
    pub cost: i64,
}

pub(crate) const ORDER_COLUMNS: &str = "order_id, channel_id, store_id, associate_id, customer_id, \
    placed_at, day, sales, cost, units, cancelled, promised_ready_at, ready_at";

pub async fn upsert_channel(
    conn: &mut PgConnection,
    channel_id: &str,
    kind: i32,
    name: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO channels (channel_id, kind, name) VALUES ($1, $2, $3) \
         ON CONFLICT (channel_id) DO UPDATE SET \
           kind = CASE WHEN excluded.kind = 0 THEN channels.kind ELSE excluded.kind END, \
           name = CASE WHEN excluded.name = '' THEN channels.name ELSE excluded.name END",
    )
    .bind(channel_id)
    .bind(kind)
    .bind(name)
    .execute(conn)
    .await?;
    Ok(())
}

/// A channel as the catalog describes it, with the inventory location it sells from (empty:
/// none, which unlinks a location linked before).
pub async fn register_channel(
    conn: &mut PgConnection,
    channel_id: &str,
    kind: i32,
    name: &str,
    location_id: &str,
) -> Result<()> {
    upsert_channel(conn, channel_id, kind, name).await?;
    sqlx::query("UPDATE channels SET location_id = $2 WHERE channel_id = $1")
        .bind(channel_id)
        .bind(location_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// The channels among `ids` this service has never heard of.
pub async fn unknown_channels(pool: &PgPool, ids: &[String]) -> Result<Vec<String>> {
    let known: Vec<String> =
        sqlx::query_scalar("SELECT channel_id FROM channels WHERE channel_id = ANY($1)")
            .bind(ids)
            .fetch_all(pool)
            .await?;
    Ok(ids
        .iter()
        .filter(|id| !known.contains(id))
        .cloned()
        .collect())
}

/// The channels of one kind.
pub async fn channels_of_kind(pool: &PgPool, kind: i32) -> Result<Vec<String>> {
    Ok(
        sqlx::query_scalar("SELECT channel_id FROM channels WHERE kind = $1 ORDER BY channel_id")
            .bind(kind)
            .fetch_all(pool)
            .await?,
    )
}

pub async fn order(conn: &mut PgConnection, order_id: &str) -> Result<Option<(OrderRow, bool)>> {
    #[derive(FromRow)]
    struct Row {
        #[sqlx(flatten)]
        order: OrderRow,
        counted_first: bool,
    }
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ORDER_COLUMNS}, counted_first FROM order_facts WHERE order_id = $1 FOR UPDATE"
    )))
    .bind(order_id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| (r.order, r.counted_first)))
}

async fn customer_day(
    conn: &mut PgConnection,
    o: &OrderRow,
    customer: &str,
    orders: i64,
    net: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO customer_days (day, channel_id, store_id, associate_id, customer_id, \
           orders, net_sales) VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (day, channel_id, store_id, associate_id, customer_id) DO UPDATE SET \
           orders = customer_days.orders + excluded.orders, \
           net_sales = customer_days.net_sales + excluded.net_sales",
    )
    .bind(o.day)
    .bind(&o.channel_id)
    .bind(&o.store_id)
    .bind(&o.associate_id)
    .bind(customer)
    .bind(orders)
    .bind(net)
    .execute(&mut *conn)
    .await?;
    if orders > 0 {
        // A row that gains an order is not empty.
        return Ok(());
    }
    sqlx::query(
        "DELETE FROM customer_days WHERE day = $1 AND channel_id = $2 AND store_id = $3 \
           AND associate_id = $4 AND customer_id = $5 AND orders = 0 AND net_sales = 0",
    )
    .bind(o.day)
    .bind(&o.channel_id)
    .bind(&o.store_id)
    .bind(&o.associate_id)
    .bind(customer)
    .execute(conn)
    .await?;
    Ok(())
}

/// Sets an order's pickup readiness, when the order is known.
pub async fn apply_ready(
    conn: &mut PgConnection,
    order_id: &str,
    promised: Option<DateTime<Utc>>,
    ready: Option<DateTime<Utc>>,
) -> Result<bool> {
    let Some(customer) = order_customer(conn, order_id).await? else {
        return Ok(false);
    };
    // The customer's lock before the order's row, the order every change takes them in.
    spans::lock(
        conn,
        &[customer]
            .into_iter()
            .filter(|c| !c.is_empty())
            .collect::<Vec<_>>(),
    )
    .await?;
    let Some((mut row, _)) = order(conn, order_id).await? else {
        return Ok(false);
    };
    row.promised_ready_at = promised.or(row.promised_ready_at);
    row.ready_at = ready.or(row.ready_at);
    order_facts::apply(
        conn,
        &[OrderChange {
            row,
            channel_kind: 0,
        }],
    )
    .await?;
    Ok(true)
}

/// The customer of a known order (empty: anonymous), without locking it.
async fn order_customer(conn: &mut PgConnection, order_id: &str) -> Result<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT customer_id FROM order_facts WHERE order_id = $1")
            .bind(order_id)
            .fetch_optional(conn)
            .await?,
    )
}

/// Feedback sums: CSAT 1-5, or NPS 0-10 (promoters 9-10, detractors 0-6).
pub async fn apply_feedback(
    conn: &mut PgConnection,
    day: NaiveDate,
    channel_id: &str,
    store_id: &str,
    nps: bool,
    score: i32,
) -> Result<()> {
    let (csat_sum, csat_count, promoter, detractor, nps_count) = if nps {
        (0, 0, i64::from(score >= 9), i64::from(score <= 6), 1)
    } else {
        (i64::from(score), 1, 0, 0, 0)
    };
    sqlx::query(
        "INSERT INTO feedback_daily (day, channel_id, store_id, csat_sum, csat_count, \
           nps_promoters, nps_detractors, nps_count) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (day, channel_id, store_id) DO UPDATE SET \
           csat_sum = feedback_daily.csat_sum + excluded.csat_sum, \
           csat_count = feedback_daily.csat_count + excluded.csat_count, \
           nps_promoters = feedback_daily.nps_promoters + excluded.nps_promoters, \
           nps_detractors = feedback_daily.nps_detractors + excluded.nps_detractors, \
           nps_count = feedback_daily.nps_count + excluded.nps_count",
    )
    .bind(day)
    .bind(channel_id)
    .bind(store_id)
    .bind(csat_sum)
    .bind(csat_count)
    .bind(promoter)
    .bind(detractor)
    .bind(nps_count)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn apply_inventory_value(
    conn: &mut PgConnection,
    location_id: &str,
    day: NaiveDate,
    value: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO inventory_values (location_id, day, value) VALUES ($1, $2, $3) \
         ON CONFLICT (location_id, day) DO UPDATE SET value = excluded.value",
    )
    .bind(location_id)
    .bind(day)
    .bind(value)
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct TrafficRow {
    pub channel_id: String,
    pub day: NaiveDate,
    pub visits: i64,
    pub impressions: i64,
    pub interactions: i64,
    pub reach: i64,
    pub recorded_at: DateTime<Utc>,
}

pub async fn record_traffic(pool: &PgPool, t: &TrafficRow) -> Result<TrafficRow> {
    Ok(sqlx::query_as(
        "INSERT INTO traffic (channel_id, day, visits, impressions, interactions, reach) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (channel_id, day) DO UPDATE SET \
           visits = excluded.visits, impressions = excluded.impressions, \
           interactions = excluded.interactions, reach = excluded.reach, recorded_at = now() \
         RETURNING channel_id, day, visits, impressions, interactions, reach, recorded_at",
    )
    .bind(&t.channel_id)
    .bind(t.day)
    .bind(t.visits)
    .bind(t.impressions)
    .bind(t.interactions)
    .bind(t.reach)
    .fetch_one(pool)
    .await?)
}

#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct SpendRow {
    pub channel_id: String,
    pub day: NaiveDate,
    /// `marketing` or `operations`.
    pub category: String,
    pub amount: i64,
    pub recorded_at: DateTime<Utc>,
}

pub async fn record_spend(pool: &PgPool, s: &SpendRow) -> Result<SpendRow> {
    Ok(sqlx::query_as(
        "INSERT INTO spend (channel_id, day, category, amount) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (channel_id, day, category) DO UPDATE SET amount = excluded.amount, \
           recorded_at = now() \
         RETURNING channel_id, day, category, amount, recorded_at",
    )
    .bind(&s.channel_id)
    .bind(s.day)
    .bind(&s.category)
    .bind(s.amount)
    .fetch_one(pool)
    .await?)
}

/// Keyset page of traffic after `(day, channel)`.
pub async fn list_traffic(
    pool: &PgPool,
    range: DayRange,
    channels: &[String],
    after: Option<(NaiveDate, String)>,
    limit: i64,
) -> Result<Vec<TrafficRow>> {
    let (after_day, after_channel) = after.unzip();
    Ok(sqlx::query_as(
        "SELECT channel_id, day, visits, impressions, interactions, reach, recorded_at \
         FROM traffic WHERE day BETWEEN $1 AND $2 \
           AND (cardinality($3::text[]) = 0 OR channel_id = ANY($3)) \
           AND ($4::date IS NULL OR (day, channel_id) > ($4, $5)) \
         ORDER BY day, channel_id LIMIT $6",
    )
    .bind(range.start)
    .bind(range.end)
    .bind(channels)
    .bind(after_day)
    .bind(after_channel.unwrap_or_default())
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Keyset page of spend after `(day, channel, category)`.
pub async fn list_spend(
    pool: &PgPool,
    range: DayRange,
    channels: &[String],
    category: Option<&str>,
    after: Option<(NaiveDate, String, String)>,
    limit: i64,
) -> Result<Vec<SpendRow>> {
    let (after_day, after_channel, after_category) = match after {
        Some((d, c, k)) => (Some(d), c, k),
        None => (None, String::new(), String::new()),
    };
    Ok(sqlx::query_as(
        "SELECT channel_id, day, category, amount, recorded_at FROM spend \
         WHERE day BETWEEN $1 AND $2 \
           AND (cardinality($3::text[]) = 0 OR channel_id = ANY($3)) \
           AND ($4::text IS NULL OR category = $4) \
           AND ($5::date IS NULL OR (day, channel_id, category) > ($5, $6, $7)) \
         ORDER BY day, channel_id, category LIMIT $8",
    )
    .bind(range.start)
    .bind(range.end)
    .bind(channels)
    .bind(category)
    .bind(after_day)
    .bind(after_channel)
    .bind(after_category)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

// ---------------------------------------------------------------------------------------------
// Reports

/// The rollups computed from raw facts (same columns as `daily_rollups`).
const RAW_ROLLUPS: &str = "\
    SELECT day, channel_id, store_id, associate_id, sum(orders)::bigint AS orders, \
      sum(units)::bigint AS units, sum(sales)::bigint AS sales, sum(returns)::bigint AS returns, \
      sum(cogs)::bigint AS cogs, sum(new_customers)::bigint AS new_customers, \
      sum(repeat_net_sales)::bigint AS repeat_net_sales, \
      sum(pickup_orders)::bigint AS pickup_orders, sum(pickup_hits)::bigint AS pickup_hits \
    FROM ( \
      SELECT f.day, f.channel_id, f.store_id, f.associate_id, 1::bigint AS orders, f.units, \
        f.sales, 0::bigint AS returns, f.cost AS cogs, \
        (fi.order_id IS NOT NULL)::int::bigint AS new_customers, \
        CASE WHEN f.customer_id <> '' AND fi.order_id IS NULL THEN f.sales ELSE 0 END \
          AS repeat_net_sales, \
        (f.ready_at IS NOT NULL AND f.promised_ready_at IS NOT NULL)::int::bigint \
          AS pickup_orders, \
        (f.ready_at IS NOT NULL AND f.ready_at <= f.promised_ready_at)::int::bigint \
          AS pickup_hits \
      FROM order_facts f LEFT JOIN raw_firsts fi ON fi.order_id = f.order_id \
      WHERE NOT f.cancelled \
      UNION ALL \
      SELECT day, channel_id, store_id, associate_id, 0, 0, 0, refund, -cost, 0, \
        CASE WHEN repeat THEN -refund ELSE 0 END, 0, 0 \
      FROM return_facts \
    ) c GROUP BY day, channel_id, store_id, associate_id \
    HAVING sum(orders) <> 0 OR sum(returns) <> 0 OR sum(sales) <> 0 OR sum(cogs) <> 0";

/// Each customer's first order, from raw facts.
const RAW_FIRSTS: &str = "\
    SELECT DISTINCT ON (customer_id) customer_id, order_id, day, channel_id, store_id, \
      associate_id FROM order_facts WHERE NOT cancelled AND customer_id <> '' \
    ORDER BY customer_id, placed_at, order_id";

/// Customer days from raw facts (same columns as `customer_days`).
const RAW_CUSTOMER_DAYS: &str = "\
    SELECT day, channel_id, store_id, associate_id, customer_id, sum(orders)::bigint AS orders, \
      sum(net_sales)::bigint AS net_sales FROM ( \
        SELECT day, channel_id, store_id, associate_id, customer_id, 1::bigint AS orders, \
          sales AS net_sales FROM order_facts WHERE NOT cancelled AND customer_id <> '' \
        UNION ALL \
        SELECT day, channel_id, store_id, associate_id, customer_id, 0, -refund \
          FROM return_facts WHERE customer_id <> '' \
      ) c GROUP BY day, channel_id, store_id, associate_id, customer_id \
      HAVING sum(orders) <> 0 OR sum(net_sales) <> 0";

/// Where report sums come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Rollups,
    RawFacts,
}

impl Source {
    /// A `WITH` prefix and the names of the rollups, customer days and customers relations.
    fn relations(self) -> (String, &'static str, &'static str, &'static str) {
        match self {
            Source::Rollups => (
                String::new(),
                "daily_rollups",
                "customer_days",
                "(SELECT customer_id, first_day, acquisition_channel_id, \
                   acquisition_store_id, acquisition_associate_id FROM customers)",
            ),
            Source::RawFacts => (
                format!(
                    "WITH raw_firsts AS ({RAW_FIRSTS}), raw_rollups AS ({RAW_ROLLUPS}), \
                     raw_customer_days AS ({RAW_CUSTOMER_DAYS}), \
                     raw_customers AS (SELECT customer_id, day AS first_day, \
                       channel_id AS acquisition_channel_id, \
                       store_id AS acquisition_store_id, \
                       associate_id AS acquisition_associate_id FROM raw_firsts) "
                ),
                "raw_rollups",
                "raw_customer_days",
                "raw_customers",
            ),
        }
    }
}

/// `WITH` over the source's common table expressions (if any) and `more`.
fn with_ctes(with: &str, more: &str) -> String {
    if with.is_empty() {
        format!("WITH {more}")
    } else {
        format!("{}, {more}", with.trim_end())
    }
}

/// How report rows are keyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dimension {
    Channel,
    Store,
    Associate,
    /// One row over everything selected.
    Total,
}

impl Dimension {
    /// The key columns (channel, store, associate) of a row, from the given expressions.
    fn keys(self, channel: &str, store: &str, associate: &str) -> String {
        let none = "''::text";
        let (c, s, a) = match self {
            Dimension::Channel => (channel, none, none),
            Dimension::Store => (channel, store, none),
            Dimension::Associate => (channel, store, associate),
            Dimension::Total => (none, none, none),
        };
        format!("{c} AS k1, {s} AS k2, {a} AS k3")
    }

    /// Rows of a store (associate) report need a store (associate).
    fn having(self, store: &str, associate: &str) -> String {
        match self {
            Dimension::Store => format!(" AND {store} <> ''"),
            Dimension::Associate => format!(" AND {associate} <> ''"),
            _ => String::new(),
        }
    }
}

pub type Key = (String, String, String);

#[derive(FromRow)]
struct InputFigures {
    k1: String,
    k2: String,
    k3: String,
    visits: i64,
    impressions: i64,
    interactions: i64,
    reach: i64,
    marketing: i64,
    operations: i64,
}

#[derive(FromRow)]
struct FeedbackFigures {
    k1: String,
    k2: String,
    k3: String,
    csat_sum: i64,
    csat_count: i64,
    promoters: i64,
    detractors: i64,
    nps_count: i64,
}

/// What to report on.
#[derive(Debug, Clone)]
pub struct Selection {
    pub range: DayRange,
    pub dimension: Dimension,
    pub channels: Vec<String>,
    pub stores: Vec<String>,
    pub source: Source,
}

/// The sums of every row of a report (and nothing for rows without any figure).
pub async fn report_sums(conn: &mut PgConnection, sel: &Selection) -> Result<BTreeMap<Key, Sums>> {
    let (with, rollups, _, _) = sel.source.relations();
    let d = sel.dimension;
    let mut rows: BTreeMap<Key, Sums> = BTreeMap::new();
    let filter = |c: &str, s: &str| {
        format!(
            "(cardinality($3::text[]) = 0 OR {c} = ANY($3)) \
             AND (cardinality($4::text[]) = 0 OR {s} = ANY($4))"
        )
    };

    #[derive(FromRow)]
    struct Additive {
        k1: String,
        k2: String,
        k3: String,
        orders: i64,
        units: i64,
        sales: i64,
        returns: i64,
        cogs: i64,
        new_customers: i64,
        repeat_net_sales: i64,
        pickup_orders: i64,
        pickup_hits: i64,
    }
    let sql = format!(
        "{with}SELECT {keys}, \
           sum(orders)::bigint AS orders, sum(units)::bigint AS units, \
           sum(sales)::bigint AS sales, sum(returns)::bigint AS returns, \
           sum(cogs)::bigint AS cogs, sum(new_customers)::bigint AS new_customers, \
           sum(repeat_net_sales)::bigint AS repeat_net_sales, \
           sum(pickup_orders)::bigint AS pickup_orders, sum(pickup_hits)::bigint AS pickup_hits \
         FROM {rollups} WHERE day BETWEEN $1 AND $2 AND {filter}{having} GROUP BY 1, 2, 3",
        keys = d.keys("channel_id", "store_id", "associate_id"),
        filter = filter("channel_id", "store_id"),
        having = d.having("store_id", "associate_id"),
    );
    let additive: Vec<Additive> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(sel.range.start)
        .bind(sel.range.end)
        .bind(&sel.channels)
        .bind(&sel.stores)
        .fetch_all(&mut *conn)
        .await?;
    for a in additive {
        let s = rows.entry((a.k1, a.k2, a.k3)).or_default();
        s.orders += a.orders;
        s.units += a.units;
        s.sales += a.sales;
        s.returns += a.returns;
        s.cogs += a.cogs;
        s.new_customers += a.new_customers;
        s.repeat_net_sales += a.repeat_net_sales;
        s.pickup_orders += a.pickup_orders;
        s.pickup_hits += a.pickup_hits;
    }

    // Distinct-customer figures: from the pair rollups when one stored key answers each row,
    // otherwise (a union no key covers) from the customer days.
    if let Some((level, collapse)) = distinct_level(sel) {
        for (key, f) in
            spans::figures(&mut *conn, level, sel.range, &sel.channels, &sel.stores).await?
        {
            let key = if collapse { Key::default() } else { key };
            let row = rows.entry(key).or_default();
            row.customers += f.customers;
            row.repeat_customers += f.repeat_customers;
            row.new_customers_repeating += f.new_customers_repeating;
            row.cohort_net_sales += f.cohort_net_sales;
        }
    } else {
        distinct_from_customer_days(&mut *conn, sel, &mut rows).await?;
    }

    // Traffic and spend are per channel: they belong to channel rows and the total.
    if matches!(d, Dimension::Channel | Dimension::Total) && sel.stores.is_empty() {
        let sql = format!(
            "SELECT {keys}, sum(visits)::bigint AS visits, \
               sum(impressions)::bigint AS impressions, \
               sum(interactions)::bigint AS interactions, sum(reach)::bigint AS reach, \
               0::bigint AS marketing, 0::bigint AS operations \
             FROM traffic WHERE day BETWEEN $1 AND $2 \
               AND (cardinality($3::text[]) = 0 OR channel_id = ANY($3)) GROUP BY 1, 2, 3 \
             UNION ALL \
             SELECT {keys}, 0, 0, 0, 0, \
               (coalesce(sum(amount) FILTER (WHERE category = 'marketing'), 0))::bigint, \
               (coalesce(sum(amount) FILTER (WHERE category = 'operations'), 0))::bigint \
             FROM spend WHERE day BETWEEN $1 AND $2 \
               AND (cardinality($3::text[]) = 0 OR channel_id = ANY($3)) GROUP BY 1, 2, 3",
            keys = d.keys("channel_id", "store_id", "associate_id"),
        );
        let inputs: Vec<InputFigures> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(sel.range.start)
            .bind(sel.range.end)
            .bind(&sel.channels)
            .fetch_all(&mut *conn)
            .await?;
        for i in inputs {
            let row = rows.entry((i.k1, i.k2, i.k3)).or_default();
            row.visits += i.visits;
            row.impressions += i.impressions;
            row.interactions += i.interactions;
            row.reach += i.reach;
            row.marketing_spend += i.marketing;
            row.operations_spend += i.operations;
        }
    }

    // Feedback is per channel and store.
    if d != Dimension::Associate {
        let sql = format!(
            "SELECT {keys}, sum(csat_sum)::bigint AS csat_sum, \
               sum(csat_count)::bigint AS csat_count, sum(nps_promoters)::bigint AS promoters, \
               sum(nps_detractors)::bigint AS detractors, sum(nps_count)::bigint AS nps_count \
             FROM feedback_daily WHERE day BETWEEN $1 AND $2 AND {filter}{having} \
             GROUP BY 1, 2, 3",
            keys = d.keys("channel_id", "store_id", "''::text"),
            filter = filter("channel_id", "store_id"),
            having = d.having("store_id", "''"),
        );
        let feedback: Vec<FeedbackFigures> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(sel.range.start)
            .bind(sel.range.end)
            .bind(&sel.channels)
            .bind(&sel.stores)
            .fetch_all(&mut *conn)
            .await?;
        for f in feedback {
            let row = rows.entry((f.k1, f.k2, f.k3)).or_default();
            row.csat_sum += f.csat_sum;
            row.csat_count += f.csat_count;
            row.nps_promoters += f.promoters;
            row.nps_detractors += f.detractors;
            row.nps_count += f.nps_count;
        }
    }

    // Average inventory value (the mean over days of the day's summed value): per store for
    // store rows, over the locations channels sell from for channel rows, over every location
    // (or the filtered channels' or stores') for the total.
    match d {
        Dimension::Store => {
            let values: Vec<(String, i64)> = sqlx::query_as(
                "SELECT location_id, round(avg(value))::bigint FROM inventory_values \
                 WHERE day BETWEEN $1 AND $2 GROUP BY location_id",
            )
            .bind(sel.range.start)
            .bind(sel.range.end)
            .fetch_all(&mut *conn)
            .await?;
            for ((_, store, _), row) in rows.iter_mut() {
                row.average_inventory_value = values
                    .iter()
                    .find(|(location, _)| location == store)
                    .map(|(_, v)| *v);
            }
        }
        Dimension::Channel => {
            let values: Vec<(String, i64)> = sqlx::query_as(
                "SELECT channel_id, round(avg(total))::bigint FROM ( \
                   SELECT c.channel_id, v.day, sum(v.value) AS total \
                   FROM channels c JOIN inventory_values v ON v.location_id = c.location_id \
                   WHERE c.location_id <> '' AND v.day BETWEEN $1 AND $2 \
                     AND (cardinality($3::text[]) = 0 OR c.channel_id = ANY($3)) \
                     AND (cardinality($4::text[]) = 0 OR v.location_id = ANY($4)) \
                   GROUP BY 1, 2) d GROUP BY 1",
            )
            .bind(sel.range.start)
            .bind(sel.range.end)
            .bind(&sel.channels)
            .bind(&sel.stores)
            .fetch_all(&mut *conn)
            .await?;
            for (channel, value) in values {
                rows.entry((channel, String::new(), String::new()))
                    .or_default()
                    .average_inventory_value = Some(value);
            }
        }
        Dimension::Total => {
            let value: Option<i64> = sqlx::query_scalar(
                "SELECT round(avg(total))::bigint FROM (SELECT day, sum(value) AS total \
                 FROM inventory_values WHERE day BETWEEN $1 AND $2 \
                   AND (cardinality($3::text[]) = 0 OR location_id IN ( \
                     SELECT location_id FROM channels WHERE channel_id = ANY($3) \
                       AND location_id <> '')) \
                   AND (cardinality($4::text[]) = 0 OR location_id = ANY($4)) \
                 GROUP BY day) d",
            )
            .bind(sel.range.start)
            .bind(sel.range.end)
            .bind(&sel.channels)
            .bind(&sel.stores)
            .fetch_one(&mut *conn)
            .await?;
            if value.is_some() {
                rows.entry(Default::default())
                    .or_default()
                    .average_inventory_value = value;
            }
        }
        Dimension::Associate => {}
    }
    Ok(rows)
}

/// Distinct buying customers, those with two orders or more, and the period's new customers
/// (who ordered again, what they bought to date), from customer days: for raw facts, and for
/// rows that are unions of stored keys (several channels, some of a channel's stores).
async fn distinct_from_customer_days(
    conn: &mut PgConnection,
    sel: &Selection,
    rows: &mut BTreeMap<Key, Sums>,
) -> Result<()> {
    let (with, _, cdays, customers_rel) = sel.source.relations();
    let d = sel.dimension;
    let filter = |c: &str, s: &str| {
        format!(
            "(cardinality($3::text[]) = 0 OR {c} = ANY($3)) \
             AND (cardinality($4::text[]) = 0 OR {s} = ANY($4))"
        )
    };
    // Distinct buying customers and those with two orders or more.
    let sql = format!(
        "{with}SELECT k1, k2, k3, count(*)::bigint AS customers, \
           (count(*) FILTER (WHERE n >= 2))::bigint AS repeat_customers FROM ( \
             SELECT {keys}, customer_id, sum(orders) AS n FROM {cdays} \
             WHERE day BETWEEN $1 AND $2 AND {filter}{having} \
             GROUP BY 1, 2, 3, customer_id HAVING sum(orders) > 0) x GROUP BY 1, 2, 3",
        keys = d.keys("channel_id", "store_id", "associate_id"),
        filter = filter("channel_id", "store_id"),
        having = d.having("store_id", "associate_id"),
    );
    let customers: Vec<(String, String, String, i64, i64)> =
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(sel.range.start)
            .bind(sel.range.end)
            .bind(&sel.channels)
            .bind(&sel.stores)
            .fetch_all(&mut *conn)
            .await?;
    for (c, s, a, n, repeat) in customers {
        let row = rows.entry((c, s, a)).or_default();
        row.customers = n;
        row.repeat_customers = repeat;
    }

    // The period's new customers, by where they were acquired: who ordered again within the
    // period, and what they have bought to date.
    let sql = format!(
        "{ctes} SELECT {keys}, \
           (count(*) FILTER (WHERE coalesce(r.n, 0) >= 2))::bigint AS repeating, \
           coalesce(sum(r.net), 0)::bigint AS cohort_net \
         FROM cohort c LEFT JOIN bought r ON r.customer_id = c.customer_id \
         GROUP BY 1, 2, 3",
        ctes = with_ctes(
            &with,
            &format!(
                "cohort AS (SELECT * FROM {customers_rel} c \
                   WHERE c.first_day BETWEEN $1 AND $2 AND {filter}{having}), \
                 bought AS (SELECT d.customer_id, \
                   sum(d.orders) FILTER (WHERE d.day >= $1) AS n, sum(d.net_sales) AS net \
                   FROM {cdays} d JOIN cohort k ON k.customer_id = d.customer_id \
                   WHERE d.day <= $2 GROUP BY 1)",
                filter = filter("c.acquisition_channel_id", "c.acquisition_store_id"),
                having = d.having("c.acquisition_store_id", "c.acquisition_associate_id"),
            )
        ),
        keys = d.keys(
            "c.acquisition_channel_id",
            "c.acquisition_store_id",
            "c.acquisition_associate_id"
        ),
    );
    let cohorts: Vec<(String, String, String, i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(sel.range.start)
        .bind(sel.range.end)
        .bind(&sel.channels)
        .bind(&sel.stores)
        .fetch_all(&mut *conn)
        .await?;
    for (c, s, a, repeating, net) in cohorts {
        let row = rows.entry((c, s, a)).or_default();
        row.new_customers_repeating = repeating;
        row.cohort_net_sales = net;
    }
    Ok(())
}

/// The pair-rollup level whose keys are exactly a selection's rows, and whether they collapse
/// into the one total row; `None` when a row would be a union of keys.
fn distinct_level(sel: &Selection) -> Option<(spans::Level, bool)> {
    if sel.source != Source::Rollups {
        return None;
    }
    match sel.dimension {
        Dimension::Channel if sel.stores.is_empty() => Some((spans::CHANNEL, false)),
        Dimension::Store => Some((spans::STORE, false)),
        Dimension::Associate => Some((spans::ASSOCIATE, false)),
        Dimension::Total if sel.stores.is_empty() && sel.channels.is_empty() => {
            Some((spans::TOTAL, false))
        }
        Dimension::Total if sel.stores.is_empty() && sel.channels.len() == 1 => {
            Some((spans::CHANNEL, true))
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Rebuild

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rebuilt {
    pub facts_scanned: i64,
    pub rows_written: i64,
    pub rows_changed: i64,
}

/// Recomputes customers, `daily_rollups` and `customer_days` (within `range`, or everywhere)
/// and the pair rollups (everywhere) from raw facts, counting rows that differed.
pub async fn rebuild(pool: &PgPool, range: Option<DayRange>) -> Result<Rebuilt> {
    let mut tx = pool.begin().await?;
    // Facts must not move underneath the recomputation.
    sqlx::query("LOCK TABLE order_facts, return_facts IN SHARE MODE")
        .execute(&mut *tx)
        .await?;
    let (start, end) = match range {
        Some(r) => (r.start, r.end),
        // Every day Postgres and chrono both represent.
        None => (
            NaiveDate::from_ymd_opt(1, 1, 1).unwrap_or_default(),
            NaiveDate::from_ymd_opt(9999, 12, 31).unwrap_or_default(),
        ),
    };
    let facts_scanned: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM order_facts) + (SELECT count(*) FROM return_facts)",
    )
    .fetch_one(&mut *tx)
    .await?;
    let rollup_cols = "orders, units, sales, returns, cogs, new_customers, repeat_net_sales, \
                       pickup_orders, pickup_hits";
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TEMP TABLE rebuilt_rollups ON COMMIT DROP AS \
         WITH raw_firsts AS ({RAW_FIRSTS}) SELECT * FROM ({RAW_ROLLUPS}) r \
         WHERE day BETWEEN $1 AND $2"
    )))
    .bind(start)
    .bind(end)
    .execute(&mut *tx)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TEMP TABLE rebuilt_customer_days ON COMMIT DROP AS \
         SELECT * FROM ({RAW_CUSTOMER_DAYS}) r WHERE day BETWEEN $1 AND $2"
    )))
    .bind(start)
    .bind(end)
    .execute(&mut *tx)
    .await?;
    let prefixed = |p: &str| {
        rollup_cols
            .split(", ")
            .map(|c| format!("{p}.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let changed_rollups: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM (SELECT * FROM daily_rollups WHERE day BETWEEN $1 AND $2) o \
         FULL JOIN rebuilt_rollups n USING (day, channel_id, store_id, associate_id) \
         WHERE ({old}) IS DISTINCT FROM ({new})",
        old = prefixed("o"),
        new = prefixed("n"),
    )))
    .bind(start)
    .bind(end)
    .fetch_one(&mut *tx)
    .await?;
    let changed_days: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT * FROM customer_days WHERE day BETWEEN $1 AND $2) o \
         FULL JOIN rebuilt_customer_days n \
           USING (day, channel_id, store_id, associate_id, customer_id) \
         WHERE (o.orders, o.net_sales) IS DISTINCT FROM (n.orders, n.net_sales)",
    )
    .bind(start)
    .bind(end)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM daily_rollups WHERE day BETWEEN $1 AND $2")
        .bind(start)
        .bind(end)
        .execute(&mut *tx)
        .await?;
    let written = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO daily_rollups (day, channel_id, store_id, associate_id, {rollup_cols}) \
         SELECT day, channel_id, store_id, associate_id, {rollup_cols} FROM rebuilt_rollups"
    )))
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query("DELETE FROM customer_days WHERE day BETWEEN $1 AND $2")
        .bind(start)
        .bind(end)
        .execute(&mut *tx)
        .await?;
    let written_days = sqlx::query(
        "INSERT INTO customer_days (day, channel_id, store_id, associate_id, customer_id, \
           orders, net_sales) SELECT day, channel_id, store_id, associate_id, customer_id, \
           orders, net_sales FROM rebuilt_customer_days",
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query("DELETE FROM customers")
        .execute(&mut *tx)
        .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO customers (customer_id, first_order_id, first_day, acquisition_channel_id, \
           acquisition_store_id, acquisition_associate_id) \
         SELECT customer_id, order_id, day, channel_id, store_id, associate_id \
         FROM ({RAW_FIRSTS}) f"
    )))
    .execute(&mut *tx)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE order_facts f SET counted_first = (fi.order_id IS NOT NULL) \
         FROM order_facts o LEFT JOIN ({RAW_FIRSTS}) fi ON fi.order_id = o.order_id \
         WHERE f.order_id = o.order_id"
    )))
    .execute(&mut *tx)
    .await?;
    // Pairs span days, so they are recomputed whole whatever the range.
    let (written_pairs, changed_pairs) = spans::rebuild(&mut tx).await?;
    tx.commit().await?;
    Ok(Rebuilt {
        facts_scanned,
        rows_written: i64::try_from(written + written_days)
            .unwrap_or(i64::MAX)
            .saturating_add(written_pairs),
        rows_changed: changed_rollups + changed_days + changed_pairs,
    })
}

// ---------------------------------------------------------------------------------------------
// Live sales

#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct LiveRow {
    pub channel_id: String,
    pub orders: i64,
    pub units: i64,
    pub net_sales: i64,
    pub last_order_at: Option<DateTime<Utc>>,
}

/// One day's sales per channel, from the rollups.
pub async fn live_sales(
    pool: &PgPool,
    day: NaiveDate,
    channels: &[String],
) -> Result<Vec<LiveRow>> {
    Ok(sqlx::query_as(
        "SELECT r.channel_id, sum(r.orders)::bigint AS orders, sum(r.units)::bigint AS units, \
           (sum(r.sales) - sum(r.returns))::bigint AS net_sales, \
           (SELECT max(placed_at) FROM order_facts f \
             WHERE f.day = $1 AND f.channel_id = r.channel_id AND NOT f.cancelled) \
             AS last_order_at \
         FROM daily_rollups r WHERE r.day = $1 \
           AND (cardinality($2::text[]) = 0 OR r.channel_id = ANY($2)) \
         GROUP BY r.channel_id ORDER BY r.channel_id",
    )
    .bind(day)
    .bind(channels)
    .fetch_all(pool)
    .await?)
}

// ---------------------------------------------------------------------------------------------
// Scorecards

#[derive(Debug, Clone, FromRow)]
pub struct ScorecardRow {
    pub id: uuid::Uuid,
    pub body: Vec<u8>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub async fn insert_scorecard(
    conn: &mut PgConnection,
    id: uuid::Uuid,
    channel_id: &str,
    body: &[u8],
) -> Result<ScorecardRow> {
    Ok(sqlx::query_as(
        "INSERT INTO scorecards (id, channel_id, body) VALUES ($1, $2, $3) \
         RETURNING id, body, version, created_at, updated_at",
    )
    .bind(id)
    .bind(channel_id)
    .bind(body)
    .fetch_one(conn)
    .await?)
}

/// Replaces a scorecard at `version`; `None` when it does not exist or the version is stale.
pub async fn update_scorecard(
    pool: &PgPool,
    id: uuid::Uuid,
    version: i64,
    channel_id: &str,
    body: &[u8],
) -> Result<Option<ScorecardRow>> {
    Ok(sqlx::query_as(
        "UPDATE scorecards SET channel_id = $3, body = $4, version = version + 1, \
           updated_at = now() WHERE id = $1 AND version = $2 \
         RETURNING id, body, version, created_at, updated_at",
    )
    .bind(id)
    .bind(version)
    .bind(channel_id)
    .bind(body)
    .fetch_optional(pool)
    .await?)
}

pub async fn scorecard(pool: &PgPool, id: uuid::Uuid) -> Result<Option<ScorecardRow>> {
    Ok(sqlx::query_as(
        "SELECT id, body, version, created_at, updated_at FROM scorecards WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?)
}

pub async fn list_scorecards(
    pool: &PgPool,
    channel_id: &str,
    after: Option<uuid::Uuid>,
    limit: i64,
) -> Result<Vec<ScorecardRow>> {
    Ok(sqlx::query_as(
        "SELECT id, body, version, created_at, updated_at FROM scorecards \
         WHERE ($1 = '' OR channel_id = $1) AND ($2::uuid IS NULL OR id > $2) \
         ORDER BY id LIMIT $3",
    )
    .bind(channel_id)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

// ---------------------------------------------------------------------------------------------
// Customer lifetime value and retention

/// Customers acquired in one month and channel, and their net sales to date.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct ClvCohortRow {
    pub month: NaiveDate,
    pub channel_id: String,
    pub customers: i64,
    pub net_sales: i64,
}

/// A group of customers: how many, their net sales and orders to date.
#[derive(Debug, Clone, Default, PartialEq, Eq, FromRow)]
pub struct ClvGroupRow {
    pub multi_channel: bool,
    pub customers: i64,
    pub net_sales: i64,
    pub orders: i64,
}

pub async fn clv(
    pool: &PgPool,
    acquired: DayRange,
    channels: &[String],
    source: Source,
) -> Result<(Vec<ClvCohortRow>, Vec<ClvGroupRow>)> {
    let (with, _, cdays, customers) = source.relations();
    let per_customer = format!(
        "SELECT c.customer_id, date_trunc('month', c.first_day)::date AS month, \
           c.acquisition_channel_id AS channel_id, \
           coalesce(sum(d.net_sales), 0)::bigint AS net_sales, \
           coalesce(sum(d.orders), 0)::bigint AS orders, \
           count(DISTINCT d.channel_id) FILTER (WHERE d.orders > 0) AS channels \
         FROM {customers} c LEFT JOIN {cdays} d ON d.customer_id = c.customer_id \
         WHERE c.first_day BETWEEN $1 AND $2 \
           AND (cardinality($3::text[]) = 0 OR c.acquisition_channel_id = ANY($3)) \
         GROUP BY 1, 2, 3"
    );
    let cohorts: Vec<ClvCohortRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{with}SELECT month, channel_id, count(*)::bigint AS customers, \
           sum(net_sales)::bigint AS net_sales FROM ({per_customer}) x \
         GROUP BY 1, 2 ORDER BY 1, 2"
    )))
    .bind(acquired.start)
    .bind(acquired.end)
    .bind(channels)
    .fetch_all(pool)
    .await?;
    let groups: Vec<ClvGroupRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{with}SELECT channels >= 2 AS multi_channel, count(*)::bigint AS customers, \
           sum(net_sales)::bigint AS net_sales, sum(orders)::bigint AS orders \
         FROM ({per_customer}) x GROUP BY 1"
    )))
    .bind(acquired.start)
    .bind(acquired.end)
    .bind(channels)
    .fetch_all(pool)
    .await?;
    Ok((cohorts, groups))
}

/// Per acquisition cohort: its size and, per month offset after acquisition (1..=months),
/// how many of its customers ordered.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct RetentionRow {
    pub month: NaiveDate,
    pub channel_id: String,
    pub customers: i64,
    /// 0 for the cohort's size row.
    pub month_offset: i32,
    pub buying: i64,
}

pub async fn retention(
    pool: &PgPool,
    acquired: DayRange,
    channels: &[String],
    months: i32,
    source: Source,
) -> Result<Vec<RetentionRow>> {
    let (with, _, cdays, customers) = source.relations();
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{ctes}, \
         sizes AS (SELECT month, channel_id, count(*)::bigint AS customers FROM cohort \
           GROUP BY 1, 2), \
         active AS ( \
           SELECT DISTINCT k.month, k.channel_id, k.customer_id, \
             ((extract(year FROM d.day) * 12 + extract(month FROM d.day)) \
               - (extract(year FROM k.month) * 12 + extract(month FROM k.month)))::int \
               AS offset_months \
           FROM cohort k JOIN {cdays} d ON d.customer_id = k.customer_id AND d.orders > 0) \
         SELECT s.month, s.channel_id, s.customers, coalesce(a.offset_months, 0) AS month_offset, \
           count(a.customer_id)::bigint AS buying \
         FROM sizes s LEFT JOIN active a ON a.month = s.month AND a.channel_id = s.channel_id \
           AND a.offset_months BETWEEN 1 AND $4 \
         GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 4",
        ctes = with_ctes(
            &with,
            &format!(
                "cohort AS (SELECT c.customer_id, \
                   date_trunc('month', c.first_day)::date AS month, \
                   c.acquisition_channel_id AS channel_id FROM {customers} c \
                 WHERE c.first_day BETWEEN $1 AND $2 \
                   AND (cardinality($3::text[]) = 0 OR c.acquisition_channel_id = ANY($3)))"
            )
        ),
    )))
    .bind(acquired.start)
    .bind(acquired.end)
    .bind(channels)
    .bind(months)
    .fetch_all(pool)
    .await?)
}

// ---------------------------------------------------------------------------------------------
// Customer merges

/// Moves every fact of `merged` to `survivor`, with their contributions, as identity merged
/// the two customers.
pub async fn merge_customer(conn: &mut PgConnection, merged: &str, survivor: &str) -> Result<()> {
    if merged.is_empty() || survivor.is_empty() || merged == survivor {
        return Ok(());
    }
    let mut both = [merged.to_owned(), survivor.to_owned()];
    both.sort();
    spans::lock(conn, &both).await?;
    let orders: Vec<OrderRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ORDER_COLUMNS} FROM order_facts WHERE customer_id = $1 ORDER BY order_id \
         FOR UPDATE"
    )))
    .bind(merged)
    .fetch_all(&mut *conn)
    .await?;
    let moved: Vec<OrderChange> = orders
        .into_iter()
        .map(|mut row| {
            row.customer_id = survivor.to_owned();
            OrderChange {
                row,
                channel_kind: 0,
            }
        })
        .collect();
    order_facts::apply(conn, &moved).await?;
    #[derive(FromRow)]
    struct Returned {
        order_id: String,
        channel_id: String,
        store_id: String,
        associate_id: String,
        day: NaiveDate,
        refund: i64,
    }
    let customers = spans::snapshot(conn, &[merged, survivor]).await?;
    let returns: Vec<Returned> = sqlx::query_as(
        "UPDATE return_facts SET customer_id = $2 WHERE customer_id = $1 \
         RETURNING order_id, channel_id, store_id, associate_id, day, refund",
    )
    .bind(merged)
    .bind(survivor)
    .fetch_all(&mut *conn)
    .await?;
    customers.settle(conn).await?;
    for r in returns {
        let at = OrderRow {
            order_id: r.order_id,
            channel_id: r.channel_id,
            store_id: r.store_id,
            associate_id: r.associate_id,
            customer_id: String::new(),
            placed_at: Utc::now(),
            day: r.day,
            sales: 0,
            cost: 0,
            units: 0,
            cancelled: false,
            promised_ready_at: None,
            ready_at: None,
        };
        customer_day(conn, &at, merged, 0, r.refund).await?;
        customer_day(conn, &at, survivor, 0, -r.refund).await?;
    }
    Ok(())
}

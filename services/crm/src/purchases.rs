//! Each customer's purchase figures, kept by deltas: `customer_stats` (first and last
//! purchase, orders, net spend) and `customer_purchases` (orders and spend per day, channel
//! and store, per month, and per category, product and SKU of their lines; see the migration
//! that creates it). A run of order events knows each order it changes as it was and as it leaves it, so
//! it adds what the order counts for now and takes away what it counted for before
//! ([`Deltas::order`]), and never re-reads a customer's history. Only when an order stops
//! counting (a cancellation) and was the customer's first or last purchase is that bound read
//! again, from the customer's orders by index. A merge moves the merged customer's figures
//! onto the survivor the same way ([`merge`]).
//!
//! Reads sum months and days: a tier's rolling spend ([`rolling_spends`], through the
//! `rolling_spend` SQL function) takes the whole months of its window, then the whole days of
//! its first month, from `customer_purchases`, and the window's first day, to the instant,
//! from the orders of that one day; the orders a `bought(...)` counts ([`orders_matching`])
//! take the whole days of their window, and the first day from its orders, the same way.
//!
//! The views `customer_stats_aggregated` and `customer_purchases_aggregated` define what the
//! tables hold; crm's tests compare them after every history they apply.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Datelike, NaiveDate, NaiveTime, Utc};
use omni_runtime::Error;
use sqlx::{FromRow, PgConnection, Postgres, QueryBuilder};

use crate::facts::CANCELLED;
use crate::segment_rule::PurchaseFilter;

/// The order itself.
const ORDER: i16 = 0;
/// A category of its lines.
const CATEGORY: i16 = 1;
/// A product (of a category) of its lines.
const PRODUCT: i16 = 2;
/// A SKU (of a product of a category) of its lines.
const SKU: i16 = 3;
/// The month: every order of the month, whatever its channel and store.
const MONTH: i16 = 4;

/// A counted order (not cancelled), as its figures see it.
#[derive(Debug, Clone)]
pub struct Purchase<'a> {
    /// Its owner: the customer it is filed under.
    pub customer_id: &'a str,
    pub placed_at: DateTime<Utc>,
    pub channel_id: &'a str,
    pub channel_kind: i32,
    pub store_id: &'a str,
    /// Total less refunds.
    pub net_minor: i64,
    /// The (category, product, SKU) of each of its lines.
    pub lines: BTreeSet<(&'a str, &'a str, &'a str)>,
}

/// A row of `customer_purchases`, in primary-key order (rows are written in this order, so
/// two transactions lock them in the same order).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, sqlx::FromRow)]
struct Row {
    customer_id: String,
    grain: i16,
    day: NaiveDate,
    channel_id: String,
    channel_kind: i32,
    store_id: String,
    category_id: String,
    product_id: String,
    sku_id: String,
}

/// What a customer's `customer_stats` row moves by.
#[derive(Debug, Clone, Default)]
struct StatsDelta {
    orders: i64,
    monetary: i64,
    /// The placements of the orders that started counting.
    added: Option<Bounds>,
    /// The placements of the orders that stopped counting: a bound among them is read again.
    removed: Option<Bounds>,
}

/// The earliest and latest of some placement times.
type Bounds = (DateTime<Utc>, DateTime<Utc>);

fn widen(range: &mut Option<Bounds>, lo: DateTime<Utc>, hi: DateTime<Utc>) {
    *range = Some(match *range {
        Some((a, b)) => (a.min(lo), b.max(hi)),
        None => (lo, hi),
    });
}

/// The changes a run (or a merge) makes to the figures, gathered then written at once.
#[derive(Debug, Default)]
pub struct Deltas {
    rows: BTreeMap<Row, (i64, i64)>,
    stats: BTreeMap<String, StatsDelta>,
}

impl Deltas {
    /// An order that counted as `before` and counts as `after` (`None`: not counted, or not
    /// filed). Its owner, placement, channel and store never change once filed.
    pub fn order(&mut self, before: Option<&Purchase<'_>>, after: Option<&Purchase<'_>>) {
        if let Some(p) = before {
            self.rows_of(p, -1);
            let s = self.stats.entry(p.customer_id.to_owned()).or_default();
            s.monetary -= p.net_minor;
            if after.is_none() {
                s.orders -= 1;
                widen(&mut s.removed, p.placed_at, p.placed_at);
            }
        }
        if let Some(p) = after {
            self.rows_of(p, 1);
            let s = self.stats.entry(p.customer_id.to_owned()).or_default();
            s.monetary += p.net_minor;
            if before.is_none() {
                s.orders += 1;
                widen(&mut s.added, p.placed_at, p.placed_at);
            }
        }
    }

    /// Adds (`sign` 1) or takes away (-1) the rows a purchase counts in.
    fn rows_of(&mut self, p: &Purchase<'_>, sign: i64) {
        let day = p.placed_at.date_naive();
        // The month row has neither channel nor store.
        let month = |row: Row| Row {
            grain: MONTH,
            day: day.with_day(1).unwrap_or(day),
            channel_id: String::new(),
            channel_kind: 0,
            store_id: String::new(),
            ..row
        };
        let row = |grain, (category, product, sku): (&str, &str, &str)| Row {
            customer_id: p.customer_id.to_owned(),
            grain,
            day,
            channel_id: p.channel_id.to_owned(),
            channel_kind: p.channel_kind,
            store_id: p.store_id.to_owned(),
            category_id: category.to_owned(),
            product_id: product.to_owned(),
            sku_id: sku.to_owned(),
        };
        let mut add = |row: Row, net: i64| {
            let d = self.rows.entry(row).or_default();
            d.0 += sign;
            d.1 += sign * net;
        };
        add(row(ORDER, ("", "", "")), p.net_minor);
        add(month(row(ORDER, ("", "", ""))), p.net_minor);
        let categories: BTreeSet<&str> = p.lines.iter().map(|l| l.0).collect();
        let products: BTreeSet<(&str, &str)> = p.lines.iter().map(|l| (l.0, l.1)).collect();
        for c in categories {
            add(row(CATEGORY, (c, "", "")), 0);
        }
        for (c, pr) in products {
            add(row(PRODUCT, (c, pr, "")), 0);
        }
        for &line in &p.lines {
            add(row(SKU, line), 0);
        }
    }

    /// Writes the figures: `customer_purchases` and `customer_stats` move by the deltas, rows
    /// left without orders go, and a first or last purchase that stopped counting is read
    /// again from the customer's orders (which must be filed by then). At most five
    /// statements, two without a cancellation.
    pub async fn write(self, conn: &mut PgConnection) -> Result<(), Error> {
        let rows: Vec<(Row, (i64, i64))> = self
            .rows
            .into_iter()
            .filter(|(_, d)| *d != (0, 0))
            .collect();
        if !rows.is_empty() {
            write_rows(conn, &rows).await?;
        }
        let stats: Vec<(String, StatsDelta)> = self
            .stats
            .into_iter()
            .filter(|(_, s)| s.orders != 0 || s.monetary != 0 || s.removed.is_some())
            .collect();
        if !stats.is_empty() {
            write_stats(conn, &stats).await?;
        }
        Ok(())
    }
}

/// Binds the key columns of `rows`, as the nine arrays `$1` to `$9`.
fn bind_keys<'q>(
    q: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    rows: &[&Row],
) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    let text = |f: fn(&Row) -> &str| rows.iter().map(|r| f(r).to_owned()).collect::<Vec<_>>();
    q.bind(text(|r| &r.customer_id))
        .bind(rows.iter().map(|r| r.grain).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.day).collect::<Vec<_>>())
        .bind(text(|r| &r.channel_id))
        .bind(rows.iter().map(|r| r.channel_kind).collect::<Vec<_>>())
        .bind(text(|r| &r.store_id))
        .bind(text(|r| &r.category_id))
        .bind(text(|r| &r.product_id))
        .bind(text(|r| &r.sku_id))
}

async fn write_rows(conn: &mut PgConnection, rows: &[(Row, (i64, i64))]) -> Result<(), Error> {
    let keys: Vec<&Row> = rows.iter().map(|(r, _)| r).collect();
    let emptied: Vec<Row> = bind_keys(
        sqlx::query(
            "WITH moved AS (
                 INSERT INTO customer_purchases AS p (customer_id, grain, day, channel_id,
                     channel_kind, store_id, category_id, product_id, sku_id, orders, net_minor)
                 SELECT * FROM unnest($1::text[], $2::smallint[], $3::date[], $4::text[],
                                      $5::int[], $6::text[], $7::text[], $8::text[], $9::text[],
                                      $10::bigint[], $11::bigint[])
                 ON CONFLICT (customer_id, grain, day, channel_id, channel_kind, store_id,
                              category_id, product_id, sku_id)
                 DO UPDATE SET orders = p.orders + EXCLUDED.orders,
                     net_minor = p.net_minor + EXCLUDED.net_minor
                 RETURNING *
             )
             SELECT customer_id, grain, day, channel_id, channel_kind, store_id, category_id,
                 product_id, sku_id
             FROM moved WHERE orders <= 0",
        ),
        &keys,
    )
    .bind(rows.iter().map(|(_, d)| d.0).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, d)| d.1).collect::<Vec<_>>())
    .try_map(|row: sqlx::postgres::PgRow| Row::from_row(&row))
    .fetch_all(&mut *conn)
    .await?;
    if emptied.is_empty() {
        return Ok(());
    }
    // A row whose orders all stopped counting.
    let emptied: Vec<&Row> = emptied.iter().collect();
    bind_keys(
        sqlx::query(
            "DELETE FROM customer_purchases p
             USING unnest($1::text[], $2::smallint[], $3::date[], $4::text[], $5::int[],
                          $6::text[], $7::text[], $8::text[], $9::text[])
                 AS e(customer_id, grain, day, channel_id, channel_kind, store_id, category_id,
                      product_id, sku_id)
             WHERE (p.customer_id, p.grain, p.day, p.channel_id, p.channel_kind, p.store_id,
                    p.category_id, p.product_id, p.sku_id)
                 = (e.customer_id, e.grain, e.day, e.channel_id, e.channel_kind, e.store_id,
                    e.category_id, e.product_id, e.sku_id)
               AND p.orders <= 0",
        ),
        &emptied,
    )
    .execute(conn)
    .await?;
    Ok(())
}

async fn write_stats(conn: &mut PgConnection, stats: &[(String, StatsDelta)]) -> Result<(), Error> {
    // Bounds of a customer without new orders go in as the neutral ±infinity.
    sqlx::query(
        "INSERT INTO customer_stats AS s (customer_id, first_purchase, last_purchase, orders,
             monetary)
         SELECT d.customer_id, coalesce(d.first, 'infinity'), coalesce(d.last, '-infinity'),
             d.orders, d.monetary
         FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[], $4::bigint[],
                     $5::bigint[]) AS d(customer_id, first, last, orders, monetary)
         ON CONFLICT (customer_id) DO UPDATE SET
             first_purchase = least(s.first_purchase, EXCLUDED.first_purchase),
             last_purchase = greatest(s.last_purchase, EXCLUDED.last_purchase),
             orders = s.orders + EXCLUDED.orders, monetary = s.monetary + EXCLUDED.monetary",
    )
    .bind(stats.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>())
    .bind(
        stats
            .iter()
            .map(|(_, s)| s.added.map(|a| a.0))
            .collect::<Vec<_>>(),
    )
    .bind(
        stats
            .iter()
            .map(|(_, s)| s.added.map(|a| a.1))
            .collect::<Vec<_>>(),
    )
    .bind(stats.iter().map(|(_, s)| s.orders).collect::<Vec<_>>())
    .bind(stats.iter().map(|(_, s)| s.monetary).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    let removed: Vec<(&str, Bounds)> = stats
        .iter()
        .filter_map(|(c, s)| Some((c.as_str(), s.removed?)))
        .collect();
    if removed.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = removed.iter().map(|r| r.0).collect();
    // A bound that stopped counting is read again: the customer's orders by index, from that
    // end, up to the first one counted.
    sqlx::query(
        "UPDATE customer_stats s SET
             first_purchase = CASE WHEN r.lo <= s.first_purchase
                 THEN coalesce((SELECT min(o.placed_at) FROM customer_orders o
                                WHERE o.customer_id = s.customer_id AND o.status <> $4),
                               s.first_purchase)
                 ELSE s.first_purchase END,
             last_purchase = CASE WHEN r.hi >= s.last_purchase
                 THEN coalesce((SELECT max(o.placed_at) FROM customer_orders o
                                WHERE o.customer_id = s.customer_id AND o.status <> $4),
                               s.last_purchase)
                 ELSE s.last_purchase END
         FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[]) AS r(customer_id, lo, hi)
         WHERE s.customer_id = r.customer_id AND s.orders > 0
           AND (r.lo <= s.first_purchase OR r.hi >= s.last_purchase)",
    )
    .bind(&ids)
    .bind(removed.iter().map(|r| r.1.0).collect::<Vec<_>>())
    .bind(removed.iter().map(|r| r.1.1).collect::<Vec<_>>())
    .bind(CANCELLED)
    .execute(&mut *conn)
    .await?;
    // A customer without a counted order has no figures.
    sqlx::query("DELETE FROM customer_stats WHERE customer_id = ANY($1) AND orders <= 0")
        .bind(&ids)
        .execute(conn)
        .await?;
    Ok(())
}

/// Moves `merged`'s figures onto `survivor` (whose orders it now owns): the merged
/// customer's rows are taken away and added to the survivor's, as deltas.
pub async fn merge(conn: &mut PgConnection, survivor: &str, merged: &str) -> Result<(), Error> {
    type Stored = (
        i16,
        NaiveDate,
        String,
        i32,
        String,
        String,
        String,
        String,
        i64,
        i64,
    );
    let rows: Vec<Stored> = sqlx::query_as(
        "SELECT grain, day, channel_id, channel_kind, store_id, category_id, product_id, sku_id,
             orders, net_minor
         FROM customer_purchases WHERE customer_id = $1",
    )
    .bind(merged)
    .fetch_all(&mut *conn)
    .await?;
    let stats: Option<(DateTime<Utc>, DateTime<Utc>, i64, i64)> = sqlx::query_as(
        "SELECT first_purchase, last_purchase, orders, monetary FROM customer_stats
         WHERE customer_id = $1",
    )
    .bind(merged)
    .fetch_optional(&mut *conn)
    .await?;
    let mut deltas = Deltas::default();
    for (grain, day, channel_id, channel_kind, store_id, category_id, product_id, sku_id, n, net) in
        rows
    {
        let row = |customer: &str| Row {
            customer_id: customer.to_owned(),
            grain,
            day,
            channel_id: channel_id.clone(),
            channel_kind,
            store_id: store_id.clone(),
            category_id: category_id.clone(),
            product_id: product_id.clone(),
            sku_id: sku_id.clone(),
        };
        deltas.rows.insert(row(merged), (-n, -net));
        deltas.rows.insert(row(survivor), (n, net));
    }
    if let Some((first, last, orders, monetary)) = stats {
        deltas.stats.insert(
            merged.to_owned(),
            StatsDelta {
                orders: -orders,
                monetary: -monetary,
                added: None,
                removed: Some((first, last)),
            },
        );
        deltas.stats.insert(
            survivor.to_owned(),
            StatsDelta {
                orders,
                monetary,
                added: Some((first, last)),
                removed: None,
            },
        );
    }
    deltas.write(conn).await
}

/// The UTC day of `since`, and the end of that day.
fn first_day(since: DateTime<Utc>) -> (NaiveDate, DateTime<Utc>) {
    let day = since.date_naive();
    let end = day
        .succ_opt()
        .unwrap_or(NaiveDate::MAX)
        .and_time(NaiveTime::MIN)
        .and_utc();
    (day, end)
}

/// The net spend of the counted orders placed at or after `since` of each of `customers` (0
/// for one without), or of every customer with such an order when `None`; one statement.
pub async fn rolling_spends(
    conn: &mut PgConnection,
    customers: Option<&[&str]>,
    since: DateTime<Utc>,
) -> Result<HashMap<String, i64>, Error> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT c, rolling_spend(c, $2)
         FROM unnest(coalesce($1::text[], ARRAY(SELECT customer_id FROM customer_stats
                                               WHERE last_purchase >= $2))) AS c",
    )
    .bind(customers)
    .bind(since)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().collect())
}

/// For each customer among `customers` (every customer when `None`), the number of counted
/// orders `filter` matches at `now`; no entry for a customer without one. One statement: the
/// rows of the grain the filter reads, summed, plus the first day of a window from the
/// orders (and lines) of that day.
pub async fn orders_matching(
    conn: &mut PgConnection,
    filter: &PurchaseFilter,
    customers: Option<&[String]>,
    now: DateTime<Utc>,
) -> Result<HashMap<String, i64>, Error> {
    let grain = if filter.sku.is_some() {
        SKU
    } else if filter.product.is_some() {
        PRODUCT
    } else if filter.category.is_some() {
        CATEGORY
    } else {
        ORDER
    };
    let since = filter.within_days.map(|d| now - chrono::Duration::days(d));
    let mut q = QueryBuilder::<Postgres>::new(
        "SELECT customer_id, sum(n)::bigint FROM (SELECT customer_id, orders AS n
         FROM customer_purchases WHERE grain = ",
    );
    q.push_bind(grain);
    if let Some(ids) = customers {
        q.push(" AND customer_id = ANY(")
            .push_bind(ids.to_vec())
            .push(")");
    }
    if let Some(since) = since {
        q.push(" AND day > ").push_bind(first_day(since).0);
    }
    push_filter(&mut q, filter, "");
    if let Some(since) = since {
        let (_, end) = first_day(since);
        q.push(
            " UNION ALL SELECT o.customer_id, count(DISTINCT o.order_id) FROM customer_orders o",
        );
        if grain != ORDER {
            q.push(" JOIN order_lines l ON l.order_id = o.order_id");
        }
        q.push(" WHERE o.status <> ").push_bind(CANCELLED);
        q.push(" AND o.placed_at >= ").push_bind(since);
        q.push(" AND o.placed_at < ").push_bind(end);
        if let Some(ids) = customers {
            q.push(" AND o.customer_id = ANY(")
                .push_bind(ids.to_vec())
                .push(")");
        }
        push_filter(&mut q, filter, "o.");
        q.push(" GROUP BY o.customer_id");
    }
    q.push(") x GROUP BY customer_id HAVING sum(n) > 0");
    let rows: Vec<(String, i64)> = q.build_query_as().fetch_all(conn).await?;
    Ok(rows.into_iter().collect())
}

/// The filter's conditions; `order` prefixes the order's columns (the lines' are `l.`) in the
/// first day's read, and is empty over `customer_purchases`.
fn push_filter(q: &mut QueryBuilder<Postgres>, f: &PurchaseFilter, order: &str) {
    let line = if order.is_empty() { "" } else { "l." };
    let mut text = |column: &str, value: &Option<String>| {
        if let Some(v) = value {
            q.push(format_args!(" AND {column} = "))
                .push_bind(v.clone());
        }
    };
    text(&format!("{order}channel_id"), &f.channel);
    text(&format!("{order}store_id"), &f.store);
    text(&format!("{line}category_id"), &f.category);
    text(&format!("{line}product_id"), &f.product);
    text(&format!("{line}sku_id"), &f.sku);
    if let Some(kind) = f.channel_kind {
        q.push(format_args!(" AND {order}channel_kind = "))
            .push_bind(kind);
    }
}

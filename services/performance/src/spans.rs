//! Distinct-customer rollups: what the KPIs that count customers (buying customers, customers
//! with two orders or more, new customers who ordered again) and the cohort's net sales to date
//! need, kept in rows whose number does not grow with orders and whose reads are bounded by the
//! range's length.
//!
//! Each of these figures is a count (or sum) of *pairs of days* `(a, b)`, `a <= b`, lying
//! inside the range (`a >= start` and `b <= end`), computed per customer and key (a channel,
//! store or associate, or everything):
//!
//! - family 0, one pair `(d, d)` per order: the key's orders by known customers; for a customer
//!   with `k` orders in the range, `k` pairs are inside.
//! - family 1, consecutive orders `(o[i], o[i+1])` of the customer in the key: `k - 1` inside
//!   (when `k >= 1`), so buying customers = family 0 - family 1.
//! - family 2, orders two apart `(o[i], o[i+2])`: `k - 2` inside, so customers with two orders
//!   or more = family 1 - family 2.
//! - family 3, under the key the customer was acquired in, `(first order day, second order
//!   day)`: inside exactly when a customer acquired in the range ordered again within it.
//! - family 4, under the acquisition key, `(first order day, max(first, d))` weighted by the
//!   customer's net sales on day `d` (any channel): the cohort's net sales to the range's end.
//!
//! A pair is stored four times, at four grains: month × month, day × month, month × day and
//! day × day (`am`/`bm` always hold the months). Pairs inside `[s, e]` are exactly: month ×
//! month rows with `a`'s month after `s`'s and `b`'s before `e`'s; day × month rows with `a` in
//! `s`'s month, `a >= s`, `b`'s month before `e`'s; month × day rows with `a`'s month after
//! `s`'s, `b` in `e`'s month, `b <= e`; day × day rows with `a` in `s`'s month and `b` in
//! `e`'s. So a report reads at most months² + 2 × 31 × months + 31² rows per key and family,
//! however many orders there are.
//!
//! A customer's pairs are a function of its own facts only, through its [`Standing`]: every
//! change is applied as "compute the customer's pairs before, change the facts, compute them
//! after, add the difference", under a per-customer advisory lock, and [`rebuild`] recomputes
//! them all from the facts.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use omni_runtime::Result;
use sqlx::{FromRow, PgConnection};
use tokio_stream::StreamExt as _;

use crate::domain::DayRange;

/// Which customers a key groups: every order (0), a channel's (1), a store's (2), an
/// associate's (3). Matches the report dimensions total, channel, store, associate.
pub type Level = i16;
pub const TOTAL: Level = 0;
pub const CHANNEL: Level = 1;
pub const STORE: Level = 2;
pub const ASSOCIATE: Level = 3;

/// One stored row's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, FromRow)]
pub struct RowKey {
    pub level: Level,
    pub grain: i16,
    pub am: NaiveDate,
    pub bm: NaiveDate,
    pub a: NaiveDate,
    pub b: NaiveDate,
    pub family: i16,
    pub channel_id: String,
    pub store_id: String,
    pub associate_id: String,
}

/// Row key → value (a count, or minor units for family 4).
pub type Contributions = HashMap<RowKey, i64>;

/// One not-cancelled order of a customer, as far as these rollups care.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct CustomerOrder {
    pub placed_at: DateTime<Utc>,
    pub order_id: String,
    pub day: NaiveDate,
    pub channel_id: String,
    pub store_id: String,
    pub associate_id: String,
    pub sales: i64,
}

/// A refund on a day.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct CustomerReturn {
    pub day: NaiveDate,
    pub refund: i64,
}

/// Where an order or a return counts: its day, channel, store and associate.
pub type Place = (NaiveDate, String, String, String);

/// All a customer's pair rows are a function of: where its first order not cancelled was
/// placed, how many orders not cancelled it placed at each place, and its net sales (sales
/// less refunds) per day. It grows with the customer's distinct days and places, not with its
/// orders: `customer_days` holds it, and `customers` the acquisition, so a batch of changes
/// reads that instead of the customers' histories.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Standing {
    pub first: Option<Place>,
    pub orders: BTreeMap<Place, i64>,
    pub net: BTreeMap<NaiveDate, i64>,
}

impl Standing {
    /// From a customer's not-cancelled orders and its returns.
    pub fn from_facts(orders: &[CustomerOrder], returns: &[CustomerReturn]) -> Standing {
        let mut s = Standing {
            first: orders
                .iter()
                .min_by(|x, y| (x.placed_at, &x.order_id).cmp(&(y.placed_at, &y.order_id)))
                .map(|o| place(o.day, &o.channel_id, &o.store_id, &o.associate_id)),
            ..Standing::default()
        };
        for o in orders {
            let at = place(o.day, &o.channel_id, &o.store_id, &o.associate_id);
            s.add(&at, 1, o.sales);
        }
        for r in returns {
            s.add_net(r.day, -r.refund);
        }
        s
    }

    /// Moves a place's orders, and its day's net sales (a `customer_days` row, or a change to
    /// one). Nothing left at zero is kept, so equal standings compare equal.
    pub fn add(&mut self, at: &Place, orders: i64, net: i64) {
        if orders != 0 {
            let n = self.orders.entry(at.clone()).or_default();
            *n += orders;
            if *n == 0 {
                self.orders.remove(at);
            }
        }
        self.add_net(at.0, net);
    }

    fn add_net(&mut self, day: NaiveDate, net: i64) {
        if net != 0 {
            let v = self.net.entry(day).or_default();
            *v += net;
            if *v == 0 {
                self.net.remove(&day);
            }
        }
    }
}

/// The place of a row with these dimensions.
pub fn place(day: NaiveDate, channel: &str, store: &str, associate: &str) -> Place {
    (
        day,
        channel.to_owned(),
        store.to_owned(),
        associate.to_owned(),
    )
}

fn month(d: NaiveDate) -> NaiveDate {
    d.with_day(1).unwrap_or(d)
}

/// The keys an order (or an acquisition) with these dimensions falls under.
fn keys<'a>(
    channel: &'a str,
    store: &'a str,
    associate: &'a str,
) -> Vec<(Level, &'a str, &'a str, &'a str)> {
    let mut keys = vec![(TOTAL, "", "", ""), (CHANNEL, channel, "", "")];
    if !store.is_empty() {
        keys.push((STORE, channel, store, ""));
    }
    if !associate.is_empty() {
        keys.push((ASSOCIATE, channel, store, associate));
    }
    keys
}

/// One pair of days under a key and family, before it is stored at its four grains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Pair<'a> {
    key: (Level, &'a str, &'a str, &'a str),
    family: i16,
    a: NaiveDate,
    b: NaiveDate,
}

/// Weighted pairs. Adding one standing of a customer and taking away another cancels what they
/// share here, in small keys borrowed from the facts, before any stored row's key is built
/// (a customer with a long history shares almost everything with itself one order later).
#[derive(Debug, Default)]
pub struct Pairs<'a>(HashMap<Pair<'a>, i64>);

impl<'a> Pairs<'a> {
    fn add(
        &mut self,
        key: (Level, &'a str, &'a str, &'a str),
        family: i16,
        a: NaiveDate,
        b: NaiveDate,
        value: i64,
    ) {
        if value != 0 {
            *self.0.entry(Pair { key, family, a, b }).or_default() += value;
        }
    }

    /// Adds (`sign` 1) or takes away (-1) what one customer holds.
    pub fn customer(&mut self, s: &'a Standing, sign: i64) {
        let Some((first_day, channel, store, associate)) = &s.first else {
            return;
        };

        // Families 0-2: per key, the customer's order days in order, as runs of one day.
        let mut runs: BTreeMap<(Level, &'a str, &'a str, &'a str), BTreeMap<NaiveDate, i64>> =
            BTreeMap::new();
        for ((day, channel, store, associate), n) in &s.orders {
            for key in keys(channel, store, associate) {
                *runs.entry(key).or_default().entry(*day).or_default() += n;
            }
        }
        let mut second = None;
        for (key, days) in runs {
            let days: Vec<(NaiveDate, i64)> = days.into_iter().filter(|(_, n)| *n > 0).collect();
            if key.0 == TOTAL {
                second = nth_day(&days, 1);
            }
            for family in 0..=2_i16 {
                apart(&days, i64::from(family), |a, b, n| {
                    self.add(key, family, a, b, sign * n);
                });
            }
        }

        // Families 3-4: under the acquisition's keys.
        for key in keys(channel, store, associate) {
            if let Some(second) = second {
                self.add(key, 3, *first_day, second, sign);
            }
            for (d, value) in &s.net {
                self.add(key, 4, *first_day, (*first_day).max(*d), sign * *value);
            }
        }
    }

    /// Adds the stored rows these pairs move, at each of the four grains, to `out`.
    pub fn rows(self, out: &mut Contributions) {
        for (p, value) in self.0 {
            if value == 0 {
                continue;
            }
            let (level, channel, store, associate) = p.key;
            let (a, b) = (p.a, p.b);
            let (am, bm) = (month(a), month(b));
            for (grain, ka, kb) in [(0, am, bm), (1, a, bm), (2, am, b), (3, a, b)] {
                *out.entry(RowKey {
                    level,
                    grain,
                    am,
                    bm,
                    a: ka,
                    b: kb,
                    family: p.family,
                    channel_id: channel.to_owned(),
                    store_id: store.to_owned(),
                    associate_id: associate.to_owned(),
                })
                .or_default() += value;
            }
        }
    }
}

/// What one customer holds in the rollups, from its not-cancelled orders (any order) and its
/// returns. Pure: the rebuild and the merge's snapshot use it.
pub fn contributions(
    orders: &[CustomerOrder],
    returns: &[CustomerReturn],
    out: &mut Contributions,
) {
    let standing = Standing::from_facts(orders, returns);
    let mut pairs = Pairs::default();
    pairs.customer(&standing, 1);
    pairs.rows(out);
}

/// The `k`-th day (from 0) of the sorted days `runs` stand for.
fn nth_day(runs: &[(NaiveDate, i64)], k: i64) -> Option<NaiveDate> {
    let mut before = 0;
    for (day, n) in runs {
        before += n;
        if before > k {
            return Some(*day);
        }
    }
    None
}

/// Calls `pair(a, b, n)` for the pairs of days `k` apart in the sorted list of days `runs`
/// stands for (day, how many times, each at least once): `n` pairs `(a, b)`. Work grows with
/// the runs, not the days they stand for.
fn apart(runs: &[(NaiveDate, i64)], k: i64, mut pair: impl FnMut(NaiveDate, NaiveDate, i64)) {
    let mut starts = Vec::with_capacity(runs.len());
    let mut total = 0;
    for (_, n) in runs {
        starts.push(total);
        total += n;
    }
    for ((day, n), start) in runs.iter().zip(&starts) {
        // Inside the run: every day but the last `k` has its partner in the run.
        if *n > k {
            pair(*day, *day, n - k);
        }
        // The last `k` days of the run (or all of them) pair with a later run's.
        for p in start + n - k.min(*n)..start + n {
            let q = p + k;
            if q >= total {
                break;
            }
            let r = starts.partition_point(|s| *s <= q) - 1;
            pair(*day, runs[r].0, 1);
        }
    }
}

async fn customer_facts(
    conn: &mut PgConnection,
    customer_id: &str,
) -> Result<(Vec<CustomerOrder>, Vec<CustomerReturn>)> {
    let orders = sqlx::query_as(
        "SELECT placed_at, order_id, day, channel_id, store_id, associate_id, sales \
         FROM order_facts WHERE customer_id = $1 AND NOT cancelled",
    )
    .bind(customer_id)
    .fetch_all(&mut *conn)
    .await?;
    let returns = sqlx::query_as("SELECT day, refund FROM return_facts WHERE customer_id = $1")
        .bind(customer_id)
        .fetch_all(&mut *conn)
        .await?;
    Ok((orders, returns))
}

/// What some customers held before a change; [`Snapshot::settle`] after the change moves the
/// rollups by the difference.
#[derive(Debug)]
pub struct Snapshot {
    customers: Vec<String>,
    before: Contributions,
}

/// Takes the customers' locks for the rest of the transaction, in one statement and in id
/// order, so two changes never wait on each other crosswise. Every change to a customer's
/// orders or returns holds its lock. `customers` must be sorted and without duplicates.
pub async fn lock(conn: &mut PgConnection, customers: &[String]) -> Result<()> {
    if customers.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended('performance.customer:' || c, 0)) \
         FROM unnest($1::text[]) WITH ORDINALITY AS t(c, n) ORDER BY n",
    )
    .bind(customers)
    .execute(conn)
    .await?;
    Ok(())
}

/// Locks the customers (see [`lock`]) and records what they hold now.
pub async fn snapshot(conn: &mut PgConnection, customers: &[&str]) -> Result<Snapshot> {
    let mut customers: Vec<String> = customers
        .iter()
        .filter(|c| !c.is_empty())
        .map(|c| (*c).to_owned())
        .collect();
    customers.sort();
    customers.dedup();
    lock(conn, &customers).await?;
    let mut before = Contributions::new();
    for c in &customers {
        let (orders, returns) = customer_facts(conn, c).await?;
        contributions(&orders, &returns, &mut before);
    }
    Ok(Snapshot { customers, before })
}

impl Snapshot {
    /// Adds what the customers hold now minus what they held at the snapshot.
    pub async fn settle(self, conn: &mut PgConnection) -> Result<()> {
        let mut delta = Contributions::new();
        for c in &self.customers {
            let (orders, returns) = customer_facts(conn, c).await?;
            contributions(&orders, &returns, &mut delta);
        }
        for (k, v) in self.before {
            *delta.entry(k).or_default() -= v;
        }
        delta.retain(|_, v| *v != 0);
        add(conn, delta).await
    }
}

/// Column arrays for `UNNEST`, in key order (so concurrent writers lock rows in one order).
#[derive(Default)]
struct Columns {
    level: Vec<i16>,
    grain: Vec<i16>,
    am: Vec<NaiveDate>,
    bm: Vec<NaiveDate>,
    a: Vec<NaiveDate>,
    b: Vec<NaiveDate>,
    family: Vec<i16>,
    channel: Vec<String>,
    store: Vec<String>,
    associate: Vec<String>,
    value: Vec<i64>,
}

impl Columns {
    fn from_rows(rows: impl IntoIterator<Item = (RowKey, i64)>) -> Self {
        let mut c = Columns::default();
        for (k, v) in rows {
            c.level.push(k.level);
            c.grain.push(k.grain);
            c.am.push(k.am);
            c.bm.push(k.bm);
            c.a.push(k.a);
            c.b.push(k.b);
            c.family.push(k.family);
            c.channel.push(k.channel_id);
            c.store.push(k.store_id);
            c.associate.push(k.associate_id);
            c.value.push(v);
        }
        c
    }
}

const UNNEST: &str = "UNNEST($1::int2[], $2::int2[], $3::date[], $4::date[], $5::date[], \
    $6::date[], $7::int2[], $8::text[], $9::text[], $10::text[], $11::int8[])";
const KEY_COLUMNS: &str = "level, grain, am, bm, a, b, family, channel_id, store_id, associate_id";

fn bind_columns<'q>(
    q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    c: &'q Columns,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    q.bind(&c.level)
        .bind(&c.grain)
        .bind(&c.am)
        .bind(&c.bm)
        .bind(&c.a)
        .bind(&c.b)
        .bind(&c.family)
        .bind(&c.channel)
        .bind(&c.store)
        .bind(&c.associate)
        .bind(&c.value)
}

/// Adds `delta` to the stored rows; rows that reach zero are removed, as a rebuild would not
/// write them.
pub async fn add(conn: &mut PgConnection, delta: Contributions) -> Result<()> {
    if delta.is_empty() {
        return Ok(());
    }
    let mut rows: Vec<(RowKey, i64)> = delta.into_iter().collect();
    rows.sort();
    let columns = Columns::from_rows(rows);
    // The rows the delta brought to zero come back from the upsert itself: usually none, and
    // then nothing else runs (a delete joined with the whole delta cost as much as the upsert).
    let zero = bind_columns(
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "WITH moved AS (INSERT INTO pair_rollups ({KEY_COLUMNS}, value) \
               SELECT * FROM {UNNEST} ON CONFLICT ({KEY_COLUMNS}) DO UPDATE \
               SET value = pair_rollups.value + excluded.value RETURNING {KEY_COLUMNS}, value) \
             SELECT {KEY_COLUMNS} FROM moved WHERE value = 0"
        ))),
        &columns,
    )
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(RowKey::from_row)
    .collect::<std::result::Result<Vec<_>, _>>()?;
    if zero.is_empty() {
        return Ok(());
    }
    let columns = Columns::from_rows(zero.into_iter().map(|k| (k, 0)));
    bind_columns(
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM pair_rollups p USING {UNNEST} AS d ({KEY_COLUMNS}, value) \
             WHERE ({p}) = ({d}) AND p.value = 0",
            p = prefixed("p"),
            d = prefixed("d"),
        ))),
        &columns,
    )
    .execute(conn)
    .await?;
    Ok(())
}

fn prefixed(p: &str) -> String {
    KEY_COLUMNS
        .split(", ")
        .map(|c| format!("{p}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The distinct-customer figures of one report row over one range.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figures {
    pub customers: i64,
    pub repeat_customers: i64,
    pub new_customers_repeating: i64,
    pub cohort_net_sales: i64,
}

/// The figures per key of `level` over `range`, for the keys passing the channel and store
/// filters (empty: every one). Keys without any figure are left out.
pub async fn figures(
    conn: &mut sqlx::PgConnection,
    level: Level,
    range: DayRange,
    channels: &[String],
    stores: &[String],
) -> Result<BTreeMap<(String, String, String), Figures>> {
    let (s, e) = (range.start, range.end);
    let (ms, me) = (month(s), month(e));
    #[derive(FromRow)]
    struct Row {
        family: i16,
        channel_id: String,
        store_id: String,
        associate_id: String,
        value: i64,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT family, channel_id, store_id, associate_id, sum(value)::bigint AS value FROM ( \
           SELECT family, channel_id, store_id, associate_id, value FROM pair_rollups \
             WHERE level = $1 AND grain = 0 AND am > $4 AND am < $5 AND bm < $5 \
           UNION ALL \
           SELECT family, channel_id, store_id, associate_id, value FROM pair_rollups \
             WHERE level = $1 AND grain = 1 AND am = $4 AND bm < $5 AND a >= $2 \
           UNION ALL \
           SELECT family, channel_id, store_id, associate_id, value FROM pair_rollups \
             WHERE level = $1 AND grain = 2 AND am > $4 AND am <= $5 AND bm = $5 AND b <= $3 \
           UNION ALL \
           SELECT family, channel_id, store_id, associate_id, value FROM pair_rollups \
             WHERE level = $1 AND grain = 3 AND am = $4 AND bm = $5 AND a >= $2 AND b <= $3 \
         ) p \
         WHERE (cardinality($6::text[]) = 0 OR channel_id = ANY($6)) \
           AND (cardinality($7::text[]) = 0 OR store_id = ANY($7)) \
         GROUP BY 1, 2, 3, 4",
    )
    .bind(level)
    .bind(s)
    .bind(e)
    .bind(ms)
    .bind(me)
    .bind(channels)
    .bind(stores)
    .fetch_all(&mut *conn)
    .await?;
    let mut sums: BTreeMap<(String, String, String), [i64; 5]> = BTreeMap::new();
    for r in rows {
        if let Some(slot) = sums
            .entry((r.channel_id, r.store_id, r.associate_id))
            .or_default()
            .get_mut(usize::try_from(r.family).unwrap_or(usize::MAX))
        {
            *slot += r.value;
        }
    }
    Ok(sums
        .into_iter()
        .map(|(k, f)| {
            (
                k,
                Figures {
                    customers: f[0] - f[1],
                    repeat_customers: f[1] - f[2],
                    new_customers_repeating: f[3],
                    cohort_net_sales: f[4],
                },
            )
        })
        .filter(|(_, f)| *f != Figures::default())
        .collect())
}

/// Returns read as (customer, day, refund), by customer.
fn returns_by_customer(
    rows: Vec<(String, NaiveDate, i64)>,
) -> HashMap<String, Vec<CustomerReturn>> {
    let mut returns: HashMap<String, Vec<CustomerReturn>> = HashMap::new();
    for (customer, day, refund) in rows {
        returns
            .entry(customer)
            .or_default()
            .push(CustomerReturn { day, refund });
    }
    returns
}

/// Recomputes every row from raw facts (inside the caller's transaction, which keeps facts
/// still); returns (rows written, rows that differed).
pub async fn rebuild(conn: &mut PgConnection) -> Result<(i64, i64)> {
    let returns = returns_by_customer(
        sqlx::query_as("SELECT customer_id, day, refund FROM return_facts WHERE customer_id <> ''")
            .fetch_all(&mut *conn)
            .await?,
    );

    let mut rebuilt = Contributions::new();
    {
        #[derive(FromRow)]
        struct Row {
            customer_id: String,
            #[sqlx(flatten)]
            order: CustomerOrder,
        }
        let mut stream = sqlx::query_as::<_, Row>(
            "SELECT customer_id, placed_at, order_id, day, channel_id, store_id, associate_id, \
               sales FROM order_facts WHERE customer_id <> '' AND NOT cancelled \
             ORDER BY customer_id",
        )
        .fetch(&mut *conn);
        let mut current: Option<String> = None;
        let mut orders: Vec<CustomerOrder> = Vec::new();
        while let Some(row) = stream.next().await {
            let row = row?;
            if current.as_deref() != Some(row.customer_id.as_str()) {
                if let Some(c) = current.take() {
                    let r = returns.get(&c).map_or(&[][..], Vec::as_slice);
                    contributions(&orders, r, &mut rebuilt);
                }
                orders.clear();
                current = Some(row.customer_id);
            }
            orders.push(row.order);
        }
        if let Some(c) = current {
            let r = returns.get(&c).map_or(&[][..], Vec::as_slice);
            contributions(&orders, r, &mut rebuilt);
        }
    }
    rebuilt.retain(|_, v| *v != 0);

    let mut changed = 0_i64;
    {
        #[derive(FromRow)]
        struct Stored {
            #[sqlx(flatten)]
            key: RowKey,
            value: i64,
        }
        let mut seen = 0_i64;
        let mut stream = sqlx::query_as::<_, Stored>(sqlx::AssertSqlSafe(format!(
            "SELECT {KEY_COLUMNS}, value FROM pair_rollups"
        )))
        .fetch(&mut *conn);
        while let Some(row) = stream.next().await {
            let s = row?;
            match rebuilt.get(&s.key) {
                Some(v) if *v == s.value => seen += 1,
                Some(_) => {
                    seen += 1;
                    changed += 1;
                }
                None => changed += 1,
            }
        }
        // Rows the rebuild has and the table lacked.
        changed += i64::try_from(rebuilt.len()).unwrap_or(i64::MAX) - seen;
    }

    sqlx::query("DELETE FROM pair_rollups")
        .execute(&mut *conn)
        .await?;
    let written = i64::try_from(rebuilt.len()).unwrap_or(i64::MAX);
    let mut rows: Vec<(RowKey, i64)> = rebuilt.into_iter().collect();
    rows.sort();
    for chunk in rows.chunks(20_000) {
        let columns = Columns::from_rows(chunk.iter().cloned());
        bind_columns(
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO pair_rollups ({KEY_COLUMNS}, value) SELECT * FROM {UNNEST}"
            ))),
            &columns,
        )
        .execute(&mut *conn)
        .await?;
    }
    Ok((written, changed))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pairs `k` apart, from the days written out one by one.
    fn spelled_out(runs: &[(NaiveDate, i64)], k: usize) -> BTreeMap<(NaiveDate, NaiveDate), i64> {
        let days: Vec<NaiveDate> = runs
            .iter()
            .flat_map(|(d, n)| std::iter::repeat_n(*d, usize::try_from(*n).unwrap_or(0)))
            .collect();
        let mut pairs = BTreeMap::new();
        for (i, a) in days.iter().enumerate() {
            if let Some(b) = days.get(i + k) {
                *pairs.entry((*a, *b)).or_default() += 1;
            }
        }
        pairs
    }

    #[test]
    fn pairs_of_runs_are_the_pairs_of_the_days_written_out() {
        let day = |d: u32| NaiveDate::from_ymd_opt(2026, 3, d).expect("day");
        // Every shape of up to four runs of one to four days.
        let mut shapes: Vec<Vec<i64>> = vec![Vec::new()];
        for _ in 0..4 {
            let longer: Vec<Vec<i64>> = shapes
                .iter()
                .filter(|s| s.len() < 4)
                .flat_map(|s| {
                    (1..=4).map(move |n| {
                        let mut s = s.clone();
                        s.push(n);
                        s
                    })
                })
                .collect();
            shapes.extend(longer);
        }
        shapes.sort();
        shapes.dedup();
        assert!(shapes.len() > 300);
        for shape in shapes {
            let runs: Vec<(NaiveDate, i64)> = shape
                .iter()
                .enumerate()
                .map(|(i, n)| (day(u32::try_from(i).expect("small") * 3 + 1), *n))
                .collect();
            for k in 0..=2 {
                let mut got = BTreeMap::new();
                apart(&runs, k, |a, b, n| *got.entry((a, b)).or_default() += n);
                let k = usize::try_from(k).expect("small");
                assert_eq!(got, spelled_out(&runs, k), "runs {runs:?}, {k} apart");
            }
            let nth = (0..3).map(|k| nth_day(&runs, k)).collect::<Vec<_>>();
            let days = spelled_out(&runs, 0);
            let mut spelled: Vec<NaiveDate> = Vec::new();
            for ((d, _), n) in days {
                spelled.extend(std::iter::repeat_n(d, usize::try_from(n).unwrap_or(0)));
            }
            assert_eq!(
                nth,
                (0..3).map(|k| spelled.get(k).copied()).collect::<Vec<_>>()
            );
        }
    }
}

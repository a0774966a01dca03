//! Order changes applied to the facts and every rollup kept from them, a batch at a time.
//!
//! What an order holds in `daily_rollups` and `customer_days` is a function of its fact row
//! and whether it is its customer's first order not cancelled (`counted_first`); what a
//! customer holds in `pair_rollups` is a function of its orders and returns ([`spans`]). So a
//! batch of changes is applied as:
//!
//! 1. lock the customers the changes concern (their current and new customers) and the
//!    changed orders' rows;
//! 2. read those customers' first orders and their [`Standing`] (their `customer_days` rows),
//!    never their histories;
//! 3. work out in memory the facts after the changes, which order is each customer's first,
//!    and the difference every order and customer makes to each rollup row;
//! 4. write each table once with that difference (rows brought back to zero are removed, as a
//!    rebuild from facts would not write them).
//!
//! A batch costs about a dozen statements however many orders it holds, and reads what grows
//! with its customers' distinct days, not with their orders. Applied one order at a time the
//! same work took some twenty statements per order, and twice read the customer's whole
//! history back from Postgres; the round trips, not the work, bounded the consumer. Batches
//! then read every order of their customers, so their cost grew with history: at 200 orders a
//! customer, reading standings instead took the benchmark's rate from 1,292 to 3,141 events/s.
//!
//! A customer's first order needs its other orders only when a change takes the first away
//! (a cancellation, a merge, a later `placed_at`); then the earliest of the rest is read.
//!
//! The result is the one applying each change in turn gives: an order's contribution depends
//! on its row and flag only, so moving every changed contribution once lands where the steps
//! land (a test compares a batch with event-by-event application, table by table).

use std::collections::{BTreeMap, HashMap};

use chrono::NaiveDate;
use omni_runtime::Result;
use sqlx::{FromRow, PgConnection};

use crate::spans::{self, Contributions, Pairs, Place, Standing, place};
use crate::store::{ORDER_COLUMNS, OrderRow, ReturnRow};

/// An order's latest facts, and the kind of its channel when the event names it (0: not
/// said, which never overwrites a known kind).
#[derive(Debug, Clone)]
pub struct OrderChange {
    pub row: OrderRow,
    pub channel_kind: i32,
}

impl OrderRow {
    /// This row as it stands once applied over `older` facts of the same order: once
    /// cancelled, an order stays cancelled whatever arrives late; a ready time, once known, is
    /// kept by events that do not carry it.
    pub fn over(mut self, older: &OrderRow) -> OrderRow {
        self.cancelled |= older.cancelled;
        self.ready_at = self.ready_at.or(older.ready_at);
        self.promised_ready_at = self.promised_ready_at.or(older.promised_ready_at);
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
struct Stored {
    #[sqlx(flatten)]
    row: OrderRow,
    counted_first: bool,
}

/// `daily_rollups` figures orders and returns move: orders, units, sales, cogs, new customers,
/// repeat net sales, pickup orders, pickup hits, returns.
type DayFigures = [i64; 9];
type DayKey = Place;
/// Where a row of either rollup is: day, channel, store, associate.
type At<'a> = (NaiveDate, &'a String, &'a String, &'a String);
/// `customer_days` figures: orders and net sales.
type CustomerDayKey = (NaiveDate, String, String, String, String);

/// The rollup rows a batch moves, by how much.
#[derive(Default)]
struct Deltas {
    days: BTreeMap<DayKey, DayFigures>,
    customer_days: BTreeMap<CustomerDayKey, [i64; 2]>,
}

impl Deltas {
    /// Adds (`sign` 1) or removes (-1) what one order holds.
    fn contribute(&mut self, o: &OrderRow, first: bool, sign: i64) {
        if o.cancelled {
            return;
        }
        let known = !o.customer_id.is_empty();
        let pickup = o.ready_at.is_some() && o.promised_ready_at.is_some();
        let hit = matches!((o.ready_at, o.promised_ready_at), (Some(r), Some(p)) if r <= p);
        let repeat = if known && !first { o.sales } else { 0 };
        let figures = [
            1,
            o.units,
            o.sales,
            o.cost,
            i64::from(first && known),
            repeat,
            i64::from(pickup),
            i64::from(hit),
            0,
        ];
        let at = (o.day, &o.channel_id, &o.store_id, &o.associate_id);
        self.add(at, figures.map(|f| sign * f));
        if known {
            self.add_customer(at, &o.customer_id, [sign, sign * o.sales]);
        }
    }

    /// The customers' standings (`before`) moved by the customer-day rows these deltas move.
    fn standing(&self, before: &HashMap<String, Standing>) -> HashMap<String, Standing> {
        let mut after = before.clone();
        for ((day, channel, store, associate, customer), [orders, net]) in &self.customer_days {
            if let Some(s) = after.get_mut(customer) {
                s.add(&place(*day, channel, store, associate), *orders, *net);
            }
        }
        after
    }

    /// Moves the day row of `(day, channel, store, associate)` by `figures`.
    fn add(&mut self, (day, channel, store, associate): At<'_>, figures: DayFigures) {
        let row = self
            .days
            .entry((day, channel.clone(), store.clone(), associate.clone()))
            .or_default();
        for (sum, f) in row.iter_mut().zip(figures) {
            *sum += f;
        }
    }

    /// Moves a customer's row of that day by (orders, net sales).
    fn add_customer(
        &mut self,
        (day, channel, store, associate): At<'_>,
        customer: &str,
        [orders, net]: [i64; 2],
    ) {
        let row = self
            .customer_days
            .entry((
                day,
                channel.clone(),
                store.clone(),
                associate.clone(),
                customer.to_owned(),
            ))
            .or_default();
        row[0] += orders;
        row[1] += net;
    }
}

/// Applies a batch of order changes (see the module header). Changes to one order compose in
/// the order given.
pub async fn apply(conn: &mut PgConnection, changes: &[OrderChange]) -> Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let mut ids: Vec<&str> = changes.iter().map(|c| c.row.order_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();

    // The customers: the changed orders' current ones and their new ones.
    let current = customers_of(conn, &ids).await?;
    let customers = sorted_customers(
        current
            .values()
            .map(String::as_str)
            .chain(changes.iter().map(|c| c.row.customer_id.as_str())),
    );
    let Read {
        customers,
        mut stored,
        firsts,
        standing,
    } = lock_and_read(conn, &ids, customers).await?;

    // The facts after the changes.
    let mut after = stored.clone();
    for change in changes {
        let row = match after.get(&change.row.order_id) {
            Some(old) => change.row.clone().over(&old.row),
            None => change.row.clone(),
        };
        after.insert(
            row.order_id.clone(),
            Stored {
                row,
                counted_first: false,
            },
        );
    }
    // Each customer's first order is the earliest of its changed orders and its stored first,
    // unless a change took the stored first away or placed it later: then the earliest of the
    // customer's other orders is a candidate too.
    let displaced: Vec<&str> = firsts
        .iter()
        .filter(|(customer, id)| {
            let (Some(old), Some(new)) = (stored.get(*id), after.get(*id)) else {
                return false;
            };
            !(new.row.customer_id == **customer
                && !new.row.cancelled
                && new.row.placed_at <= old.row.placed_at)
        })
        .map(|(customer, _)| customer.as_str())
        .collect();
    for s in earliest_others(conn, &displaced, &ids).await? {
        after.insert(s.row.order_id.clone(), s.clone());
        stored.insert(s.row.order_id.clone(), s);
    }
    let mut earliest: HashMap<&str, &OrderRow> = HashMap::new();
    for s in after.values() {
        let o = &s.row;
        if o.customer_id.is_empty() || o.cancelled {
            continue;
        }
        let first = earliest.entry(o.customer_id.as_str()).or_insert(o);
        if (o.placed_at, &o.order_id) < (first.placed_at, &first.order_id) {
            *first = o;
        }
    }
    let first_ids: HashMap<String, String> = earliest
        .iter()
        .map(|(c, o)| ((*c).to_owned(), o.order_id.clone()))
        .collect();
    let first_places: HashMap<String, Place> = earliest
        .iter()
        .map(|(c, o)| {
            let at = place(o.day, &o.channel_id, &o.store_id, &o.associate_id);
            ((*c).to_owned(), at)
        })
        .collect();
    let acquisitions: Vec<OrderRow> = earliest.into_values().cloned().collect();
    for s in after.values_mut() {
        s.counted_first = first_ids.get(&s.row.customer_id) == Some(&s.row.order_id);
    }

    // What moves: every order whose row or flag changed.
    let mut deltas = Deltas::default();
    let mut written: Vec<&Stored> = Vec::new();
    for (id, new) in &after {
        let old = stored.get(id);
        if old == Some(new) {
            continue;
        }
        if let Some(old) = old {
            deltas.contribute(&old.row, old.counted_first, -1);
        }
        deltas.contribute(&new.row, new.counted_first, 1);
        written.push(new);
    }
    let mut moved = deltas.standing(&standing);
    for (customer, s) in &mut moved {
        s.first = first_places.get(customer).cloned();
    }
    let spans_delta = span_delta(&standing, &moved);

    write_facts(conn, &written).await?;
    write_days(conn, deltas.days).await?;
    write_customer_days(conn, deltas.customer_days).await?;
    write_acquisitions(conn, &customers, &acquisitions).await?;
    spans::add(conn, spans_delta).await?;
    let mut kinds: BTreeMap<&str, i32> = BTreeMap::new();
    for c in changes {
        let kind = kinds.entry(c.row.channel_id.as_str()).or_default();
        if c.channel_kind != 0 {
            *kind = c.channel_kind;
        }
    }
    upsert_channels(conn, &kinds).await
}

/// Applies completed returns, once per return id (the first of a batch wins, as the first
/// stored does): each is stored with the store, associate and customer its order has now,
/// and whether the order was a returning customer's, and moves the day, customer-day and pair
/// rollups by its refund and returned cost.
pub async fn apply_returns(conn: &mut PgConnection, returns: &[ReturnRow]) -> Result<()> {
    if returns.is_empty() {
        return Ok(());
    }
    let mut ids: Vec<&str> = returns.iter().map(|r| r.order_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let current = customers_of(conn, &ids).await?;
    let customers = sorted_customers(
        returns
            .iter()
            .map(|r| current.get(&r.order_id).unwrap_or(&r.customer_id).as_str()),
    );
    let Read {
        stored, standing, ..
    } = lock_and_read(conn, &ids, customers).await?;

    let mut rows: BTreeMap<&str, ReturnFact> = BTreeMap::new();
    for r in returns {
        rows.entry(r.return_id.as_str()).or_insert_with(|| {
            let (store, associate, customer, repeat) = match stored.get(&r.order_id) {
                Some(o) => (
                    o.row.store_id.clone(),
                    o.row.associate_id.clone(),
                    o.row.customer_id.clone(),
                    !o.row.customer_id.is_empty() && !o.counted_first,
                ),
                None => (String::new(), String::new(), r.customer_id.clone(), false),
            };
            ReturnFact {
                r,
                store,
                associate,
                customer,
                repeat,
            }
        });
    }
    let inserted = insert_returns(conn, rows.values()).await?;
    let rows: Vec<&ReturnFact> = rows
        .values()
        .filter(|f| inserted.contains(&f.r.return_id))
        .collect();
    if rows.is_empty() {
        return Ok(());
    }

    let mut deltas = Deltas::default();
    let mut kinds: BTreeMap<&str, i32> = BTreeMap::new();
    for f in &rows {
        let r = f.r;
        let at = (r.day, &r.order_channel_id, &f.store, &f.associate);
        // cogs net of the returned goods, repeat net sales, returns.
        let repeat = if f.repeat { r.refund } else { 0 };
        deltas.add(at, [0, 0, 0, -r.cost, 0, -repeat, 0, 0, r.refund]);
        if !f.customer.is_empty() {
            deltas.add_customer(at, &f.customer, [0, -r.refund]);
        }
        kinds.entry(r.order_channel_id.as_str()).or_default();
    }
    let spans_delta = span_delta(&standing, &deltas.standing(&standing));
    write_days(conn, deltas.days).await?;
    write_customer_days(conn, deltas.customer_days).await?;
    spans::add(conn, spans_delta).await?;
    upsert_channels(conn, &kinds).await
}

/// A return as stored: the event's figures with its order's standing.
struct ReturnFact<'a> {
    r: &'a ReturnRow,
    store: String,
    associate: String,
    customer: String,
    repeat: bool,
}

/// Stores the returns not stored before; the ids of those it stored.
async fn insert_returns<'a>(
    conn: &mut PgConnection,
    rows: impl Iterator<Item = &'a ReturnFact<'a>>,
) -> Result<Vec<String>> {
    let rows: Vec<&ReturnFact<'_>> = rows.collect();
    let text = |f: fn(&ReturnFact<'_>) -> String| rows.iter().map(|r| f(r)).collect::<Vec<_>>();
    Ok(sqlx::query_scalar(
        "INSERT INTO return_facts (return_id, order_id, channel_id, store_id, associate_id, \
           customer_id, day, refund, cost, repeat) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
           $6::text[], $7::date[], $8::int8[], $9::int8[], $10::bool[]) \
         ON CONFLICT DO NOTHING RETURNING return_id",
    )
    .bind(text(|f| f.r.return_id.clone()))
    .bind(text(|f| f.r.order_id.clone()))
    .bind(text(|f| f.r.order_channel_id.clone()))
    .bind(text(|f| f.store.clone()))
    .bind(text(|f| f.associate.clone()))
    .bind(text(|f| f.customer.clone()))
    .bind(rows.iter().map(|f| f.r.day).collect::<Vec<_>>())
    .bind(rows.iter().map(|f| f.r.refund).collect::<Vec<_>>())
    .bind(rows.iter().map(|f| f.r.cost).collect::<Vec<_>>())
    .bind(rows.iter().map(|f| f.repeat).collect::<Vec<_>>())
    .fetch_all(conn)
    .await?)
}

/// The customers of the known orders among `ids`, read without locking (to take the
/// customers' locks first, see [`lock_and_read`]).
async fn customers_of(conn: &mut PgConnection, ids: &[&str]) -> Result<HashMap<String, String>> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT order_id, customer_id FROM order_facts WHERE order_id = ANY($1)")
            .bind(ids)
            .fetch_all(conn)
            .await?;
    Ok(rows.into_iter().collect())
}

/// What a batch reads under its customers' locks.
struct Read {
    /// The customers locked, sorted.
    customers: Vec<String>,
    /// The changed orders' rows (locked) and the customers' first orders, by order id.
    stored: BTreeMap<String, Stored>,
    /// Each customer's first order not cancelled, by customer (customers without one have
    /// none).
    firsts: HashMap<String, String>,
    /// Every customer locked, with what its pair rows are a function of.
    standing: HashMap<String, Standing>,
}

/// What [`read`] reads, once `customers` and then the orders are locked: customers first, then
/// rows, the order every writer takes them in. When another writer moved one of the orders to
/// a customer not locked in between (rare), that customer is locked too and the read made
/// again.
async fn lock_and_read(
    conn: &mut PgConnection,
    ids: &[&str],
    mut customers: Vec<String>,
) -> Result<Read> {
    loop {
        spans::lock(conn, &customers).await?;
        let read = read(conn, ids, customers).await?;
        let held = sorted_customers(read.stored.values().map(|s| s.row.customer_id.as_str()));
        if held.iter().all(|c| read.customers.binary_search(c).is_ok()) {
            return Ok(read);
        }
        customers = sorted_customers(read.customers.iter().chain(&held).map(String::as_str));
    }
}

fn sorted_customers<'a>(ids: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut v: Vec<String> = ids.filter(|c| !c.is_empty()).map(str::to_owned).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The changed orders' rows (`ids`, sorted), locked (an order without a customer has no
/// customer lock to guard it); and each of `customers`' first order and standing, guarded by
/// the customers' locks, which every writer of a customer's orders and returns holds.
async fn read(conn: &mut PgConnection, ids: &[&str], customers: Vec<String>) -> Result<Read> {
    let rows: Vec<Stored> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ORDER_COLUMNS}, counted_first FROM order_facts \
         WHERE order_id = ANY($1) ORDER BY order_id FOR UPDATE"
    )))
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut stored: BTreeMap<String, Stored> = rows
        .into_iter()
        .map(|s| (s.row.order_id.clone(), s))
        .collect();
    let mut standing: HashMap<String, Standing> = customers
        .iter()
        .map(|c| (c.clone(), Standing::default()))
        .collect();
    let mut firsts = HashMap::new();
    if customers.is_empty() {
        return Ok(Read {
            customers,
            stored,
            firsts,
            standing,
        });
    }
    let first_rows: Vec<Stored> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ORDER_COLUMNS}, counted_first FROM order_facts WHERE order_id IN \
           (SELECT first_order_id FROM customers WHERE customer_id = ANY($1))"
    )))
    .bind(&customers)
    .fetch_all(&mut *conn)
    .await?;
    for first in first_rows {
        let Some(s) = standing.get_mut(&first.row.customer_id) else {
            continue;
        };
        let o = &first.row;
        s.first = Some(place(o.day, &o.channel_id, &o.store_id, &o.associate_id));
        firsts.insert(o.customer_id.clone(), o.order_id.clone());
        // A changed order's row was read (and locked) above.
        stored.entry(o.order_id.clone()).or_insert(first);
    }
    let days: Vec<(String, NaiveDate, String, String, String, i64, i64)> = sqlx::query_as(
        "SELECT customer_id, day, channel_id, store_id, associate_id, orders, net_sales \
         FROM customer_days WHERE customer_id = ANY($1)",
    )
    .bind(&customers)
    .fetch_all(&mut *conn)
    .await?;
    for (customer, day, channel, store, associate, orders, net) in days {
        if let Some(s) = standing.get_mut(&customer) {
            s.add(&(day, channel, store, associate), orders, net);
        }
    }
    Ok(Read {
        customers,
        stored,
        firsts,
        standing,
    })
}

/// The earliest order not cancelled of each of `customers` among those not in `ids` (sorted).
async fn earliest_others(
    conn: &mut PgConnection,
    customers: &[&str],
    ids: &[&str],
) -> Result<Vec<Stored>> {
    if customers.is_empty() {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT DISTINCT ON (customer_id) {ORDER_COLUMNS}, counted_first FROM order_facts \
         WHERE customer_id = ANY($1) AND NOT cancelled AND order_id <> ALL($2) \
         ORDER BY customer_id, placed_at, order_id"
    )))
    .bind(customers)
    .bind(ids)
    .fetch_all(conn)
    .await?)
}

/// What the customers hold in the pair rollups after a change minus before, computed only for
/// customers whose standing changed.
fn span_delta(
    before: &HashMap<String, Standing>,
    after: &HashMap<String, Standing>,
) -> Contributions {
    let mut pairs = Pairs::default();
    for (c, now) in after {
        let Some(then) = before.get(c) else {
            continue;
        };
        if then == now {
            continue;
        }
        pairs.customer(now, 1);
        pairs.customer(then, -1);
    }
    let mut delta = Contributions::new();
    pairs.rows(&mut delta);
    delta.retain(|_, v| *v != 0);
    delta
}

async fn write_facts(conn: &mut PgConnection, rows: &[&Stored]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let col = |f: fn(&OrderRow) -> String| rows.iter().map(|s| f(&s.row)).collect::<Vec<_>>();
    sqlx::query(
        "INSERT INTO order_facts (order_id, channel_id, store_id, associate_id, customer_id, \
           placed_at, day, sales, cost, units, cancelled, promised_ready_at, ready_at, \
           counted_first) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
           $6::timestamptz[], $7::date[], $8::int8[], $9::int8[], $10::int8[], $11::bool[], \
           $12::timestamptz[], $13::timestamptz[], $14::bool[]) \
         ON CONFLICT (order_id) DO UPDATE SET channel_id = excluded.channel_id, \
           store_id = excluded.store_id, associate_id = excluded.associate_id, \
           customer_id = excluded.customer_id, placed_at = excluded.placed_at, \
           day = excluded.day, sales = excluded.sales, cost = excluded.cost, \
           units = excluded.units, cancelled = excluded.cancelled, \
           promised_ready_at = excluded.promised_ready_at, ready_at = excluded.ready_at, \
           counted_first = excluded.counted_first",
    )
    .bind(col(|o| o.order_id.clone()))
    .bind(col(|o| o.channel_id.clone()))
    .bind(col(|o| o.store_id.clone()))
    .bind(col(|o| o.associate_id.clone()))
    .bind(col(|o| o.customer_id.clone()))
    .bind(rows.iter().map(|s| s.row.placed_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|s| s.row.day).collect::<Vec<_>>())
    .bind(rows.iter().map(|s| s.row.sales).collect::<Vec<_>>())
    .bind(rows.iter().map(|s| s.row.cost).collect::<Vec<_>>())
    .bind(rows.iter().map(|s| s.row.units).collect::<Vec<_>>())
    .bind(rows.iter().map(|s| s.row.cancelled).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|s| s.row.promised_ready_at)
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|s| s.row.ready_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|s| s.counted_first).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

/// Key columns of a rollup delta, in key order (so concurrent writers lock rows in one order).
struct DayColumns {
    day: Vec<NaiveDate>,
    channel: Vec<String>,
    store: Vec<String>,
    associate: Vec<String>,
}

impl DayColumns {
    fn new<'a>(keys: impl Iterator<Item = &'a DayKey>) -> Self {
        let mut c = DayColumns {
            day: Vec::new(),
            channel: Vec::new(),
            store: Vec::new(),
            associate: Vec::new(),
        };
        for (day, channel, store, associate) in keys {
            c.day.push(*day);
            c.channel.push(channel.clone());
            c.store.push(store.clone());
            c.associate.push(associate.clone());
        }
        c
    }
}

async fn write_days(conn: &mut PgConnection, mut days: BTreeMap<DayKey, DayFigures>) -> Result<()> {
    days.retain(|_, f| f.iter().any(|v| *v != 0));
    if days.is_empty() {
        return Ok(());
    }
    let keys = DayColumns::new(days.keys());
    let figure = |i: usize| days.values().map(|f| f[i]).collect::<Vec<i64>>();
    sqlx::query(
        "INSERT INTO daily_rollups (day, channel_id, store_id, associate_id, orders, units, \
           sales, cogs, new_customers, repeat_net_sales, pickup_orders, pickup_hits, returns) \
         SELECT * FROM UNNEST($1::date[], $2::text[], $3::text[], $4::text[], $5::int8[], \
           $6::int8[], $7::int8[], $8::int8[], $9::int8[], $10::int8[], $11::int8[], \
           $12::int8[], $13::int8[]) \
         ON CONFLICT (day, channel_id, store_id, associate_id) DO UPDATE SET \
           orders = daily_rollups.orders + excluded.orders, \
           units = daily_rollups.units + excluded.units, \
           sales = daily_rollups.sales + excluded.sales, \
           cogs = daily_rollups.cogs + excluded.cogs, \
           new_customers = daily_rollups.new_customers + excluded.new_customers, \
           repeat_net_sales = daily_rollups.repeat_net_sales + excluded.repeat_net_sales, \
           pickup_orders = daily_rollups.pickup_orders + excluded.pickup_orders, \
           pickup_hits = daily_rollups.pickup_hits + excluded.pickup_hits, \
           returns = daily_rollups.returns + excluded.returns",
    )
    .bind(&keys.day)
    .bind(&keys.channel)
    .bind(&keys.store)
    .bind(&keys.associate)
    .bind(figure(0))
    .bind(figure(1))
    .bind(figure(2))
    .bind(figure(3))
    .bind(figure(4))
    .bind(figure(5))
    .bind(figure(6))
    .bind(figure(7))
    .bind(figure(8))
    .execute(&mut *conn)
    .await?;
    // Only rows something was taken from can have come back to zero.
    let shrunk = DayColumns::new(
        days.iter()
            .filter(|(_, f)| f.iter().any(|v| *v < 0))
            .map(|(k, _)| k),
    );
    if shrunk.day.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "DELETE FROM daily_rollups r \
         USING UNNEST($1::date[], $2::text[], $3::text[], $4::text[]) AS k(day, c, s, a) \
         WHERE r.day = k.day AND r.channel_id = k.c AND r.store_id = k.s \
           AND r.associate_id = k.a AND r.orders = 0 AND r.units = 0 AND r.sales = 0 \
           AND r.returns = 0 AND r.cogs = 0 AND r.new_customers = 0 \
           AND r.repeat_net_sales = 0 AND r.pickup_orders = 0 AND r.pickup_hits = 0",
    )
    .bind(&shrunk.day)
    .bind(&shrunk.channel)
    .bind(&shrunk.store)
    .bind(&shrunk.associate)
    .execute(conn)
    .await?;
    Ok(())
}

async fn write_customer_days(
    conn: &mut PgConnection,
    mut rows: BTreeMap<CustomerDayKey, [i64; 2]>,
) -> Result<()> {
    rows.retain(|_, f| f.iter().any(|v| *v != 0));
    if rows.is_empty() {
        return Ok(());
    }
    let column = |f: fn(&CustomerDayKey) -> String| rows.keys().map(f).collect::<Vec<_>>();
    let days: Vec<NaiveDate> = rows.keys().map(|k| k.0).collect();
    let (channels, stores, associates, customers) = (
        column(|k| k.1.clone()),
        column(|k| k.2.clone()),
        column(|k| k.3.clone()),
        column(|k| k.4.clone()),
    );
    sqlx::query(
        "INSERT INTO customer_days (day, channel_id, store_id, associate_id, customer_id, \
           orders, net_sales) \
         SELECT * FROM UNNEST($1::date[], $2::text[], $3::text[], $4::text[], $5::text[], \
           $6::int8[], $7::int8[]) \
         ON CONFLICT (day, channel_id, store_id, associate_id, customer_id) DO UPDATE SET \
           orders = customer_days.orders + excluded.orders, \
           net_sales = customer_days.net_sales + excluded.net_sales",
    )
    .bind(&days)
    .bind(&channels)
    .bind(&stores)
    .bind(&associates)
    .bind(&customers)
    .bind(rows.values().map(|f| f[0]).collect::<Vec<_>>())
    .bind(rows.values().map(|f| f[1]).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    if rows.values().all(|f| f[0] > 0) {
        // Every row gained an order: none is empty.
        return Ok(());
    }
    sqlx::query(
        "DELETE FROM customer_days d \
         USING UNNEST($1::date[], $2::text[], $3::text[], $4::text[], $5::text[]) \
           AS k(day, c, s, a, customer) \
         WHERE d.day = k.day AND d.channel_id = k.c AND d.store_id = k.s \
           AND d.associate_id = k.a AND d.customer_id = k.customer \
           AND d.orders = 0 AND d.net_sales = 0",
    )
    .bind(&days)
    .bind(&channels)
    .bind(&stores)
    .bind(&associates)
    .bind(&customers)
    .execute(conn)
    .await?;
    Ok(())
}

/// Each customer's acquisition (its first order not cancelled); customers left without one
/// have none.
async fn write_acquisitions(
    conn: &mut PgConnection,
    customers: &[String],
    firsts: &[OrderRow],
) -> Result<()> {
    let none: Vec<&String> = customers
        .iter()
        .filter(|c| !firsts.iter().any(|o| &o.customer_id == *c))
        .collect();
    if !none.is_empty() {
        sqlx::query("DELETE FROM customers WHERE customer_id = ANY($1)")
            .bind(&none)
            .execute(&mut *conn)
            .await?;
    }
    if firsts.is_empty() {
        return Ok(());
    }
    let mut firsts: Vec<&OrderRow> = firsts.iter().collect();
    firsts.sort_by(|a, b| a.customer_id.cmp(&b.customer_id));
    let col = |f: fn(&OrderRow) -> String| firsts.iter().map(|o| f(o)).collect::<Vec<_>>();
    sqlx::query(
        "INSERT INTO customers (customer_id, first_order_id, first_day, \
           acquisition_channel_id, acquisition_store_id, acquisition_associate_id) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::date[], $4::text[], $5::text[], \
           $6::text[]) \
         ON CONFLICT (customer_id) DO UPDATE SET \
           first_order_id = excluded.first_order_id, first_day = excluded.first_day, \
           acquisition_channel_id = excluded.acquisition_channel_id, \
           acquisition_store_id = excluded.acquisition_store_id, \
           acquisition_associate_id = excluded.acquisition_associate_id",
    )
    .bind(col(|o| o.customer_id.clone()))
    .bind(col(|o| o.order_id.clone()))
    .bind(firsts.iter().map(|o| o.day).collect::<Vec<_>>())
    .bind(col(|o| o.channel_id.clone()))
    .bind(col(|o| o.store_id.clone()))
    .bind(col(|o| o.associate_id.clone()))
    .execute(conn)
    .await?;
    Ok(())
}

/// Registers the channels orders name, with their kind where known (0 keeps the stored one).
async fn upsert_channels(conn: &mut PgConnection, kinds: &BTreeMap<&str, i32>) -> Result<()> {
    if kinds.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO channels (channel_id, kind, name) \
         SELECT c, k, '' FROM UNNEST($1::text[], $2::int4[]) AS t(c, k) \
         ON CONFLICT (channel_id) DO UPDATE SET \
           kind = CASE WHEN excluded.kind = 0 THEN channels.kind ELSE excluded.kind END",
    )
    .bind(kinds.keys().collect::<Vec<_>>())
    .bind(kinds.values().collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

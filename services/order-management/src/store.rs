//! order-management's Postgres access: orders and returns stored whole (the encoded contract
//! message) beside the columns they are searched by, placement attempts, sourcing settings.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use omni_proto::omni::orders::v1::{DeliveryKind, Order, Return, SourcingConfig};
use omni_runtime::{Error, Result};
use prost::Message;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M> {
    M::decode(bytes).map_err(|e| Error::internal(format!("stored document does not decode: {e}")))
}

fn time(t: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    t.and_then(omni_runtime::time::from_timestamp)
}

/// The searchable columns of an order.
struct OrderColumns {
    id: Uuid,
    store_ids: Vec<String>,
    pickup_store_id: Option<String>,
    promised_ready_at: Option<DateTime<Utc>>,
    ready_at: Option<DateTime<Utc>>,
    pickup_deadline: Option<DateTime<Utc>>,
    payment_due_at: Option<DateTime<Utc>>,
    placed_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

fn columns(order: &Order) -> Result<OrderColumns> {
    let id = Uuid::parse_str(&order.id).map_err(|_| Error::internal("order id is not a uuid"))?;
    let mut store_ids: Vec<String> = Vec::new();
    let mut add = |s: &str| {
        if !s.is_empty() && !store_ids.iter().any(|x| x == s) {
            store_ids.push(s.to_owned());
        }
    };
    add(&order.store_id);
    if let Some(delivery) = &order.delivery {
        add(&delivery.store_id);
    }
    for f in &order.fulfilments {
        add(&f.location_id);
    }
    let pickup = order.pickup.as_ref().filter(|_| {
        order
            .delivery
            .as_ref()
            .is_some_and(|d| d.kind() == DeliveryKind::Pickup)
    });
    Ok(OrderColumns {
        id,
        store_ids,
        pickup_store_id: pickup.map(|p| p.store_id.clone()),
        promised_ready_at: pickup.and_then(|p| time(p.promised_ready_at.as_ref())),
        ready_at: pickup.and_then(|p| time(p.ready_at.as_ref())),
        pickup_deadline: pickup.and_then(|p| time(p.pickup_deadline.as_ref())),
        payment_due_at: time(order.payment_due_at.as_ref()),
        placed_at: time(order.placed_at.as_ref()).unwrap_or_else(Utc::now),
        updated_at: time(order.updated_at.as_ref()).unwrap_or_else(Utc::now),
    })
}

/// `n` order numbers' sequence values.
pub async fn next_order_sequences(pool: &PgPool, n: usize) -> Result<Vec<i64>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    Ok(
        sqlx::query_scalar("SELECT nextval('order_number_seq') FROM generate_series(1, $1)")
            .bind(i32::try_from(n).map_err(|_| Error::internal("too many order numbers"))?)
            .fetch_all(pool)
            .await?,
    )
}

/// The orders imported before under these (channel, reference) keys: id and order number.
pub async fn imported_orders(
    pool: &PgPool,
    keys: &[(String, String)],
) -> Result<HashMap<(String, String), (String, String)>> {
    let (channels, refs): (Vec<String>, Vec<String>) = keys.iter().cloned().unzip();
    let rows = sqlx::query(
        "SELECT i.channel_id, i.channel_order_ref, o.id, o.order_number
         FROM imported_orders i
         JOIN unnest($1::text[], $2::text[]) AS k(channel_id, channel_order_ref)
           USING (channel_id, channel_order_ref)
         JOIN orders o ON o.id = i.order_id",
    )
    .bind(&channels)
    .bind(&refs)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            let id: Uuid = row.try_get("id")?;
            Ok((
                (
                    row.try_get("channel_id")?,
                    row.try_get("channel_order_ref")?,
                ),
                (id.to_string(), row.try_get("order_number")?),
            ))
        })
        .collect()
}

/// Records that `order_id` is the import of (channel, reference); false when another import
/// already claimed it.
pub async fn claim_import(
    conn: &mut PgConnection,
    channel_id: &str,
    channel_order_ref: &str,
    order_id: Uuid,
) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO imported_orders (channel_id, channel_order_ref, order_id)
         VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(channel_id)
    .bind(channel_order_ref)
    .bind(order_id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn insert_order(conn: &mut PgConnection, order: &Order, credit_minor: i64) -> Result<()> {
    let c = columns(order)?;
    sqlx::query(
        "INSERT INTO orders (id, order_number, channel_id, customer_id, store_ids, status,
             pickup_store_id, promised_ready_at, ready_at, pickup_deadline, payment_due_at,
             credit_minor, placed_at, updated_at, doc)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
    )
    .bind(c.id)
    .bind(&order.order_number)
    .bind(&order.channel_id)
    .bind(&order.customer_id)
    .bind(&c.store_ids)
    .bind(order.status as i16)
    .bind(&c.pickup_store_id)
    .bind(c.promised_ready_at)
    .bind(c.ready_at)
    .bind(c.pickup_deadline)
    .bind(c.payment_due_at)
    .bind(credit_minor)
    .bind(c.placed_at)
    .bind(c.updated_at)
    .bind(order.encode_to_vec())
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn update_order(conn: &mut PgConnection, order: &Order) -> Result<()> {
    let c = columns(order)?;
    sqlx::query(
        "UPDATE orders SET store_ids = $2, status = $3, pickup_store_id = $4,
             promised_ready_at = $5, ready_at = $6, pickup_deadline = $7, payment_due_at = $8,
             updated_at = $9, doc = $10
         WHERE id = $1",
    )
    .bind(c.id)
    .bind(&c.store_ids)
    .bind(order.status as i16)
    .bind(&c.pickup_store_id)
    .bind(c.promised_ready_at)
    .bind(c.ready_at)
    .bind(c.pickup_deadline)
    .bind(c.payment_due_at)
    .bind(c.updated_at)
    .bind(order.encode_to_vec())
    .execute(conn)
    .await?;
    Ok(())
}

/// An order and the exchange credit toward it.
#[derive(Debug, Clone)]
pub struct StoredOrder {
    pub order: Order,
    pub credit_minor: i64,
    /// The encoded step in progress on the order, if any (`app::steps::Pending`).
    pub pending: Option<Vec<u8>>,
}

fn stored(row: &sqlx::postgres::PgRow) -> Result<StoredOrder> {
    Ok(StoredOrder {
        order: decode(row.get::<&[u8], _>("doc"))?,
        credit_minor: row.get("credit_minor"),
        pending: row.get("pending"),
    })
}

/// The order, locked until the transaction ends.
pub async fn lock_order(conn: &mut PgConnection, id: Uuid) -> Result<Option<StoredOrder>> {
    let row = sqlx::query("SELECT doc, credit_minor, pending FROM orders WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(stored).transpose()
}

pub async fn get_order(pool: &PgPool, id: Uuid) -> Result<Option<StoredOrder>> {
    let row = sqlx::query("SELECT doc, credit_minor, pending FROM orders WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(stored).transpose()
}

/// Records the step about to call other services on the (locked) order.
pub async fn begin_step(conn: &mut PgConnection, id: Uuid, step: &[u8]) -> Result<()> {
    sqlx::query("UPDATE orders SET pending = $2, pending_since = now() WHERE id = $1")
        .bind(id)
        .bind(step)
        .execute(conn)
        .await?;
    Ok(())
}

/// The order's step is over (committed or given up).
pub async fn clear_step(conn: &mut PgConnection, id: Uuid) -> Result<()> {
    sqlx::query("UPDATE orders SET pending = NULL, pending_since = NULL WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Steps begun before `before` and still pending: their process died or gave up waiting.
pub async fn stale_steps(
    pool: &PgPool,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<(Uuid, Vec<u8>)>> {
    let rows = sqlx::query(
        "SELECT id, pending FROM orders
         WHERE pending IS NOT NULL AND pending_since < $1
         ORDER BY pending_since
         LIMIT $2",
    )
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get("id"), r.get("pending")))
        .collect())
}

pub async fn order_id_by_number(pool: &PgPool, number: &str) -> Result<Option<Uuid>> {
    Ok(
        sqlx::query_scalar("SELECT id FROM orders WHERE order_number = $1")
            .bind(number)
            .fetch_optional(pool)
            .await?,
    )
}

#[derive(Debug, Default)]
pub struct OrderFilter {
    pub customer_id: Option<String>,
    pub channel_id: Option<String>,
    /// Any of these stores.
    pub store_ids: Option<Vec<String>>,
    pub statuses: Vec<i16>,
    pub placed_since: Option<DateTime<Utc>>,
    pub placed_until: Option<DateTime<Utc>>,
    /// Resume after this (placed_at, id).
    pub after: Option<(DateTime<Utc>, Uuid)>,
    pub limit: i64,
}

pub async fn list_orders(pool: &PgPool, f: &OrderFilter) -> Result<Vec<Order>> {
    let rows = sqlx::query(
        "SELECT doc FROM orders
         WHERE ($1::text IS NULL OR customer_id = $1)
           AND ($2::text IS NULL OR channel_id = $2)
           AND ($3::text[] IS NULL OR store_ids && $3)
           AND (cardinality($4::smallint[]) = 0 OR status = ANY($4))
           AND ($5::timestamptz IS NULL OR placed_at >= $5)
           AND ($6::timestamptz IS NULL OR placed_at < $6)
           AND ($7::timestamptz IS NULL OR (placed_at, id) < ($7, $8))
         ORDER BY placed_at DESC, id DESC
         LIMIT $9",
    )
    .bind(&f.customer_id)
    .bind(&f.channel_id)
    .bind(&f.store_ids)
    .bind(&f.statuses)
    .bind(f.placed_since)
    .bind(f.placed_until)
    .bind(f.after.map(|a| a.0))
    .bind(f.after.map(|a| a.1))
    .bind(f.limit)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| decode(r.get::<&[u8], _>("doc")))
        .collect()
}

/// Pickup orders at a store that are not handed over or cancelled, most urgent first.
pub async fn pickup_orders(pool: &PgPool, store_id: &str) -> Result<Vec<Order>> {
    let rows = sqlx::query(
        "SELECT doc FROM orders
         WHERE pickup_store_id = $1 AND status IN (2, 3, 4, 5)
         ORDER BY promised_ready_at NULLS LAST, id",
    )
    .bind(store_id)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| decode(r.get::<&[u8], _>("doc")))
        .collect()
}

/// Orders whose clock ran out: unpaid past their due time (`$1`), or ready pickups past their
/// deadline, with no step in progress; the oldest `$2`. Each branch reads its own partial index
/// (`orders_unpaid_idx`, `orders_lapsed_pickup_idx`, whose predicates name the statuses as
/// these literals do: 1 is PENDING_PAYMENT, 5 READY_FOR_PICKUP), so a sweep costs what is due,
/// not what was ever ordered.
pub const LAPSED_ORDERS: &str = "SELECT id FROM (
         SELECT id, placed_at FROM orders
          WHERE status = 1 AND payment_due_at < $1 AND pending IS NULL
         UNION ALL
         SELECT id, placed_at FROM orders
          WHERE status = 5 AND pickup_deadline < $1 AND pending IS NULL
     ) lapsed
     ORDER BY placed_at
     LIMIT $2";

/// [`LAPSED_ORDERS`]. Read without locks: each is cancelled as a step of its own, which checks
/// again under the order's lock.
pub async fn lapsed_orders(pool: &PgPool, now: DateTime<Utc>, limit: i64) -> Result<Vec<Uuid>> {
    Ok(sqlx::query_scalar(LAPSED_ORDERS)
        .bind(now)
        .bind(limit)
        .fetch_all(pool)
        .await?)
}

// ---------------------------------------------------------------------------------------------
// Placement attempts

/// Takes the key's lease for `lease`: records the attempt on first use (with `candidate` as
/// its order id), or takes over when no other try holds the lease and no order committed.
/// Returns the order id, this try's number, the hold generation and a fresh order number
/// sequence (taken in the same round trip), or `None` when the key is busy or settled.
pub async fn take_lease(
    pool: &PgPool,
    scope: &str,
    key: &str,
    candidate: Uuid,
    coupon_codes: &[String],
    channel_id: &str,
    lease: std::time::Duration,
) -> Result<Option<Lease>> {
    let row = sqlx::query(
        "INSERT INTO placement_attempts AS a
             (scope, key, order_id, coupon_codes, channel_id, tries, lease_until)
         VALUES ($1, $2, $3, $4, $5, 1, now() + $6 * interval '1 millisecond')
         ON CONFLICT (scope, key) DO UPDATE
             SET tries = a.tries + 1, lease_until = EXCLUDED.lease_until, released_at = NULL
             WHERE a.settled_at IS NULL AND (a.lease_until IS NULL OR a.lease_until < now())
         RETURNING order_id, tries, generation, nextval('order_number_seq') AS sequence",
    )
    .bind(scope)
    .bind(key)
    .bind(candidate)
    .bind(coupon_codes)
    .bind(channel_id)
    .bind(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX))
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| Lease {
        order_id: r.get("order_id"),
        attempt: r.get("tries"),
        generation: r.get("generation"),
        sequence: r.get("sequence"),
    }))
}

/// A placement try's lease on its key.
#[derive(Debug, Clone, Copy)]
pub struct Lease {
    pub order_id: Uuid,
    /// This try's number, from 1.
    pub attempt: i32,
    /// The stock hold generation its Reserve key carries.
    pub generation: i32,
    /// For the order number.
    pub sequence: i64,
}

/// Moves the key's tries on from hold generation `seen` (its hold has ended); returns the
/// generation to use now.
pub async fn next_generation(pool: &PgPool, scope: &str, key: &str, seen: i32) -> Result<i32> {
    Ok(sqlx::query_scalar(
        "UPDATE placement_attempts SET generation = greatest(generation, $3 + 1)
         WHERE scope = $1 AND key = $2
         RETURNING generation",
    )
    .bind(scope)
    .bind(key)
    .bind(seen)
    .fetch_one(pool)
    .await?)
}

/// Extends try `attempt`'s lease on its key while it works (nothing once another try took
/// the key over or it settled).
pub async fn renew_lease(
    pool: &PgPool,
    scope: &str,
    key: &str,
    attempt: i32,
    lease: std::time::Duration,
) -> Result<()> {
    sqlx::query(
        "UPDATE placement_attempts SET lease_until = now() + $4 * interval '1 millisecond'
         WHERE scope = $1 AND key = $2 AND tries = $3 AND settled_at IS NULL
           AND lease_until IS NOT NULL",
    )
    .bind(scope)
    .bind(key)
    .bind(attempt)
    .bind(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX))
    .execute(pool)
    .await?;
    Ok(())
}

/// Lets the next try in at once (this one failed and gave back what it held).
pub async fn drop_lease(pool: &PgPool, scope: &str, key: &str) -> Result<()> {
    sqlx::query("UPDATE placement_attempts SET lease_until = NULL WHERE scope = $1 AND key = $2")
        .bind(scope)
        .bind(key)
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn settle_attempt(conn: &mut PgConnection, scope: &str, key: &str) -> Result<()> {
    sqlx::query(
        "UPDATE placement_attempts SET settled_at = now(), lease_until = NULL
         WHERE scope = $1 AND key = $2",
    )
    .bind(scope)
    .bind(key)
    .execute(conn)
    .await?;
    Ok(())
}

/// A try that never became an order.
#[derive(Debug)]
pub struct Abandoned {
    pub scope: String,
    pub key: String,
    pub order_id: Uuid,
    pub coupon_codes: Vec<String>,
}

/// Attempts older than `before` with no order, no live lease and coupons not yet given back,
/// locked for the sweeper.
pub async fn abandoned_attempts(
    conn: &mut PgConnection,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Abandoned>> {
    let rows = sqlx::query(
        "SELECT a.scope, a.key, a.order_id, a.coupon_codes FROM placement_attempts a
         WHERE a.settled_at IS NULL AND a.released_at IS NULL AND a.created_at < $1
           AND (a.lease_until IS NULL OR a.lease_until < now())
           AND cardinality(a.coupon_codes) > 0
           AND NOT EXISTS (SELECT 1 FROM orders o WHERE o.id = a.order_id)
         ORDER BY a.created_at
         LIMIT $2
         FOR UPDATE SKIP LOCKED",
    )
    .bind(before)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .iter()
        .map(|r| Abandoned {
            scope: r.get("scope"),
            key: r.get("key"),
            order_id: r.get("order_id"),
            coupon_codes: r.get("coupon_codes"),
        })
        .collect())
}

pub async fn mark_released(conn: &mut PgConnection, scope: &str, key: &str) -> Result<()> {
    sqlx::query("UPDATE placement_attempts SET released_at = now() WHERE scope = $1 AND key = $2")
        .bind(scope)
        .bind(key)
        .execute(conn)
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Customer tiers (crm's, kept here)

/// The customer's tier and when it was known, if kept.
pub async fn tier(pool: &PgPool, customer_id: &str) -> Result<Option<(String, DateTime<Utc>)>> {
    Ok(
        sqlx::query_as("SELECT tier, as_of FROM customer_tiers WHERE customer_id = $1")
            .bind(customer_id)
            .fetch_optional(pool)
            .await?,
    )
}

/// Keeps the customer's tier as of `as_of`, unless a newer one is kept already.
pub async fn put_tier(
    conn: &mut PgConnection,
    customer_id: &str,
    tier: &str,
    as_of: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO customer_tiers (customer_id, tier, as_of) VALUES ($1, $2, $3)
         ON CONFLICT (customer_id) DO UPDATE SET tier = EXCLUDED.tier, as_of = EXCLUDED.as_of
         WHERE customer_tiers.as_of < EXCLUDED.as_of",
    )
    .bind(customer_id)
    .bind(tier)
    .bind(as_of)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn forget_tiers(conn: &mut PgConnection, customers: &[String]) -> Result<()> {
    sqlx::query("DELETE FROM customer_tiers WHERE customer_id = ANY($1)")
        .bind(customers)
        .execute(conn)
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Returns

pub async fn insert_return(conn: &mut PgConnection, r: &Return) -> Result<()> {
    sqlx::query(
        "INSERT INTO returns (id, order_id, customer_id, channel_id, location_id, status,
             created_at, updated_at, doc)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8)",
    )
    .bind(parse(&r.id)?)
    .bind(parse(&r.order_id)?)
    .bind(&r.customer_id)
    .bind(&r.channel_id)
    .bind(&r.location_id)
    .bind(r.status as i16)
    .bind(time(r.created_at.as_ref()).unwrap_or_else(Utc::now))
    .bind(r.encode_to_vec())
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn update_return(conn: &mut PgConnection, r: &Return) -> Result<()> {
    sqlx::query("UPDATE returns SET status = $2, updated_at = now(), doc = $3 WHERE id = $1")
        .bind(parse(&r.id)?)
        .bind(r.status as i16)
        .bind(r.encode_to_vec())
        .execute(conn)
        .await?;
    Ok(())
}

/// Records, in the return's transaction, the restock to make once it commits.
pub async fn owe_restock(conn: &mut PgConnection, id: Uuid, key: &str) -> Result<()> {
    sqlx::query("UPDATE returns SET restock_key = $2, restock_since = now() WHERE id = $1")
        .bind(id)
        .bind(key)
        .execute(conn)
        .await?;
    Ok(())
}

/// The return and the restock still owed for it, if any.
pub async fn owed_restock(pool: &PgPool, id: Uuid) -> Result<Option<(Return, String)>> {
    let row: Option<(Vec<u8>, String)> = sqlx::query_as(
        "SELECT doc, restock_key FROM returns WHERE id = $1 AND restock_key IS NOT NULL",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    row.map(|(doc, key)| Ok((decode(&doc)?, key))).transpose()
}

/// The restock of the return keyed `key` is made (or given up).
pub async fn restocked(pool: &PgPool, id: Uuid, key: &str) -> Result<()> {
    sqlx::query(
        "UPDATE returns SET restock_key = NULL, restock_since = NULL
         WHERE id = $1 AND restock_key = $2",
    )
    .bind(id)
    .bind(key)
    .execute(pool)
    .await?;
    Ok(())
}

/// Returns whose restock was recorded before `before` and is still owed.
pub async fn stale_restocks(pool: &PgPool, before: DateTime<Utc>, limit: i64) -> Result<Vec<Uuid>> {
    Ok(sqlx::query_scalar(
        "SELECT id FROM returns WHERE restock_key IS NOT NULL AND restock_since < $1
         ORDER BY restock_since LIMIT $2",
    )
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

pub async fn lock_return(conn: &mut PgConnection, id: Uuid) -> Result<Option<Return>> {
    let doc: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT doc FROM returns WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(conn)
            .await?;
    doc.map(|d| decode(&d)).transpose()
}

pub async fn get_return(pool: &PgPool, id: Uuid) -> Result<Option<Return>> {
    let doc: Option<Vec<u8>> = sqlx::query_scalar("SELECT doc FROM returns WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?;
    doc.map(|d| decode(&d)).transpose()
}

#[derive(Debug, Default)]
pub struct ReturnFilter {
    pub order_id: Option<Uuid>,
    pub customer_id: Option<String>,
    pub location_id: Option<String>,
    pub channel_id: Option<String>,
    /// Only returns of orders taken through these channels.
    pub order_channels: Option<Vec<String>>,
    pub after: Option<(DateTime<Utc>, Uuid)>,
    pub limit: i64,
}

pub async fn list_returns(pool: &PgPool, f: &ReturnFilter) -> Result<Vec<Return>> {
    let rows: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT doc FROM returns
         WHERE ($1::uuid IS NULL OR order_id = $1)
           AND ($2::text IS NULL OR customer_id = $2)
           AND ($3::text IS NULL OR location_id = $3)
           AND ($4::text IS NULL OR channel_id = $4)
           AND ($5::timestamptz IS NULL OR (created_at, id) < ($5, $6))
           AND ($8::text[] IS NULL OR order_id IN (SELECT id FROM orders WHERE channel_id = ANY($8)))
         ORDER BY created_at DESC, id DESC
         LIMIT $7",
    )
    .bind(f.order_id)
    .bind(&f.customer_id)
    .bind(&f.location_id)
    .bind(&f.channel_id)
    .bind(f.after.map(|a| a.0))
    .bind(f.after.map(|a| a.1))
    .bind(f.limit)
    .bind(&f.order_channels)
    .fetch_all(pool)
    .await?;
    rows.iter().map(|d| decode(d)).collect()
}

// ---------------------------------------------------------------------------------------------
// Sourcing settings

pub async fn sourcing_config(
    conn: &mut PgConnection,
    channel_id: &str,
) -> Result<Option<SourcingConfig>> {
    let doc: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT doc FROM sourcing_configs WHERE channel_id = $1")
            .bind(channel_id)
            .fetch_optional(conn)
            .await?;
    doc.map(|d| decode(&d)).transpose()
}

pub async fn put_sourcing_config(pool: &PgPool, config: &SourcingConfig) -> Result<()> {
    sqlx::query(
        "INSERT INTO sourcing_configs (channel_id, doc, updated_at) VALUES ($1, $2, now())
         ON CONFLICT (channel_id) DO UPDATE SET doc = EXCLUDED.doc, updated_at = now()",
    )
    .bind(&config.channel_id)
    .bind(config.encode_to_vec())
    .execute(pool)
    .await?;
    Ok(())
}

/// Sourcing configs by channel id after `after`, of `channels` only when given.
pub async fn list_sourcing_configs(
    pool: &PgPool,
    channels: Option<&[String]>,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<SourcingConfig>> {
    let rows: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT doc FROM sourcing_configs WHERE ($1::text IS NULL OR channel_id > $1)
             AND ($3::text[] IS NULL OR channel_id = ANY($3))
         ORDER BY channel_id LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .bind(channels)
    .fetch_all(pool)
    .await?;
    rows.iter().map(|d| decode(d)).collect()
}

fn parse(id: &str) -> Result<Uuid> {
    Uuid::parse_str(id).map_err(|_| Error::internal(format!("stored id {id} is not a uuid")))
}

//! Postgres access for crm: customers, their orders and the points ledger.

use chrono::{DateTime, Utc};
use omni_proto::events::{CustomerRegistered, OrderFacts};
use omni_runtime::Error;
use sqlx::PgConnection;
use uuid::Uuid;

pub const KIND_EARN: i32 = 1;
pub const KIND_RETURN_REVERSAL: i32 = 2;
pub const KIND_REDEEM: i32 = 3;
pub const KIND_REDEMPTION_CANCELLED: i32 = 4;
pub const KIND_ADJUSTMENT: i32 = 5;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CustomerRow {
    pub customer_id: String,
    pub member_number: String,
    pub name: String,
    pub phone: String,
    pub email: String,
    pub erased: bool,
    pub registered_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OrderRow {
    pub order_id: String,
    pub order_number: String,
    pub channel_id: String,
    pub channel_kind: i32,
    pub store_id: String,
    pub status: i32,
    pub total_minor: i64,
    pub currency: String,
    pub refunded_minor: i64,
    pub item_count: i32,
    pub placed_at: DateTime<Utc>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EntryRow {
    pub id: Uuid,
    pub customer_id: String,
    pub kind: i32,
    pub points: i64,
    pub balance_after: i64,
    pub channel_id: String,
    pub order_id: String,
    pub return_id: String,
    pub reason: String,
    pub created_at: DateTime<Utc>,
}

/// The id events and reads should use for `customer_id`: its survivor if it was merged away.
pub async fn resolve(conn: &mut PgConnection, customer_id: &str) -> Result<String, Error> {
    let merged: Option<Option<String>> =
        sqlx::query_scalar("SELECT merged_into FROM customers WHERE customer_id = $1")
            .bind(customer_id)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(merged.flatten().unwrap_or_else(|| customer_id.to_owned()))
}

/// [`resolve`], holding the customer's row (shared) until the transaction ends: what is
/// filed under the customer then cannot slip past a merge running beside it. The merge takes
/// the row exclusively before it moves anything, so either it waits for this transaction and
/// moves what it filed, or this one waits for the merge and files under the survivor. (The
/// consumer's readers of different streams, and replicas, apply events side by side.)
pub async fn resolve_locked(conn: &mut PgConnection, customer_id: &str) -> Result<String, Error> {
    ensure_customer(conn, customer_id).await?;
    let merged: Option<String> =
        sqlx::query_scalar("SELECT merged_into FROM customers WHERE customer_id = $1 FOR SHARE")
            .bind(customer_id)
            .fetch_one(&mut *conn)
            .await?;
    Ok(merged.unwrap_or_else(|| customer_id.to_owned()))
}

async fn ensure_customer(conn: &mut PgConnection, customer_id: &str) -> Result<(), Error> {
    sqlx::query("INSERT INTO customers (customer_id) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(customer_id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn register(conn: &mut PgConnection, r: &CustomerRegistered) -> Result<(), Error> {
    // An order may have arrived first and created a bare row; registration fills it in.
    sqlx::query(
        "INSERT INTO customers (customer_id, member_number, name, phone, email, registered_at,
             registered_channel_kind)
         VALUES ($1, $2, $3, $4, $5, now(), $6)
         ON CONFLICT (customer_id) DO UPDATE SET member_number = EXCLUDED.member_number,
             name = EXCLUDED.name, phone = EXCLUDED.phone, email = EXCLUDED.email,
             registered_at = COALESCE(customers.registered_at, EXCLUDED.registered_at),
             registered_channel_kind = EXCLUDED.registered_channel_kind
         WHERE NOT customers.erased",
    )
    .bind(&r.customer_id)
    .bind(&r.member_number)
    .bind(&r.name)
    .bind(&r.phone)
    .bind(&r.email)
    .bind(r.channel_kind)
    .execute(conn)
    .await?;
    Ok(())
}

/// Re-keys everything of `merged` to `survivor` and points `merged` at it.
pub async fn merge(conn: &mut PgConnection, survivor: &str, merged: &str) -> Result<(), Error> {
    if survivor == merged {
        return Ok(());
    }
    ensure_customer(conn, survivor).await?;
    ensure_customer(conn, merged).await?;
    // Before anything moves: an event filing under the merged customer now waits, or is
    // waited for (see `resolve_locked`).
    sqlx::query("SELECT 1 FROM customers WHERE customer_id = $1 FOR UPDATE")
        .bind(merged)
        .execute(&mut *conn)
        .await?;
    sqlx::query("UPDATE customer_orders SET customer_id = $1 WHERE customer_id = $2")
        .bind(survivor)
        .bind(merged)
        .execute(&mut *conn)
        .await?;
    // Plain re-keys: every row of the merged customer now belongs to the survivor.
    for table in [
        "coupons",
        "order_lines",
        "tickets",
        "feedback",
        "interactions",
        "deliveries",
    ] {
        // The table names are the constants above, never input.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {table} SET customer_id = $1 WHERE customer_id = $2"
        )))
        .bind(survivor)
        .bind(merged)
        .execute(&mut *conn)
        .await?;
    }
    // Where both have a row the survivor's own stands.
    sqlx::query(
        "INSERT INTO consents (customer_id, channel_kind, opt_in, updated_at)
         SELECT $1, channel_kind, opt_in, updated_at FROM consents WHERE customer_id = $2
         ON CONFLICT DO NOTHING",
    )
    .bind(survivor)
    .bind(merged)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO associates (customer_id, associate_id, store_id, assigned_at)
         SELECT $1, associate_id, store_id, assigned_at FROM associates WHERE customer_id = $2
         ON CONFLICT DO NOTHING",
    )
    .bind(survivor)
    .bind(merged)
    .execute(&mut *conn)
    .await?;
    for table in ["consents", "associates", "segment_members"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE customer_id = $1"
        )))
        .bind(merged)
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query("UPDATE points_entries SET customer_id = $1 WHERE customer_id = $2")
        .bind(survivor)
        .bind(merged)
        .execute(&mut *conn)
        .await?;
    let moved: Option<i64> =
        sqlx::query_scalar("DELETE FROM loyalty_accounts WHERE customer_id = $1 RETURNING balance")
            .bind(merged)
            .fetch_optional(&mut *conn)
            .await?;
    if let Some(balance) = moved {
        add_balance(conn, survivor, balance).await?;
    }
    sqlx::query("UPDATE customers SET merged_into = $1 WHERE customer_id = $2 OR merged_into = $2")
        .bind(survivor)
        .bind(merged)
        .execute(&mut *conn)
        .await?;
    crate::facts::refresh_stats(conn, merged).await?;
    crate::facts::refresh_stats(conn, survivor).await
}

/// Removes the personal data of a customer and of the duplicates merged into it (`merged`,
/// as identity names them, and any crm saw merged): contact details, free text (ticket
/// subjects and descriptions, notes, feedback, interaction notes) and the stored replies of
/// calls about them. Orders, points and figures stay, keyed by the bare ids.
pub async fn erase(
    conn: &mut PgConnection,
    customer_id: &str,
    merged: &[String],
) -> Result<(), Error> {
    ensure_customer(conn, customer_id).await?;
    let asked: Vec<String> = std::iter::once(customer_id.to_owned())
        .chain(merged.iter().cloned())
        .collect();
    let ids: Vec<String> = sqlx::query_scalar(
        "UPDATE customers SET member_number = '', name = '', phone = '', email = '', erased = true
         WHERE customer_id = ANY($1) OR merged_into = ANY($1) RETURNING customer_id",
    )
    .bind(&asked)
    .fetch_all(&mut *conn)
    .await?;
    // Free text may carry personal data too.
    for statement in [
        "UPDATE feedback SET comment = '' WHERE customer_id = ANY($1)",
        "UPDATE interactions SET note = '' WHERE customer_id = ANY($1)",
        "UPDATE tickets SET subject = '', description = '' WHERE customer_id = ANY($1)",
        "UPDATE ticket_notes SET body = '' WHERE ticket_id IN
             (SELECT id FROM tickets WHERE customer_id = ANY($1))",
        "UPDATE consents SET opt_in = false, updated_at = now() WHERE customer_id = ANY($1)",
    ] {
        sqlx::query(statement)
            .bind(&ids)
            .execute(&mut *conn)
            .await?;
    }
    omni_runtime::idempotency::forget(conn, &ids).await?;
    Ok(())
}

/// Records a consent change from identity.
pub async fn set_consent(
    conn: &mut PgConnection,
    customer_id: &str,
    channel_kind: i32,
    opt_in: bool,
) -> Result<(), Error> {
    ensure_customer(conn, customer_id).await?;
    sqlx::query(
        "INSERT INTO consents (customer_id, channel_kind, opt_in) VALUES ($1, $2, $3)
         ON CONFLICT (customer_id, channel_kind) DO UPDATE SET opt_in = EXCLUDED.opt_in,
             updated_at = now()",
    )
    .bind(customer_id)
    .bind(channel_kind)
    .bind(opt_in)
    .execute(conn)
    .await?;
    Ok(())
}

/// Learns (or corrects) the kind of a catalog channel.
pub async fn upsert_channel(
    conn: &mut PgConnection,
    channel_id: &str,
    kind: i32,
) -> Result<(), Error> {
    if channel_id.is_empty() || kind == 0 {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO channels (channel_id, kind) VALUES ($1, $2)
         ON CONFLICT (channel_id) DO UPDATE SET kind = EXCLUDED.kind
         WHERE channels.kind <> EXCLUDED.kind",
    )
    .bind(channel_id)
    .bind(kind)
    .execute(conn)
    .await?;
    Ok(())
}

/// The channel kinds of the marketing consents a customer gave.
pub async fn opt_ins(conn: &mut PgConnection, customer_id: &str) -> Result<Vec<i32>, Error> {
    Ok(sqlx::query_scalar(
        "SELECT channel_kind FROM consents WHERE customer_id = $1 AND opt_in ORDER BY channel_kind",
    )
    .bind(customer_id)
    .fetch_all(conn)
    .await?)
}

/// Files an order as an event of `event_at` describes it. An event older than the one that
/// set the stored status does not change it, and a cancelled order stays cancelled, so events
/// delivered out of order (a reclaimed or re-published entry) never bring an order back.
pub async fn upsert_order(
    conn: &mut PgConnection,
    customer_id: &str,
    facts: &OrderFacts,
    event_at: DateTime<Utc>,
) -> Result<(), Error> {
    ensure_customer(conn, customer_id).await?;
    let total = facts.total.clone().unwrap_or_default();
    let placed_at = facts
        .placed_at
        .as_ref()
        .and_then(|t| DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .unwrap_or_else(Utc::now);
    let items: i32 = facts.lines.iter().map(|l| l.quantity).sum();
    sqlx::query(
        "INSERT INTO customer_orders (order_id, customer_id, order_number, channel_id,
             channel_kind, store_id, status, total_minor, currency, item_count, placed_at,
             status_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
         ON CONFLICT (order_id) DO UPDATE SET status = EXCLUDED.status,
             total_minor = EXCLUDED.total_minor, item_count = EXCLUDED.item_count,
             status_at = EXCLUDED.status_at
         WHERE customer_orders.status <> $13 AND customer_orders.status_at <= EXCLUDED.status_at",
    )
    .bind(&facts.order_id)
    .bind(customer_id)
    .bind(&facts.order_number)
    .bind(&facts.channel_id)
    .bind(facts.channel_kind)
    .bind(if facts.store_id.is_empty() {
        &facts.handover_store_id
    } else {
        &facts.store_id
    })
    .bind(facts.status)
    .bind(total.minor_units)
    .bind(&total.currency)
    .bind(items)
    .bind(placed_at)
    .bind(event_at)
    .bind(crate::facts::CANCELLED)
    .execute(&mut *conn)
    .await?;
    for line in &facts.lines {
        sqlx::query(
            "INSERT INTO order_lines (order_id, line_id, customer_id, sku_id, product_id,
                 category_id, quantity, net_minor)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (order_id, line_id) DO UPDATE SET quantity = EXCLUDED.quantity,
                 net_minor = EXCLUDED.net_minor",
        )
        .bind(&facts.order_id)
        .bind(&line.line_id)
        .bind(customer_id)
        .bind(&line.sku_id)
        .bind(&line.product_id)
        .bind(&line.category_id)
        .bind(line.quantity)
        .bind(line.net_amount.as_ref().map_or(0, |m| m.minor_units))
        .execute(&mut *conn)
        .await?;
    }
    upsert_channel(conn, &facts.channel_id, facts.channel_kind).await?;
    crate::facts::refresh_stats(conn, customer_id).await
}

pub async fn record_refund(
    conn: &mut PgConnection,
    order_id: &str,
    refund_minor: i64,
) -> Result<(), Error> {
    let customer: Option<String> = sqlx::query_scalar(
        "UPDATE customer_orders SET refunded_minor = LEAST(total_minor, refunded_minor + $2)
         WHERE order_id = $1 RETURNING customer_id",
    )
    .bind(order_id)
    .bind(refund_minor)
    .fetch_optional(&mut *conn)
    .await?;
    match customer {
        Some(customer) => crate::facts::refresh_stats(conn, &customer).await,
        None => Ok(()),
    }
}

async fn add_balance(
    conn: &mut PgConnection,
    customer_id: &str,
    points: i64,
) -> Result<i64, Error> {
    Ok(sqlx::query_scalar(
        "INSERT INTO loyalty_accounts (customer_id, balance) VALUES ($1, $2)
         ON CONFLICT (customer_id) DO UPDATE SET balance = loyalty_accounts.balance + $2
         RETURNING balance",
    )
    .bind(customer_id)
    .bind(points)
    .fetch_one(conn)
    .await?)
}

#[allow(clippy::too_many_arguments)]
async fn entry(
    conn: &mut PgConnection,
    customer_id: &str,
    kind: i32,
    points: i64,
    balance_after: i64,
    channel_id: &str,
    order_id: &str,
    return_id: &str,
) -> Result<EntryRow, Error> {
    Ok(sqlx::query_as(
        "INSERT INTO points_entries (id, customer_id, kind, points, balance_after, channel_id,
             order_id, return_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         RETURNING id, customer_id, kind, points, balance_after, channel_id, order_id, return_id,
             reason, created_at",
    )
    .bind(Uuid::now_v7())
    .bind(customer_id)
    .bind(kind)
    .bind(points)
    .bind(balance_after)
    .bind(channel_id)
    .bind(order_id)
    .bind(return_id)
    .fetch_one(conn)
    .await?)
}

/// Credits a fulfilled order's points once per order, whichever event says it.
pub async fn earn(
    conn: &mut PgConnection,
    customer_id: &str,
    order_id: &str,
    channel_id: &str,
    points: i64,
) -> Result<(), Error> {
    let first: Option<bool> = sqlx::query_scalar(
        "UPDATE customer_orders SET earned = true WHERE order_id = $1 AND NOT earned RETURNING true",
    )
    .bind(order_id)
    .fetch_optional(&mut *conn)
    .await?;
    if first.is_none() || points <= 0 {
        return Ok(());
    }
    let balance = add_balance(conn, customer_id, points).await?;
    entry(
        conn,
        customer_id,
        KIND_EARN,
        points,
        balance,
        channel_id,
        order_id,
        "",
    )
    .await?;
    Ok(())
}

/// Takes back a return's points, never below zero (already redeemed points stay redeemed).
pub async fn reverse(
    conn: &mut PgConnection,
    customer_id: &str,
    order_id: &str,
    return_id: &str,
    channel_id: &str,
    points: i64,
) -> Result<(), Error> {
    if points <= 0 {
        return Ok(());
    }
    let balance: Option<i64> = sqlx::query_scalar(
        "SELECT balance FROM loyalty_accounts WHERE customer_id = $1 FOR UPDATE",
    )
    .bind(customer_id)
    .fetch_optional(&mut *conn)
    .await?;
    let taken = points.min(balance.unwrap_or(0));
    if taken == 0 {
        return Ok(());
    }
    // A plain update: an insert of a negative row would trip the CHECK before ON CONFLICT.
    let after: i64 = sqlx::query_scalar(
        "UPDATE loyalty_accounts SET balance = balance - $2 WHERE customer_id = $1
         RETURNING balance",
    )
    .bind(customer_id)
    .bind(taken)
    .fetch_one(&mut *conn)
    .await?;
    entry(
        conn,
        customer_id,
        KIND_RETURN_REVERSAL,
        -taken,
        after,
        channel_id,
        order_id,
        return_id,
    )
    .await?;
    Ok(())
}

/// Debits `points` if the balance covers them; the conditional update makes concurrent
/// redemptions serialise on the account row. `None` when the balance is short.
pub async fn redeem(
    conn: &mut PgConnection,
    customer_id: &str,
    points: i64,
    channel_id: &str,
    order_id: &str,
) -> Result<Option<EntryRow>, Error> {
    let after: Option<i64> = sqlx::query_scalar(
        "UPDATE loyalty_accounts SET balance = balance - $2
         WHERE customer_id = $1 AND balance >= $2 RETURNING balance",
    )
    .bind(customer_id)
    .bind(points)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(after) = after else {
        return Ok(None);
    };
    let row = entry(
        conn,
        customer_id,
        KIND_REDEEM,
        -points,
        after,
        channel_id,
        order_id,
        "",
    )
    .await?;
    Ok(Some(row))
}

pub async fn customer(
    conn: &mut PgConnection,
    customer_id: &str,
) -> Result<Option<CustomerRow>, Error> {
    Ok(sqlx::query_as(
        "SELECT customer_id, member_number, name, phone, email, erased, registered_at
         FROM customers WHERE customer_id = $1",
    )
    .bind(customer_id)
    .fetch_optional(conn)
    .await?)
}

pub async fn orders(conn: &mut PgConnection, customer_id: &str) -> Result<Vec<OrderRow>, Error> {
    Ok(sqlx::query_as(
        "SELECT order_id, order_number, channel_id, channel_kind, store_id, status, total_minor,
             currency, refunded_minor, item_count, placed_at
         FROM customer_orders WHERE customer_id = $1 ORDER BY placed_at DESC, order_id",
    )
    .bind(customer_id)
    .fetch_all(conn)
    .await?)
}

/// What a loyalty account shows, read in one statement.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LoyaltyFigures {
    /// The survivor when the customer asked for was merged into another.
    pub customer_id: String,
    pub balance: i64,
    /// Net spend (total less refunds) of the orders placed since the window's start, cancelled
    /// ones aside.
    pub spend: i64,
    /// Of the customer's latest order; empty without orders.
    pub currency: String,
}

/// The loyalty figures of `customer_id` (or its survivor); `None` for a customer crm does not
/// know.
pub async fn loyalty_figures(
    conn: &mut PgConnection,
    customer_id: &str,
    cancelled: i32,
    since: DateTime<Utc>,
) -> Result<Option<LoyaltyFigures>, Error> {
    Ok(sqlx::query_as(
        "WITH r AS (
             SELECT coalesce((SELECT merged_into FROM customers WHERE customer_id = $1), $1)
                 AS id
         )
         SELECT r.id AS customer_id,
             coalesce((SELECT balance FROM loyalty_accounts WHERE customer_id = r.id), 0)
                 AS balance,
             coalesce((SELECT sum(total_minor - refunded_minor) FROM customer_orders
                 WHERE customer_id = r.id AND status <> $2 AND placed_at >= $3), 0)::bigint
                 AS spend,
             coalesce((SELECT currency FROM customer_orders WHERE customer_id = r.id
                 ORDER BY placed_at DESC, order_id LIMIT 1), '') AS currency
         FROM r
         WHERE EXISTS (SELECT 1 FROM customers c WHERE c.customer_id = r.id)",
    )
    .bind(customer_id)
    .bind(cancelled)
    .bind(since)
    .fetch_optional(conn)
    .await?)
}

pub async fn balance(conn: &mut PgConnection, customer_id: &str) -> Result<i64, Error> {
    let balance: Option<i64> =
        sqlx::query_scalar("SELECT balance FROM loyalty_accounts WHERE customer_id = $1")
            .bind(customer_id)
            .fetch_optional(conn)
            .await?;
    Ok(balance.unwrap_or(0))
}

/// Applies a signed manual correction; `None` when it would take the balance below zero.
pub async fn adjust(
    conn: &mut PgConnection,
    customer_id: &str,
    points: i64,
    reason: &str,
) -> Result<Option<EntryRow>, Error> {
    sqlx::query("INSERT INTO loyalty_accounts (customer_id) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(customer_id)
        .execute(&mut *conn)
        .await?;
    let after: Option<i64> = sqlx::query_scalar(
        "UPDATE loyalty_accounts SET balance = balance + $2
         WHERE customer_id = $1 AND balance + $2 >= 0 RETURNING balance",
    )
    .bind(customer_id)
    .bind(points)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(after) = after else {
        return Ok(None);
    };
    let row = sqlx::query_as(
        "INSERT INTO points_entries (id, customer_id, kind, points, balance_after, reason)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING *",
    )
    .bind(Uuid::now_v7())
    .bind(customer_id)
    .bind(KIND_ADJUSTMENT)
    .bind(points)
    .bind(after)
    .bind(reason)
    .fetch_one(conn)
    .await?;
    Ok(Some(row))
}

/// A points entry by id, locked for the transaction.
pub async fn entry_for_update(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<EntryRow>, Error> {
    Ok(
        sqlx::query_as("SELECT * FROM points_entries WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(conn)
            .await?,
    )
}

/// The entry that already gave back the redemption `redeem_id`, if any.
pub async fn cancellation_of(
    conn: &mut PgConnection,
    redeem_id: Uuid,
) -> Result<Option<EntryRow>, Error> {
    Ok(
        sqlx::query_as("SELECT * FROM points_entries WHERE cancels_entry_id = $1")
            .bind(redeem_id)
            .fetch_optional(conn)
            .await?,
    )
}

/// Gives back the points of the redemption `redeemed`.
pub async fn cancel_redemption(
    conn: &mut PgConnection,
    redeemed: &EntryRow,
    reason: &str,
) -> Result<EntryRow, Error> {
    let points = -redeemed.points;
    let balance = add_balance(conn, &redeemed.customer_id, points).await?;
    Ok(sqlx::query_as(
        "INSERT INTO points_entries (id, customer_id, kind, points, balance_after, channel_id,
             order_id, reason, cancels_entry_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING *",
    )
    .bind(Uuid::now_v7())
    .bind(&redeemed.customer_id)
    .bind(KIND_REDEMPTION_CANCELLED)
    .bind(points)
    .bind(balance)
    .bind(&redeemed.channel_id)
    .bind(&redeemed.order_id)
    .bind(reason)
    .bind(redeemed.id)
    .fetch_one(conn)
    .await?)
}

/// A customer's ledger, newest first, before the entry `before`.
pub async fn entries(
    conn: &mut PgConnection,
    customer_id: &str,
    before: Uuid,
    limit: i64,
) -> Result<Vec<EntryRow>, Error> {
    Ok(sqlx::query_as(
        "SELECT * FROM points_entries WHERE customer_id = $1 AND id < $2
         ORDER BY id DESC LIMIT $3",
    )
    .bind(customer_id)
    .bind(before)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

//! Postgres access for crm: customers, their orders and the points ledger.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use omni_proto::events::CustomerRegistered;
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

/// The survivor of each of `customer_ids` (itself when not merged away), creating the
/// customers crm does not know yet, and holding their rows (shared) until the transaction ends:
/// what is filed under them then cannot slip past a merge running beside it. The merge takes
/// the row exclusively before it moves anything, so either it waits for this transaction and
/// moves what it filed, or this one waits for the merge and files under the survivor. (The
/// consumer's readers of different streams, and replicas, apply events side by side.) The rows
/// are locked in id order, so two transactions lock them in the same order.
pub async fn resolve_locked(
    conn: &mut PgConnection,
    customer_ids: &[&str],
) -> Result<HashMap<String, String>, Error> {
    ensure_customers(conn, customer_ids).await?;
    let rows: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT customer_id, merged_into FROM customers WHERE customer_id = ANY($1)
         ORDER BY customer_id FOR SHARE",
    )
    .bind(customer_ids)
    .fetch_all(&mut *conn)
    .await?;
    let resolved: HashMap<String, String> = rows
        .into_iter()
        .map(|(id, merged)| {
            let survivor = merged.unwrap_or_else(|| id.clone());
            (id, survivor)
        })
        .collect();
    // A survivor's row was created by its merge; filing under it makes sure of it all the same.
    let mut survivors: Vec<&str> = resolved
        .values()
        .map(String::as_str)
        .filter(|s| !customer_ids.contains(s))
        .collect();
    if !survivors.is_empty() {
        survivors.sort_unstable();
        survivors.dedup();
        ensure_customers(conn, &survivors).await?;
    }
    Ok(resolved)
}

/// The survivor of each of `customer_ids` as [`resolve`] gives it, in one statement; an id crm
/// does not know is its own.
pub async fn resolve_all(
    conn: &mut PgConnection,
    customer_ids: &[String],
) -> Result<HashMap<String, String>, Error> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT customer_id, merged_into FROM customers
         WHERE customer_id = ANY($1) AND merged_into IS NOT NULL",
    )
    .bind(customer_ids)
    .fetch_all(conn)
    .await?;
    let merged: HashMap<String, String> = rows.into_iter().collect();
    Ok(customer_ids
        .iter()
        .map(|id| {
            let survivor = merged.get(id).cloned().unwrap_or_else(|| id.clone());
            (id.clone(), survivor)
        })
        .collect())
}

async fn ensure_customers(conn: &mut PgConnection, customer_ids: &[&str]) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO customers (customer_id) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
    )
    .bind(customer_ids)
    .execute(conn)
    .await?;
    Ok(())
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
    crate::purchases::merge(conn, survivor, merged).await
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
    upsert_channels(conn, &[(channel_id, kind)]).await
}

/// [`upsert_channel`] for many channels in one statement; each channel id at most once.
/// Channels without an id or a kind are left out.
pub async fn upsert_channels(
    conn: &mut PgConnection,
    channels: &[(&str, i32)],
) -> Result<(), Error> {
    let (ids, kinds): (Vec<&str>, Vec<i32>) = channels
        .iter()
        .filter(|(id, kind)| !id.is_empty() && *kind != 0)
        .copied()
        .unzip();
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO channels (channel_id, kind) SELECT * FROM unnest($1::text[], $2::int[])
         ON CONFLICT (channel_id) DO UPDATE SET kind = EXCLUDED.kind
         WHERE channels.kind <> EXCLUDED.kind",
    )
    .bind(&ids)
    .bind(&kinds)
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

/// An order as `customer_orders` holds it, or as a run of events files it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FiledOrder {
    pub order_id: String,
    pub customer_id: String,
    pub order_number: String,
    pub channel_id: String,
    pub channel_kind: i32,
    pub store_id: String,
    pub status: i32,
    pub total_minor: i64,
    pub currency: String,
    pub item_count: i32,
    pub placed_at: DateTime<Utc>,
    /// When the event that set the status happened; `None` for a row filed before these times
    /// were kept ('-infinity'), which any event is newer than.
    pub status_at: Option<DateTime<Utc>>,
    pub refunded_minor: i64,
    pub earned: bool,
}

/// The stored orders among `order_ids`, locked for update in id order (two transactions lock
/// them in the same order).
pub async fn orders_for_update(
    conn: &mut PgConnection,
    order_ids: &[&str],
) -> Result<Vec<FiledOrder>, Error> {
    Ok(sqlx::query_as(
        "SELECT order_id, customer_id, order_number, channel_id, channel_kind, store_id, status,
             total_minor, currency, item_count, placed_at,
             NULLIF(status_at, '-infinity'::timestamptz) AS status_at, refunded_minor, earned
         FROM customer_orders WHERE order_id = ANY($1) ORDER BY order_id FOR UPDATE",
    )
    .bind(order_ids)
    .fetch_all(conn)
    .await?)
}

/// Files orders in one statement: inserts the new ones, and sets the status, total, item count
/// and status time of the stored ones, unless the stored status is CANCELLED or was set by a
/// newer event, so events delivered out of order (a reclaimed or re-published entry) never
/// bring an order back. The guard holds against a row another transaction filed meanwhile.
/// Each order id at most once; the earned flag and refunds are not written here.
pub async fn file_orders(conn: &mut PgConnection, orders: &[&FiledOrder]) -> Result<(), Error> {
    if orders.is_empty() {
        return Ok(());
    }
    let column = |f: fn(&FiledOrder) -> &str| orders.iter().map(|o| f(o)).collect::<Vec<&str>>();
    // `None` goes through as the '-infinity' it was read from.
    let status_at: Vec<Option<DateTime<Utc>>> = orders.iter().map(|o| o.status_at).collect();
    sqlx::query(
        "INSERT INTO customer_orders (order_id, customer_id, order_number, channel_id,
             channel_kind, store_id, status, total_minor, currency, item_count, placed_at,
             status_at)
         SELECT o.order_id, o.customer_id, o.order_number, o.channel_id, o.channel_kind,
             o.store_id, o.status, o.total_minor, o.currency, o.item_count, o.placed_at,
             coalesce(o.status_at, '-infinity')
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::text[],
                     $7::int[], $8::bigint[], $9::text[], $10::int[], $11::timestamptz[],
                     $12::timestamptz[])
             AS o(order_id, customer_id, order_number, channel_id, channel_kind, store_id, status,
                  total_minor, currency, item_count, placed_at, status_at)
         ON CONFLICT (order_id) DO UPDATE SET status = EXCLUDED.status,
             total_minor = EXCLUDED.total_minor, item_count = EXCLUDED.item_count,
             status_at = EXCLUDED.status_at
         WHERE customer_orders.status <> $13 AND customer_orders.status_at <= EXCLUDED.status_at",
    )
    .bind(column(|o| &o.order_id))
    .bind(column(|o| &o.customer_id))
    .bind(column(|o| &o.order_number))
    .bind(column(|o| &o.channel_id))
    .bind(orders.iter().map(|o| o.channel_kind).collect::<Vec<_>>())
    .bind(column(|o| &o.store_id))
    .bind(orders.iter().map(|o| o.status).collect::<Vec<_>>())
    .bind(orders.iter().map(|o| o.total_minor).collect::<Vec<_>>())
    .bind(column(|o| &o.currency))
    .bind(orders.iter().map(|o| o.item_count).collect::<Vec<_>>())
    .bind(orders.iter().map(|o| o.placed_at).collect::<Vec<_>>())
    .bind(status_at)
    .bind(crate::facts::CANCELLED)
    .execute(conn)
    .await?;
    Ok(())
}

/// An order line as a run of events files it.
#[derive(Debug, Clone)]
pub struct FiledLine {
    pub order_id: String,
    pub line_id: String,
    pub customer_id: String,
    pub sku_id: String,
    pub product_id: String,
    pub category_id: String,
    pub quantity: i32,
    pub net_minor: i64,
}

/// Files order lines in one statement: a new line is inserted whole, a stored one gets its
/// quantity and net amount (its customer, SKU, product and category stay as first filed).
/// Each (order id, line id) at most once.
pub async fn file_lines(conn: &mut PgConnection, lines: &[&FiledLine]) -> Result<(), Error> {
    if lines.is_empty() {
        return Ok(());
    }
    let column = |f: fn(&FiledLine) -> &str| lines.iter().map(|l| f(l)).collect::<Vec<&str>>();
    sqlx::query(
        "INSERT INTO order_lines (order_id, line_id, customer_id, sku_id, product_id,
             category_id, quantity, net_minor)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                              $6::text[], $7::int[], $8::bigint[])
         ON CONFLICT (order_id, line_id) DO UPDATE SET quantity = EXCLUDED.quantity,
             net_minor = EXCLUDED.net_minor",
    )
    .bind(column(|l| &l.order_id))
    .bind(column(|l| &l.line_id))
    .bind(column(|l| &l.customer_id))
    .bind(column(|l| &l.sku_id))
    .bind(column(|l| &l.product_id))
    .bind(column(|l| &l.category_id))
    .bind(lines.iter().map(|l| l.quantity).collect::<Vec<_>>())
    .bind(lines.iter().map(|l| l.net_minor).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

/// Holds each of `order_ids` until the transaction ends, whether or not crm has filed it yet:
/// two transactions filing the same order (replicas, or a stream's reader beside another's)
/// take turns, so each reads the order as the other left it and moves its figures once. In
/// the order of the keys, so two transactions take them in the same order.
pub async fn lock_orders(conn: &mut PgConnection, order_ids: &[&str]) -> Result<(), Error> {
    sqlx::query(
        "SELECT pg_advisory_xact_lock(k) FROM
             (SELECT DISTINCT hashtextextended(id, 7307) AS k FROM unnest($1::text[]) AS id
              ORDER BY k) AS keys",
    )
    .bind(order_ids)
    .execute(conn)
    .await?;
    Ok(())
}

/// The (category, product, SKU) of each stored line of `order_ids`, by order and line id.
pub async fn line_keys(
    conn: &mut PgConnection,
    order_ids: &[&str],
) -> Result<Vec<(String, String, String, String, String)>, Error> {
    Ok(sqlx::query_as(
        "SELECT order_id, line_id, category_id, product_id, sku_id FROM order_lines
         WHERE order_id = ANY($1)",
    )
    .bind(order_ids)
    .fetch_all(conn)
    .await?)
}

/// Sets the refunded amount of stored orders (`(order id, refunded minor units)`), in one
/// statement; each order id at most once.
pub async fn record_refunds(conn: &mut PgConnection, refunds: &[(&str, i64)]) -> Result<(), Error> {
    if refunds.is_empty() {
        return Ok(());
    }
    let (ids, refunded): (Vec<&str>, Vec<i64>) = refunds.iter().copied().unzip();
    sqlx::query(
        "UPDATE customer_orders o SET refunded_minor = r.refunded
         FROM unnest($1::text[], $2::bigint[]) AS r(order_id, refunded)
         WHERE o.order_id = r.order_id",
    )
    .bind(&ids)
    .bind(&refunded)
    .execute(conn)
    .await?;
    Ok(())
}

/// The balances of `customers` that have a loyalty account, locked for update in id order.
pub async fn balances_for_update(
    conn: &mut PgConnection,
    customers: &[&str],
) -> Result<HashMap<String, i64>, Error> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT customer_id, balance FROM loyalty_accounts WHERE customer_id = ANY($1)
         ORDER BY customer_id FOR UPDATE",
    )
    .bind(customers)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().collect())
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

/// A points entry a run of events writes: a fulfilled order's earning ([`KIND_EARN`]) or a
/// return's reversal ([`KIND_RETURN_REVERSAL`], negative).
#[derive(Debug, Clone)]
pub struct Posting {
    pub customer_id: String,
    pub kind: i32,
    pub points: i64,
    pub channel_id: String,
    pub order_id: String,
    pub return_id: String,
}

/// Writes a run's postings, in their order, with three to four statements whatever their
/// number: marks `earned` orders earned, keeping only the earnings of the orders no one marked
/// before (whichever event says it, an order earns once); moves each customer's balance by the
/// sum of its postings; writes one ledger entry per posting with the balance right after it.
pub async fn post(
    conn: &mut PgConnection,
    earned: &[&str],
    postings: &[Posting],
) -> Result<(), Error> {
    let first: HashSet<String> = if earned.is_empty() {
        HashSet::new()
    } else {
        sqlx::query_scalar(
            "UPDATE customer_orders SET earned = true WHERE order_id = ANY($1) AND NOT earned
             RETURNING order_id",
        )
        .bind(earned)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .collect()
    };
    let postings: Vec<&Posting> = postings
        .iter()
        .filter(|p| p.kind != KIND_EARN || first.contains(&p.order_id))
        .collect();
    if postings.is_empty() {
        return Ok(());
    }
    // In customer order, so two transactions lock accounts in the same order.
    let mut sums: BTreeMap<&str, i64> = BTreeMap::new();
    for p in &postings {
        *sums.entry(p.customer_id.as_str()).or_default() += p.points;
    }
    let (credits, debits): (Vec<_>, Vec<_>) = sums.into_iter().partition(|(_, sum)| *sum >= 0);
    let mut balance: HashMap<String, i64> = HashMap::new();
    if !credits.is_empty() {
        let (customers, sums): (Vec<&str>, Vec<i64>) = credits.into_iter().unzip();
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "INSERT INTO loyalty_accounts (customer_id, balance)
             SELECT * FROM unnest($1::text[], $2::bigint[])
             ON CONFLICT (customer_id) DO UPDATE
                 SET balance = loyalty_accounts.balance + EXCLUDED.balance
             RETURNING customer_id, balance",
        )
        .bind(&customers)
        .bind(&sums)
        .fetch_all(&mut *conn)
        .await?;
        balance.extend(rows);
    }
    if !debits.is_empty() {
        // A plain update: an insert of a negative row would trip the CHECK before ON CONFLICT.
        // (Points are only taken from a balance that has them, so the account exists.)
        let (customers, sums): (Vec<&str>, Vec<i64>) = debits.into_iter().unzip();
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "UPDATE loyalty_accounts a SET balance = a.balance + d.sum
             FROM unnest($1::text[], $2::bigint[]) AS d(customer_id, sum)
             WHERE a.customer_id = d.customer_id
             RETURNING a.customer_id, a.balance",
        )
        .bind(&customers)
        .bind(&sums)
        .fetch_all(&mut *conn)
        .await?;
        balance.extend(rows);
    }
    // Ids in the postings' order; each entry's balance is the final one less what later
    // entries of the customer moved.
    let ids: Vec<Uuid> = postings.iter().map(|_| Uuid::now_v7()).collect();
    let mut after = vec![0_i64; postings.len()];
    for (i, p) in postings.iter().enumerate().rev() {
        let Some(b) = balance.get_mut(&p.customer_id) else {
            return Err(Error::Internal(anyhow::anyhow!(
                "no loyalty account for customer {}",
                p.customer_id
            )));
        };
        after[i] = *b;
        *b -= p.points;
    }
    let column = |f: fn(&Posting) -> &str| postings.iter().map(|p| f(p)).collect::<Vec<&str>>();
    sqlx::query(
        "INSERT INTO points_entries (id, customer_id, kind, points, balance_after, channel_id,
             order_id, return_id)
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::int[], $4::bigint[], $5::bigint[],
                              $6::text[], $7::text[], $8::text[])",
    )
    .bind(&ids)
    .bind(column(|p| &p.customer_id))
    .bind(postings.iter().map(|p| p.kind).collect::<Vec<_>>())
    .bind(postings.iter().map(|p| p.points).collect::<Vec<_>>())
    .bind(&after)
    .bind(column(|p| &p.channel_id))
    .bind(column(|p| &p.order_id))
    .bind(column(|p| &p.return_id))
    .execute(conn)
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
             rolling_spend(r.id, $2) AS spend,
             coalesce((SELECT currency FROM customer_orders WHERE customer_id = r.id
                 ORDER BY placed_at DESC, order_id LIMIT 1), '') AS currency
         FROM r
         WHERE EXISTS (SELECT 1 FROM customers c WHERE c.customer_id = r.id)",
    )
    .bind(customer_id)
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

//! identity's Postgres access: small functions over a connection or a transaction.

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, FromRow, PgConnection};
use uuid::Uuid;

#[derive(Debug, Clone, FromRow)]
pub struct CustomerRow {
    pub id: Uuid,
    pub member_number: String,
    pub phone: Option<String>,
    pub email: Option<String>,
    pub name: String,
    pub merged_into: Option<Uuid>,
    pub erased_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, FromRow)]
pub struct AccountRow {
    pub channel_kind: i16,
    pub external_id: String,
    pub linked_at: DateTime<Utc>,
}

#[derive(Debug, Clone, FromRow)]
pub struct ConsentRow {
    pub channel_kind: i16,
    pub marketing_opt_in: bool,
    pub updated_at: DateTime<Utc>,
}

/// A customer with everything linked to it.
#[derive(Debug, Clone)]
pub struct Customer {
    pub row: CustomerRow,
    pub accounts: Vec<AccountRow>,
    pub consents: Vec<ConsentRow>,
}

const CUSTOMER_COLUMNS: &str =
    "id, member_number, phone, email, name, merged_into, erased_at, created_at, updated_at";

pub async fn customer_row(
    conn: &mut PgConnection,
    id: Uuid,
    for_update: bool,
) -> Result<Option<CustomerRow>, sqlx::Error> {
    let lock = if for_update { " FOR UPDATE" } else { "" };
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {CUSTOMER_COLUMNS} FROM customers WHERE id = $1{lock}"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// The customer with its channel accounts and consents, in one statement.
pub async fn load_customer(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<Customer>, sqlx::Error> {
    load(conn, id, "c.id = $1").await
}

/// As [`load_customer`] for the survivor behind `id` (itself unless merged away).
pub async fn load_canonical(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<Customer>, sqlx::Error> {
    load(
        conn,
        id,
        "c.id = (SELECT coalesce(merged_into, id) FROM customers WHERE id = $1)",
    )
    .await
}

/// One round trip: the row, and its accounts and consents as parallel arrays (each subquery
/// in the same total order).
async fn load(
    conn: &mut PgConnection,
    id: Uuid,
    which: &'static str,
) -> Result<Option<Customer>, sqlx::Error> {
    use sqlx::Row as _;
    let accounts = |column: &str| {
        format!(
            "ARRAY(SELECT a.{column} FROM channel_accounts a WHERE a.customer_id = c.id \
             ORDER BY a.linked_at, a.channel_kind, a.external_id)"
        )
    };
    let consents = |column: &str| {
        format!(
            "ARRAY(SELECT k.{column} FROM consents k WHERE k.customer_id = c.id \
             ORDER BY k.channel_kind)"
        )
    };
    let columns = CUSTOMER_COLUMNS
        .split(", ")
        .map(|column| format!("c.{column}"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT {columns}, {} AS account_kinds, {} AS account_ids, {} AS account_linked, \
         {} AS consent_kinds, {} AS consent_opt_ins, {} AS consent_updated \
         FROM customers c WHERE {which}",
        accounts("channel_kind"),
        accounts("external_id"),
        accounts("linked_at"),
        consents("channel_kind"),
        consents("marketing_opt_in"),
        consents("updated_at"),
    );
    let Some(record) = sqlx::query(AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(None);
    };
    let row = CustomerRow::from_row(&record)?;
    let kinds: Vec<i16> = record.try_get("account_kinds")?;
    let ids: Vec<String> = record.try_get("account_ids")?;
    let linked: Vec<DateTime<Utc>> = record.try_get("account_linked")?;
    let accounts = kinds
        .into_iter()
        .zip(ids)
        .zip(linked)
        .map(|((channel_kind, external_id), linked_at)| AccountRow {
            channel_kind,
            external_id,
            linked_at,
        })
        .collect();
    let kinds: Vec<i16> = record.try_get("consent_kinds")?;
    let opt_ins: Vec<bool> = record.try_get("consent_opt_ins")?;
    let updated: Vec<DateTime<Utc>> = record.try_get("consent_updated")?;
    let consents = kinds
        .into_iter()
        .zip(opt_ins)
        .zip(updated)
        .map(
            |((channel_kind, marketing_opt_in), updated_at)| ConsentRow {
                channel_kind,
                marketing_opt_in,
                updated_at,
            },
        )
        .collect();
    Ok(Some(Customer {
        row,
        accounts,
        consents,
    }))
}

/// The survivor behind `id` (itself unless merged away); merge chains are kept one hop long.
pub async fn canonical_id(conn: &mut PgConnection, id: Uuid) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT coalesce(merged_into, id) FROM customers WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await
}

pub async fn id_by_member_number(
    conn: &mut PgConnection,
    member_number: &str,
) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM customers WHERE member_number = $1")
        .bind(member_number)
        .fetch_optional(conn)
        .await
}

pub async fn id_by_phone(
    conn: &mut PgConnection,
    phone: &str,
) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM customers WHERE phone = $1")
        .bind(phone)
        .fetch_optional(conn)
        .await
}

pub async fn id_by_account(
    conn: &mut PgConnection,
    channel_kind: i16,
    external_id: &str,
) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT customer_id FROM channel_accounts WHERE channel_kind = $1 AND external_id = $2",
    )
    .bind(channel_kind)
    .bind(external_id)
    .fetch_optional(conn)
    .await
}

pub async fn next_member_sequence(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT nextval('member_number_seq')")
        .fetch_one(conn)
        .await
}

/// Inserts a customer unless the phone is taken (by a concurrent resolve); `false` then.
pub async fn insert_customer(
    conn: &mut PgConnection,
    id: Uuid,
    member_number: &str,
    phone: Option<&str>,
    email: Option<&str>,
    name: &str,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO customers (id, member_number, phone, email, name) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (phone) DO NOTHING",
    )
    .bind(id)
    .bind(member_number)
    .bind(phone)
    .bind(email)
    .bind(name)
    .execute(conn)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// Gives a customer a phone number unless another customer took it meanwhile (`false`).
pub async fn set_phone(
    conn: &mut PgConnection,
    id: Uuid,
    phone: &str,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE customers SET phone = $2, updated_at = now() WHERE id = $1 \
         AND NOT EXISTS (SELECT 1 FROM customers WHERE phone = $2)",
    )
    .bind(id)
    .bind(phone)
    .execute(conn)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// Links an account unless it is linked already (concurrently); `false` then.
pub async fn link_account(
    conn: &mut PgConnection,
    channel_kind: i16,
    external_id: &str,
    customer_id: Uuid,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO channel_accounts (channel_kind, external_id, customer_id) VALUES ($1, $2, $3) \
         ON CONFLICT DO NOTHING",
    )
    .bind(channel_kind)
    .bind(external_id)
    .bind(customer_id)
    .execute(conn)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// Moves everything of `duplicate` to `survivor` and marks `duplicate` merged.
pub async fn merge(
    conn: &mut PgConnection,
    survivor: &CustomerRow,
    duplicate: &CustomerRow,
    reason: &str,
    actor_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE channel_accounts SET customer_id = $1 WHERE customer_id = $2")
        .bind(survivor.id)
        .bind(duplicate.id)
        .execute(&mut *conn)
        .await?;
    // The survivor's own consent wins where both have one.
    sqlx::query(
        "INSERT INTO consents (customer_id, channel_kind, marketing_opt_in, updated_at) \
         SELECT $1, channel_kind, marketing_opt_in, updated_at FROM consents WHERE customer_id = $2 \
         ON CONFLICT DO NOTHING",
    )
    .bind(survivor.id)
    .bind(duplicate.id)
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM consents WHERE customer_id = $1")
        .bind(duplicate.id)
        .execute(&mut *conn)
        .await?;
    // Keep alias chains one hop long.
    sqlx::query("UPDATE customers SET merged_into = $1 WHERE merged_into = $2")
        .bind(survivor.id)
        .bind(duplicate.id)
        .execute(&mut *conn)
        .await?;
    // The survivor takes over the duplicate's phone if it has none; otherwise the duplicate
    // keeps it, so the number still finds the survivor through the alias.
    let moves_phone = survivor.phone.is_none() && duplicate.phone.is_some();
    sqlx::query(
        "UPDATE customers SET merged_into = $1, \
         phone = CASE WHEN $3 THEN NULL ELSE phone END, updated_at = now() WHERE id = $2",
    )
    .bind(survivor.id)
    .bind(duplicate.id)
    .bind(moves_phone)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE customers SET phone = CASE WHEN $5 THEN $2 ELSE phone END, \
         email = coalesce(email, $3), name = CASE WHEN name = '' THEN $4 ELSE name END, \
         updated_at = now() WHERE id = $1",
    )
    .bind(survivor.id)
    .bind(&duplicate.phone)
    .bind(&duplicate.email)
    .bind(&duplicate.name)
    .bind(moves_phone)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO merges (duplicate_id, survivor_id, reason, actor_id) VALUES ($1, $2, $3, $4)",
    )
    .bind(duplicate.id)
    .bind(survivor.id)
    .bind(reason)
    .bind(actor_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Removes a customer's personal data (and that of the records merged into it); keeps ids.
/// Erases the customer `id` and the duplicates merged into it; returns those duplicates' ids.
pub async fn erase(conn: &mut PgConnection, id: Uuid) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query("DELETE FROM channel_accounts WHERE customer_id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM consents WHERE customer_id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    let erased: Vec<Uuid> = sqlx::query_scalar(
        "UPDATE customers SET name = '', phone = NULL, email = NULL, \
         erased_at = coalesce(erased_at, now()), updated_at = now() \
         WHERE id = $1 OR merged_into = $1 RETURNING id",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    sqlx::query("UPDATE merges SET reason = '' WHERE survivor_id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(erased.into_iter().filter(|e| *e != id).collect())
}

pub async fn upsert_consent(
    conn: &mut PgConnection,
    customer_id: Uuid,
    channel_kind: i16,
    opt_in: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO consents (customer_id, channel_kind, marketing_opt_in) VALUES ($1, $2, $3) \
         ON CONFLICT (customer_id, channel_kind) \
         DO UPDATE SET marketing_opt_in = excluded.marketing_opt_in, updated_at = now()",
    )
    .bind(customer_id)
    .bind(channel_kind)
    .bind(opt_in)
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE customers SET updated_at = now() WHERE id = $1")
        .bind(customer_id)
        .execute(conn)
        .await?;
    Ok(())
}

#[derive(Debug, Clone, FromRow)]
pub struct PrincipalRow {
    pub id: Uuid,
    pub kind: String,
    pub name: String,
    pub display_name: String,
    pub password_hash: Option<String>,
    pub api_key_hash: Option<Vec<u8>>,
    pub roles: Vec<String>,
    pub scope_channels: Vec<String>,
    pub scope_stores: Vec<String>,
    pub disabled: bool,
    pub disabled_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

const PRINCIPAL_COLUMNS: &str = "id, kind, name, display_name, password_hash, api_key_hash, \
     roles, scope_channels, scope_stores, disabled, disabled_at, created_at";

pub struct NewPrincipal<'a> {
    pub id: Uuid,
    pub kind: &'a str,
    pub name: &'a str,
    pub display_name: &'a str,
    pub password_hash: Option<&'a str>,
    pub api_key_prefix: Option<&'a str>,
    pub api_key_hash: Option<&'a [u8]>,
    pub roles: &'a [String],
    pub scope_channels: &'a [String],
    pub scope_stores: &'a [String],
    pub created_by: &'a str,
}

pub async fn insert_principal(
    conn: &mut PgConnection,
    p: &NewPrincipal<'_>,
) -> Result<PrincipalRow, sqlx::Error> {
    sqlx::query_as(AssertSqlSafe(format!(
        "INSERT INTO principals (id, kind, name, display_name, password_hash, api_key_prefix, \
         api_key_hash, roles, scope_channels, scope_stores, created_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING {PRINCIPAL_COLUMNS}"
    )))
    .bind(p.id)
    .bind(p.kind)
    .bind(p.name)
    .bind(p.display_name)
    .bind(p.password_hash)
    .bind(p.api_key_prefix)
    .bind(p.api_key_hash)
    .bind(p.roles)
    .bind(p.scope_channels)
    .bind(p.scope_stores)
    .bind(p.created_by)
    .fetch_one(conn)
    .await
}

pub async fn staff_by_login(
    conn: &mut PgConnection,
    login: &str,
) -> Result<Option<PrincipalRow>, sqlx::Error> {
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {PRINCIPAL_COLUMNS} FROM principals WHERE kind = 'staff' AND name = $1"
    )))
    .bind(login)
    .fetch_optional(conn)
    .await
}

pub async fn principal_by_api_prefix(
    conn: &mut PgConnection,
    prefix: &str,
) -> Result<Option<PrincipalRow>, sqlx::Error> {
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {PRINCIPAL_COLUMNS} FROM principals WHERE api_key_prefix = $1"
    )))
    .bind(prefix)
    .fetch_optional(conn)
    .await
}

pub async fn disable_principal(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<PrincipalRow>, sqlx::Error> {
    sqlx::query_as(AssertSqlSafe(format!(
        "UPDATE principals SET disabled = true, \
         disabled_at = CASE WHEN disabled THEN disabled_at ELSE now() END \
         WHERE id = $1 RETURNING {PRINCIPAL_COLUMNS}"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Principals disabled at or after `since`, with when.
pub async fn disabled_since(
    conn: &mut PgConnection,
    since: DateTime<Utc>,
) -> Result<Vec<(Uuid, DateTime<Utc>)>, sqlx::Error> {
    sqlx::query_as("SELECT id, disabled_at FROM principals WHERE disabled AND disabled_at >= $1")
        .bind(since)
        .fetch_all(conn)
        .await
}

/// Creates the bootstrap admin, or resets its password and re-enables it.
pub async fn upsert_bootstrap_admin(
    conn: &mut PgConnection,
    login: &str,
    password_hash: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO principals (id, kind, name, display_name, password_hash, roles, created_by) \
         VALUES ($1, 'staff', $2, 'Administrator', $3, ARRAY['admin'], 'bootstrap') \
         ON CONFLICT (name) WHERE kind = 'staff' \
         DO UPDATE SET password_hash = excluded.password_hash, disabled = false, disabled_at = NULL, \
         roles = CASE WHEN 'admin' = ANY(principals.roles) THEN principals.roles \
                      ELSE principals.roles || ARRAY['admin'] END",
    )
    .bind(Uuid::now_v7())
    .bind(login)
    .bind(password_hash)
    .execute(conn)
    .await
    .map(|_| ())
}

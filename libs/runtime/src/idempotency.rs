//! Idempotent mutations: a retry with the same key gets the first call's reply, the same key
//! with a different request is refused, and concurrent calls with one key run once.
//!
//! [`claim`] runs first inside the mutation's transaction and inserts the key. If another call
//! holds the key, the insert waits for that call's transaction: when it committed, the stored
//! reply is returned ([`Claim::Replay`]); when it rolled back (a failed call is not remembered),
//! this call takes the key over. [`complete`] stores the reply in the same transaction, so the
//! key and the effect commit together or not at all.
//!
//! Keys belong to their caller: the same key sent by two principals names two different
//! mutations, so one caller can neither replay nor block another's (a key is stored as
//! `<principal id>/<key>` within its scope, and a claim without a caller is refused).
//!
//! A stored request and reply may carry a customer's personal data (an order's delivery
//! address, a ticket's subject). Such calls name their subject with [`complete_about`] (the
//! customer, or an order of theirs), and erasing the customer [`forget`]s those rows: a retry
//! after the erasure runs afresh and meets the erased customer.

use prost::Message;
use sqlx::PgConnection;

use crate::error::{Error, Result};

/// What [`claim`] found.
#[derive(Debug)]
pub enum Claim<R> {
    /// The key is new: do the work, then [`complete`].
    Fresh,
    /// The key was used before with the same request: return this reply.
    Replay(R),
}

/// The stored form of `caller`'s `key`.
pub fn caller_key(caller: &str, key: &str) -> String {
    format!("{caller}/{key}")
}

/// A key for a call a service makes on behalf of one of its own idempotent calls (a restock
/// for a return, say): stable across retries of that call, distinct for every caller and key,
/// and short whatever the key's length.
pub fn derived_key(purpose: &str, caller: &str, key: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(caller_key(caller, key).as_bytes());
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("{purpose}/{hex}")
}

/// Claims `caller`'s `key` for `request` in `scope`. A key reused with a different request is
/// `INVALID_ARGUMENT` on `field`.
pub async fn claim<Q: Message, R: Message + Default>(
    conn: &mut PgConnection,
    scope: &str,
    caller: &str,
    field: &str,
    key: &str,
    request: &Q,
) -> Result<Claim<R>> {
    check_key(caller, field, key)?;
    let key = &caller_key(caller, key);
    let encoded = request.encode_to_vec();
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (scope, key, request) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(scope)
    .bind(key)
    .bind(&encoded)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    if inserted {
        return Ok(Claim::Fresh);
    }
    earlier(conn, scope, field, key, &encoded)
        .await
        .map(Claim::Replay)
}

/// [`claim`] and [`complete_about`] in one statement, for a call whose work is done and whose
/// reply is known before its transaction commits: `None` when the key was new (the reply is
/// now stored with it); the earlier reply when the key was used before with the same request.
#[allow(clippy::too_many_arguments)]
pub async fn record_about<Q: Message, R: Message + Default>(
    conn: &mut PgConnection,
    scope: &str,
    caller: &str,
    field: &str,
    key: &str,
    request: &Q,
    subject: &str,
    response: &R,
) -> Result<Option<R>> {
    check_key(caller, field, key)?;
    let key = &caller_key(caller, key);
    let encoded = request.encode_to_vec();
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (scope, key, request, response, subject) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(scope)
    .bind(key)
    .bind(&encoded)
    .bind(response.encode_to_vec())
    .bind(subject)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    if inserted {
        return Ok(None);
    }
    earlier(conn, scope, field, key, &encoded).await.map(Some)
}

fn check_key(caller: &str, field: &str, key: &str) -> Result<()> {
    if key.trim().is_empty() {
        return Err(Error::invalid(
            field,
            "is required: a retry with the same key returns the first result",
        ));
    }
    if key.len() > 200 {
        return Err(Error::invalid(field, "must be at most 200 characters"));
    }
    if caller.is_empty() {
        // Keys without their caller could collide across principals, or be squatted.
        return Err(Error::internal(
            "an idempotency key claimed without its caller",
        ));
    }
    Ok(())
}

/// The reply stored under a caller's `key` (already prefixed); a different request is
/// `INVALID_ARGUMENT` on `field`.
async fn earlier<R: Message + Default>(
    conn: &mut PgConnection,
    scope: &str,
    field: &str,
    key: &str,
    encoded: &[u8],
) -> Result<R> {
    let (stored_request, response): (Vec<u8>, Vec<u8>) = sqlx::query_as(
        "SELECT request, response FROM idempotency_keys WHERE scope = $1 AND key = $2",
    )
    .bind(scope)
    .bind(key)
    .fetch_one(&mut *conn)
    .await?;
    if stored_request != encoded {
        return Err(Error::invalid(
            field,
            "was already used with a different request",
        ));
    }
    R::decode(response.as_slice())
        .map_err(|e| Error::Internal(anyhow::anyhow!("stored reply does not decode: {e}")))
}

/// The reply stored for `key` by a call that committed, without claiming anything: for a
/// caller that waits on another call holding the key. A key used with a different request is
/// `INVALID_ARGUMENT` on `field`.
pub async fn lookup<Q: Message, R: Message + Default>(
    conn: &mut PgConnection,
    scope: &str,
    caller: &str,
    field: &str,
    key: &str,
    request: &Q,
) -> Result<Option<R>> {
    let key = &caller_key(caller, key);
    let stored: Option<(Vec<u8>, Vec<u8>)> = sqlx::query_as(
        "SELECT request, response FROM idempotency_keys WHERE scope = $1 AND key = $2",
    )
    .bind(scope)
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((stored_request, response)) = stored else {
        return Ok(None);
    };
    if stored_request != request.encode_to_vec() {
        return Err(Error::invalid(
            field,
            "was already used with a different request",
        ));
    }
    R::decode(response.as_slice())
        .map(Some)
        .map_err(|e| Error::Internal(anyhow::anyhow!("stored reply does not decode: {e}")))
}

/// Stores the reply for a key claimed [`Claim::Fresh`] in this transaction.
pub async fn complete<R: Message>(
    conn: &mut PgConnection,
    scope: &str,
    caller: &str,
    key: &str,
    response: &R,
) -> Result<()> {
    store_reply(conn, scope, caller, key, None, response).await
}

/// As [`complete`], for a call whose request or reply may carry the personal data of
/// `subject` (a customer id, or an order id): erasing it [`forget`]s the key.
pub async fn complete_about<R: Message>(
    conn: &mut PgConnection,
    scope: &str,
    caller: &str,
    key: &str,
    subject: &str,
    response: &R,
) -> Result<()> {
    store_reply(conn, scope, caller, key, Some(subject), response).await
}

async fn store_reply<R: Message>(
    conn: &mut PgConnection,
    scope: &str,
    caller: &str,
    key: &str,
    subject: Option<&str>,
    response: &R,
) -> Result<()> {
    let key = &caller_key(caller, key);
    sqlx::query(
        "UPDATE idempotency_keys SET response = $3, subject = $4 WHERE scope = $1 AND key = $2",
    )
    .bind(scope)
    .bind(key)
    .bind(response.encode_to_vec())
    .bind(subject)
    .execute(conn)
    .await?;
    Ok(())
}

/// Deletes the stored requests and replies about any of `subjects` (an erased customer and
/// their orders); returns how many.
pub async fn forget(conn: &mut PgConnection, subjects: &[String]) -> Result<u64> {
    let deleted = sqlx::query("DELETE FROM idempotency_keys WHERE subject = ANY($1)")
        .bind(subjects)
        .execute(conn)
        .await?
        .rows_affected();
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_keys_are_stable_per_caller_and_key_and_short() {
        let a = derived_key("return/restock", "p1", "k1");
        assert_eq!(a, derived_key("return/restock", "p1", "k1"));
        assert_ne!(a, derived_key("return/restock", "p2", "k1"));
        assert_ne!(a, derived_key("return/restock", "p1", "k2"));
        assert!(derived_key("return/restock", "p1", &"k".repeat(200)).len() < 64);
    }
}

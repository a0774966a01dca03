//! Idempotency keys on crm's writes, over the runtime's [`omni_runtime::idempotency`]: a
//! call with a key claims it inside its transaction and stores its reply there, so a retry
//! gets the first reply. A call without a key is not deduplicated.

use omni_runtime::Error;
use omni_runtime::idempotency::{self, Claim};
use prost::Message;
use sqlx::PgConnection;

/// The first reply when `key` was used before with this request; `None` when the call
/// should run (new key, or no key).
pub async fn replay<Q: Message, R: Message + Default>(
    conn: &mut PgConnection,
    scope: &str,
    caller: &str,
    key: &str,
    request: &Q,
) -> Result<Option<R>, Error> {
    if key.is_empty() {
        return Ok(None);
    }
    match idempotency::claim(conn, scope, caller, "idempotency_key", key, request).await? {
        Claim::Fresh => Ok(None),
        Claim::Replay(reply) => Ok(Some(reply)),
    }
}

/// Stores the reply of a call that claimed `key` (nothing without a key); `about` names the
/// customer whose personal data the request or reply may carry, so erasing them forgets it.
pub async fn remember<R: Message>(
    conn: &mut PgConnection,
    scope: &str,
    caller: &str,
    key: &str,
    about: Option<&str>,
    reply: &R,
) -> Result<(), Error> {
    if key.is_empty() {
        return Ok(());
    }
    match about {
        Some(customer) => {
            idempotency::complete_about(conn, scope, caller, key, customer, reply).await
        }
        None => idempotency::complete(conn, scope, caller, key, reply).await,
    }
}

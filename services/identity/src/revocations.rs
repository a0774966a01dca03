//! The deny list of disabled principals that every service polls (see `omni_runtime::auth`).
//!
//! Postgres is the truth (`principals.disabled_at`); the Redis sorted set is a copy. A disable
//! writes it at once, and [`keep_in_step`] rewrites it from the database every
//! [`RESYNC_EVERY`], so a Redis that lost its data (flush, failover to an empty replica) or
//! missed a write while it was down holds the full list again within that time. Entries older
//! than the token lifetime are dropped: every token they could refuse has expired.

use std::time::Duration;

use chrono::{DateTime, Utc};
use omni_runtime::auth::REVOKED_KEY;
use omni_runtime::redis::Redis;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::store;

/// How often the Redis copy is rebuilt from the database.
pub const RESYNC_EVERY: Duration = Duration::from_secs(10);

/// Clock skew allowed between identity and the services, on top of the token lifetime.
const SLACK: Duration = Duration::from_secs(60);

/// Adds one disablement to the Redis copy.
pub async fn publish(
    redis: &Redis,
    id: Uuid,
    disabled_at: DateTime<Utc>,
) -> redis::RedisResult<()> {
    let mut conn = redis.conn();
    redis::cmd("ZADD")
        .arg(redis.key(REVOKED_KEY))
        .arg(disabled_at.timestamp())
        .arg(id.to_string())
        .query_async(&mut conn)
        .await
}

/// Rewrites the Redis copy from the database: every principal disabled within the token
/// lifetime is on it, older entries are dropped.
pub async fn resync(pool: &PgPool, redis: &Redis, token_ttl: Duration) -> anyhow::Result<usize> {
    let horizon = Utc::now() - chrono::Duration::from_std(token_ttl + SLACK)?;
    let mut conn = pool.acquire().await?;
    let recent = store::disabled_since(&mut conn, horizon).await?;
    drop(conn);
    let key = redis.key(REVOKED_KEY);
    let mut pipe = redis::pipe();
    pipe.atomic();
    for (id, at) in &recent {
        pipe.cmd("ZADD")
            .arg(&key)
            .arg(at.timestamp())
            .arg(id.to_string())
            .ignore();
    }
    pipe.cmd("ZREMRANGEBYSCORE")
        .arg(&key)
        .arg("-inf")
        .arg(format!("({}", horizon.timestamp()))
        .ignore();
    let mut conn = redis.conn();
    pipe.query_async::<()>(&mut conn).await?;
    Ok(recent.len())
}

/// Runs [`resync`] every [`RESYNC_EVERY`] until `shutdown`.
pub async fn keep_in_step(
    pool: PgPool,
    redis: Redis,
    token_ttl: Duration,
    shutdown: CancellationToken,
) {
    let mut failing = false;
    loop {
        match resync(&pool, &redis, token_ttl).await {
            Ok(_) if failing => {
                tracing::info!("the deny list is in step again");
                failing = false;
            }
            Ok(_) => {}
            Err(e) if !failing => {
                tracing::warn!(error = %e, "cannot rebuild the deny list; retrying");
                failing = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(RESYNC_EVERY) => {}
        }
    }
}

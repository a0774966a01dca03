//! Postgres: the service's pool and its embedded migrations.
//!
//! The runtime's own tables (outbox, processed events) are migrated by the runtime's migrator
//! (versions below 10^13) beside the service's (timestamped versions); both ignore each other's
//! versions, so one `_sqlx_migrations` table serves both.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio_util::sync::CancellationToken;

use crate::config::CommonConfig;

/// A pool that connects on demand; nothing is contacted until first use.
///
/// Every connection carries the service's `statement_timeout` and `lock_timeout`, and a call
/// waits at most the acquire timeout for a connection: a slow statement, a held lock or a
/// saturated pool fails the call (UNAVAILABLE or ABORTED) in bounded time instead of queueing
/// everything behind it.
pub fn pool(config: &CommonConfig) -> anyhow::Result<PgPool> {
    let millis = |d: Duration| format!("{}ms", d.as_millis().max(1));
    let options: PgConnectOptions = config
        .database_url
        .expose()
        .parse::<PgConnectOptions>()
        .map_err(|e| anyhow::anyhow!("DATABASE_URL is not a valid Postgres URL: {e}"))?
        .options([
            (
                "statement_timeout",
                millis(config.database_statement_timeout),
            ),
            ("lock_timeout", millis(config.database_lock_timeout)),
        ]);
    Ok(PgPoolOptions::new()
        .max_connections(config.database_max_connections)
        .min_connections(0)
        .acquire_timeout(config.database_acquire_timeout)
        .idle_timeout(Duration::from_secs(300))
        .connect_lazy_with(options))
}

/// Runs the runtime's and the service's migrations, retrying while Postgres is unreachable
/// (e.g. a pod starting before its database) until `shutdown` is cancelled.
pub async fn migrate(
    pool: &PgPool,
    mut service: Migrator,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    // Migrations may rewrite large tables: their own connection has no statement or lock
    // limit (the last `-c` setting wins).
    let options = pool
        .connect_options()
        .as_ref()
        .clone()
        .options([("statement_timeout", "0"), ("lock_timeout", "0")]);
    let migrations = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(3))
        .connect_lazy_with(options);
    let mut runtime = sqlx::migrate!("./migrations");
    runtime.set_ignore_missing(true);
    service.set_ignore_missing(true);
    let mut delay = Duration::from_millis(100);
    loop {
        let attempt = async {
            runtime.run(&migrations).await?;
            service.run(&migrations).await?;
            anyhow::Ok(())
        };
        match attempt.await {
            Ok(()) => {
                migrations.close().await;
                return Ok(());
            }
            Err(e) if is_unreachable(&e) => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "waiting for postgres");
                tokio::select! {
                    () = shutdown.cancelled() => anyhow::bail!("stopped while waiting for postgres"),
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e.context("running migrations")),
        }
    }
}

fn is_unreachable(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<sqlx::Error>(),
            Some(sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut)
        ) || matches!(
            cause.downcast_ref::<sqlx::migrate::MigrateError>(),
            Some(sqlx::migrate::MigrateError::Execute(
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut
            ))
        )
    })
}

/// One cheap round trip, for health checks.
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(pool).await.map(|_| ())
}

//! Every service's pool bounds how long a call can wait on Postgres: a statement past the
//! statement timeout fails UNAVAILABLE, a lock waited for past the lock timeout fails ABORTED
//! (retryable), and a call finds no free connection for at most the acquire timeout.

use std::time::{Duration, Instant};

use omni_runtime::Error;

async fn pool_with_limits() -> sqlx::PgPool {
    let mut config = omni_testkit::common_config("limits").await.expect("config");
    config.database_max_connections = 2;
    config.database_statement_timeout = Duration::from_millis(300);
    config.database_lock_timeout = Duration::from_millis(200);
    config.database_acquire_timeout = Duration::from_millis(300);
    omni_runtime::db::pool(&config).expect("pool")
}

#[tokio::test]
async fn a_slow_statement_fails_unavailable_at_the_statement_timeout() {
    let pool = pool_with_limits().await;
    // Without the limit this statement would succeed.
    let slow = sqlx::query("SELECT pg_sleep(5)").execute(&pool).await;
    let error = Error::from(slow.expect_err("cut short"));
    assert!(matches!(error, Error::Unavailable(_)), "{error:?}");
    pool.close().await;
}

#[tokio::test]
async fn a_held_lock_fails_aborted_at_the_lock_timeout() {
    let pool = pool_with_limits().await;
    let mut holder = pool.begin().await.expect("holder");
    sqlx::query("SELECT pg_advisory_xact_lock(42)")
        .execute(&mut *holder)
        .await
        .expect("lock taken");
    // Without the limit this would wait for as long as the holder holds.
    let waited = sqlx::query("SELECT pg_advisory_lock(42)")
        .execute(&pool)
        .await;
    let error = Error::from(waited.expect_err("gives up waiting"));
    assert!(matches!(error, Error::Aborted(_)), "{error:?}");
    holder.rollback().await.expect("rollback");
    pool.close().await;
}

#[tokio::test]
async fn a_saturated_pool_refuses_unavailable_at_the_acquire_timeout() {
    let pool = pool_with_limits().await;
    let first = pool.acquire().await.expect("first");
    let second = pool.acquire().await.expect("second");
    let started = Instant::now();
    let third = pool.acquire().await;
    let error = Error::from(third.expect_err("no connection free"));
    assert!(matches!(error, Error::Unavailable(_)), "{error:?}");
    // Refused at the configured 300 ms, not sqlx's default of 30 s (a wide bound: this checks
    // which setting applied, not how fast the machine is).
    assert!(started.elapsed() < Duration::from_secs(10));
    drop((first, second));
    pool.close().await;
}

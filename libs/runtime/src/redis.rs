//! Redis: one multiplexed, self-reconnecting connection per service, and the key namespace.
//!
//! Every key a service uses goes through [`Redis::key`], which prepends the deployment's prefix
//! (`OMNI_REDIS_PREFIX`; tests give each run its own). Blocking commands (stream reads) need a
//! connection of their own, from [`Redis::dedicated`], so they never stall the shared one.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

#[derive(Clone)]
pub struct Redis {
    client: redis::Client,
    conn: ConnectionManager,
    prefix: Arc<str>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn manager_config(response_timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(2))
}

impl Redis {
    /// A connection that is established lazily and re-established after failures.
    pub fn new(url: &str, prefix: &str) -> anyhow::Result<Self> {
        use redis::IntoConnectionInfo as _;
        let info = url
            .into_connection_info()
            .map_err(|e| anyhow::anyhow!("REDIS_URL is not a valid Redis URL: {e}"))?
            // Many callers share one connection: with Nagle's algorithm a small write waits
            // for the ACK of the previous one (40 ms with delayed ACKs).
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let client = redis::Client::open(info)?;
        let conn = client.get_connection_manager_lazy(manager_config(Duration::from_secs(2)))?;
        Ok(Self {
            client,
            conn,
            prefix: prefix.into(),
        })
    }

    /// The client, for connections of other kinds (pub/sub).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// The shared connection (cheap to clone).
    pub fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// A connection of its own, for blocking commands that may wait up to `block`.
    pub fn dedicated(&self, block: Duration) -> anyhow::Result<ConnectionManager> {
        Ok(self
            .client
            .get_connection_manager_lazy(manager_config(block + Duration::from_secs(2)))?)
    }

    /// `name` inside this deployment's namespace.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The Redis stream a service's events are published to.
    pub fn event_stream(&self, source: &str) -> String {
        self.key(&format!("omni:events:{source}"))
    }

    /// One cheap round trip, for health checks.
    pub async fn ping(&self) -> redis::RedisResult<()> {
        let mut conn = self.conn();
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map(|_| ())
    }
}

/// `FLUSHALL`: every key of every namespace. For tests of Redis data loss, on a server of
/// their own.
pub async fn flush_all(conn: &mut ConnectionManager) -> redis::RedisResult<()> {
    redis::cmd("FLUSHALL").query_async(conn).await
}

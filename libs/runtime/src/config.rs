//! Typed configuration read from the environment once, at start.
//!
//! Every service's config embeds [`CommonConfig`]; services add their own fields with the same
//! helpers. A missing or malformed value is an error naming the variable, and `main` stops on it.
//! Secrets live in [`Secret`], which never prints its value.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

/// A configuration value that is missing or malformed.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {var}: {reason}")]
pub struct ConfigError {
    pub var: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(var: &str, reason: impl Into<String>) -> Self {
        Self {
            var: var.to_owned(),
            reason: reason.into(),
        }
    }
}

/// A value that must not end up in logs: `Debug` and `Display` print `[redacted]`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }

    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<T> From<T> for Secret<T> {
    fn from(value: T) -> Self {
        Self(value)
    }
}

/// A variable's value, or `None` when unset or empty.
pub fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// A variable that must be set.
pub fn required(name: &str) -> Result<String, ConfigError> {
    var(name).ok_or_else(|| ConfigError::new(name, "is required but not set"))
}

/// A variable parsed into `T`, or `default` when unset.
pub fn parse_or<T>(name: &str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    match var(name) {
        None => Ok(default),
        Some(raw) => raw
            .trim()
            .parse()
            .map_err(|e| ConfigError::new(name, format!("cannot parse {raw:?}: {e}"))),
    }
}

/// A duration given in milliseconds, or `default` when unset.
pub fn millis_or(name: &str, default: Duration) -> Result<Duration, ConfigError> {
    let default_ms = u64::try_from(default.as_millis()).unwrap_or(u64::MAX);
    parse_or(name, default_ms).map(Duration::from_millis)
}

/// A PEM value given inline (`NAME`) or as a file path (`NAME_FILE`, as Kubernetes secrets mount).
pub fn pem(name: &str) -> Result<Option<String>, ConfigError> {
    if let Some(inline) = var(name) {
        return Ok(Some(inline.replace("\\n", "\n")));
    }
    let file_var = format!("{name}_FILE");
    match var(&file_var) {
        None => Ok(None),
        Some(path) => std::fs::read_to_string(&path)
            .map(Some)
            .map_err(|e| ConfigError::new(&file_var, format!("cannot read {path}: {e}"))),
    }
}

/// Settings every service has.
#[derive(Debug, Clone)]
pub struct CommonConfig {
    /// Where the gRPC server listens (`OMNI_LISTEN_ADDR`, default `0.0.0.0:<service port>`).
    pub listen_addr: SocketAddr,
    /// The service's own database (`DATABASE_URL`).
    pub database_url: Secret<String>,
    /// `OMNI_DATABASE_MAX_CONNECTIONS`, default 10.
    pub database_max_connections: u32,
    /// How long a call waits for a pooled connection before it is refused UNAVAILABLE
    /// (`OMNI_DATABASE_ACQUIRE_TIMEOUT_MS`, default 1000): a saturated pool answers fast
    /// instead of queueing callers.
    pub database_acquire_timeout: Duration,
    /// The longest one statement may run (`OMNI_DATABASE_STATEMENT_TIMEOUT_MS`, default 10000;
    /// Postgres `statement_timeout`); beyond it the call fails UNAVAILABLE.
    pub database_statement_timeout: Duration,
    /// The longest a statement waits for a row or table lock (`OMNI_DATABASE_LOCK_TIMEOUT_MS`,
    /// default 2000; Postgres `lock_timeout`); beyond it the call fails ABORTED, retryable.
    pub database_lock_timeout: Duration,
    /// `REDIS_URL`.
    pub redis_url: Secret<String>,
    /// Prepended to every Redis key and stream (`OMNI_REDIS_PREFIX`, default empty); lets
    /// several deployments or test runs share one Redis.
    pub redis_prefix: String,
    /// identity's Ed25519 public key, PEM (`OMNI_AUTH_PUBLIC_KEY` or `OMNI_AUTH_PUBLIC_KEY_FILE`).
    pub auth_public_key_pem: String,
    /// How long in-flight calls may take to drain after SIGTERM (`OMNI_SHUTDOWN_GRACE_MS`).
    pub shutdown_grace: Duration,
    /// How often health re-checks Postgres and Redis (`OMNI_HEALTH_INTERVAL_MS`).
    pub health_interval: Duration,
    /// The longest a call may run when the client sets no deadline (`OMNI_MAX_CALL_MS`).
    pub max_call_duration: Duration,
    /// How often the outbox relay polls when not woken (`OMNI_OUTBOX_POLL_MS`).
    pub outbox_poll: Duration,
    /// Events a consumer applies per transaction (`OMNI_CONSUMER_BATCH`, 1 to 10000).
    pub consumer_batch: usize,
    /// How long an entry stays pending with a consumer before another replica takes it over
    /// (`OMNI_CONSUMER_RECLAIM_IDLE_MS`).
    pub consumer_reclaim_idle: Duration,
    /// Where Prometheus metrics are served (`OMNI_METRICS_ADDR`, default
    /// `0.0.0.0:<service port + 1000>`; `off` serves none).
    pub metrics: MetricsEndpoint,
}

/// Where a service serves `GET /metrics`.
#[derive(Debug, Clone)]
pub enum MetricsEndpoint {
    /// Bind this address.
    Addr(SocketAddr),
    /// A listener bound already (tests bind `127.0.0.1:0` and read the port first).
    Bound(std::sync::Arc<std::sync::Mutex<Option<std::net::TcpListener>>>),
    Off,
}

impl MetricsEndpoint {
    /// A listener on `addr` bound now, so its port is known before the service starts.
    pub fn bind(addr: SocketAddr) -> std::io::Result<(Self, SocketAddr)> {
        let listener = std::net::TcpListener::bind(addr)?;
        let bound = listener.local_addr()?;
        Ok((
            Self::Bound(std::sync::Arc::new(std::sync::Mutex::new(Some(listener)))),
            bound,
        ))
    }
}

impl CommonConfig {
    /// Reads the common settings; `default_port` is the service's port from the design.
    pub fn from_env(default_port: u16) -> Result<Self, ConfigError> {
        Self::from_env_with_key(default_port, None)
    }

    /// As [`CommonConfig::from_env`], with a public key to use when `OMNI_AUTH_PUBLIC_KEY` is
    /// unset (identity derives it from its signing key).
    pub fn from_env_with_key(
        default_port: u16,
        own_public_key: Option<&str>,
    ) -> Result<Self, ConfigError> {
        let listen_addr = parse_or(
            "OMNI_LISTEN_ADDR",
            SocketAddr::from(([0, 0, 0, 0], default_port)),
        )?;
        let database_url = required("DATABASE_URL")?;
        if !database_url.starts_with("postgres://") && !database_url.starts_with("postgresql://") {
            return Err(ConfigError::new(
                "DATABASE_URL",
                "must be a postgres:// or postgresql:// URL",
            ));
        }
        let redis_url = required("REDIS_URL")?;
        let nodes = crate::redis::node_urls(&redis_url);
        if nodes.is_empty()
            || !nodes
                .iter()
                .all(|u| u.starts_with("redis://") || u.starts_with("rediss://"))
        {
            return Err(ConfigError::new(
                "REDIS_URL",
                "must be a redis:// or rediss:// URL, or several comma-separated (Redis Cluster nodes)",
            ));
        }
        let auth_public_key_pem = pem("OMNI_AUTH_PUBLIC_KEY")?
            .or_else(|| own_public_key.map(str::to_owned))
            .ok_or_else(|| {
                ConfigError::new(
                    "OMNI_AUTH_PUBLIC_KEY",
                    "is required (or OMNI_AUTH_PUBLIC_KEY_FILE): identity's token public key, PEM",
                )
            })?;
        crate::auth::TokenVerifier::from_public_pem(&auth_public_key_pem)
            .map_err(|e| ConfigError::new("OMNI_AUTH_PUBLIC_KEY", e.to_string()))?;
        Ok(Self {
            listen_addr,
            database_url: Secret::new(database_url),
            database_max_connections: parse_or("OMNI_DATABASE_MAX_CONNECTIONS", 10)?,
            database_acquire_timeout: millis_or(
                "OMNI_DATABASE_ACQUIRE_TIMEOUT_MS",
                Duration::from_secs(1),
            )?,
            database_statement_timeout: millis_or(
                "OMNI_DATABASE_STATEMENT_TIMEOUT_MS",
                Duration::from_secs(10),
            )?,
            database_lock_timeout: millis_or(
                "OMNI_DATABASE_LOCK_TIMEOUT_MS",
                Duration::from_secs(2),
            )?,
            redis_url: Secret::new(redis_url),
            redis_prefix: var("OMNI_REDIS_PREFIX").unwrap_or_default(),
            auth_public_key_pem,
            shutdown_grace: millis_or("OMNI_SHUTDOWN_GRACE_MS", Duration::from_secs(20))?,
            health_interval: millis_or("OMNI_HEALTH_INTERVAL_MS", Duration::from_secs(2))?,
            max_call_duration: millis_or("OMNI_MAX_CALL_MS", Duration::from_secs(30))?,
            outbox_poll: millis_or("OMNI_OUTBOX_POLL_MS", Duration::from_millis(200))?,
            consumer_batch: match parse_or("OMNI_CONSUMER_BATCH", 256usize)? {
                n @ 1..=10_000 => n,
                _ => {
                    return Err(ConfigError::new(
                        "OMNI_CONSUMER_BATCH",
                        "must be between 1 and 10000",
                    ));
                }
            },
            consumer_reclaim_idle: millis_or(
                "OMNI_CONSUMER_RECLAIM_IDLE_MS",
                Duration::from_secs(30),
            )?,
            metrics: match var("OMNI_METRICS_ADDR").as_deref() {
                Some("off") => MetricsEndpoint::Off,
                Some(_) => MetricsEndpoint::Addr(parse_or(
                    "OMNI_METRICS_ADDR",
                    SocketAddr::from(([0, 0, 0, 0], default_port + 1000)),
                )?),
                None => {
                    MetricsEndpoint::Addr(SocketAddr::from((listen_addr.ip(), default_port + 1000)))
                }
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2".to_owned());
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn errors_name_the_variable() {
        let e = ConfigError::new("REDIS_URL", "is required but not set");
        assert_eq!(
            e.to_string(),
            "configuration error: REDIS_URL: is required but not set"
        );
    }
}

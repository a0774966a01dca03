//! order-management's configuration: the common settings, where the services it calls live,
//! how it authenticates to them, and the order clocks (payment window, pickup promise).

use std::time::Duration;

use omni_runtime::config::{self, CommonConfig, ConfigError, Secret};

pub const DEFAULT_PORT: u16 = 50054;

/// How order-management proves who it is to the services it calls.
#[derive(Debug, Clone)]
pub enum Credential {
    /// Its API key (`OMNI_SERVICE_API_KEY`), exchanged with identity for short-lived tokens.
    ApiKey(Secret<String>),
    /// A ready token (`OMNI_SERVICE_TOKEN`), for tools and tests; it is not renewed.
    Token(Secret<String>),
}

/// The services order-management calls.
#[derive(Debug, Clone)]
pub struct Upstreams {
    /// `OMNI_IDENTITY_URL`, default `http://127.0.0.1:50051`.
    pub identity: String,
    /// `OMNI_CATALOG_URL`, default `http://127.0.0.1:50052`.
    pub catalog: String,
    /// `OMNI_INVENTORY_URL`, default `http://127.0.0.1:50053`.
    pub inventory: String,
    /// `OMNI_CRM_URL`, default `http://127.0.0.1:50055`.
    pub crm: String,
    /// `OMNI_PERFORMANCE_URL`, default `http://127.0.0.1:50056`.
    pub performance: String,
    /// Per-call deadline toward them (`OMNI_UPSTREAM_TIMEOUT_MS`, default 5000).
    pub call_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    pub upstreams: Upstreams,
    pub credential: Credential,
    /// How long an order may stay unpaid (`OMNI_PAYMENT_WINDOW_SECS`, default 1800); its stock
    /// is held that long.
    pub payment_window: Duration,
    /// The pickup promise after confirmation (`OMNI_PICKUP_PROMISE_SECS`, default 1800).
    pub pickup_promise: Duration,
    /// How long a ready pickup waits for the customer (`OMNI_PICKUP_HOLD_SECS`, default 3 days).
    pub pickup_hold: Duration,
    /// How long after placement the address may change (`OMNI_ADDRESS_CHANGE_SECS`, 24 h).
    pub address_change_window: Duration,
    /// How often unpaid and uncollected orders are swept (`OMNI_SWEEP_INTERVAL_MS`, 1000).
    pub sweep_interval: Duration,
    /// How long an order step (payment, cancellation, ...) may stay pending before the sweeper
    /// resumes it (`OMNI_STEP_RESUME_MS`, default four upstream timeouts plus 5 s: longer than
    /// a live step's calls can take).
    pub step_resume_after: Duration,
}

fn url(name: &str, default_port: u16) -> Result<String, ConfigError> {
    let value = config::var(name).unwrap_or_else(|| format!("http://127.0.0.1:{default_port}"));
    if !value.starts_with("http://") && !value.starts_with("https://") {
        return Err(ConfigError::new(name, "must be an http:// or https:// URL"));
    }
    Ok(value)
}

fn seconds(name: &str, default: u64) -> Result<Duration, ConfigError> {
    let value = config::parse_or(name, default)?;
    if value == 0 {
        return Err(ConfigError::new(name, "must be at least 1"));
    }
    Ok(Duration::from_secs(value))
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        let credential = match (
            config::var("OMNI_SERVICE_API_KEY"),
            config::var("OMNI_SERVICE_TOKEN"),
        ) {
            (Some(key), _) => Credential::ApiKey(Secret::new(key)),
            (None, Some(token)) => Credential::Token(Secret::new(token)),
            (None, None) => {
                return Err(ConfigError::new(
                    "OMNI_SERVICE_API_KEY",
                    "is required (or OMNI_SERVICE_TOKEN): order-management's credential toward identity, catalog, inventory, crm and performance",
                ));
            }
        };
        let call_timeout = config::millis_or("OMNI_UPSTREAM_TIMEOUT_MS", Duration::from_secs(5))?;
        Ok(Self {
            common: CommonConfig::from_env(DEFAULT_PORT)?,
            upstreams: Upstreams {
                identity: url("OMNI_IDENTITY_URL", 50051)?,
                catalog: url("OMNI_CATALOG_URL", 50052)?,
                inventory: url("OMNI_INVENTORY_URL", 50053)?,
                crm: url("OMNI_CRM_URL", 50055)?,
                performance: url("OMNI_PERFORMANCE_URL", 50056)?,
                call_timeout,
            },
            credential,
            payment_window: seconds("OMNI_PAYMENT_WINDOW_SECS", 1800)?,
            pickup_promise: seconds("OMNI_PICKUP_PROMISE_SECS", 1800)?,
            pickup_hold: seconds("OMNI_PICKUP_HOLD_SECS", 3 * 24 * 3600)?,
            address_change_window: seconds("OMNI_ADDRESS_CHANGE_SECS", 24 * 3600)?,
            sweep_interval: config::millis_or("OMNI_SWEEP_INTERVAL_MS", Duration::from_secs(1))?,
            step_resume_after: config::millis_or(
                "OMNI_STEP_RESUME_MS",
                call_timeout * 4 + Duration::from_secs(5),
            )?,
        })
    }
}

//! inventory's configuration: the common settings plus reservation and hot-stock tuning.

use std::time::Duration;

use omni_runtime::config::{self, CommonConfig, ConfigError};

pub const DEFAULT_PORT: u16 = 50053;

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    /// Hold time of reservations that name none (`OMNI_RESERVATION_TTL_SECS`, default 900).
    pub default_ttl: Duration,
    /// How often expired reservations are swept (`OMNI_EXPIRY_INTERVAL_MS`, default 1000).
    pub expiry_interval: Duration,
    /// Concurrent reservations on one SKU that mark it hot (`OMNI_HOT_DETECT_CONCURRENCY`, 32).
    pub hot_detect_concurrency: usize,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        let default_ttl =
            Duration::from_secs(config::parse_or("OMNI_RESERVATION_TTL_SECS", 900u64)?);
        if default_ttl.is_zero() {
            return Err(ConfigError::new(
                "OMNI_RESERVATION_TTL_SECS",
                "must be at least 1",
            ));
        }
        let hot_detect_concurrency = config::parse_or("OMNI_HOT_DETECT_CONCURRENCY", 32usize)?;
        if hot_detect_concurrency < 2 {
            return Err(ConfigError::new(
                "OMNI_HOT_DETECT_CONCURRENCY",
                "must be at least 2",
            ));
        }
        Ok(Self {
            common: CommonConfig::from_env(DEFAULT_PORT)?,
            default_ttl,
            expiry_interval: config::millis_or("OMNI_EXPIRY_INTERVAL_MS", Duration::from_secs(1))?,
            hot_detect_concurrency,
        })
    }
}

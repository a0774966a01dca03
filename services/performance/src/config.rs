//! performance's configuration: the common settings plus the reporting currency, and where
//! inventory values are read from.

use std::time::Duration;

use omni_runtime::config::{self, CommonConfig, ConfigError, Secret};

pub const DEFAULT_PORT: u16 = 50056;

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    /// ISO 4217 code of every amount this service reports and accepts
    /// (`OMNI_REPORTING_CURRENCY`, default EUR).
    pub currency: String,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        let currency = config::var("OMNI_REPORTING_CURRENCY").unwrap_or_else(|| "EUR".to_owned());
        if currency.len() != 3 || !currency.chars().all(|c| c.is_ascii_uppercase()) {
            return Err(ConfigError::new(
                "OMNI_REPORTING_CURRENCY",
                "must be an ISO 4217 code such as EUR",
            ));
        }
        Ok(Self {
            common: CommonConfig::from_env(DEFAULT_PORT)?,
            currency,
        })
    }
}

/// How performance proves who it is to inventory.
#[derive(Debug, Clone)]
pub enum Credential {
    /// Its API key (`OMNI_SERVICE_API_KEY`), exchanged with identity (`OMNI_IDENTITY_URL`,
    /// default `http://127.0.0.1:50051`) for short-lived tokens.
    ApiKey {
        identity_url: String,
        key: Secret<String>,
    },
    /// A ready token (`OMNI_SERVICE_TOKEN`), for tools; it is not renewed.
    Token(Secret<String>),
}

/// Where inventory values come from: inventory's `ListInventoryValues`, read every `every`.
#[derive(Debug, Clone)]
pub struct InventorySource {
    /// `OMNI_INVENTORY_URL`; unset: inventory values arrive only as `InventoryValued` events.
    pub url: String,
    pub credential: Credential,
    /// `OMNI_INVENTORY_POLL_MS`, default 300000 (five minutes).
    pub every: Duration,
}

/// The process's whole configuration: the service's, and the optional inventory source.
#[derive(Debug, Clone)]
pub struct Process {
    pub config: Config,
    pub inventory: Option<InventorySource>,
}

impl Process {
    pub fn from_env() -> Result<Self, ConfigError> {
        let config = Config::from_env()?;
        let Some(url) = config::var("OMNI_INVENTORY_URL") else {
            return Ok(Self {
                config,
                inventory: None,
            });
        };
        if !url.starts_with("http://") && !url.starts_with("https://") {
            return Err(ConfigError::new(
                "OMNI_INVENTORY_URL",
                "must be an http:// or https:// URL",
            ));
        }
        let credential = match (
            config::var("OMNI_SERVICE_API_KEY"),
            config::var("OMNI_SERVICE_TOKEN"),
        ) {
            (Some(key), _) => Credential::ApiKey {
                identity_url: config::var("OMNI_IDENTITY_URL")
                    .unwrap_or_else(|| "http://127.0.0.1:50051".to_owned()),
                key: Secret::new(key),
            },
            (None, Some(token)) => Credential::Token(Secret::new(token)),
            (None, None) => {
                return Err(ConfigError::new(
                    "OMNI_SERVICE_API_KEY",
                    "is required to call inventory (or set OMNI_SERVICE_TOKEN)",
                ));
            }
        };
        let every = config::millis_or("OMNI_INVENTORY_POLL_MS", Duration::from_secs(300))?;
        if every.is_zero() {
            return Err(ConfigError::new(
                "OMNI_INVENTORY_POLL_MS",
                "must be at least 1",
            ));
        }
        Ok(Self {
            config,
            inventory: Some(InventorySource {
                url,
                credential,
                every,
            }),
        })
    }
}

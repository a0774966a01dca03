//! performance's configuration: the common settings plus the reporting currency.

use omni_runtime::config::{self, CommonConfig, ConfigError};

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

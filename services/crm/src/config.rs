//! crm's configuration: the common settings.

use omni_runtime::config::{CommonConfig, ConfigError};

pub const DEFAULT_PORT: u16 = 50055;

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            common: CommonConfig::from_env(DEFAULT_PORT)?,
        })
    }
}

//! identity's configuration: the common settings plus its signing key and token lifetime.

use std::time::Duration;

use omni_runtime::config::{self, CommonConfig, ConfigError, Secret};

pub const DEFAULT_PORT: u16 = 50051;

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    /// PKCS#8 PEM Ed25519 private key (`OMNI_SIGNING_KEY` or `OMNI_SIGNING_KEY_FILE`).
    pub signing_key_pem: Secret<String>,
    /// Lifetime of issued tokens (`OMNI_TOKEN_TTL_SECS`, default 900).
    pub token_ttl: Duration,
    /// Calling code for phone numbers given without one (`OMNI_DEFAULT_CALLING_CODE`, default 1).
    pub default_calling_code: String,
    /// An admin created (or whose password is reset) at start, for first access
    /// (`OMNI_BOOTSTRAP_ADMIN_LOGIN` and `OMNI_BOOTSTRAP_ADMIN_PASSWORD`, both or neither).
    pub bootstrap_admin: Option<(String, Secret<String>)>,
    /// Failed sign-ins allowed per login and per peer address in a window
    /// (`OMNI_SIGNIN_FAILURES_PER_LOGIN` default 10, `OMNI_SIGNIN_FAILURES_PER_PEER` default
    /// 100, `OMNI_SIGNIN_WINDOW_SECS` default 300); see [`crate::throttle`].
    pub signin_limits: crate::throttle::Limits,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        let signing_key_pem = config::pem("OMNI_SIGNING_KEY")?.ok_or_else(|| {
            ConfigError::new(
                "OMNI_SIGNING_KEY",
                "is required (or OMNI_SIGNING_KEY_FILE): an Ed25519 PKCS#8 PEM private key; \
                 `identity keygen <dir>` makes one",
            )
        })?;
        let signer = omni_runtime::auth::TokenSigner::from_private_pem(
            &signing_key_pem,
            Duration::from_secs(60),
        )
        .map_err(|e| ConfigError::new("OMNI_SIGNING_KEY", e.to_string()))?;
        let common = CommonConfig::from_env_with_key(DEFAULT_PORT, Some(signer.public_key_pem()))?;
        let token_ttl = Duration::from_secs(config::parse_or("OMNI_TOKEN_TTL_SECS", 900u64)?);
        if token_ttl < Duration::from_secs(30) || token_ttl > Duration::from_secs(24 * 3600) {
            return Err(ConfigError::new(
                "OMNI_TOKEN_TTL_SECS",
                "must be between 30 and 86400 seconds",
            ));
        }
        let default_calling_code =
            config::var("OMNI_DEFAULT_CALLING_CODE").unwrap_or_else(|| "1".into());
        if default_calling_code.is_empty()
            || default_calling_code.len() > 3
            || !default_calling_code.chars().all(|c| c.is_ascii_digit())
            || default_calling_code.starts_with('0')
        {
            return Err(ConfigError::new(
                "OMNI_DEFAULT_CALLING_CODE",
                "must be a country calling code: 1 to 3 digits, not starting with 0",
            ));
        }
        let bootstrap_admin = match (
            config::var("OMNI_BOOTSTRAP_ADMIN_LOGIN"),
            config::var("OMNI_BOOTSTRAP_ADMIN_PASSWORD"),
        ) {
            (None, None) => None,
            (Some(login), Some(password)) => {
                crate::domain::parse_login(&login)
                    .map_err(|e| ConfigError::new("OMNI_BOOTSTRAP_ADMIN_LOGIN", e))?;
                crate::domain::check_password(&password)
                    .map_err(|e| ConfigError::new("OMNI_BOOTSTRAP_ADMIN_PASSWORD", e))?;
                Some((login.to_ascii_lowercase(), Secret::new(password)))
            }
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "OMNI_BOOTSTRAP_ADMIN_PASSWORD",
                    "is required when OMNI_BOOTSTRAP_ADMIN_LOGIN is set",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "OMNI_BOOTSTRAP_ADMIN_LOGIN",
                    "is required when OMNI_BOOTSTRAP_ADMIN_PASSWORD is set",
                ));
            }
        };
        let defaults = crate::throttle::Limits::default();
        let signin_limits = crate::throttle::Limits {
            per_login: config::parse_or("OMNI_SIGNIN_FAILURES_PER_LOGIN", defaults.per_login)?,
            per_peer: config::parse_or("OMNI_SIGNIN_FAILURES_PER_PEER", defaults.per_peer)?,
            window: Duration::from_secs(config::parse_or(
                "OMNI_SIGNIN_WINDOW_SECS",
                defaults.window.as_secs(),
            )?),
        };
        if signin_limits.per_login == 0 || signin_limits.per_peer == 0 {
            return Err(ConfigError::new(
                "OMNI_SIGNIN_FAILURES_PER_LOGIN",
                "sign-in failure limits must be at least 1",
            ));
        }
        if signin_limits.window.is_zero() {
            return Err(ConfigError::new(
                "OMNI_SIGNIN_WINDOW_SECS",
                "must be at least 1",
            ));
        }
        Ok(Self {
            signin_limits,
            common,
            signing_key_pem: Secret::new(signing_key_pem),
            token_ttl,
            default_calling_code,
            bootstrap_admin,
        })
    }
}

//! Where the services are and which token to call them with.
//!
//! A profile is one file, `<config dir>/profiles/<name>.json` (mode 0600), written by
//! `omni login`: the access token, when it expires, who it belongs to and the endpoints the
//! login was made against. The config dir is `$XDG_CONFIG_HOME/omni`, else `~/.config/omni`.
//!
//! Endpoints, first match wins: `--endpoint service=URL`, `OMNI_<SERVICE>_URL`
//! (`OMNI_IDENTITY_URL`, `OMNI_CATALOG_URL`, `OMNI_INVENTORY_URL`, `OMNI_ORDERS_URL`,
//! `OMNI_CRM_URL`, `OMNI_PERFORMANCE_URL`), the profile's, then `scripts/dev-up`'s ports on
//! `--host` / `OMNI_HOST` (default `127.0.0.1`). The token: `OMNI_TOKEN`, else the profile's.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use serde_json::{Value, json};

use crate::render::{CliError, CliResult};

/// The process environment, passed in so tests run commands in-process with their own.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: HashMap<String, String>,
}

impl Env {
    pub fn from_process() -> Self {
        Self {
            vars: std::env::vars().collect(),
        }
    }

    pub fn from_vars<K: Into<String>, V: Into<String>>(
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self {
            vars: vars
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.vars.insert(key.into(), value.into());
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub fn config_dir(&self) -> CliResult<PathBuf> {
        if let Some(xdg) = self.get("XDG_CONFIG_HOME") {
            return Ok(PathBuf::from(xdg).join("omni"));
        }
        self.get("HOME")
            .map(|home| PathBuf::from(home).join(".config").join("omni"))
            .ok_or_else(|| {
                CliError::Usage("neither XDG_CONFIG_HOME nor HOME is set: no config dir".into())
            })
    }
}

/// The services the CLI calls, with `scripts/dev-up`'s ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    Identity,
    Catalog,
    Inventory,
    Orders,
    Crm,
    Performance,
}

impl Service {
    pub const ALL: [Service; 6] = [
        Service::Identity,
        Service::Catalog,
        Service::Inventory,
        Service::Orders,
        Service::Crm,
        Service::Performance,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Service::Identity => "identity",
            Service::Catalog => "catalog",
            Service::Inventory => "inventory",
            Service::Orders => "order-management",
            Service::Crm => "crm",
            Service::Performance => "performance",
        }
    }

    fn port(self) -> u16 {
        match self {
            Service::Identity => 50051,
            Service::Catalog => 50052,
            Service::Inventory => 50053,
            Service::Orders => 50054,
            Service::Crm => 50055,
            Service::Performance => 50056,
        }
    }

    fn env_var(self) -> &'static str {
        match self {
            Service::Identity => "OMNI_IDENTITY_URL",
            Service::Catalog => "OMNI_CATALOG_URL",
            Service::Inventory => "OMNI_INVENTORY_URL",
            Service::Orders => "OMNI_ORDERS_URL",
            Service::Crm => "OMNI_CRM_URL",
            Service::Performance => "OMNI_PERFORMANCE_URL",
        }
    }

    pub fn parse(name: &str) -> Option<Service> {
        Some(match name {
            "identity" => Service::Identity,
            "catalog" => Service::Catalog,
            "inventory" => Service::Inventory,
            "orders" | "order-management" => Service::Orders,
            "crm" => Service::Crm,
            "performance" | "kpi" => Service::Performance,
            _ => return None,
        })
    }
}

/// What `omni login` keeps for a profile.
#[derive(Debug, Clone, Default)]
pub struct Profile {
    pub token: String,
    /// Unix seconds.
    pub expires_at: i64,
    pub principal: String,
    pub roles: Vec<String>,
    pub endpoints: BTreeMap<String, String>,
}

impl Profile {
    fn path(env: &Env, name: &str) -> CliResult<PathBuf> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(CliError::Usage(format!(
                "profile name {name:?}: use letters, digits, - and _"
            )));
        }
        Ok(env
            .config_dir()?
            .join("profiles")
            .join(format!("{name}.json")))
    }

    /// The saved profile, or `None` when there is none.
    pub fn load(env: &Env, name: &str) -> CliResult<Option<Profile>> {
        let path = Self::path(env, name)?;
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(CliError::Other(anyhow::anyhow!(
                    "reading {}: {e}",
                    path.display()
                )));
            }
        };
        let v: Value = serde_json::from_str(&text).map_err(|e| {
            CliError::Other(anyhow::anyhow!("{} is not valid JSON: {e}", path.display()))
        })?;
        let text_of = |key: &str| v[key].as_str().unwrap_or_default().to_owned();
        Ok(Some(Profile {
            token: text_of("token"),
            expires_at: v["expiresAt"].as_i64().unwrap_or(0),
            principal: text_of("principal"),
            roles: v["roles"]
                .as_array()
                .map(|r| {
                    r.iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            endpoints: v["endpoints"]
                .as_object()
                .map(|o| {
                    o.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                        .collect()
                })
                .unwrap_or_default(),
        }))
    }

    /// Writes the profile, readable by its owner only (it holds a bearer token).
    pub fn save(&self, env: &Env, name: &str) -> CliResult<PathBuf> {
        let path = Self::path(env, name)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let body = json!({
            "token": self.token,
            "expiresAt": self.expires_at,
            "principal": self.principal,
            "roles": self.roles,
            "endpoints": self.endpoints,
        });
        let text = serde_json::to_string_pretty(&body).map_err(anyhow::Error::from)?;
        write_private(&path, text.as_bytes())?;
        Ok(path)
    }

    pub fn remove(env: &Env, name: &str) -> CliResult<bool> {
        let path = Self::path(env, name)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(unix)]
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // An existing file keeps its mode on open: tighten it in case it was wider.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

/// Resolved endpoints of every service.
#[derive(Debug, Clone)]
pub struct Endpoints {
    urls: BTreeMap<Service, String>,
}

impl Endpoints {
    /// `flags` are the `--endpoint service=URL` values.
    pub fn resolve(
        env: &Env,
        flags: &[String],
        host: Option<&str>,
        profile: Option<&Profile>,
    ) -> CliResult<Self> {
        let mut from_flags = BTreeMap::new();
        for flag in flags {
            let (name, url) = flag.split_once('=').ok_or_else(|| {
                CliError::Usage(format!("--endpoint {flag:?}: expected service=URL"))
            })?;
            let service = Service::parse(name).ok_or_else(|| {
                CliError::Usage(format!(
                    "--endpoint {flag:?}: unknown service {name:?} (identity, catalog, inventory, orders, crm, performance)"
                ))
            })?;
            from_flags.insert(service, normalise(url));
        }
        let host = host
            .map(str::to_owned)
            .or_else(|| env.get("OMNI_HOST").map(str::to_owned))
            .unwrap_or_else(|| "127.0.0.1".to_owned());
        let mut urls = BTreeMap::new();
        for service in Service::ALL {
            let url = from_flags
                .get(&service)
                .cloned()
                .or_else(|| env.get(service.env_var()).map(normalise))
                .or_else(|| profile.and_then(|p| p.endpoints.get(service.name()).cloned()))
                .unwrap_or_else(|| format!("http://{host}:{}", service.port()));
            urls.insert(service, url);
        }
        Ok(Self { urls })
    }

    pub fn url(&self, service: Service) -> &str {
        self.urls.get(&service).map_or("", String::as_str)
    }

    /// The endpoints that differ from the defaults on 127.0.0.1, by service name.
    pub fn non_default(&self) -> BTreeMap<String, String> {
        self.urls
            .iter()
            .filter(|(s, url)| **url != format!("http://127.0.0.1:{}", s.port()))
            .map(|(s, url)| (s.name().to_owned(), url.clone()))
            .collect()
    }
}

fn normalise(url: &str) -> String {
    if url.contains("://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    }
}

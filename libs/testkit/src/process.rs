//! Services as separate processes, for tests of replicas: the service's own binary, configured
//! through its environment as a deployment would, on `127.0.0.1:0`.
//!
//! The binaries are the workspace's debug builds, found beside the test binary
//! (`target/debug/<name>`; `cargo build --bins` makes them) or in `OMNI_SERVICE_BIN_DIR`. The
//! bound address is read from the service's own log line (`<name> listening`, JSON on stdout)
//! and readiness is awaited on its health Watch stream, as for in-process services. The rest
//! of each log goes to a file of its own in [`log_dir`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use omni_runtime::auth::Role;
use omni_runtime::client::{self, AuthChannel, TokenSource};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;

/// Where the service binaries are.
pub fn binary_dir() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("OMNI_SERVICE_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    // target/debug/deps/<test binary> → target/debug
    let exe = std::env::current_exe()?;
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(PathBuf::from)
        .ok_or_else(|| anyhow::anyhow!("cannot tell the target directory from {exe:?}"))
}

/// Where the processes' logs go: `OMNI_PROCESS_LOG_DIR`, else `omni-processes` in the
/// temporary directory; one file per process, named after it.
pub fn log_dir() -> PathBuf {
    let dir = std::env::var("OMNI_PROCESS_LOG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir().join("omni-processes"));
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// One service process.
pub struct ServiceProcess {
    pub name: String,
    pub addr: SocketAddr,
    child: Child,
}

impl ServiceProcess {
    /// Starts `binary` with `env` (on top of a cleared environment but for `PATH`) and waits
    /// until it serves.
    pub async fn start(name: &str, binary: &str, env: &[(String, String)]) -> anyhow::Result<Self> {
        let path = binary_dir()?.join(binary);
        anyhow::ensure!(
            path.exists(),
            "{} is missing: build the services first (cargo build --bins)",
            path.display()
        );
        let mut child = Command::new(&path)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .env("OMNI_LISTEN_ADDR", "127.0.0.1:0")
            .env("OMNI_METRICS_ADDR", "off")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", path.display()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let found = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await? {
                if line.contains(" listening")
                    && let Some(addr) = field(&line, "addr")
                {
                    return Ok(addr.parse::<SocketAddr>()?);
                }
            }
            anyhow::bail!("{name} exited before listening")
        })
        .await
        .map_err(|_| anyhow::anyhow!("{name} did not listen within 60 s"))??;
        // The rest of the log goes to a file (the process never blocks on a full pipe).
        let log_path = log_dir().join(format!("{name}.log"));
        let mut log = tokio::fs::File::create(&log_path).await?;
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt as _;
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = log.write_all(line.as_bytes()).await;
                let _ = log.write_all(b"\n").await;
            }
        });
        let process = Self {
            name: name.to_owned(),
            addr: found,
            child,
        };
        crate::watch_until(name, process.channel(), ServingStatus::Serving, || false).await?;
        Ok(process)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn channel(&self) -> Channel {
        client::channel(&self.url(), Duration::from_secs(5), Duration::from_secs(30))
            .expect("a valid loopback URL")
    }

    /// A channel acting as the one unscoped principal holding `roles`.
    pub fn as_roles(&self, roles: &[Role]) -> AuthChannel {
        client::authenticated(
            self.channel(),
            TokenSource::Static(Arc::from(crate::role_token(roles))),
            Duration::from_secs(30),
        )
    }

    /// `SIGKILL`: the process dies at once, in the middle of whatever it was doing.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}

/// The string value of `"name":"…"` in a JSON log line.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("\"{name}\":\"");
    let start = line.find(&key)? + key.len();
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_a_field_of_a_json_log_line() {
        let line = r#"{"timestamp":"x","level":"INFO","fields":{"message":"inventory listening","addr":"127.0.0.1:41234"}}"#;
        assert_eq!(super::field(line, "addr"), Some("127.0.0.1:41234"));
        assert_eq!(super::field(line, "port"), None);
    }
}

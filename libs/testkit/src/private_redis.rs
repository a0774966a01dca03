//! A Redis server of a test's own, for faults the shared server must not suffer (a `FLUSHALL`
//! would wipe every other test's streams): `redis-server` started on a Unix socket in a fresh
//! directory, nothing persisted, stopped when dropped.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use uuid::Uuid;

pub struct PrivateRedis {
    dir: PathBuf,
    url: String,
    child: Child,
}

impl PrivateRedis {
    /// Starts `redis-server` (from `PATH`) and waits until it answers.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("omni-redis-{}", Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir)?;
        let socket = dir.join("redis.sock");
        let child = Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--appendonly", "no"])
            .arg("--unixsocket")
            .arg(&socket)
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start redis-server (is it installed?): {e}"))?;
        let url = format!("redis+unix://{}", socket.display());
        let redis = omni_runtime::redis::Redis::new(&url, "")?;
        // The server is up once its socket answers; each failed attempt is a refused connect.
        let mut attempts = 0;
        while redis.ping().await.is_err() {
            attempts += 1;
            anyhow::ensure!(attempts < 200, "redis-server did not answer on {url}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Ok(Self { dir, url, child })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Empties the server, as a failover to an empty replica would.
    pub async fn flush_all(&self) -> anyhow::Result<()> {
        let redis = omni_runtime::redis::Redis::new(&self.url, "")?;
        let mut conn = redis.conn();
        omni_runtime::redis::flush_all(&mut conn).await?;
        Ok(())
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

//! Sign-in throttling: failed Authenticate calls are counted per login (or API key) and per
//! peer address in fixed windows in Redis, shared by every identity replica. Over either limit,
//! Authenticate answers `RESOURCE_EXHAUSTED` with a retry delay, even for the right
//! credentials, until the window ends; a success clears its login's count. Counting failures
//! only means a busy caller that signs in correctly is never throttled, while guessing a
//! password (one login) or spraying one password over many logins (one peer) is.
//!
//! If Redis cannot be reached, sign-in is not throttled (and the failure is logged): the limit
//! must not turn a Redis outage into a sign-in outage.

use std::net::IpAddr;
use std::time::Duration;

use omni_runtime::redis::Redis;
use omni_runtime::{Error, Result};

/// The limits (`OMNI_SIGNIN_FAILURES_PER_LOGIN`, `OMNI_SIGNIN_FAILURES_PER_PEER`,
/// `OMNI_SIGNIN_WINDOW_SECS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub per_login: u32,
    pub per_peer: u32,
    pub window: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            per_login: 10,
            per_peer: 100,
            window: Duration::from_secs(300),
        }
    }
}

/// Who is signing in: the login (or API key prefix) and the peer's address.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub login: String,
    pub peer: Option<IpAddr>,
}

#[derive(Debug, Clone)]
pub struct Throttle {
    redis: Redis,
    limits: Limits,
}

impl Throttle {
    pub fn new(redis: Redis, limits: Limits) -> Self {
        Self { redis, limits }
    }

    fn keys(&self, attempt: &Attempt) -> (String, Option<String>) {
        let login = self.redis.key(&format!(
            "omni:identity:signin-failures:login:{}",
            attempt.login
        ));
        let peer = attempt.peer.map(|p| {
            self.redis
                .key(&format!("omni:identity:signin-failures:peer:{p}"))
        });
        (login, peer)
    }

    /// `RESOURCE_EXHAUSTED` if the login or the peer is over its limit.
    pub async fn check(&self, attempt: &Attempt) -> Result<()> {
        let (login, peer) = self.keys(attempt);
        let mut pipe = redis::pipe();
        pipe.get(&login).pttl(&login);
        if let Some(peer) = &peer {
            pipe.get(peer).pttl(peer);
        }
        let mut conn = self.redis.conn();
        let counts: Vec<Option<i64>> = match pipe.query_async(&mut conn).await {
            Ok(counts) => counts,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read sign-in failures; not throttling");
                return Ok(());
            }
        };
        let over = |count: Option<i64>, limit: u32| count.unwrap_or(0) >= i64::from(limit);
        let retry_after = |pttl: Option<i64>| {
            Duration::from_millis(pttl.filter(|t| *t > 0).unwrap_or(1_000) as u64)
        };
        if over(counts[0], self.limits.per_login) {
            return Err(Error::ResourceExhausted {
                message: format!(
                    "too many failed sign-ins for this login; try again in {} s",
                    retry_after(counts[1]).as_secs().max(1)
                ),
                retry_after: retry_after(counts[1]),
            });
        }
        if counts.len() == 4 && over(counts[2], self.limits.per_peer) {
            return Err(Error::ResourceExhausted {
                message: format!(
                    "too many failed sign-ins from this address; try again in {} s",
                    retry_after(counts[3]).as_secs().max(1)
                ),
                retry_after: retry_after(counts[3]),
            });
        }
        Ok(())
    }

    /// Counts a failed attempt against its login and peer.
    pub async fn failed(&self, attempt: &Attempt) {
        let (login, peer) = self.keys(attempt);
        let window = self.limits.window.as_millis() as u64;
        let mut pipe = redis::pipe();
        for key in std::iter::once(&login).chain(peer.as_ref()) {
            // The window starts with the first failure; INCR keeps the expiry.
            pipe.cmd("SET")
                .arg(key)
                .arg(0)
                .arg("PX")
                .arg(window)
                .arg("NX")
                .ignore()
                .incr(key, 1)
                .ignore();
        }
        let mut conn = self.redis.conn();
        if let Err(e) = pipe.query_async::<()>(&mut conn).await {
            tracing::warn!(error = %e, "cannot count a failed sign-in");
        }
    }

    /// Clears the login's failures after a successful sign-in.
    pub async fn succeeded(&self, attempt: &Attempt) {
        let (login, _) = self.keys(attempt);
        let mut conn = self.redis.conn();
        if let Err(e) = redis::cmd("DEL")
            .arg(&login)
            .query_async::<()>(&mut conn)
            .await
        {
            tracing::warn!(error = %e, "cannot clear sign-in failures");
        }
    }
}

//! Redis: one multiplexed, self-reconnecting connection per service, and the key namespace.
//!
//! `REDIS_URL` names one server, or several comma-separated nodes of a Redis Cluster
//! (`redis://a:6379,redis://b:6379,…`; the client learns the rest of the cluster from any of
//! them). The same code runs on both: [`Conn`] is either kind of connection.
//!
//! On a cluster, a command touching several keys must find them in one hash slot. The keys that
//! go together carry a hash tag: a SKU's hot stock (`inv:{<sku>}:…`), a catalog entry
//! (`cat:{<tag>}`), an event stream and its relay marker (`omni:events:{<service>}`). A plain
//! pipeline may mix slots: on a cluster it is split by key into one sub-pipeline per slot key,
//! each keeping its commands' order, sent concurrently, and the replies put back in order. An
//! atomic pipeline (`MULTI`) must stay within one slot. Pub/sub uses classic `PUBLISH`, which a
//! cluster forwards to every node, so a subscriber listens on any node that answers.
//!
//! Every key a service uses goes through [`Redis::key`], which prepends the deployment's prefix
//! (`OMNI_REDIS_PREFIX`; tests give each run its own; it must not contain `{`). Blocking
//! commands (stream reads) need a connection of their own, from [`Redis::dedicated`], so they
//! never stall the shared one.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct Redis {
    /// A client of each node (one for a single server): pub/sub subscriptions, and every
    /// connection of a single server.
    nodes: Arc<[redis::Client]>,
    cluster: Option<ClusterClient>,
    conn: Conn,
    prefix: Arc<str>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("prefix", &self.prefix)
            .field("cluster", &self.cluster.is_some())
            .finish_non_exhaustive()
    }
}

fn manager_config(response_timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(2))
}

fn cluster_config(response_timeout: Duration) -> ClusterConfig {
    ClusterConfig::new()
        .set_connection_timeout(CONNECT_TIMEOUT)
        .set_response_timeout(response_timeout)
}

/// Many callers share one connection: with Nagle's algorithm a small write waits for the ACK
/// of the previous one (40 ms with delayed ACKs).
fn tcp_settings() -> redis::io::tcp::TcpSettings {
    redis::io::tcp::TcpSettings::default().set_nodelay(true)
}

/// The node URLs of `REDIS_URL`: one server, or the seed nodes of a cluster.
pub fn node_urls(url: &str) -> Vec<&str> {
    url.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

impl Redis {
    /// A connection that is established lazily and re-established after failures: to one
    /// server, or to a cluster when `url` lists several nodes.
    pub fn new(url: &str, prefix: &str) -> anyhow::Result<Self> {
        use redis::IntoConnectionInfo as _;
        anyhow::ensure!(
            !prefix.contains('{'),
            "OMNI_REDIS_PREFIX must not contain '{{' (it would become the keys' hash tag)"
        );
        let infos = node_urls(url)
            .into_iter()
            .map(|u| {
                u.into_connection_info()
                    .map(|i| i.set_tcp_settings(tcp_settings()))
                    .map_err(|e| anyhow::anyhow!("REDIS_URL has an invalid Redis URL {u:?}: {e}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let nodes = infos
            .iter()
            .cloned()
            .map(redis::Client::open)
            .collect::<redis::RedisResult<Arc<[_]>>>()?;
        let client = nodes
            .first()
            .ok_or_else(|| anyhow::anyhow!("REDIS_URL names no Redis server"))?;
        let (cluster, conn) = if infos.len() > 1 {
            let cluster = ClusterClient::builder(infos)
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(RESPONSE_TIMEOUT)
                .retries(3)
                .tcp_settings(tcp_settings())
                .build()?;
            let conn =
                cluster.get_pending_async_connection_with_config(cluster_config(RESPONSE_TIMEOUT));
            (Some(cluster), Conn::Cluster(conn))
        } else {
            let conn = client.get_connection_manager_lazy(manager_config(RESPONSE_TIMEOUT))?;
            (None, Conn::Single(conn))
        };
        Ok(Self {
            nodes: nodes.clone(),
            cluster,
            conn,
            prefix: prefix.into(),
        })
    }

    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.cluster.is_some()
    }

    /// A pub/sub connection, to the first node that answers: on a cluster any node hears
    /// every `PUBLISH` of the cluster.
    pub async fn pubsub(&self) -> redis::RedisResult<redis::aio::PubSub> {
        let mut last = None;
        for node in self.nodes.iter() {
            match node.get_async_pubsub().await {
                Ok(pubsub) => return Ok(pubsub),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| (redis::ErrorKind::Client, "no Redis node").into()))
    }

    /// The shared connection (cheap to clone).
    pub fn conn(&self) -> Conn {
        self.conn.clone()
    }

    /// A connection of its own, for blocking commands that may wait up to `block`.
    pub fn dedicated(&self, block: Duration) -> anyhow::Result<Conn> {
        let timeout = block + RESPONSE_TIMEOUT;
        Ok(match &self.cluster {
            Some(cluster) => Conn::Cluster(
                cluster.get_pending_async_connection_with_config(cluster_config(timeout)),
            ),
            None => {
                Conn::Single(self.nodes[0].get_connection_manager_lazy(manager_config(timeout))?)
            }
        })
    }

    /// `name` inside this deployment's namespace.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The Redis stream a service's events are published to. Its name is its own hash tag, so
    /// keys kept beside it (the relay's marker) share its slot on a cluster.
    pub fn event_stream(&self, source: &str) -> String {
        self.key(&format!("omni:events:{{{source}}}"))
    }

    /// One cheap round trip, for health checks (to every node of a cluster).
    pub async fn ping(&self) -> redis::RedisResult<()> {
        let mut conn = self.conn();
        redis::cmd("PING")
            .query_async::<Value>(&mut conn)
            .await
            .map(|_| ())
    }
}

/// A connection to one server or to a cluster; both run every command the services use.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conn::Single(_) => "Conn::Single",
            Conn::Cluster(_) => "Conn::Cluster",
        })
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => {
                if pipeline.is_transaction() {
                    c.req_packed_commands(pipeline, offset, count)
                } else {
                    Box::pin(split_by_slot(c.clone(), pipeline))
                }
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// What decides a command's slot: the hash tag of its first argument (the key, for every
/// command the services pipeline), or the whole argument.
fn slot_key(cmd: &Cmd) -> &[u8] {
    match cmd.args_iter().nth(1) {
        Some(redis::Arg::Simple(key)) => hash_tag(key).unwrap_or(key),
        _ => &[],
    }
}

/// The part of `key` between the first `{` and the next `}`, when not empty (Redis Cluster's
/// rule).
fn hash_tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|b| *b == b'{')?;
    let len = key[open + 1..].iter().position(|b| *b == b'}')?;
    (len > 0).then(|| &key[open + 1..open + 1 + len])
}

/// Sends a plain pipeline to a cluster as one sub-pipeline per slot key (commands keep their
/// order within each), concurrently, and returns the replies in the pipeline's order.
async fn split_by_slot(
    conn: ClusterConnection,
    pipeline: &Pipeline,
) -> redis::RedisResult<Vec<Value>> {
    let keys: Vec<&[u8]> = pipeline.cmd_iter().map(slot_key).collect();
    if keys.windows(2).all(|pair| pair[0] == pair[1]) {
        // One slot key (the usual case): the pipeline as it is.
        let mut conn = conn;
        return conn.req_packed_commands(pipeline, 0, pipeline.len()).await;
    }
    let mut groups: Vec<(&[u8], Pipeline, Vec<usize>)> = Vec::new();
    for (i, (cmd, key)) in pipeline.cmd_iter().zip(&keys).enumerate() {
        let at = match groups.iter().position(|(k, _, _)| k == key) {
            Some(at) => at,
            None => {
                groups.push((key, Pipeline::new(), Vec::new()));
                groups.len() - 1
            }
        };
        groups[at].1.add_command(cmd.clone());
        groups[at].2.push(i);
    }
    let sent = groups.iter().map(|(_, sub, _)| {
        let mut conn = conn.clone();
        async move { conn.req_packed_commands(sub, 0, sub.len()).await }
    });
    let replies = futures::future::try_join_all(sent).await?;
    let mut out = vec![Value::Nil; pipeline.len()];
    for ((_, _, at), values) in groups.iter().zip(replies) {
        for (i, value) in at.iter().zip(values) {
            out[*i] = value;
        }
    }
    Ok(out)
}

/// `FLUSHALL`: every key of every namespace. For tests of Redis data loss, on a server of
/// their own.
pub async fn flush_all(conn: &mut Conn) -> redis::RedisResult<()> {
    redis::cmd("FLUSHALL").query_async(conn).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_tags_follow_the_cluster_rule() {
        assert_eq!(hash_tag(b"inv:{sku-1}:snap"), Some(&b"sku-1"[..]));
        assert_eq!(
            hash_tag(b"p:omni:events:{orders}:relay"),
            Some(&b"orders"[..])
        );
        assert_eq!(
            hash_tag(b"{}x{y}"),
            None,
            "an empty first tag means the whole key"
        );
        assert_eq!(hash_tag(b"no-tag"), None);
        assert_eq!(hash_tag(b"open{only"), None);
    }

    #[test]
    fn commands_of_one_tag_share_a_slot_key() {
        let snap = redis::cmd("GET").arg("t:inv:{a}:snap").clone();
        let gate = redis::cmd("GET").arg("t:inv:{a}:gate").clone();
        let other = redis::cmd("GET").arg("t:inv:{b}:snap").clone();
        assert_eq!(slot_key(&snap), slot_key(&gate));
        assert_ne!(slot_key(&snap), slot_key(&other));
    }

    #[tokio::test]
    async fn several_urls_make_a_cluster() {
        assert_eq!(
            node_urls("redis://a:1, redis://b:2,"),
            ["redis://a:1", "redis://b:2"]
        );
        let one = Redis::new("redis://127.0.0.1:1", "p:").expect("one");
        assert!(!one.is_cluster());
        let many = Redis::new("redis://127.0.0.1:1,redis://127.0.0.1:2", "p:").expect("many");
        assert!(many.is_cluster());
        assert!(Redis::new("redis://127.0.0.1:1", "p{:").is_err());
        assert!(Redis::new(" , ", "").is_err());
    }
}

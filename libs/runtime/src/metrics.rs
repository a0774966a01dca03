//! Prometheus metrics, served by every service on its own port (`GET /metrics`).
//!
//! Each [`crate::server::Host`] owns one [`Metrics`] (several services may share a process in
//! tests and benchmarks, each with its own registry and port):
//!
//! - `omni_rpc_requests_total{method,code}` and `omni_rpc_duration_seconds{method}`: every RPC,
//!   by the gRPC status it ended with, recorded by a tower layer in front of the routes (the
//!   status of a call that fails mid-stream is recorded as OK: the layer sees headers only);
//! - `omni_dependency_up{dependency}`: Postgres and Redis as the health watcher last saw them;
//! - `omni_db_pool_connections{state}`: the pool's idle and in-use connections;
//! - `omni_outbox_backlog`: events committed but not yet relayed to Redis;
//! - `omni_consumer_lag{group,stream}` and `omni_consumer_pending{group,stream}`: entries of
//!   a stream this service's consumer group has not read yet, and read but not acknowledged;
//! - `omni_consumer_oldest_seconds{group,stream}`: the age of the oldest entry the group has
//!   not yet acknowledged (pending or unread), 0 when it is caught up: how far behind it is;
//! - `omni_consumer_up{group}`: 1 while the group's consumer in this process can read and
//!   apply (0 during an outage it is waiting out; health is NOT_SERVING meanwhile);
//! - whatever a service registers itself through [`Metrics::registry`].
//!
//! The scrape-time figures (pool, backlog, lag) are read when Prometheus asks, so an idle
//! service does no work for them.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use http_body_util::Full;
use hyper::body::Bytes;
use prometheus::{
    Encoder as _, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use redis::AsyncCommands as _;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::redis::Redis;

/// A labelled counter a service keeps for its own events.
#[derive(Clone, Debug)]
pub struct Counter(IntCounterVec);

impl Counter {
    pub fn inc(&self, labels: &[&str]) {
        self.0.with_label_values(labels).inc();
    }
}

/// One service's metrics.
#[derive(Debug)]
pub struct Metrics {
    service: &'static str,
    registry: Registry,
    rpc_requests: IntCounterVec,
    rpc_duration: HistogramVec,
    dependency_up: IntGaugeVec,
    pool_connections: IntGaugeVec,
    outbox_backlog: IntGauge,
    consumer_lag: IntGaugeVec,
    consumer_pending: IntGaugeVec,
    consumer_oldest: IntGaugeVec,
    consumer_up: IntGaugeVec,
}

fn registered<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    collector: C,
) -> C {
    // Names are fixed and distinct, so registration cannot clash.
    let _ = registry.register(Box::new(collector.clone()));
    collector
}

impl Metrics {
    pub fn new(service: &'static str) -> Arc<Self> {
        let registry = Registry::new();
        let opts = |name: &str, help: &str| Opts::new(name, help);
        Arc::new(Self {
            service,
            rpc_requests: registered(
                &registry,
                IntCounterVec::new(
                    opts(
                        "omni_rpc_requests_total",
                        "RPCs handled, by method and gRPC status.",
                    ),
                    &["method", "code"],
                )
                .expect("valid metric"),
            ),
            rpc_duration: registered(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "omni_rpc_duration_seconds",
                        "RPC latency until the response starts.",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0, 10.0,
                    ]),
                    &["method"],
                )
                .expect("valid metric"),
            ),
            dependency_up: registered(
                &registry,
                IntGaugeVec::new(
                    opts(
                        "omni_dependency_up",
                        "1 while the dependency answers the health watcher.",
                    ),
                    &["dependency"],
                )
                .expect("valid metric"),
            ),
            pool_connections: registered(
                &registry,
                IntGaugeVec::new(
                    opts(
                        "omni_db_pool_connections",
                        "Postgres pool connections by state.",
                    ),
                    &["state"],
                )
                .expect("valid metric"),
            ),
            outbox_backlog: registered(
                &registry,
                IntGauge::new(
                    "omni_outbox_backlog",
                    "Events committed, not yet relayed to Redis.",
                )
                .expect("valid metric"),
            ),
            consumer_lag: registered(
                &registry,
                IntGaugeVec::new(
                    opts(
                        "omni_consumer_lag",
                        "Stream entries the consumer group has not read yet.",
                    ),
                    &["group", "stream"],
                )
                .expect("valid metric"),
            ),
            consumer_pending: registered(
                &registry,
                IntGaugeVec::new(
                    opts(
                        "omni_consumer_pending",
                        "Entries read by the group, not yet acknowledged.",
                    ),
                    &["group", "stream"],
                )
                .expect("valid metric"),
            ),
            consumer_oldest: registered(
                &registry,
                IntGaugeVec::new(
                    opts(
                        "omni_consumer_oldest_seconds",
                        "Age of the oldest entry the group has not acknowledged (0: caught up).",
                    ),
                    &["group", "stream"],
                )
                .expect("valid metric"),
            ),
            consumer_up: registered(
                &registry,
                IntGaugeVec::new(
                    opts(
                        "omni_consumer_up",
                        "1 while this process's consumer of the group can read and apply events.",
                    ),
                    &["group"],
                )
                .expect("valid metric"),
            ),
            registry,
        })
    }

    /// The registry, for a service's own metrics (e.g. inventory's hot-gate decisions).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// A counter of the service's own, labelled by `labels`, registered on its page.
    pub fn counter(&self, name: &str, help: &str, labels: &[&str]) -> anyhow::Result<Counter> {
        let counter = IntCounterVec::new(Opts::new(name, help), labels)?;
        self.registry.register(Box::new(counter.clone()))?;
        Ok(Counter(counter))
    }

    pub fn set_dependency_up(&self, dependency: &str, up: bool) {
        self.dependency_up
            .with_label_values(&[dependency])
            .set(i64::from(up));
    }

    fn observe_rpc(&self, method: &str, code: &str, started: Instant) {
        self.rpc_requests.with_label_values(&[method, code]).inc();
        self.rpc_duration
            .with_label_values(&[method])
            .observe(started.elapsed().as_secs_f64());
    }

    /// Reads the scrape-time figures, then renders everything in the text format.
    pub async fn render(&self, pool: &PgPool, redis: &Redis) -> String {
        let size = i64::from(pool.size());
        let idle = i64::try_from(pool.num_idle()).unwrap_or(i64::MAX);
        self.pool_connections.with_label_values(&["idle"]).set(idle);
        self.pool_connections
            .with_label_values(&["in_use"])
            .set(size - idle);
        match sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(pool)
            .await
        {
            Ok(n) => self.outbox_backlog.set(n),
            Err(e) => tracing::debug!(error = %e, "outbox backlog not read"),
        }
        for (group, up) in consumer_flags(self.service, redis) {
            self.consumer_up
                .with_label_values(&[group.as_str()])
                .set(i64::from(up));
        }
        for (group, source) in consumers_of(self.service, redis) {
            let stream = redis.event_stream(&source);
            match group_info(redis, &stream, &group).await {
                Ok(Some(info)) => {
                    let labels = [group.as_str(), stream.as_str()];
                    self.consumer_lag.with_label_values(&labels).set(info.lag);
                    self.consumer_pending
                        .with_label_values(&labels)
                        .set(info.pending);
                    self.consumer_oldest
                        .with_label_values(&labels)
                        .set(info.oldest_seconds);
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "consumer lag not read"),
            }
        }
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "metrics not encoded");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// Serves `GET /metrics` on `listener` until `shutdown`.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        pool: PgPool,
        redis: Redis,
        shutdown: CancellationToken,
    ) {
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let Ok((stream, _)) = accepted else { continue };
            let (metrics, pool, redis) = (self.clone(), pool.clone(), redis.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let (metrics, pool, redis) = (metrics.clone(), pool.clone(), redis.clone());
                        async move {
                            let response = if request.uri().path() == "/metrics" {
                                hyper::Response::builder()
                                    .header("content-type", "text/plain; version=0.0.4")
                                    .body(Full::new(Bytes::from(
                                        metrics.render(&pool, &redis).await,
                                    )))
                            } else {
                                hyper::Response::builder().status(404).body(Full::new(
                                    Bytes::from_static(b"metrics are at /metrics\n"),
                                ))
                            };
                            Ok::<_, Infallible>(response.unwrap_or_default())
                        }
                    },
                );
                let io = hyper_util::rt::TokioIo::new(stream);
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await
                {
                    tracing::debug!(error = %e, "metrics connection ended");
                }
            });
        }
    }
}

/// Where a consumer group stands on a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupInfo {
    /// Entries not read yet (Redis 7+).
    pub lag: i64,
    /// Entries read, not acknowledged.
    pub pending: i64,
    /// Age of the oldest entry not acknowledged, pending or unread; 0 when caught up.
    pub oldest_seconds: i64,
    /// The last entry delivered to the group.
    pub last_delivered: StreamPos,
    /// The oldest pending entry, if any.
    pub oldest_pending: Option<StreamPos>,
}

/// A stream entry id, `<ms>-<seq>`, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct StreamPos {
    pub ms: i64,
    pub seq: i64,
}

impl StreamPos {
    pub fn parse(id: &str) -> Option<Self> {
        let (ms, seq) = id.split_once('-')?;
        Some(Self {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl std::fmt::Display for StreamPos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

fn text(v: Option<&redis::Value>) -> Option<String> {
    match v? {
        redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// Every consumer group of `stream` and where it stands (empty when the stream is missing).
pub async fn groups(redis: &Redis, stream: &str) -> redis::RedisResult<Vec<(String, GroupInfo)>> {
    let mut conn = redis.conn();
    let groups: Vec<std::collections::HashMap<String, redis::Value>> = match redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(&mut conn)
        .await
    {
        Ok(groups) => groups,
        Err(e) if e.to_string().contains("no such key") => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let number = |v: Option<&redis::Value>| match v {
        Some(redis::Value::Int(n)) => *n,
        _ => 0,
    };
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut out = Vec::with_capacity(groups.len());
    for g in &groups {
        let Some(name) = text(g.get("name")) else {
            continue;
        };
        let pending = number(g.get("pending"));
        let lag = number(g.get("lag"));
        let last_delivered = text(g.get("last-delivered-id"))
            .and_then(|id| StreamPos::parse(&id))
            .unwrap_or_default();
        let oldest_pending = if pending > 0 {
            let summary: redis::streams::StreamPendingReply = conn.xpending(stream, &name).await?;
            match summary {
                redis::streams::StreamPendingReply::Data(d) => StreamPos::parse(&d.start_id),
                _ => None,
            }
        } else {
            None
        };
        // The oldest entry not acknowledged: the oldest pending one, else the first unread.
        let oldest = match oldest_pending {
            Some(p) => Some(p),
            None if lag > 0 => {
                let next: redis::streams::StreamRangeReply = conn
                    .xrange_count(stream, format!("({last_delivered}"), "+", 1)
                    .await?;
                next.ids.first().and_then(|e| StreamPos::parse(&e.id))
            }
            None => None,
        };
        out.push((
            name,
            GroupInfo {
                lag,
                pending,
                oldest_seconds: oldest.map_or(0, |p| ((now_ms - p.ms) / 1000).max(0)),
                last_delivered,
                oldest_pending,
            },
        ));
    }
    Ok(out)
}

async fn group_info(
    redis: &Redis,
    stream: &str,
    group: &str,
) -> redis::RedisResult<Option<GroupInfo>> {
    Ok(groups(redis, stream)
        .await?
        .into_iter()
        .find_map(|(name, info)| (name == group).then_some(info)))
}

/// Consumer groups started in this process: (Redis namespace, group, source, whether its
/// consumer can read). A service's group is named after the service.
type ConsumerTable = Mutex<Vec<(String, String, String, Arc<AtomicBool>)>>;

fn consumer_table() -> &'static ConsumerTable {
    static TABLE: OnceLock<ConsumerTable> = OnceLock::new();
    TABLE.get_or_init(Mutex::default)
}

/// Records that `group` consumes `sources` for the service whose Redis namespace is `redis`
/// (called by [`crate::consumer::Consumer`]), so the service's scrape can report its lag and
/// its health whether the consumer can read. Returns one flag per source, in order, which the
/// reader of that source keeps up to date.
pub fn register_consumer(group: &str, sources: &[String], redis: &Redis) -> Vec<Arc<AtomicBool>> {
    let flags: Vec<Arc<AtomicBool>> = sources
        .iter()
        .map(|_| Arc::new(AtomicBool::new(true)))
        .collect();
    if let Ok(mut table) = consumer_table().lock() {
        let prefix = redis.key("");
        // A consumer started again in this process (tests) replaces the earlier one.
        table.retain(|(p, g, _, _)| !(*p == prefix && g == group));
        for (source, up) in sources.iter().zip(&flags) {
            table.push((prefix.clone(), group.to_owned(), source.clone(), up.clone()));
        }
    }
    flags
}

fn consumers_of(service: &str, redis: &Redis) -> Vec<(String, String)> {
    let prefix = redis.key("");
    consumer_table()
        .lock()
        .map(|table| {
            table
                .iter()
                .filter(|(p, group, _, _)| *p == prefix && group == service)
                .map(|(_, group, source, _)| (group.clone(), source.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether each consumer group of `service` in this process can read, by group.
fn consumer_flags(service: &str, redis: &Redis) -> Vec<(String, bool)> {
    let prefix = redis.key("");
    let mut flags: Vec<(String, bool)> = consumer_table()
        .lock()
        .map(|table| {
            table
                .iter()
                .filter(|(p, group, _, _)| *p == prefix && group == service)
                .map(|(_, group, _, up)| (group.clone(), up.load(Ordering::Acquire)))
                .collect()
        })
        .unwrap_or_default();
    // A group is up while every one of its streams can be read.
    flags.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    flags.dedup_by(|later, earlier| later.0 == earlier.0);
    flags
}

/// True unless one of `service`'s consumers in this process cannot read (health).
pub fn consumers_up(service: &str, redis: &Redis) -> bool {
    consumer_flags(service, redis).iter().all(|(_, up)| *up)
}

/// The gRPC status name of a numeric code, as the metrics label it.
fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

/// Counts and times every RPC of the routes it wraps (health and reflection excluded).
#[derive(Clone, Debug)]
pub struct RpcMetricsLayer(pub Arc<Metrics>);

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RpcMetrics<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        let measured =
            !(path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection."));
        let method = path.trim_start_matches('/').to_owned();
        let started = Instant::now();
        let metrics = self.metrics.clone();
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await;
            if measured {
                // A call that fails before its first message answers with the status in the
                // headers; a successful unary call sends OK in the trailers.
                let code = match &response {
                    Ok(r) => r
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok())
                        .map_or("OK", code_name),
                    Err(_) => "UNKNOWN",
                };
                metrics.observe_rpc(&method, code, started);
            }
            response
        })
    }
}

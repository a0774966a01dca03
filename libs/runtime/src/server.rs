//! The gRPC host every service runs in.
//!
//! [`Host::run`] serves on a listener the caller bound (tests bind `127.0.0.1:0`) until a
//! shutdown token is cancelled: the service's routes behind per-RPC spans (continuing the
//! caller's W3C trace context), grpc.health.v1 and reflection. While the service starts
//! (migrations wait for Postgres) health says NOT_SERVING and the service's own RPCs answer
//! UNAVAILABLE; once started, health follows Postgres, Redis and the service's event consumers.
//! On shutdown health turns NOT_SERVING, new connections stop, and in-flight calls drain for up
//! to the grace period.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::config::{CommonConfig, MetricsEndpoint};
use crate::metrics::{Metrics, RpcMetricsLayer};
use crate::redis::Redis;

/// Whether the service has finished starting (migrations applied); until then its own RPCs
/// answer UNAVAILABLE and health NOT_SERVING. Shared with the service's interceptors.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn set(&self) {
        self.0.store(true, Ordering::Release);
    }
}

pub struct Host {
    /// The service's short name, e.g. `identity`.
    pub name: &'static str,
    /// Fully qualified gRPC service names reported by health, e.g.
    /// `omni.identity.v1.IdentityService`.
    pub services: Vec<&'static str>,
    pub listener: TcpListener,
    pub shutdown: CancellationToken,
    pub grace: Duration,
    pub health_interval: Duration,
    pub max_call: Duration,
    readiness: Readiness,
    metrics: Arc<Metrics>,
    metrics_endpoint: MetricsEndpoint,
}

impl Host {
    pub fn new(
        name: &'static str,
        services: Vec<&'static str>,
        config: &CommonConfig,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            name,
            services,
            listener,
            shutdown,
            grace: config.shutdown_grace,
            health_interval: config.health_interval,
            max_call: config.max_call_duration,
            readiness: Readiness::default(),
            metrics: Metrics::new(name),
            metrics_endpoint: config.metrics.clone(),
        }
    }

    /// The service's metrics, for the collectors it registers itself.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The flag the service's interceptors check (see [`crate::auth::ServerAuth`]).
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// Keeps `verifier`'s deny list of disabled principals in step with identity's until
    /// shutdown (see [`crate::auth`]).
    pub fn watch_revocations(&self, verifier: &Arc<crate::auth::TokenVerifier>, redis: &Redis) {
        tokio::spawn(verifier.clone().watch_revocations(
            redis.clone(),
            crate::auth::REVOCATION_POLL,
            self.shutdown.clone(),
        ));
    }

    /// Serves `routes` (each wrapped in an interceptor holding [`Host::readiness`]) with
    /// health and reflection until shutdown. `startup` (migrations, background workers) runs
    /// meanwhile; when it succeeds the service becomes ready, and health follows `pool` and
    /// `redis` from then on. If it fails, the host stops with its error.
    pub async fn run<F>(
        self,
        routes: Routes,
        pool: PgPool,
        redis: Redis,
        startup: F,
    ) -> anyhow::Result<()>
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let (reporter, health) = tonic_health::server::health_reporter();
        set_status(&reporter, &self.services, ServingStatus::NotServing).await;
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(omni_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(omni_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;

        let metrics_listener = match &self.metrics_endpoint {
            MetricsEndpoint::Addr(addr) => Some(TcpListener::bind(addr).await?),
            MetricsEndpoint::Bound(bound) => {
                let listener = bound
                    .lock()
                    .ok()
                    .and_then(|mut l| l.take())
                    .ok_or_else(|| anyhow::anyhow!("the metrics listener was used already"))?;
                listener.set_nonblocking(true)?;
                Some(TcpListener::from_std(listener)?)
            }
            MetricsEndpoint::Off => None,
        };
        if let Some(listener) = metrics_listener {
            tracing::info!(addr = %listener.local_addr()?, "metrics at /metrics");
            tokio::spawn(self.metrics.clone().serve(
                listener,
                pool.clone(),
                redis.clone(),
                self.shutdown.clone(),
            ));
        }

        let failed = CancellationToken::new();
        let starting = {
            let readiness = self.readiness.clone();
            let failed = failed.clone();
            let watcher = watch_dependencies(
                self.name,
                reporter.clone(),
                self.services.clone(),
                pool,
                redis,
                self.health_interval,
                self.shutdown.clone(),
                self.metrics.clone(),
            );
            tokio::spawn(async move {
                match startup.await {
                    Ok(()) => {
                        readiness.set();
                        tracing::info!("started");
                        watcher.await;
                        Ok(())
                    }
                    Err(e) => {
                        failed.cancel();
                        Err(e)
                    }
                }
            })
        };

        let name = self.name;
        let shutdown = self.shutdown.clone();
        let stop = failed.clone();
        let services = self.services.clone();
        let server = Server::builder()
            .timeout(self.max_call)
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .trace_fn(move |request| rpc_span(name, request))
            .layer(RpcMetricsLayer(self.metrics.clone()))
            .layer(crate::limits::InputLimitsLayer)
            .add_routes(routes)
            .add_service(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .serve_with_incoming_shutdown(incoming(self.listener), async move {
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = stop.cancelled() => {}
                }
                tracing::info!("shutting down: draining in-flight calls");
                set_status(&reporter, &services, ServingStatus::NotServing).await;
            });
        let grace = self.grace;
        let shutdown = self.shutdown.clone();
        let deadline = async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = failed.cancelled() => {}
            }
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            served = server => served?,
            () = deadline => tracing::warn!(grace_ms = grace.as_millis() as u64, "drain took longer than the grace period; stopping"),
        }
        if starting.is_finished() {
            starting.await??;
        } else {
            starting.abort();
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Accepted connections, with Nagle's algorithm off: the builder's `tcp_nodelay` applies only
/// to listeners the server binds itself, and without it small responses wait for the
/// client's delayed ACK (40 ms).
fn incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt as _;
    TcpListenerStream::new(listener).map(|accepted| {
        if let Ok(stream) = &accepted
            && let Err(e) = stream.set_nodelay(true)
        {
            tracing::debug!(error = %e, "cannot disable Nagle's algorithm");
        }
        accepted
    })
}

/// The span every RPC runs in: named after the method, child of the caller's trace.
pub fn rpc_span(service: &'static str, request: &http::Request<()>) -> tracing::Span {
    let path = request.uri().path();
    if path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.") {
        return tracing::Span::none();
    }
    let method = path.trim_start_matches('/');
    let span = tracing::info_span!(
        "grpc.request",
        otel.name = %method,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.method = %method,
        service,
        principal = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    crate::telemetry::adopt_parent(
        &span,
        crate::telemetry::extract_from_headers(request.headers()),
    );
    span
}

async fn set_status(reporter: &HealthReporter, services: &[&'static str], status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for service in services {
        reporter.set_service_status(*service, status).await;
    }
}

/// Keeps health SERVING only while both Postgres and Redis answer and the service's event
/// consumers (if any) can read.
#[allow(clippy::too_many_arguments)]
async fn watch_dependencies(
    service: &'static str,
    reporter: HealthReporter,
    services: Vec<&'static str>,
    pool: PgPool,
    redis: Redis,
    interval: Duration,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
) {
    let mut last: Option<bool> = None;
    let probe_timeout = interval.clamp(Duration::from_millis(500), Duration::from_secs(3));
    loop {
        let probe = async {
            let postgres = crate::db::ping(&pool).await;
            let cache = redis.ping().await;
            (postgres, cache)
        };
        let healthy = match tokio::time::timeout(probe_timeout, probe).await {
            Ok((Ok(()), Ok(()))) => {
                metrics.set_dependency_up("postgres", true);
                metrics.set_dependency_up("redis", true);
                let reading = crate::metrics::consumers_up(service, &redis);
                if !reading && last != Some(false) {
                    tracing::warn!("an event consumer cannot read: NOT_SERVING");
                }
                reading
            }
            Ok((postgres, cache)) => {
                metrics.set_dependency_up("postgres", postgres.is_ok());
                metrics.set_dependency_up("redis", cache.is_ok());
                if last != Some(false) {
                    tracing::warn!(
                        postgres = ?postgres.err().map(|e| e.to_string()),
                        redis = ?cache.err().map(|e| e.to_string()),
                        "dependency check failed: NOT_SERVING"
                    );
                }
                false
            }
            Err(_) => {
                metrics.set_dependency_up("postgres", false);
                metrics.set_dependency_up("redis", false);
                if last != Some(false) {
                    tracing::warn!("dependency check timed out: NOT_SERVING");
                }
                false
            }
        };
        if last != Some(healthy) && !shutdown.is_cancelled() {
            let status = if healthy {
                tracing::info!("dependencies reachable: SERVING");
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            set_status(&reporter, &services, status).await;
            last = Some(healthy);
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// Resolves when the process receives SIGTERM or ctrl-c, then cancels `token`.
pub async fn cancel_on_signal(token: CancellationToken) {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("ctrl-c received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
    token.cancel();
}

/// A service process from start to exit: telemetry, configuration (a bad value stops the
/// process with a message naming the variable), bind, serve until SIGTERM or ctrl-c, flush
/// spans. Each service's `main` is this one call.
pub async fn run_process<C, F, Fut>(
    name: &'static str,
    config: impl FnOnce() -> Result<C, crate::config::ConfigError>,
    listen_addr: impl Fn(&C) -> std::net::SocketAddr,
    run: F,
) -> std::process::ExitCode
where
    F: FnOnce(C, TcpListener, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let telemetry = match crate::telemetry::init(name) {
        Ok(t) => t,
        Err(e) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("{name}: cannot start telemetry: {e:#}");
            }
            return std::process::ExitCode::FAILURE;
        }
    };
    let served = async {
        let config = config()?;
        let listener = TcpListener::bind(listen_addr(&config)).await?;
        tracing::info!(addr = %listener.local_addr()?, "{name} listening");
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        run(config, listener, shutdown).await
    };
    let code = match served.await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "{name} stopped");
            #[allow(clippy::print_stderr)]
            {
                eprintln!("{name}: {e:#}");
            }
            std::process::ExitCode::FAILURE
        }
    };
    telemetry.shutdown();
    code
}

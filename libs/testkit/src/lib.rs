//! Starts real Omni services in-process for tests: [`identity`], [`catalog`], [`inventory`], or
//! any service through [`Service::start`].
//!
//! Each service gets a listener on `127.0.0.1:0`, a database of its own created fresh on the
//! Postgres at `OMNI_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`),
//! and a Redis namespace of its own on `OMNI_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`).
//! Readiness is awaited on the service's grpc.health.v1 `Watch` stream, never with sleeps.
//! Tokens are minted with the key pair the services under test trust, for any role and scope.
//!
//! All spans finish in an in-memory exporter ([`finished_spans`]) so tests can assert on traces.

mod private_redis;
pub mod process;
mod proxy;
pub mod world;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use omni_runtime::auth::{KeyPair, Principal, PrincipalKind, Role, Scope, TokenSigner};
use omni_runtime::client::{self, AuthChannel, TokenSource};
use omni_runtime::config::{CommonConfig, MetricsEndpoint, Secret};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use uuid::Uuid;

pub use private_redis::PrivateRedis;
pub use proxy::TcpProxy;

struct Global {
    keys: KeyPair,
    signer: TokenSigner,
    spans: InMemorySpanExporter,
}

static CAPTURE_SPANS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Leaves telemetry to the caller: no in-memory span capture and no test log writer (for
/// benchmarks, which install the production telemetry instead). Call before anything else.
pub fn disable_span_capture() {
    CAPTURE_SPANS.store(false, std::sync::atomic::Ordering::SeqCst);
}

fn global() -> &'static Global {
    static GLOBAL: OnceLock<Global> = OnceLock::new();
    GLOBAL.get_or_init(|| {
        let keys = KeyPair::generate().expect("generating the test key pair");
        let signer =
            TokenSigner::from_private_pem(keys.private_pem.expose(), Duration::from_secs(900))
                .expect("loading the test key pair");
        let spans = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(spans.clone())
            .build();
        if CAPTURE_SPANS.load(std::sync::atomic::Ordering::SeqCst) {
            // Only the first call in a process can install; later calls are no-ops.
            let _ = omni_runtime::telemetry::install(&provider, "omni-testkit", false);
        }
        Global {
            keys,
            signer,
            spans,
        }
    })
}

/// Every span finished so far in this test process.
pub fn finished_spans() -> Vec<SpanData> {
    global().spans.get_finished_spans().unwrap_or_default()
}

pub fn admin_database_url() -> String {
    std::env::var("OMNI_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

pub fn redis_url() -> String {
    std::env::var("OMNI_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A fresh, empty database; returns its URL. Databases are named `omni_test_*` so
/// `scripts/test` can drop those of earlier runs.
pub async fn fresh_database(label: &str) -> anyhow::Result<String> {
    let admin = admin_database_url();
    let name = format!("omni_test_{label}_{}", Uuid::now_v7().simple());
    let mut conn = PgConnection::connect(&admin).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    let (base, _) = admin
        .rsplit_once('/')
        .ok_or_else(|| anyhow::anyhow!("OMNI_TEST_DATABASE_URL has no database part"))?;
    Ok(format!("{base}/{name}"))
}

/// A unique Redis key prefix, so tests never see each other's keys or streams.
pub fn fresh_redis_prefix() -> String {
    format!("test:{}:", Uuid::now_v7().simple())
}

/// The common configuration of a service under test, on a fresh database and namespace.
pub async fn common_config(label: &str) -> anyhow::Result<CommonConfig> {
    let database_url = fresh_database(label).await?;
    Ok(CommonConfig {
        listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        database_url: Secret::new(database_url),
        database_max_connections: 10,
        database_acquire_timeout: Duration::from_secs(1),
        database_statement_timeout: Duration::from_secs(10),
        database_lock_timeout: Duration::from_secs(2),
        redis_url: Secret::new(redis_url()),
        redis_prefix: fresh_redis_prefix(),
        auth_public_key_pem: global().keys.public_pem.clone(),
        shutdown_grace: Duration::from_secs(5),
        health_interval: Duration::from_millis(100),
        max_call_duration: Duration::from_secs(30),
        outbox_poll: Duration::from_millis(50),
        consumer_batch: 256,
        consumer_reclaim_idle: Duration::from_secs(30),
        metrics: MetricsEndpoint::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?.0,
    })
}

/// A fixed-offset time zone (`Etc/GMT±N`) where it is about midday now: stores in it can hand
/// over pickups "today" whenever the suite runs (a store's day ends at its local midnight).
pub fn daytime_zone() -> String {
    use chrono::Timelike as _;
    let hour = i64::from(chrono::Utc::now().hour());
    // Local hour = UTC hour + offset; the tz database's Etc/GMT signs are inverted.
    match 12 - hour {
        0 => "Etc/GMT".to_owned(),
        east if east > 0 => format!("Etc/GMT-{east}"),
        west => format!("Etc/GMT+{}", -west),
    }
}

/// A token for a principal with `roles` and `scope`, signed with the key services trust.
pub fn token(roles: &[Role], scope: Scope) -> String {
    token_as(Uuid::now_v7(), roles, scope)
}

/// A token for principal `id` with `roles` and `scope` (the same id on several tokens: one
/// caller, e.g. the maker of a reservation).
pub fn token_as(id: Uuid, roles: &[Role], scope: Scope) -> String {
    let principal = Principal {
        id: id.to_string(),
        kind: PrincipalKind::Staff,
        name: "test".to_owned(),
        roles: roles.to_vec(),
        scope,
        on_behalf_of: None,
    };
    global()
        .signer
        .sign(&principal)
        .expect("signing a test token")
        .0
}

/// A token for the one unscoped principal that holds exactly `roles`.
pub fn role_token(roles: &[Role]) -> String {
    let mask = Role::ALL
        .iter()
        .enumerate()
        .filter(|(_, r)| roles.contains(r))
        .fold(0u128, |m, (i, _)| m | (1 << i));
    token_as(
        Uuid::from_u128(0x0000_0000_0000_7000_8000_0000_0000_0000 | mask),
        roles,
        Scope::default(),
    )
}

/// A token that expired an hour ago.
pub fn expired_token(roles: &[Role]) -> String {
    let principal = Principal {
        id: Uuid::now_v7().to_string(),
        kind: PrincipalKind::Staff,
        name: "test".to_owned(),
        roles: roles.to_vec(),
        scope: Scope::default(),
        on_behalf_of: None,
    };
    global()
        .signer
        .sign_at(
            &principal,
            chrono::Utc::now() - chrono::Duration::hours(2),
            Duration::from_secs(3600),
        )
        .expect("signing a test token")
        .0
}

/// The PEM public key services under test verify tokens with (`OMNI_AUTH_PUBLIC_KEY`).
pub fn public_key_pem() -> String {
    global().keys.public_pem.clone()
}

/// The PEM private key services under test sign with (identity's `OMNI_SIGNING_KEY`).
pub fn signing_key_pem() -> Secret<String> {
    global().keys.private_pem.clone()
}

/// A service running in this process.
pub struct Service {
    pub name: &'static str,
    pub addr: SocketAddr,
    /// Where the service serves `GET /metrics`.
    pub metrics_addr: Option<SocketAddr>,
    pub config: CommonConfig,
    shutdown: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl Service {
    /// Starts a service: `run` is the service's own `run(config, listener, shutdown)`.
    pub async fn start<F, Fut>(
        name: &'static str,
        config: CommonConfig,
        run: F,
    ) -> anyhow::Result<Self>
    where
        F: FnOnce(TcpListener, CancellationToken) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let listener = TcpListener::bind(config.listen_addr).await?;
        let addr = listener.local_addr()?;
        let metrics_addr = match &config.metrics {
            MetricsEndpoint::Bound(bound) => bound
                .lock()
                .ok()
                .and_then(|l| l.as_ref().and_then(|l| l.local_addr().ok())),
            MetricsEndpoint::Addr(a) => Some(*a),
            MetricsEndpoint::Off => None,
        };
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(run(listener, shutdown.clone()));
        let service = Self {
            name,
            addr,
            metrics_addr,
            config,
            shutdown,
            handle,
        };
        service.wait_for(ServingStatus::Serving).await?;
        Ok(service)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A plain channel, without a token.
    pub fn channel(&self) -> Channel {
        client::channel(&self.url(), Duration::from_secs(5), Duration::from_secs(30))
            .expect("a valid loopback URL")
    }

    /// A channel whose calls carry `token` and the current trace context.
    pub fn with_token(&self, token: &str) -> AuthChannel {
        client::authenticated(
            self.channel(),
            TokenSource::Static(Arc::from(token)),
            Duration::from_secs(30),
        )
    }

    /// A channel acting as the one unscoped principal holding `roles` (the same principal on
    /// every call, as a real admin or app is: its idempotency keys are its own).
    pub fn as_roles(&self, roles: &[Role]) -> AuthChannel {
        self.with_token(&role_token(roles))
    }

    /// A channel acting as an admin.
    pub fn admin(&self) -> AuthChannel {
        self.as_roles(&[Role::Admin])
    }

    /// A pool on the service's own database, for assertions on what was written.
    pub async fn db(&self) -> anyhow::Result<PgPool> {
        Ok(PgPool::connect(self.config.database_url.expose()).await?)
    }

    /// The service's metrics page, as Prometheus would scrape it (plain HTTP/1.1 GET).
    pub async fn scrape(&self) -> anyhow::Result<String> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let addr = self
            .metrics_addr
            .ok_or_else(|| anyhow::anyhow!("{} serves no metrics", self.name))?;
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .ok_or_else(|| anyhow::anyhow!("not an HTTP response"))?;
        anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "metrics answered {head}");
        Ok(body.to_owned())
    }

    /// The service's Redis namespace prefix.
    pub fn redis_prefix(&self) -> &str {
        &self.config.redis_prefix
    }

    /// Waits (on the health Watch stream) until the overall status is `wanted`.
    pub async fn wait_for(&self, wanted: ServingStatus) -> anyhow::Result<()> {
        watch_until(self.name, self.channel(), wanted, || {
            self.handle.is_finished()
        })
        .await?;
        if self.handle.is_finished() {
            anyhow::bail!("{} stopped while starting", self.name);
        }
        Ok(())
    }

    /// Stops the service gracefully and returns what its `run` returned.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.handle.await?
    }
}

/// Waits (on the health Watch stream of `channel`) until the overall status is `wanted`, or
/// `stopped` says the service is gone; at most 30 s.
pub(crate) async fn watch_until(
    name: &str,
    channel: Channel,
    wanted: ServingStatus,
    stopped: impl Fn() -> bool,
) -> anyhow::Result<()> {
    let watch = async {
        loop {
            let mut client = HealthClient::new(channel.clone());
            let stream = client
                .watch(HealthCheckRequest {
                    service: String::new(),
                })
                .await;
            if let Ok(stream) = stream {
                let mut stream = stream.into_inner();
                while let Some(Ok(update)) = stream.next().await {
                    if update.status == wanted as i32 {
                        return;
                    }
                }
            }
            if stopped() {
                return;
            }
            // The server switched phase or is not accepting yet: watch again.
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), watch)
        .await
        .map_err(|_| anyhow::anyhow!("{name} did not become {wanted:?} within 30 s"))
}

/// Starts identity on a fresh database and namespace.
pub async fn identity() -> anyhow::Result<Service> {
    let common = common_config("identity").await?;
    identity_with(common).await
}

/// Starts identity with the given common configuration.
pub async fn identity_with(common: CommonConfig) -> anyhow::Result<Service> {
    let config = identity::Config {
        common: common.clone(),
        signing_key_pem: signing_key_pem(),
        token_ttl: Duration::from_secs(900),
        default_calling_code: "44".to_owned(),
        bootstrap_admin: None,
        signin_limits: identity::throttle::Limits::default(),
    };
    Service::start("identity", common, move |listener, shutdown| {
        identity::run(config, listener, shutdown)
    })
    .await
}

/// Starts the catalog on a fresh database and namespace.
pub async fn catalog() -> anyhow::Result<Service> {
    catalog_with(common_config("catalog").await?).await
}

/// Starts the catalog with the given common configuration.
pub async fn catalog_with(common: CommonConfig) -> anyhow::Result<Service> {
    let config = catalog::Config {
        common: common.clone(),
    };
    Service::start("catalog", common, move |listener, shutdown| {
        catalog::run(config, listener, shutdown)
    })
    .await
}

/// Starts inventory on a fresh database and namespace, sweeping expired reservations every
/// 50 ms.
pub async fn inventory() -> anyhow::Result<Service> {
    inventory_with(common_config("inventory").await?).await
}

/// Starts inventory with the given common configuration.
pub async fn inventory_with(common: CommonConfig) -> anyhow::Result<Service> {
    let config = inventory::Config {
        common: common.clone(),
        default_ttl: Duration::from_secs(900),
        expiry_interval: Duration::from_millis(50),
        hot_detect_concurrency: 32,
    };
    Service::start("inventory", common, move |listener, shutdown| {
        inventory::run(config, listener, shutdown)
    })
    .await
}

/// Starts crm with the given common configuration.
pub async fn crm_with(common: CommonConfig) -> anyhow::Result<Service> {
    let config = crm::Config {
        common: common.clone(),
    };
    Service::start("crm", common, move |listener, shutdown| {
        crm::run(config, listener, shutdown)
    })
    .await
}

/// Starts performance (reporting in EUR) with the given common configuration.
pub async fn performance_with(common: CommonConfig) -> anyhow::Result<Service> {
    let config = performance::Config {
        common: common.clone(),
        currency: "EUR".to_owned(),
    };
    Service::start("performance", common, move |listener, shutdown| {
        performance::run(config, listener, shutdown)
    })
    .await
}

/// The order clocks of an order-management under test.
#[derive(Debug, Clone)]
pub struct OrderClocks {
    pub payment_window: Duration,
    pub pickup_promise: Duration,
    pub pickup_hold: Duration,
    pub address_change_window: Duration,
    /// How long an order step may stay pending before the sweeper resumes it.
    pub resume_after: Duration,
    /// order-management's deadline on each call to another service.
    pub upstream_timeout: Duration,
}

impl Default for OrderClocks {
    fn default() -> Self {
        Self {
            payment_window: Duration::from_secs(1800),
            pickup_promise: Duration::from_secs(1800),
            pickup_hold: Duration::from_secs(3 * 24 * 3600),
            address_change_window: Duration::from_secs(24 * 3600),
            resume_after: Duration::from_secs(45),
            upstream_timeout: Duration::from_secs(10),
        }
    }
}

/// Every service of the suite on one Redis namespace (so events flow between them), each on
/// its own fresh database; order-management calls the others with a service token.
pub struct Shop {
    pub identity: Service,
    pub catalog: Service,
    pub inventory: Service,
    /// The link order-management reaches inventory through; cut it to make inventory
    /// unreachable from order-management alone.
    pub inventory_link: TcpProxy,
    pub crm: Service,
    pub performance: Service,
    pub orders: Service,
}

impl Shop {
    pub async fn start() -> anyhow::Result<Shop> {
        Self::start_with(OrderClocks::default()).await
    }

    pub async fn start_with(clocks: OrderClocks) -> anyhow::Result<Shop> {
        Self::start_tuned(clocks, 10).await
    }

    /// As [`Shop::start_with`], each service with a pool of `max_connections` (benchmarks).
    pub async fn start_tuned(clocks: OrderClocks, max_connections: u32) -> anyhow::Result<Shop> {
        Self::start_on(&redis_url(), clocks, max_connections).await
    }

    /// As [`Shop::start_tuned`], on the Redis at `redis_url` (e.g. a [`PrivateRedis`]).
    pub async fn start_on(
        redis_url: &str,
        clocks: OrderClocks,
        max_connections: u32,
    ) -> anyhow::Result<Shop> {
        let prefix = fresh_redis_prefix();
        let common = |label: &'static str| {
            let prefix = prefix.clone();
            async move {
                let mut c = common_config(label).await?;
                c.redis_prefix = prefix;
                c.redis_url = Secret::new(redis_url.to_owned());
                c.database_max_connections = max_connections;
                anyhow::Ok(c)
            }
        };
        let identity = identity_with(common("identity").await?).await?;
        let catalog = catalog_with(common("catalog").await?).await?;
        let inventory = inventory_with(common("inventory").await?).await?;
        let crm = crm_with(common("crm").await?).await?;
        let performance = performance_with(common("performance").await?).await?;
        let inventory_link = TcpProxy::start(inventory.addr).await?;
        let orders = order_management_with(
            common("orders").await?,
            order_management::Upstreams {
                identity: identity.url(),
                catalog: catalog.url(),
                inventory: format!("http://{}", inventory_link.addr()),
                crm: crm.url(),
                performance: performance.url(),
                call_timeout: clocks.upstream_timeout,
            },
            clocks,
        )
        .await?;
        Ok(Shop {
            identity,
            catalog,
            inventory,
            inventory_link,
            crm,
            performance,
            orders,
        })
    }
}

/// Starts order-management toward `upstreams`, authenticating as a service.
pub async fn order_management_with(
    common: CommonConfig,
    upstreams: order_management::Upstreams,
    clocks: OrderClocks,
) -> anyhow::Result<Service> {
    let config = order_management::Config {
        common: common.clone(),
        upstreams,
        credential: order_management::Credential::Token(Secret::new(token(
            &[Role::Service],
            Scope::default(),
        ))),
        payment_window: clocks.payment_window,
        pickup_promise: clocks.pickup_promise,
        pickup_hold: clocks.pickup_hold,
        address_change_window: clocks.address_change_window,
        sweep_interval: Duration::from_millis(100),
        step_resume_after: clocks.resume_after,
    };
    Service::start("order-management", common, move |listener, shutdown| {
        order_management::run(config, listener, shutdown)
    })
    .await
}

/// A proxy in front of the Postgres that `url` names, and `url` rewritten to go through it, so
/// a test can take the database away from one service ([`TcpProxy::cut`]) and give it back.
pub async fn database_link(url: &str) -> anyhow::Result<(TcpProxy, String)> {
    let bad = || anyhow::anyhow!("not a postgres://[user@]host[:port]/db URL: {url}");
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    let (user, host_path) = match rest.rsplit_once('@') {
        Some((user, host_path)) => (format!("{user}@"), host_path),
        None => (String::new(), rest),
    };
    let (authority, path) = host_path.split_once('/').ok_or_else(bad)?;
    let authority = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:5432")
    };
    let target = tokio::net::lookup_host(&authority)
        .await?
        .next()
        .ok_or_else(bad)?;
    let proxy = TcpProxy::start(target).await?;
    let through = format!("{scheme}://{user}{}/{path}", proxy.addr());
    Ok((proxy, through))
}

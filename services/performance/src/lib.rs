//! The performance service: sales performance per channel, store and associate. Order, return,
//! catalog, crm and inventory events become facts; daily rollups move with them in the same
//! transaction, so KPI reports never scan raw facts (a rebuild from facts checks them);
//! traffic and spend are recorded here; inventory values are read from inventory
//! ([`inventory_feed`]); linked scorecards are evaluated on the KPIs.
//!
//! A/B experiments assign subjects deterministically and are analysed with a two-proportion
//! z-test or Welch's t-test.
//!
//! Layers: [`grpc`], [`attribution`] and [`experiments`] check roles, validate and map the contract, [`domain`]
//! and [`stats`] decide without I/O, [`store`] and [`experiment_store`] talk to Postgres,
//! [`events`] applies consumed events.

pub mod attribution;
pub mod config;
pub mod domain;
pub mod events;
pub mod experiment_store;
pub mod experiments;
pub mod grpc;
pub mod inventory_feed;
pub mod order_facts;
pub mod spans;
pub mod stats;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use omni_proto::omni::inventory::v1::stock_service_client::StockServiceClient;
use omni_proto::omni::performance::v1::attribution_service_server::AttributionServiceServer;
use omni_proto::omni::performance::v1::experiment_service_server::ExperimentServiceServer;
use omni_proto::omni::performance::v1::input_service_server::InputServiceServer;
use omni_proto::omni::performance::v1::kpi_service_server::KpiServiceServer;
use omni_proto::omni::performance::v1::scorecard_service_server::ScorecardServiceServer;
use omni_runtime::auth::{ServerAuth, TokenVerifier};
use omni_runtime::client::{self, ServiceToken, TokenSource};
use omni_runtime::consumer::{Consumer, ConsumerConfig, DeadLetters};
use omni_runtime::outbox::Outbox;
use omni_runtime::redis::Redis;
use omni_runtime::server::Host;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

pub use crate::config::{Config, Process};
pub use crate::inventory_feed::InventoryFeed;

pub const SERVICE_NAME: &str = "performance";
pub const MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Serves performance on `listener` until `shutdown` is cancelled; the event consumer and the
/// outbox relay stop with it. Inventory values arrive only as events.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_with(config, None, listener, shutdown).await
}

/// The process: [`run_with`] reading inventory values from inventory when configured, with
/// this service's own token.
pub async fn run_process(
    process: Process,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let feed = match &process.inventory {
        None => None,
        Some(source) => {
            let connect =
                |url: &str| client::channel(url, Duration::from_secs(2), Duration::from_secs(30));
            let token = match &source.credential {
                config::Credential::Token(token) => {
                    TokenSource::Static(Arc::from(token.expose().as_str()))
                }
                config::Credential::ApiKey { identity_url, key } => TokenSource::Service(
                    ServiceToken::start(connect(identity_url)?, key.clone(), shutdown.clone()),
                ),
            };
            Some(InventoryFeed {
                client: StockServiceClient::new(client::authenticated(
                    connect(&source.url)?,
                    token,
                    Duration::from_secs(30),
                )),
                every: source.every,
            })
        }
    };
    run_with(process.config, feed, listener, shutdown).await
}

/// Serves performance, and with `inventory` reads inventory values from it in the background.
pub async fn run_with(
    config: Config,
    inventory: Option<InventoryFeed>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let host = Host::new(
        SERVICE_NAME,
        vec![
            "omni.performance.v1.InputService",
            "omni.performance.v1.KpiService",
            "omni.performance.v1.ScorecardService",
            "omni.performance.v1.ExperimentService",
            "omni.performance.v1.AttributionService",
            omni_runtime::consumer::DEAD_LETTER_SERVICE,
        ],
        &config.common,
        listener,
        shutdown.clone(),
    );
    let pool = omni_runtime::db::pool(&config.common)?;
    let redis = Redis::new(
        config.common.redis_url.expose(),
        &config.common.redis_prefix,
    )?;
    let verifier = Arc::new(TokenVerifier::from_public_pem(
        &config.common.auth_public_key_pem,
    )?);
    let (sales_changed, _) = tokio::sync::broadcast::channel(64);
    let facts = Arc::new(events::Facts {
        sales_changed: sales_changed.clone(),
    });
    let dead_letters = DeadLetters::new(SERVICE_NAME, pool.clone(), redis.clone(), facts.clone());
    let grpc = grpc::Grpc::new(pool.clone(), config.currency.clone(), sales_changed);
    let outbox = Outbox::new(SERVICE_NAME);
    let experiments =
        experiments::Experiments::new(pool.clone(), outbox.clone(), config.currency.clone());
    host.watch_revocations(&verifier, &redis);
    let auth = ServerAuth::new(verifier, host.readiness());
    let routes = Routes::new(InputServiceServer::with_interceptor(
        grpc.clone(),
        auth.clone(),
    ))
    .add_service(KpiServiceServer::with_interceptor(
        grpc.clone(),
        auth.clone(),
    ))
    .add_service(ScorecardServiceServer::with_interceptor(grpc, auth.clone()))
    .add_service(ExperimentServiceServer::with_interceptor(
        experiments,
        auth.clone(),
    ))
    .add_service(AttributionServiceServer::with_interceptor(
        attribution::Attribution::new(pool.clone(), config.currency.clone()),
        auth.clone(),
    ))
    .add_service(dead_letters.into_service(auth));

    let startup = {
        let (pool, redis) = (pool.clone(), redis.clone());
        let pool_for_feed = pool.clone();
        async move {
            omni_runtime::db::migrate(&pool, MIGRATOR, &shutdown).await?;
            tokio::spawn(
                outbox
                    .relay(pool.clone(), redis.clone(), config.common.outbox_poll)
                    .run(shutdown.clone()),
            );
            let consumer = Consumer::new(
                ConsumerConfig::new(SERVICE_NAME, events::SOURCES).tuned(&config.common),
                pool,
                redis,
                facts,
            )?;
            if let Some(feed) = inventory {
                tokio::spawn(feed.run(pool_for_feed, config.currency.clone(), shutdown.clone()));
            }
            tokio::spawn(consumer.run(shutdown));
            Ok(())
        }
    };
    host.run(routes, pool, redis, startup).await
}

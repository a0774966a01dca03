//! The performance service: sales performance per channel, store and associate. Order, return,
//! catalog, crm and inventory events become facts; daily rollups move with them in the same
//! transaction, so KPI reports never scan raw facts (a rebuild from facts checks them);
//! traffic and spend are recorded here; linked scorecards are evaluated on the KPIs.
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
pub mod stats;
pub mod store;

use std::sync::Arc;

use omni_proto::omni::performance::v1::attribution_service_server::AttributionServiceServer;
use omni_proto::omni::performance::v1::experiment_service_server::ExperimentServiceServer;
use omni_proto::omni::performance::v1::input_service_server::InputServiceServer;
use omni_proto::omni::performance::v1::kpi_service_server::KpiServiceServer;
use omni_proto::omni::performance::v1::scorecard_service_server::ScorecardServiceServer;
use omni_runtime::auth::{ServerAuth, TokenVerifier};
use omni_runtime::consumer::{Consumer, ConsumerConfig};
use omni_runtime::outbox::Outbox;
use omni_runtime::redis::Redis;
use omni_runtime::server::Host;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

pub use crate::config::Config;

pub const SERVICE_NAME: &str = "performance";
pub const MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Serves performance on `listener` until `shutdown` is cancelled; the event consumer and the
/// outbox relay stop with it.
pub async fn run(
    config: Config,
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
    let facts = events::Facts {
        sales_changed: sales_changed.clone(),
    };
    let grpc = grpc::Grpc::new(pool.clone(), config.currency.clone(), sales_changed);
    let outbox = Outbox::new(SERVICE_NAME);
    let experiments =
        experiments::Experiments::new(pool.clone(), outbox.clone(), config.currency.clone());
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
        auth,
    ));

    let startup = {
        let (pool, redis) = (pool.clone(), redis.clone());
        async move {
            omni_runtime::db::migrate(&pool, MIGRATOR, &shutdown).await?;
            tokio::spawn(
                outbox
                    .relay(pool.clone(), redis.clone(), config.common.outbox_poll)
                    .run(shutdown.clone()),
            );
            let consumer = Consumer::new(
                ConsumerConfig::new(SERVICE_NAME, events::SOURCES),
                pool,
                redis,
                Arc::new(facts),
            )?;
            tokio::spawn(consumer.run(shutdown));
            Ok(())
        }
    };
    host.run(routes, pool, redis, startup).await
}

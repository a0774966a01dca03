//! The inventory service: one available-to-promise figure per SKU across warehouses, stores and
//! in-transit stock, served from Redis; reservations that never oversell; a movement ledger that
//! every stock level equals; transfers and rebalancing.
//!
//! Layers: [`grpc`] validates and maps the contract, [`app`] runs each use case in one
//! transaction and writes snapshots through to Redis, [`domain`] decides without I/O,
//! [`store`] talks to Postgres and [`cache`] to Redis; [`valuation`] values stock at the unit
//! costs it learns from catalog events.

pub mod app;
pub mod cache;
pub mod config;
pub mod convert;
pub mod domain;
pub mod grpc;
pub mod store;
pub mod valuation;

use std::sync::Arc;
use std::time::Duration;

use omni_proto::omni::inventory::v1::availability_service_server::AvailabilityServiceServer;
use omni_proto::omni::inventory::v1::location_service_server::LocationServiceServer;
use omni_proto::omni::inventory::v1::reservation_service_server::ReservationServiceServer;
use omni_proto::omni::inventory::v1::stock_service_server::StockServiceServer;
use omni_proto::omni::inventory::v1::transfer_service_server::TransferServiceServer;
use omni_runtime::auth::{ServerAuth, TokenVerifier};
use omni_runtime::consumer::{Consumer, ConsumerConfig, DeadLetters};
use omni_runtime::outbox::Outbox;
use omni_runtime::redis::Redis;
use omni_runtime::server::Host;
use tokio::net::TcpListener;
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

pub use crate::config::Config;

pub const SERVICE_NAME: &str = "inventory";
pub const MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Serves inventory on `listener` until `shutdown` is cancelled; background work (outbox relay,
/// catalog cost events, reservation expiry, cache retries, change notifications) stops with it.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let host = Host::new(
        SERVICE_NAME,
        vec![
            "omni.inventory.v1.LocationService",
            "omni.inventory.v1.StockService",
            "omni.inventory.v1.AvailabilityService",
            "omni.inventory.v1.ReservationService",
            "omni.inventory.v1.TransferService",
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
    let outbox = Outbox::new(SERVICE_NAME);
    let app = app::App::new(
        pool.clone(),
        redis.clone(),
        outbox.clone(),
        app::Settings {
            default_ttl: config.default_ttl,
            hot_detect_concurrency: config.hot_detect_concurrency,
            hot_detect_for: Duration::from_secs(15 * 60),
            gate_decisions: host.metrics().counter(
                "omni_inventory_hot_gate_total",
                "Hot-SKU admission gate decisions: admitted, refused (sold out in Redis), retry \
                 (an admitted key seen again), unreachable (Postgres decided alone).",
                &["decision"],
            )?,
        },
    );
    let grpc = grpc::Grpc::new(app.clone());
    // Unit costs from the catalog, for inventory values.
    let costs = Arc::new(valuation::Costs);
    host.watch_revocations(&verifier, &redis);
    let auth = ServerAuth::new(verifier, host.readiness());
    let routes = Routes::new(LocationServiceServer::with_interceptor(
        grpc.clone(),
        auth.clone(),
    ))
    .add_service(StockServiceServer::with_interceptor(
        grpc.clone(),
        auth.clone(),
    ))
    .add_service(AvailabilityServiceServer::with_interceptor(
        grpc.clone(),
        auth.clone(),
    ))
    .add_service(ReservationServiceServer::with_interceptor(
        grpc.clone(),
        auth.clone(),
    ))
    .add_service(TransferServiceServer::with_interceptor(grpc, auth.clone()))
    .add_service(
        DeadLetters::new(SERVICE_NAME, pool.clone(), redis.clone(), costs.clone())
            .into_service(auth),
    );

    let startup = {
        let (pool, redis) = (pool.clone(), redis.clone());
        async move {
            omni_runtime::db::migrate(&pool, MIGRATOR, &shutdown).await?;
            tokio::spawn(
                outbox
                    .relay(pool.clone(), redis.clone(), config.common.outbox_poll)
                    .run(shutdown.clone()),
            );
            let costs = Consumer::new(
                ConsumerConfig::new(SERVICE_NAME, valuation::SOURCES).tuned(&config.common),
                pool,
                redis.clone(),
                costs,
            )?;
            tokio::spawn(costs.run(shutdown.clone()));
            tokio::spawn(
                app.clone()
                    .expire_loop(config.expiry_interval, shutdown.clone()),
            );
            tokio::spawn(app.clone().retry_dirty(shutdown.clone()));
            tokio::spawn(forward_changes(app, redis, shutdown));
            Ok(())
        }
    };
    host.run(routes, pool, redis, startup).await
}

/// Relays the Redis pub/sub channel of changed SKUs to this process's watchers, resubscribing
/// after connection loss.
async fn forward_changes(app: Arc<app::App>, redis: Redis, shutdown: CancellationToken) {
    let channel = cache::changes_channel(&redis);
    loop {
        let subscribed = async {
            let mut pubsub = redis.pubsub().await?;
            pubsub.subscribe(&channel).await?;
            let mut messages = pubsub.on_message();
            while let Some(message) = messages.next().await {
                if let Ok(sku) = message.get_payload::<String>() {
                    // No receivers is fine: nobody is watching.
                    let _ = app.changes.send(sku);
                }
            }
            anyhow::Ok(())
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            result = subscribed => {
                if let Err(e) = result {
                    tracing::warn!(error = %e, "change notifications lost; resubscribing");
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

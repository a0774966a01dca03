//! The order-management service: orders from every channel, priced by the catalog, held by
//! inventory at the best location, picked up within 30 minutes or shipped, tracked live, and
//! returned or exchanged anywhere.
//!
//! Layers: [`grpc`] validates and maps the contract, [`app`] runs each use case (short
//! transactions under the order's lock, calls to other services between them with derived
//! idempotency keys),
//! [`domain`] decides without I/O (lifecycle, sourcing, refunds), [`store`] talks to Postgres
//! and [`upstream`] to the other services; [`erasure`] applies identity's customer erasures.

pub mod app;
pub mod config;
pub mod domain;
pub mod erasure;
pub mod events;
pub mod grpc;
pub mod store;
pub mod upstream;

use omni_proto::omni::orders::v1::fulfilment_service_server::FulfilmentServiceServer;
use omni_proto::omni::orders::v1::order_service_server::OrderServiceServer;
use omni_proto::omni::orders::v1::return_service_server::ReturnServiceServer;
use omni_proto::omni::orders::v1::sourcing_service_server::SourcingServiceServer;
use omni_runtime::auth::{ServerAuth, TokenVerifier};
use omni_runtime::consumer::{Consumer, ConsumerConfig, DeadLetters};
use omni_runtime::redis::Redis;
use omni_runtime::server::Host;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

pub use crate::config::{Config, Credential, Upstreams};

pub const SERVICE_NAME: &str = "order-management";
pub const MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Serves order-management on `listener` until `shutdown` is cancelled; background work
/// (outbox relay, the sweeper of lapsed orders, change notifications, identity's erasures and
/// crm's tier changes) stops with it.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let host = Host::new(
        SERVICE_NAME,
        vec![
            "omni.orders.v1.OrderService",
            "omni.orders.v1.FulfilmentService",
            "omni.orders.v1.ReturnService",
            "omni.orders.v1.SourcingService",
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
    let upstreams =
        upstream::Upstreams::connect(&config.upstreams, &config.credential, shutdown.clone())?;
    let app = app::App::new(
        pool.clone(),
        redis.clone(),
        upstreams,
        app::Settings {
            payment_window: config.payment_window,
            pickup_promise: config.pickup_promise,
            pickup_hold: config.pickup_hold,
            address_change_window: config.address_change_window,
            resume_after: config.step_resume_after,
        },
    );
    let grpc = grpc::Grpc::new(app.clone());
    host.watch_revocations(&verifier, &redis);
    let auth = ServerAuth::new(verifier, host.readiness());
    let routes = Routes::new(OrderServiceServer::with_interceptor(
        grpc.clone(),
        auth.clone(),
    ))
    .add_service(FulfilmentServiceServer::with_interceptor(
        grpc.clone(),
        auth.clone(),
    ))
    .add_service(ReturnServiceServer::with_interceptor(
        grpc.clone(),
        auth.clone(),
    ))
    .add_service(SourcingServiceServer::with_interceptor(grpc, auth.clone()));
    let events = Arc::new(events::Events);
    let routes = routes.add_service(
        DeadLetters::new(SERVICE_NAME, pool.clone(), redis.clone(), events.clone())
            .into_service(auth),
    );

    let startup = {
        let (pool, redis) = (pool.clone(), redis.clone());
        async move {
            omni_runtime::db::migrate(&pool, MIGRATOR, &shutdown).await?;
            tokio::spawn(
                app.outbox
                    .relay(pool.clone(), redis.clone(), config.common.outbox_poll)
                    .run(shutdown.clone()),
            );
            let events = Consumer::new(
                ConsumerConfig::new(SERVICE_NAME, events::SOURCES).tuned(&config.common),
                pool,
                redis,
                events,
            )?;
            tokio::spawn(events.run(shutdown.clone()));
            tokio::spawn(
                app.clone()
                    .sweep_loop(config.sweep_interval, shutdown.clone()),
            );
            tokio::spawn(app.forward_changes(shutdown));
            Ok(())
        }
    };
    host.run(routes, pool, redis, startup).await
}

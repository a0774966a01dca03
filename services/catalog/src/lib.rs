//! The catalog service: one product truth for every channel. The registry of sales channels,
//! the category tree, products and SKUs (one SKU code everywhere, validated barcodes), channel
//! listings kept consistent by a price policy, competitor prices and price suggestions,
//! promotions, and the `Quote` every order is priced with.
//!
//! Layers: [`grpc`] checks roles, validates and maps the contract; [`app`] runs each use case in
//! one transaction with its outbox events; [`domain`] and [`pricing`] decide without I/O;
//! [`store`] talks to Postgres and [`cache`] to Redis.

pub mod app;
pub mod cache;
pub mod config;
pub mod domain;
pub mod grpc;
pub mod pricing;
pub mod store;

use omni_proto::omni::catalog::v1::channel_service_server::ChannelServiceServer;
use omni_proto::omni::catalog::v1::pricing_service_server::PricingServiceServer;
use omni_proto::omni::catalog::v1::product_service_server::ProductServiceServer;
use omni_proto::omni::catalog::v1::promotion_service_server::PromotionServiceServer;
use omni_proto::omni::catalog::v1::quote_service_server::QuoteServiceServer;
use omni_runtime::auth::{ServerAuth, TokenVerifier};
use omni_runtime::outbox::Outbox;
use omni_runtime::redis::Redis;
use omni_runtime::server::Host;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

pub use crate::config::Config;

pub const SERVICE_NAME: &str = "catalog";
pub const MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Serves the catalog on `listener` until `shutdown` is cancelled; background work (the outbox
/// relay) stops with it.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let host = Host::new(
        SERVICE_NAME,
        vec![
            "omni.catalog.v1.ChannelService",
            "omni.catalog.v1.ProductService",
            "omni.catalog.v1.PricingService",
            "omni.catalog.v1.PromotionService",
            "omni.catalog.v1.QuoteService",
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
    let verifier = std::sync::Arc::new(TokenVerifier::from_public_pem(
        &config.common.auth_public_key_pem,
    )?);
    let outbox = Outbox::new(SERVICE_NAME);
    let app = app::App {
        pool: pool.clone(),
        outbox: outbox.clone(),
        cache: cache::Cache::new(redis.clone()),
    };
    let grpc = grpc::Grpc::new(app);
    host.watch_revocations(&verifier, &redis);
    let auth = ServerAuth::new(verifier, host.readiness());
    let routes = Routes::new(ChannelServiceServer::with_interceptor(
        grpc.clone(),
        auth.clone(),
    ))
    .add_service(ProductServiceServer::with_interceptor(
        grpc.clone(),
        auth.clone(),
    ))
    .add_service(PricingServiceServer::with_interceptor(
        grpc.clone(),
        auth.clone(),
    ))
    .add_service(PromotionServiceServer::with_interceptor(
        grpc.clone(),
        auth.clone(),
    ))
    .add_service(QuoteServiceServer::with_interceptor(grpc, auth));

    let startup = {
        let (pool, redis) = (pool.clone(), redis.clone());
        async move {
            omni_runtime::db::migrate(&pool, MIGRATOR, &shutdown).await?;
            tokio::spawn(
                outbox
                    .relay(pool, redis, config.common.outbox_poll)
                    .run(shutdown),
            );
            Ok(())
        }
    };
    host.run(routes, pool, redis, startup).await
}

//! The crm service: one view of each customer across channels, fed by identity and order
//! events, a points ledger that never goes negative, and coupons redeemed once across all
//! channels.
//!
//! Layers: [`grpc`] validates and maps the contract, [`events`] applies consumed events inside
//! the consumer's transaction, [`store`] talks to Postgres.

pub mod config;
pub mod coupons;
pub mod events;
pub mod grpc;
pub mod store;
pub mod tiers;

use std::sync::Arc;

use omni_proto::omni::crm::v1::coupon_service_server::CouponServiceServer;
use omni_proto::omni::crm::v1::customer_view_service_server::CustomerViewServiceServer;
use omni_proto::omni::crm::v1::loyalty_service_server::LoyaltyServiceServer;
use omni_runtime::auth::{ServerAuth, TokenVerifier};
use omni_runtime::consumer::{Consumer, ConsumerConfig};
use omni_runtime::outbox::Outbox;
use omni_runtime::redis::Redis;
use omni_runtime::server::Host;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

pub use crate::config::Config;

pub const SERVICE_NAME: &str = "crm";
pub const MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Serves crm on `listener` until `shutdown` is cancelled; the event consumer and the outbox
/// relay stop with it.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let host = Host::new(
        SERVICE_NAME,
        vec![
            "omni.crm.v1.CustomerViewService",
            "omni.crm.v1.LoyaltyService",
            "omni.crm.v1.CouponService",
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
    let grpc = grpc::Grpc::new(pool.clone(), outbox.clone());
    let auth = ServerAuth::new(verifier, host.readiness());
    let routes = Routes::new(CustomerViewServiceServer::with_interceptor(
        grpc.clone(),
        auth.clone(),
    ))
    .add_service(LoyaltyServiceServer::with_interceptor(
        grpc.clone(),
        auth.clone(),
    ))
    .add_service(CouponServiceServer::with_interceptor(grpc, auth));

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
                ConsumerConfig::new(SERVICE_NAME, &["identity", "orders"]),
                pool,
                redis,
                Arc::new(events::Events),
            )?;
            tokio::spawn(consumer.run(shutdown));
            Ok(())
        }
    };
    host.run(routes, pool, redis, startup).await
}

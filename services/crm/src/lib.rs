//! The crm service: one view of each customer across channels, fed by identity and order
//! events; service tickets, feedback and interactions; a points ledger that never goes
//! negative; RFM, lifecycle and rule-based segments; coupons redeemed once across all
//! channels; campaigns and triggered offers under one consent and frequency policy; and
//! suggestions for store associates.
//!
//! Layers: the gRPC modules ([`grpc`], [`tickets`], [`engagement`], [`segments`],
//! [`coupons`], [`campaigns`], [`offers`], [`recommend`], [`associates`]) validate and map the
//! contract; [`events`] applies consumed events inside the consumer's transaction; the pure
//! rules ([`rfm`], [`segment_rule`], [`contact`], [`tiers`]) decide without I/O; [`store`],
//! [`facts`] and [`purchases`] (each customer's purchase figures, kept by deltas) talk to
//! Postgres.

pub mod associates;
pub mod campaigns;
pub mod config;
pub mod contact;
pub mod coupons;
pub mod engagement;
pub mod events;
pub mod facts;
pub mod grpc;
pub mod idem;
pub mod offers;
pub mod purchases;
pub mod recommend;
pub mod rfm;
pub mod segment_rule;
pub mod segments;
pub mod store;
pub mod tickets;
pub mod tiers;

use std::sync::Arc;

use omni_proto::omni::crm::v1::campaign_service_server::CampaignServiceServer;
use omni_proto::omni::crm::v1::coupon_service_server::CouponServiceServer;
use omni_proto::omni::crm::v1::customer_view_service_server::CustomerViewServiceServer;
use omni_proto::omni::crm::v1::engagement_service_server::EngagementServiceServer;
use omni_proto::omni::crm::v1::loyalty_service_server::LoyaltyServiceServer;
use omni_proto::omni::crm::v1::recommendation_service_server::RecommendationServiceServer;
use omni_proto::omni::crm::v1::segment_service_server::SegmentServiceServer;
use omni_proto::omni::crm::v1::ticket_service_server::TicketServiceServer;
use omni_runtime::auth::{ServerAuth, TokenVerifier};
use omni_runtime::consumer::{Consumer, ConsumerConfig, DeadLetters};
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
            "omni.crm.v1.TicketService",
            "omni.crm.v1.EngagementService",
            "omni.crm.v1.SegmentService",
            "omni.crm.v1.CampaignService",
            "omni.crm.v1.RecommendationService",
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
    let grpc = grpc::Grpc::new(pool.clone(), outbox.clone());
    let handler = Arc::new(events::Events { grpc: grpc.clone() });
    let dead_letters = DeadLetters::new(SERVICE_NAME, pool.clone(), redis.clone(), handler.clone());
    host.watch_revocations(&verifier, &redis);
    let auth = ServerAuth::new(verifier, host.readiness());
    let routes = Routes::new(CustomerViewServiceServer::with_interceptor(
        grpc.clone(),
        auth.clone(),
    ))
    .add_service(LoyaltyServiceServer::with_interceptor(
        grpc.clone(),
        auth.clone(),
    ))
    .add_service(CouponServiceServer::with_interceptor(
        grpc.clone(),
        auth.clone(),
    ))
    .add_service(TicketServiceServer::with_interceptor(
        grpc.clone(),
        auth.clone(),
    ))
    .add_service(EngagementServiceServer::with_interceptor(
        grpc.clone(),
        auth.clone(),
    ))
    .add_service(SegmentServiceServer::with_interceptor(
        grpc.clone(),
        auth.clone(),
    ))
    .add_service(CampaignServiceServer::with_interceptor(
        grpc.clone(),
        auth.clone(),
    ))
    .add_service(RecommendationServiceServer::with_interceptor(
        grpc.clone(),
        auth.clone(),
    ))
    .add_service(dead_letters.into_service(auth));

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
                ConsumerConfig::new(SERVICE_NAME, &["identity", "orders", "catalog"])
                    .tuned(&config.common),
                pool,
                redis,
                handler,
            )?;
            tokio::spawn(consumer.run(shutdown));
            Ok(())
        }
    };
    host.run(routes, pool, redis, startup).await
}

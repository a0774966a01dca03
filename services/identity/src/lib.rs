//! The identity service: one customer id across every channel (member number, E.164 phone,
//! channel accounts, merges with aliases, consents, erasure) and the principals that may call
//! Omni, with the Ed25519 tokens they call it with.
//!
//! Layers: [`grpc`] validates and maps the contract, [`app`] runs each use case in one
//! transaction, [`domain`] decides without I/O, [`store`] talks to Postgres.

pub mod app;
pub mod config;
pub mod credentials;
pub mod domain;
pub mod grpc;
pub mod revocations;
pub mod store;
pub mod throttle;

use std::sync::Arc;

use omni_proto::identity::auth_service_server::AuthServiceServer;
use omni_proto::identity::identity_service_server::IdentityServiceServer;
use omni_proto::identity::principal_service_server::PrincipalServiceServer;
use omni_runtime::auth::{ServerAuth, TokenSigner, TokenVerifier};
use omni_runtime::outbox::Outbox;
use omni_runtime::redis::Redis;
use omni_runtime::server::Host;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

pub use crate::config::Config;

pub const SERVICE_NAME: &str = "identity";
pub const MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Serves identity on `listener` until `shutdown` is cancelled; background work (the outbox
/// relay) stops with it.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let host = Host::new(
        SERVICE_NAME,
        vec![
            "omni.identity.v1.IdentityService",
            "omni.identity.v1.PrincipalService",
            "omni.identity.v1.AuthService",
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
    let signer = Arc::new(TokenSigner::from_private_pem(
        config.signing_key_pem.expose(),
        config.token_ttl,
    )?);
    let verifier = Arc::new(TokenVerifier::from_public_pem(
        &config.common.auth_public_key_pem,
    )?);
    let outbox = Outbox::new(SERVICE_NAME);
    let app = app::App {
        pool: pool.clone(),
        outbox: outbox.clone(),
        signer,
        redis: redis.clone(),
        throttle: throttle::Throttle::new(redis.clone(), config.signin_limits),
    };
    let grpc = grpc::Grpc::new(app, config.default_calling_code.clone());
    host.watch_revocations(&verifier, &redis);
    let auth = ServerAuth::new(verifier, host.readiness());
    // AuthService needs no token: it is how callers get one.
    let routes = Routes::new(IdentityServiceServer::with_interceptor(
        grpc.clone(),
        auth.clone(),
    ))
    .add_service(PrincipalServiceServer::with_interceptor(grpc.clone(), auth))
    .add_service(AuthServiceServer::with_interceptor(
        grpc,
        ServerAuth::public(host.readiness()),
    ));

    let startup = {
        let (pool, redis) = (pool.clone(), redis.clone());
        async move {
            omni_runtime::db::migrate(&pool, MIGRATOR, &shutdown).await?;
            if let Some((login, password)) = &config.bootstrap_admin {
                let password = password.expose().clone();
                let hash =
                    tokio::task::spawn_blocking(move || credentials::hash_password(&password))
                        .await??;
                let mut conn = pool.acquire().await?;
                store::upsert_bootstrap_admin(&mut conn, login, &hash).await?;
                tracing::info!(login = %login, "bootstrap admin ready");
            }
            tokio::spawn(revocations::keep_in_step(
                pool.clone(),
                redis.clone(),
                config.token_ttl,
                shutdown.clone(),
            ));
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

/// Creates a service principal named `name` with the `service` role and returns its API key
/// (shown once; only its hash is stored).
pub async fn service_key(pool: &sqlx::PgPool, name: &str) -> anyhow::Result<String> {
    let key = credentials::new_api_key();
    let mut conn = pool.acquire().await?;
    store::insert_principal(
        &mut conn,
        &store::NewPrincipal {
            id: uuid::Uuid::now_v7(),
            kind: omni_runtime::auth::PrincipalKind::Service.as_str(),
            name,
            display_name: name,
            password_hash: None,
            api_key_prefix: Some(&key.prefix),
            api_key_hash: Some(&key.hash),
            roles: &[omni_runtime::auth::Role::Service.as_str().to_owned()],
            scope_channels: &[],
            scope_stores: &[],
            created_by: "identity service-key",
        },
    )
    .await?;
    tracing::info!(name, "service key created");
    Ok(key.key)
}

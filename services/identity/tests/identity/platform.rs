//! What identity gets from the runtime, checked on the real service: health that follows
//! Postgres, reflection, trace propagation across hops, events reaching a consumer, and a
//! config error naming its variable.

use std::sync::Arc;
use std::time::Duration;

use omni_proto::identity as pb;
use omni_proto::identity::auth_service_server::{AuthService, AuthServiceServer};
use omni_proto::identity::identity_service_client::IdentityServiceClient;
use omni_runtime::client::AuthChannel;
use omni_runtime::consumer::{Consumer, ConsumerConfig, Handler};
use omni_runtime::redis::Redis;
use omni_testkit::TcpProxy;
use opentelemetry::trace::TraceContextExt as _;
use sqlx::PgConnection;
use tokio_stream::StreamExt as _;
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

#[tokio::test]
async fn health_follows_postgres_and_calls_fail_unavailable_while_it_is_gone() {
    let mut common = omni_testkit::common_config("identity")
        .await
        .expect("config");
    let proxy = TcpProxy::start("127.0.0.1:5432".parse().expect("addr"))
        .await
        .expect("proxy");
    let url = common
        .database_url
        .expose()
        .replace("127.0.0.1:5432", &proxy.addr().to_string());
    common.database_url = url.into();
    let svc = omni_testkit::identity_with(common).await.expect("identity");
    let mut client = IdentityServiceClient::new(svc.admin());
    let resolve = || pb::ResolveCustomerRequest {
        phone: "+447700900808".into(),
        ..Default::default()
    };
    client
        .resolve_customer(resolve())
        .await
        .expect("works while up");

    proxy.cut();
    svc.wait_for(ServingStatus::NotServing)
        .await
        .expect("turns NOT_SERVING");
    let err = client
        .resolve_customer(resolve())
        .await
        .expect_err("postgres is gone");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");

    proxy.restore();
    svc.wait_for(ServingStatus::Serving)
        .await
        .expect("recovers by itself");
    client
        .resolve_customer(resolve())
        .await
        .expect("works again");
}

#[tokio::test]
async fn reflection_lists_every_service() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let svc = omni_testkit::identity().await.expect("identity");
    let mut client = ServerReflectionClient::new(svc.channel());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses.next().await.expect("a response").expect("ok");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response: {response:?}");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for wanted in [
        "omni.identity.v1.IdentityService",
        "omni.identity.v1.PrincipalService",
        "omni.identity.v1.AuthService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == wanted),
            "{wanted} missing from {names:?}"
        );
    }
}

/// A middle hop: serves AuthService/GetPublicKey by calling identity's GetCustomer through
/// the runtime's client, so the chain is client → relay → identity.
struct Relay {
    identity: IdentityServiceClient<AuthChannel>,
}

#[tonic::async_trait]
impl AuthService for Relay {
    async fn authenticate(
        &self,
        _request: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        Err(Status::unimplemented("relay"))
    }

    async fn get_public_key(
        &self,
        _request: Request<pb::GetPublicKeyRequest>,
    ) -> Result<Response<pb::GetPublicKeyResponse>, Status> {
        let mut identity = self.identity.clone();
        let err = identity
            .get_customer(pb::GetCustomerRequest {
                key: Some(pb::CustomerKey {
                    key: Some(pb::customer_key::Key::Id(uuid::Uuid::now_v7().to_string())),
                }),
            })
            .await
            .expect_err("nobody is there");
        assert_eq!(err.code(), Code::NotFound);
        Ok(Response::new(pb::GetPublicKeyResponse::default()))
    }
}

#[tokio::test]
async fn one_trace_id_covers_a_client_server_client_server_chain() {
    let svc = omni_testkit::identity().await.expect("identity");
    let relay = Relay {
        identity: IdentityServiceClient::new(svc.admin()),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let relay_addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .trace_fn(|request| omni_runtime::server::rpc_span("relay", request))
            .add_service(AuthServiceServer::new(relay))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let root = tracing::info_span!("test.root");
    let trace_id = root.context().span().span_context().trace_id();
    assert_ne!(trace_id, opentelemetry::trace::TraceId::INVALID);
    let channel = omni_runtime::client::authenticated(
        omni_runtime::client::channel(
            &format!("http://{relay_addr}"),
            Duration::from_secs(5),
            Duration::from_secs(10),
        )
        .expect("channel"),
        omni_runtime::client::TokenSource::Static(Arc::from("unused")),
        Duration::from_secs(10),
    );
    let mut client = omni_proto::identity::auth_service_client::AuthServiceClient::new(channel);
    client
        .get_public_key(pb::GetPublicKeyRequest {})
        .instrument(root.clone())
        .await
        .expect("chain completes");
    drop(root);

    let spans: Vec<_> = omni_testkit::finished_spans()
        .into_iter()
        .filter(|s| s.span_context.trace_id() == trace_id)
        .map(|s| s.name.to_string())
        .collect();
    for hop in [
        "omni.identity.v1.AuthService/GetPublicKey",
        "omni.identity.v1.IdentityService/GetCustomer",
    ] {
        assert!(
            spans.iter().any(|s| s == hop),
            "{hop} not in the trace: {spans:?}"
        );
    }
}

/// Records every customer_registered event it sees.
struct Registrations;

impl Handler for Registrations {
    async fn handle(
        &self,
        conn: &mut PgConnection,
        event: &omni_proto::events::Event,
    ) -> omni_runtime::Result<()> {
        if let Some(omni_proto::events::event::Payload::CustomerRegistered(r)) = &event.payload {
            sqlx::query("INSERT INTO seen (customer_id, traceparent) VALUES ($1, $2)")
                .bind(&r.customer_id)
                .bind(&event.traceparent)
                .execute(conn)
                .await?;
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_registration_reaches_a_consumer_once_with_its_trace() {
    let svc = omni_testkit::identity().await.expect("identity");
    let mut client = IdentityServiceClient::new(svc.admin());
    let created = client
        .resolve_customer(pb::ResolveCustomerRequest {
            phone: "+447700900909".into(),
            ..Default::default()
        })
        .await
        .expect("resolve")
        .into_inner()
        .customer
        .expect("customer");

    // A consuming service's database, with the runtime's tables and one of its own.
    let consumer_db = omni_testkit::fresh_database("consumer").await.expect("db");
    let pool = sqlx::PgPool::connect(&consumer_db).await.expect("pool");
    omni_runtime::db::migrate(&pool, sqlx::migrate::Migrator::DEFAULT, &Default::default())
        .await
        .expect("migrate");
    sqlx::query("CREATE TABLE seen (customer_id text NOT NULL, traceparent text NOT NULL)")
        .execute(&pool)
        .await
        .expect("table");
    let redis = Redis::new(&omni_testkit::redis_url(), svc.redis_prefix()).expect("redis");
    let mut config = ConsumerConfig::new("crm", &["identity"]);
    config.block = Duration::from_millis(100);
    let mut consumer =
        Consumer::new(config, pool.clone(), redis, Arc::new(Registrations)).expect("consumer");

    let mut seen = 0;
    for _ in 0..100 {
        consumer.poll_once().await.expect("poll");
        seen = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM seen")
            .fetch_one(&pool)
            .await
            .expect("count");
        if seen > 0 {
            break;
        }
    }
    assert_eq!(seen, 1);
    let (customer_id, traceparent): (String, String) =
        sqlx::query_as("SELECT customer_id, traceparent FROM seen")
            .fetch_one(&pool)
            .await
            .expect("row");
    assert_eq!(customer_id, created.id);
    assert!(
        traceparent.starts_with("00-"),
        "the event carries the caller's trace: {traceparent:?}"
    );
}

#[test]
fn a_missing_variable_stops_the_process_naming_it() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_identity"))
        .env_clear()
        .env("OMNI_SIGNING_KEY", omni_testkit::signing_key_pem().expose())
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("DATABASE_URL"), "{stderr}");

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_identity"))
        .env_clear()
        .env("OMNI_SIGNING_KEY", omni_testkit::signing_key_pem().expose())
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/x")
        .env("REDIS_URL", "redis://127.0.0.1:6379")
        .env("OMNI_TOKEN_TTL_SECS", "soon")
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("OMNI_TOKEN_TTL_SECS"), "{stderr}");
}

#[tokio::test]
async fn a_service_calls_with_its_own_token_from_its_api_key() {
    let svc = omni_testkit::identity().await.expect("identity");
    let mut principals =
        omni_proto::identity::principal_service_client::PrincipalServiceClient::new(svc.admin());
    let key = principals
        .create_api_key(pb::CreateApiKeyRequest {
            kind: pb::PrincipalKind::Service as i32,
            name: "order-management".into(),
            roles: vec![pb::Role::Service as i32],
            scope: None,
        })
        .await
        .expect("api key")
        .into_inner()
        .api_key;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let token =
        omni_runtime::client::ServiceToken::start(svc.channel(), key.into(), shutdown.clone());
    assert!(token.wait(Duration::from_secs(10)).await, "a token arrives");
    let channel = omni_runtime::client::authenticated(
        svc.channel(),
        omni_runtime::client::TokenSource::Service(token.clone()),
        Duration::from_secs(5),
    );
    let mut client = IdentityServiceClient::new(channel);
    let resolved = client
        .resolve_customer(pb::ResolveCustomerRequest {
            phone: "+447700900111".into(),
            ..Default::default()
        })
        .await
        .expect("the service's own token is accepted");
    assert!(resolved.into_inner().created);
    shutdown.cancel();
}

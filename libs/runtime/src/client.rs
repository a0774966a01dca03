//! Outgoing gRPC: channels with timeouts, and an interceptor that adds the calling service's
//! own token and the current W3C trace context to every call.
//!
//! A service authenticates to identity with its API key ([`ServiceToken`]); a background task
//! keeps the token fresh, so the (synchronous) interceptor only reads it.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use omni_proto::identity::auth_service_client::AuthServiceClient;
use omni_proto::identity::{AuthenticateRequest, authenticate_request::Credential};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use crate::config::Secret;

/// A channel to `url` that connects on first use, with connect and per-call timeouts.
pub fn channel(
    url: &str,
    connect_timeout: Duration,
    call_timeout: Duration,
) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(url.to_owned())?
        .connect_timeout(connect_timeout)
        .timeout(call_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

/// Where the interceptor gets the bearer token from.
#[derive(Clone, Debug)]
pub enum TokenSource {
    /// A fixed token (tests, tools).
    Static(Arc<str>),
    /// The service's own token, refreshed in the background.
    Service(Arc<ServiceToken>),
}

/// Adds `authorization`, the trace context and a default deadline to every outgoing call.
#[derive(Clone, Debug)]
pub struct Outgoing {
    token: TokenSource,
    deadline: Duration,
}

pub type AuthChannel = InterceptedService<Channel, Outgoing>;

/// `channel` with the interceptor in front; wrap it in any generated client.
pub fn authenticated(channel: Channel, token: TokenSource, deadline: Duration) -> AuthChannel {
    InterceptedService::new(channel, Outgoing { token, deadline })
}

impl Interceptor for Outgoing {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let token = match &self.token {
            TokenSource::Static(t) => t.to_string(),
            TokenSource::Service(s) => s
                .current()
                .ok_or_else(|| Status::unavailable("no service token from identity yet"))?,
        };
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| Status::internal("token is not valid metadata"))?;
        request.metadata_mut().insert("authorization", value);
        if !request.metadata().contains_key("grpc-timeout") {
            request.set_timeout(self.deadline);
        }
        crate::telemetry::inject_into_metadata(request.metadata_mut());
        Ok(request)
    }
}

/// The calling service's own token, obtained from identity with its API key and renewed when
/// two thirds of its lifetime have passed.
#[derive(Debug, Default)]
pub struct ServiceToken {
    current: RwLock<Option<String>>,
    changed: Notify,
}

impl ServiceToken {
    pub fn current(&self) -> Option<String> {
        self.current.read().ok().and_then(|t| t.clone())
    }

    /// Waits until a token is available (or `timeout` passes).
    pub async fn wait(&self, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.changed.notified();
                if self.current().is_some() {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    /// Starts renewing the token from identity at `identity` until `shutdown`.
    pub fn start(
        identity: Channel,
        api_key: Secret<String>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let token = Arc::new(Self::default());
        let renewing = token.clone();
        tokio::spawn(async move {
            let mut client = AuthServiceClient::new(identity);
            let mut backoff = Duration::from_millis(200);
            loop {
                let request = AuthenticateRequest {
                    credential: Some(Credential::ApiKey(api_key.expose().clone())),
                };
                let wait = match client.authenticate(request).await {
                    Ok(response) => {
                        let response = response.into_inner();
                        let lifetime = response
                            .expires_at
                            .and_then(|t| {
                                let expires = std::time::SystemTime::try_from(t).ok()?;
                                expires.duration_since(std::time::SystemTime::now()).ok()
                            })
                            .unwrap_or(Duration::from_secs(60));
                        if let Ok(mut current) = renewing.current.write() {
                            *current = Some(response.access_token);
                        }
                        renewing.changed.notify_waiters();
                        backoff = Duration::from_millis(200);
                        lifetime * 2 / 3
                    }
                    Err(status) => {
                        tracing::warn!(code = ?status.code(), message = status.message(), "cannot get a service token; retrying");
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                        backoff
                    }
                };
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        });
        token
    }
}

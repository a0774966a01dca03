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
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Request, Status};

use crate::config::Secret;

/// How often a balanced channel looks its hosts up again (pods come and go behind a headless
/// Service).
const RESOLVE_EVERY: Duration = Duration::from_secs(30);

/// A channel to `url` that connects on first use, with connect and per-call timeouts.
///
/// `url` may list several comma-separated URLs (replicas), and a URL's host may resolve to
/// several addresses (a Kubernetes headless Service): the channel then balances every call
/// over all of them (power of two choices on outstanding calls), looking the hosts up again
/// every 30 s. One URL with an IP address is one plain connection.
pub fn channel(
    url: &str,
    connect_timeout: Duration,
    call_timeout: Duration,
) -> anyhow::Result<Channel> {
    let endpoint = move |url: &str| -> anyhow::Result<Endpoint> {
        Ok(Endpoint::from_shared(url.to_owned())?
            .connect_timeout(connect_timeout)
            .timeout(call_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true))
    };
    let urls: Vec<Uri> = url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse::<Uri>()
                .map_err(|e| anyhow::anyhow!("{u:?} is not a URL: {e}"))
        })
        .collect::<anyhow::Result<_>>()?;
    let literal = |u: &Uri| {
        u.host().is_some_and(|h| {
            h.trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok()
        })
    };
    match urls.as_slice() {
        [] => anyhow::bail!("no URL given"),
        [one] if literal(one) => Ok(endpoint(&one.to_string())?.connect_lazy()),
        _ if urls.iter().all(literal) || tokio::runtime::Handle::try_current().is_err() => {
            Ok(Channel::balance_list(
                urls.iter()
                    .map(|u| endpoint(&u.to_string()))
                    .collect::<anyhow::Result<Vec<_>>>()?
                    .into_iter(),
            ))
        }
        _ => {
            let (channel, changes) = Channel::balance_channel(64);
            tokio::spawn(keep_resolved(urls, endpoint, changes));
            Ok(channel)
        }
    }
}

/// Keeps a balanced channel's endpoints in step with what its URLs' hosts resolve to, until
/// the channel is dropped. A failed lookup keeps the host's last addresses.
async fn keep_resolved(
    urls: Vec<Uri>,
    endpoint: impl Fn(&str) -> anyhow::Result<Endpoint>,
    changes: tokio::sync::mpsc::Sender<Change<std::net::SocketAddr, Endpoint>>,
) {
    let mut current = std::collections::HashSet::new();
    loop {
        let mut found = std::collections::HashSet::new();
        let mut complete = true;
        for uri in &urls {
            let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
            let scheme = uri.scheme_str().unwrap_or("http");
            let port = uri
                .port_u16()
                .unwrap_or(if scheme == "https" { 443 } else { 80 });
            let addrs = match tokio::net::lookup_host((host, port)).await {
                Ok(addrs) => addrs,
                Err(e) => {
                    tracing::warn!(host, error = %e, "cannot resolve an upstream; keeping its last addresses");
                    complete = false;
                    continue;
                }
            };
            for addr in addrs {
                if !found.insert(addr) || current.contains(&addr) {
                    continue;
                }
                // Calls still name the host they were meant for.
                let Ok(at) = endpoint(&format!("{scheme}://{addr}")) else {
                    continue;
                };
                if changes
                    .send(Change::Insert(addr, at.origin(uri.clone())))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        if complete {
            for gone in current.difference(&found) {
                if changes.send(Change::Remove(*gone)).await.is_err() {
                    return;
                }
            }
            current = found;
        } else {
            current.extend(found);
        }
        tokio::select! {
            () = changes.closed() => return,
            () = tokio::time::sleep(RESOLVE_EVERY) => {}
        }
    }
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

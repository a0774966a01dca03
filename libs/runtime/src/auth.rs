//! Who is calling: Ed25519-signed JWTs issued by identity, verified by every service.
//!
//! identity holds the private key ([`TokenSigner`]); every other service holds only the public
//! key ([`TokenVerifier`]). The [`ServerAuth`] interceptor guards every RPC of a service's own
//! gRPC services (health and reflection are mounted without it): it rejects a missing, forged
//! or expired token with `UNAUTHENTICATED` and puts the caller's [`Principal`] into the request's
//! extensions, where handlers check roles and scopes with [`principal`] and
//! [`Principal::require_any`].
//!
//! Revocation: tokens are short-lived (identity's `OMNI_TOKEN_TTL_SECS`, 900 s by default), and
//! a disabled principal's tokens stop working within about a second everywhere. identity keeps
//! the deny list, a Redis sorted set ([`REVOKED_KEY`]: principal id → when it was disabled, in
//! Unix seconds) rebuilt from its database, so it survives Redis losing its data; every service
//! polls it ([`TokenVerifier::watch_revocations`]) and refuses a token issued at or before its
//! principal's entry. Polling a set that holds only the last token lifetime's disablements
//! costs one small read per second and nothing per call; if Redis cannot be read the last
//! known list stays in force.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey, spki::der::pem::LineEnding};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tonic::{Request, Status};

use crate::error::Error;
use crate::server::Readiness;

const ISSUER: &str = "omni-identity";
const AUDIENCE: &str = "omni";
/// Metadata carrying the end user's principal id when a service calls on their behalf.
pub const ON_BEHALF_OF: &str = "x-omni-on-behalf-of";
/// The deny list of disabled principals (inside the deployment's Redis namespace).
pub const REVOKED_KEY: &str = "omni:identity:revoked";
/// How often services read the deny list.
pub const REVOCATION_POLL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    ChannelManager,
    StoreAssociate,
    Analyst,
    ChannelApp,
    Service,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Admin,
        Role::ChannelManager,
        Role::StoreAssociate,
        Role::Analyst,
        Role::ChannelApp,
        Role::Service,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::ChannelManager => "channel_manager",
            Role::StoreAssociate => "store_associate",
            Role::Analyst => "analyst",
            Role::ChannelApp => "channel_app",
            Role::Service => "service",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    Staff,
    ChannelApp,
    Service,
}

impl PrincipalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::Staff => "staff",
            PrincipalKind::ChannelApp => "channel_app",
            PrincipalKind::Service => "service",
        }
    }

    pub fn parse(s: &str) -> Option<PrincipalKind> {
        [
            PrincipalKind::Staff,
            PrincipalKind::ChannelApp,
            PrincipalKind::Service,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// The channels and stores a principal is limited to; an empty list means "all".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stores: Vec<String>,
}

impl Scope {
    pub fn allows_channel(&self, channel_id: &str) -> bool {
        self.channels.is_empty() || self.channels.iter().any(|c| c == channel_id)
    }

    pub fn allows_store(&self, store_id: &str) -> bool {
        self.stores.is_empty() || self.stores.iter().any(|s| s == store_id)
    }

    /// Whether the scope reaches a record (an order, a ticket, an interaction) taken in
    /// `channel_id` and touching `stores` (where it was taken, picked up, fulfilled).
    ///
    /// The scope rule, the same in every service: a scope limited to stores reaches the
    /// records that touch one of its stores, whatever channel took them (an associate hands
    /// over an e-shop order collected at its store); a scope limited to channels only reaches
    /// its channels' records; an unlimited scope reaches everything. A record tied to no
    /// channel and no store is the customer's own and reached by every scope.
    pub fn reaches<'a>(&self, channel_id: &str, stores: impl IntoIterator<Item = &'a str>) -> bool {
        let mut stores = stores.into_iter().filter(|s| !s.is_empty()).peekable();
        if channel_id.is_empty() && stores.peek().is_none() {
            return true;
        }
        if self.stores.is_empty() {
            return self.allows_channel(channel_id);
        }
        stores.any(|s| self.allows_store(s))
    }

    /// The scope as SQL parameters for [`Scope::reaches_sql`]: the stores, then the channels,
    /// each `None` when that dimension does not limit.
    pub fn sql_lists(&self) -> (Option<&[String]>, Option<&[String]>) {
        fn limit(l: &[String]) -> Option<&[String]> {
            (!l.is_empty()).then_some(l)
        }
        (limit(&self.stores), limit(&self.channels))
    }

    /// A SQL condition equal to [`Scope::reaches`] for a row's `channel` and `store` columns,
    /// with [`Scope::sql_lists`] bound at `$stores` and `$channels`: for list queries that
    /// page, so a page holds only what the caller may see.
    pub fn reaches_sql(channel: &str, store: &str, stores: usize, channels: usize) -> String {
        format!(
            "(({channel} = '' AND {store} = '') \
             OR (${stores}::TEXT[] IS NOT NULL AND {store} = ANY(${stores})) \
             OR (${stores}::TEXT[] IS NULL AND (${channels}::TEXT[] IS NULL OR {channel} = ANY(${channels}))))"
        )
    }

    /// The channels a channel-level read or change (live sales, traffic, spend, promotions)
    /// covers: those `asked` (every channel when empty), within the scope. A scope listing
    /// channels covers only those (all of them when none is asked); a scope limited to stores
    /// and no channel covers none. `PERMISSION_DENIED` names the first channel out of scope.
    pub fn channels_within(&self, asked: &[String]) -> Result<Vec<String>, Error> {
        if self.channels.is_empty() {
            if !self.stores.is_empty() {
                return Err(Error::permission_denied(
                    "the caller's scope lists stores only: no channel is its own",
                ));
            }
            return Ok(asked.to_vec());
        }
        if asked.is_empty() {
            return Ok(self.channels.clone());
        }
        if let Some(outside) = asked.iter().find(|c| !self.channels.contains(c)) {
            return Err(Error::permission_denied(format!(
                "channel {outside} is outside the caller's scope"
            )));
        }
        Ok(asked.to_vec())
    }

    /// `PERMISSION_DENIED` unless a change that applies in `channels` (every channel when
    /// empty: a promotion, a coupon, a campaign) is within the scope: an unlimited scope makes
    /// any; a limited one names only channels of its own, and never "every channel"; a scope
    /// limited to stores alone has no channel of its own.
    pub fn require_channels(&self, channels: &[String]) -> Result<(), Error> {
        if *self == Scope::default() {
            return Ok(());
        }
        if channels.is_empty() {
            return Err(Error::permission_denied(
                "every channel needs a caller not limited to channels or stores",
            ));
        }
        self.channels_within(channels).map(drop)
    }

    /// Whether everything `inner` allows, `self` allows too.
    pub fn covers(&self, inner: &Scope) -> bool {
        let covers = |outer: &[String], inner: &[String]| {
            outer.is_empty() || (!inner.is_empty() && inner.iter().all(|i| outer.contains(i)))
        };
        covers(&self.channels, &inner.channels) && covers(&self.stores, &inner.stores)
    }
}

/// The verified caller of an RPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub id: String,
    pub kind: PrincipalKind,
    pub name: String,
    pub roles: Vec<Role>,
    pub scope: Scope,
    /// The end user a service acts for, from [`ON_BEHALF_OF`] metadata, for the audit trail.
    pub on_behalf_of: Option<String>,
}

impl Principal {
    pub fn has_any(&self, roles: &[Role]) -> bool {
        self.roles.iter().any(|r| roles.contains(r))
    }

    /// `PERMISSION_DENIED` unless the principal holds one of `roles`.
    pub fn require_any(&self, roles: &[Role]) -> Result<(), Error> {
        if self.has_any(roles) {
            Ok(())
        } else {
            let wanted: Vec<_> = roles.iter().map(|r| r.as_str()).collect();
            Err(Error::permission_denied(format!(
                "requires one of the roles: {}",
                wanted.join(", ")
            )))
        }
    }

    /// `PERMISSION_DENIED` unless the principal's scope includes the store.
    pub fn require_store(&self, store_id: &str) -> Result<(), Error> {
        if self.scope.allows_store(store_id) {
            Ok(())
        } else {
            Err(Error::permission_denied(format!(
                "store {store_id} is outside the caller's scope"
            )))
        }
    }

    /// `PERMISSION_DENIED` unless the principal's scope reaches a record taken in
    /// `channel_id` and touching `stores` ([`Scope::reaches`]); `what` names the record.
    pub fn require_reach<'a>(
        &self,
        what: &str,
        channel_id: &str,
        stores: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), Error> {
        if self.scope.reaches(channel_id, stores) {
            Ok(())
        } else {
            Err(Error::permission_denied(format!(
                "{what} in channel {channel_id} is outside the caller's scope"
            )))
        }
    }

    /// `PERMISSION_DENIED` unless the principal's scope includes the channel.
    pub fn require_channel(&self, channel_id: &str) -> Result<(), Error> {
        if self.scope.allows_channel(channel_id) {
            Ok(())
        } else {
            Err(Error::permission_denied(format!(
                "channel {channel_id} is outside the caller's scope"
            )))
        }
    }
}

/// The verified principal of a request that went through [`ServerAuth`].
pub fn principal<T>(request: &Request<T>) -> Result<&Principal, Status> {
    request
        .extensions()
        .get::<Principal>()
        .ok_or_else(|| Status::unauthenticated("no verified principal on this call"))
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    kind: PrincipalKind,
    name: String,
    roles: Vec<Role>,
    #[serde(default)]
    scope: Scope,
    iss: String,
    aud: String,
    iat: i64,
    exp: i64,
    jti: String,
}

/// Verifies tokens with identity's public key.
///
/// A client sends the same token on every call until it expires, so verified tokens are
/// remembered until their expiry: the signature check (the costly part) runs once per token,
/// not once per call.
pub struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
    /// Token → (principal, issued at, expires at).
    verified: std::sync::Mutex<std::collections::HashMap<String, (Principal, i64, i64)>>,
    /// Principal id → tokens issued at or before this Unix second are revoked.
    revoked: std::sync::RwLock<std::collections::HashMap<String, i64>>,
}

/// Verified tokens kept at most; the memory is forgotten wholesale beyond it.
const VERIFIED_CAPACITY: usize = 10_000;

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenVerifier")
    }
}

impl TokenVerifier {
    pub fn from_public_pem(pem: &str) -> anyhow::Result<Self> {
        let key = DecodingKey::from_ed_pem(pem.as_bytes())
            .map_err(|e| anyhow::anyhow!("not an Ed25519 public key in PEM: {e}"))?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 5;
        Ok(Self {
            key,
            validation,
            verified: std::sync::Mutex::new(std::collections::HashMap::new()),
            revoked: std::sync::RwLock::new(std::collections::HashMap::new()),
        })
    }

    pub fn verify(&self, token: &str) -> Result<Principal, Error> {
        let now = Utc::now().timestamp();
        let remembered = self.verified.lock().ok().and_then(|verified| {
            verified
                .get(token)
                .filter(|(_, _, exp)| *exp > now)
                .map(|(principal, iat, _)| (principal.clone(), *iat))
        });
        let (principal, iat) = match remembered {
            Some(found) => found,
            None => {
                let (principal, iat, exp) = self.verify_signature(token)?;
                if let Ok(mut verified) = self.verified.lock() {
                    if verified.len() >= VERIFIED_CAPACITY {
                        verified.clear();
                    }
                    verified.insert(token.to_owned(), (principal.clone(), iat, exp));
                }
                (principal, iat)
            }
        };
        if self.is_revoked(&principal.id, iat) {
            return Err(Error::unauthenticated(
                "the token was revoked: its principal is disabled",
            ));
        }
        Ok(principal)
    }

    /// Whether a token of `principal_id` issued at `issued_at` (Unix seconds) is revoked.
    fn is_revoked(&self, principal_id: &str, issued_at: i64) -> bool {
        self.revoked
            .read()
            .ok()
            .and_then(|revoked| revoked.get(principal_id).copied())
            .is_some_and(|disabled_at| issued_at <= disabled_at)
    }

    /// Replaces the deny list: principal id → tokens issued at or before it are refused.
    pub fn set_revoked(&self, revoked: std::collections::HashMap<String, i64>) {
        if let Ok(mut current) = self.revoked.write() {
            *current = revoked;
        }
    }

    /// Keeps the deny list in step with [`REVOKED_KEY`] until `shutdown`.
    pub async fn watch_revocations(
        self: Arc<Self>,
        redis: crate::redis::Redis,
        every: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let key = redis.key(REVOKED_KEY);
        let mut conn = redis.conn();
        let mut failing = false;
        loop {
            let read: redis::RedisResult<Vec<(String, f64)>> = redis::cmd("ZRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .query_async(&mut conn)
                .await;
            match read {
                Ok(entries) => {
                    if failing {
                        tracing::info!("the deny list of disabled principals is readable again");
                        failing = false;
                    }
                    self.set_revoked(
                        entries
                            .into_iter()
                            .map(|(id, at)| (id, at as i64))
                            .collect(),
                    );
                }
                Err(e) if !failing => {
                    tracing::warn!(error = %e, "cannot read the deny list; keeping the last one");
                    failing = true;
                }
                Err(_) => {}
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }

    fn verify_signature(&self, token: &str) -> Result<(Principal, i64, i64), Error> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    Error::unauthenticated("the token has expired")
                }
                _ => Error::unauthenticated("the token is not valid"),
            },
        )?;
        let claims = data.claims;
        let (iat, exp) = (claims.iat, claims.exp);
        Ok((
            Principal {
                id: claims.sub,
                kind: claims.kind,
                name: claims.name,
                roles: claims.roles,
                scope: claims.scope,
                on_behalf_of: None,
            },
            iat,
            exp,
        ))
    }
}

/// Signs tokens. Only identity (and the testkit) hold one.
pub struct TokenSigner {
    key: EncodingKey,
    key_id: String,
    public_pem: String,
    ttl: Duration,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// A freshly generated Ed25519 key pair, PEM encoded (PKCS#8 private, SPKI public).
#[derive(Debug, Clone)]
pub struct KeyPair {
    pub private_pem: crate::config::Secret<String>,
    pub public_pem: String,
}

impl KeyPair {
    pub fn generate() -> anyhow::Result<Self> {
        let signing = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let private_pem = signing
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| anyhow::anyhow!("encoding the private key: {e}"))?
            .to_string();
        let public_pem = signing
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| anyhow::anyhow!("encoding the public key: {e}"))?;
        Ok(Self {
            private_pem: private_pem.into(),
            public_pem,
        })
    }
}

impl TokenSigner {
    /// A signer from a PKCS#8 PEM private key; tokens live `ttl`.
    pub fn from_private_pem(pem: &str, ttl: Duration) -> anyhow::Result<Self> {
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        let signing = ed25519_dalek::SigningKey::from_pkcs8_pem(pem)
            .map_err(|e| anyhow::anyhow!("not an Ed25519 PKCS#8 private key in PEM: {e}"))?;
        let public_pem = signing
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| anyhow::anyhow!("encoding the public key: {e}"))?;
        let key = EncodingKey::from_ed_pem(pem.as_bytes())
            .map_err(|e| anyhow::anyhow!("loading the private key: {e}"))?;
        let key_id = signing
            .verifying_key()
            .as_bytes()
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Self {
            key,
            key_id,
            public_pem,
            ttl,
        })
    }

    pub fn public_key_pem(&self) -> &str {
        &self.public_pem
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn verifier(&self) -> anyhow::Result<TokenVerifier> {
        TokenVerifier::from_public_pem(&self.public_pem)
    }

    /// A token for `principal`, valid for the signer's lifetime; returns it with its expiry.
    pub fn sign(&self, principal: &Principal) -> anyhow::Result<(String, DateTime<Utc>)> {
        self.sign_at(principal, Utc::now(), self.ttl)
    }

    /// A token issued at `issued_at`, valid for `ttl` (tests use it to mint expired tokens).
    pub fn sign_at(
        &self,
        principal: &Principal,
        issued_at: DateTime<Utc>,
        ttl: Duration,
    ) -> anyhow::Result<(String, DateTime<Utc>)> {
        let expires_at = issued_at + chrono::Duration::from_std(ttl)?;
        let claims = Claims {
            sub: principal.id.clone(),
            kind: principal.kind,
            name: principal.name.clone(),
            roles: principal.roles.clone(),
            scope: principal.scope.clone(),
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
            iat: issued_at.timestamp(),
            exp: expires_at.timestamp(),
            jti: uuid::Uuid::now_v7().to_string(),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.key_id.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.key)?;
        Ok((token, expires_at))
    }
}

/// The server-side interceptor: refuses calls until the service is ready, verifies the bearer
/// token and attaches the [`Principal`].
#[derive(Clone, Debug)]
pub struct ServerAuth {
    /// `None` for the few public RPCs (identity's token issuance).
    verifier: Option<Arc<TokenVerifier>>,
    readiness: Readiness,
}

impl ServerAuth {
    pub fn new(verifier: Arc<TokenVerifier>, readiness: Readiness) -> Self {
        Self {
            verifier: Some(verifier),
            readiness,
        }
    }

    /// Readiness only, no token: for the RPCs a caller uses to obtain a token.
    pub fn public(readiness: Readiness) -> Self {
        Self {
            verifier: None,
            readiness,
        }
    }
}

impl tonic::service::Interceptor for ServerAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if !self.readiness.is_ready() {
            return Err(Status::unavailable("the service is starting"));
        }
        let Some(verifier) = &self.verifier else {
            return Ok(request);
        };
        let header = request
            .metadata()
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("missing authorization: Bearer <token>"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .ok_or_else(|| Status::unauthenticated("authorization must be: Bearer <token>"))?;
        let mut principal = verifier.verify(token.trim())?;
        principal.on_behalf_of = request
            .metadata()
            .get(ON_BEHALF_OF)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        tracing::Span::current().record("principal", principal.id.as_str());
        request.extensions_mut().insert(principal);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn staff(roles: Vec<Role>) -> Principal {
        Principal {
            id: "p1".into(),
            kind: PrincipalKind::Staff,
            name: "ana".into(),
            roles,
            scope: Scope::default(),
            on_behalf_of: None,
        }
    }

    #[test]
    fn a_signed_token_verifies_and_a_foreign_one_does_not() {
        let keys = KeyPair::generate().unwrap();
        let signer =
            TokenSigner::from_private_pem(keys.private_pem.expose(), Duration::from_secs(60))
                .unwrap();
        let (token, _) = signer.sign(&staff(vec![Role::Analyst])).unwrap();
        let principal = signer.verifier().unwrap().verify(&token).unwrap();
        assert_eq!(principal.roles, vec![Role::Analyst]);

        let other = KeyPair::generate().unwrap();
        let foreign = TokenVerifier::from_public_pem(&other.public_pem).unwrap();
        assert!(matches!(
            foreign.verify(&token),
            Err(Error::Unauthenticated(_))
        ));
    }

    #[test]
    fn tokens_issued_before_a_revocation_are_refused() {
        let keys = KeyPair::generate().unwrap();
        let signer =
            TokenSigner::from_private_pem(keys.private_pem.expose(), Duration::from_secs(600))
                .unwrap();
        let verifier = signer.verifier().unwrap();
        let ana = staff(vec![Role::Analyst]);
        let now = Utc::now();
        let (old, _) = signer
            .sign_at(
                &ana,
                now - chrono::Duration::seconds(60),
                Duration::from_secs(600),
            )
            .unwrap();
        let (fresh, _) = signer.sign_at(&ana, now, Duration::from_secs(600)).unwrap();
        // Verified (and remembered) before the revocation, refused after it.
        assert!(verifier.verify(&old).is_ok());
        let disabled_at = (now - chrono::Duration::seconds(30)).timestamp();
        verifier.set_revoked([(ana.id.clone(), disabled_at)].into());
        let refused = verifier.verify(&old).unwrap_err();
        assert!(refused.to_string().contains("revoked"), "{refused}");
        // A token issued after the principal was disabled (and re-enabled) is fine, as are
        // other principals' tokens.
        assert!(verifier.verify(&fresh).is_ok());
        let (other, _) = signer
            .sign(&Principal {
                id: "p2".into(),
                ..ana.clone()
            })
            .unwrap();
        assert!(verifier.verify(&other).is_ok());
        verifier.set_revoked(Default::default());
        assert!(verifier.verify(&old).is_ok());
    }

    #[test]
    fn expired_tokens_are_refused() {
        let keys = KeyPair::generate().unwrap();
        let signer =
            TokenSigner::from_private_pem(keys.private_pem.expose(), Duration::from_secs(60))
                .unwrap();
        let (token, _) = signer
            .sign_at(
                &staff(vec![Role::Admin]),
                Utc::now() - chrono::Duration::hours(1),
                Duration::from_secs(60),
            )
            .unwrap();
        let err = signer.verifier().unwrap().verify(&token).unwrap_err();
        assert_eq!(err.to_string(), "unauthenticated: the token has expired");
    }

    #[test]
    fn scopes_reach_records_by_store_first_then_channel() {
        let unlimited = Scope::default();
        let till = Scope {
            channels: vec!["till".into()],
            stores: vec!["lyon".into()],
        };
        let web_app = Scope {
            channels: vec!["web".into()],
            stores: vec![],
        };
        assert!(unlimited.reaches("web", ["paris"]));
        // Store staff reach an e-shop order picked up at their store, not one elsewhere.
        assert!(till.reaches("web", ["", "lyon"]));
        assert!(!till.reaches("till", ["paris"]));
        assert!(!till.reaches("web", [""]));
        assert!(web_app.reaches("web", ["paris"]));
        assert!(!web_app.reaches("till", ["lyon"]));
        // The customer's own records (no channel, no store) are reached by everyone.
        assert!(till.reaches("", [""]) && web_app.reaches("", []));
    }

    #[test]
    fn channel_reads_stay_within_the_scope() {
        let web = |c: &[&str], s: &[&str]| Scope {
            channels: c.iter().map(|c| (*c).to_owned()).collect(),
            stores: s.iter().map(|s| (*s).to_owned()).collect(),
        };
        let asked = |c: &[&str]| c.iter().map(|c| (*c).to_owned()).collect::<Vec<_>>();
        assert_eq!(Scope::default().channels_within(&[]).unwrap(), asked(&[]));
        assert_eq!(
            web(&["web", "app"], &[]).channels_within(&[]).unwrap(),
            asked(&["web", "app"])
        );
        assert_eq!(
            web(&["web", "app"], &[])
                .channels_within(&asked(&["app"]))
                .unwrap(),
            asked(&["app"])
        );
        let e = web(&["web"], &[])
            .channels_within(&asked(&["web", "till"]))
            .unwrap_err();
        assert!(matches!(e, Error::PermissionDenied(m) if m.contains("till")));
        assert!(web(&[], &["lyon"]).channels_within(&[]).is_err());
        assert_eq!(
            web(&["till"], &["lyon"]).channels_within(&[]).unwrap(),
            asked(&["till"])
        );
    }

    #[test]
    fn scopes_cover_only_what_they_include() {
        let all = Scope::default();
        let paris = Scope {
            channels: vec![],
            stores: vec!["paris".into()],
        };
        assert!(all.covers(&paris));
        assert!(!paris.covers(&all));
        assert!(paris.covers(&paris));
        assert!(paris.allows_store("paris") && !paris.allows_store("lyon"));
    }

    #[test]
    fn roles_are_required() {
        let p = staff(vec![Role::Analyst]);
        assert!(p.require_any(&[Role::Analyst, Role::Admin]).is_ok());
        assert!(matches!(
            p.require_any(&[Role::Admin]),
            Err(Error::PermissionDenied(_))
        ));
    }
}

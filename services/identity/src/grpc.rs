//! identity's gRPC layer: checks the caller's role, validates and maps requests into the
//! use cases of [`crate::app`], and maps results back into the contract's messages.

use omni_proto::common::ChannelKind;
use omni_proto::identity as pb;
use omni_proto::identity::auth_service_server::AuthService;
use omni_proto::identity::identity_service_server::IdentityService;
use omni_proto::identity::principal_service_server::PrincipalService;
use omni_runtime::Error;
use omni_runtime::auth::{self, PrincipalKind, Role, Scope};
use omni_runtime::error::Violations;
use prost_types::Timestamp;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::app::{AccountKey, App, CustomerKey, ResolveInput};
use crate::domain::{self, MemberNumber, Phone};
use crate::store::{Customer, PrincipalRow};
use crate::throttle::Attempt;

/// Roles that act for a channel: they may resolve customers and record consent.
const CHANNEL_ROLES: &[Role] = &[
    Role::Admin,
    Role::ChannelManager,
    Role::StoreAssociate,
    Role::ChannelApp,
    Role::Service,
];
/// Everyone with a role may read.
const READ_ROLES: &[Role] = &Role::ALL;
const MANAGER_ROLES: &[Role] = &[Role::Admin, Role::ChannelManager];

#[derive(Debug, Clone)]
pub struct Grpc {
    app: App,
    default_calling_code: String,
}

impl Grpc {
    pub fn new(app: App, default_calling_code: String) -> Self {
        Self {
            app,
            default_calling_code,
        }
    }

    fn phone(&self, raw: &str) -> std::result::Result<Phone, String> {
        Phone::parse(raw, &self.default_calling_code)
    }
}

fn uuid(raw: &str) -> std::result::Result<Uuid, String> {
    if raw.trim().is_empty() {
        return Err("is required".into());
    }
    Uuid::parse_str(raw.trim()).map_err(|_| "must be a UUID".into())
}

fn channel_kind(raw: i32) -> std::result::Result<i16, String> {
    match ChannelKind::try_from(raw) {
        Ok(ChannelKind::Unspecified) => Err("is required".into()),
        Ok(kind) => Ok(kind as i16),
        Err(_) => Err(format!("{raw} is not a known channel kind")),
    }
}

fn account(v: &mut Violations, field: &str, r: &pb::ChannelAccountRef) -> Option<AccountKey> {
    let kind = v.check(
        &format!("{field}.channel_kind"),
        channel_kind(r.channel_kind),
    );
    let external_id = v.check(
        &format!("{field}.external_id"),
        domain::parse_external_id(&r.external_id),
    );
    Some(AccountKey {
        channel_kind: kind?,
        external_id: external_id?,
    })
}

fn timestamp(t: chrono::DateTime<chrono::Utc>) -> Option<Timestamp> {
    Some(omni_runtime::time::timestamp(t))
}

fn customer_pb(c: Customer) -> pb::Customer {
    let row = c.row;
    pb::Customer {
        id: row.id.to_string(),
        member_number: row.member_number,
        phone: row.phone.unwrap_or_default(),
        email: row.email.unwrap_or_default(),
        name: row.name,
        channel_accounts: c
            .accounts
            .into_iter()
            .map(|a| pb::ChannelAccount {
                channel_kind: i32::from(a.channel_kind),
                external_id: a.external_id,
                linked_at: timestamp(a.linked_at),
            })
            .collect(),
        consents: c
            .consents
            .into_iter()
            .map(|c| pb::Consent {
                channel_kind: i32::from(c.channel_kind),
                marketing_opt_in: c.marketing_opt_in,
                updated_at: timestamp(c.updated_at),
            })
            .collect(),
        erased: row.erased_at.is_some(),
        created_at: timestamp(row.created_at),
        updated_at: timestamp(row.updated_at),
    }
}

fn role_pb(role: Role) -> pb::Role {
    match role {
        Role::Admin => pb::Role::Admin,
        Role::ChannelManager => pb::Role::ChannelManager,
        Role::StoreAssociate => pb::Role::StoreAssociate,
        Role::Analyst => pb::Role::Analyst,
        Role::ChannelApp => pb::Role::ChannelApp,
        Role::Service => pb::Role::Service,
    }
}

fn role_from_pb(raw: i32) -> std::result::Result<Role, String> {
    match pb::Role::try_from(raw) {
        Ok(pb::Role::Admin) => Ok(Role::Admin),
        Ok(pb::Role::ChannelManager) => Ok(Role::ChannelManager),
        Ok(pb::Role::StoreAssociate) => Ok(Role::StoreAssociate),
        Ok(pb::Role::Analyst) => Ok(Role::Analyst),
        Ok(pb::Role::ChannelApp) => Ok(Role::ChannelApp),
        Ok(pb::Role::Service) => Ok(Role::Service),
        Ok(pb::Role::Unspecified) => Err("ROLE_UNSPECIFIED is not a role".into()),
        Err(_) => Err(format!("{raw} is not a known role")),
    }
}

fn roles(v: &mut Violations, raw: &[i32]) -> Vec<Role> {
    if raw.is_empty() {
        v.add("roles", "at least one role is required");
    }
    let mut roles = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        if let Some(role) = v.check(&format!("roles[{i}]"), role_from_pb(*r))
            && !roles.contains(&role)
        {
            roles.push(role);
        }
    }
    roles
}

fn scope(v: &mut Violations, raw: Option<pb::Scope>) -> Scope {
    let raw = raw.unwrap_or_default();
    for (field, ids) in [
        ("scope.channel_ids", &raw.channel_ids),
        ("scope.store_ids", &raw.store_ids),
    ] {
        for (i, id) in ids.iter().enumerate() {
            if let Err(e) = uuid(id) {
                v.add(format!("{field}[{i}]"), e);
            }
        }
    }
    Scope {
        channels: raw.channel_ids,
        stores: raw.store_ids,
    }
}

/// A scope of "everything" is for roles that are not tied to a place: a store associate is
/// limited to at least one store, and a channel app to at least one channel (an empty list
/// would mean all of them).
fn require_bounded_scope(v: &mut Violations, kind: PrincipalKind, roles: &[Role], scope: &Scope) {
    if roles.contains(&Role::StoreAssociate) && scope.stores.is_empty() {
        v.add(
            "scope.store_ids",
            "a store associate must be limited to at least one store",
        );
    }
    if (kind == PrincipalKind::ChannelApp || roles.contains(&Role::ChannelApp))
        && scope.channels.is_empty()
    {
        v.add(
            "scope.channel_ids",
            "a channel app must be limited to at least one channel",
        );
    }
}

fn principal_pb(row: PrincipalRow) -> pb::Principal {
    let kind = match PrincipalKind::parse(&row.kind) {
        Some(PrincipalKind::Staff) => pb::PrincipalKind::Staff,
        Some(PrincipalKind::ChannelApp) => pb::PrincipalKind::ChannelApp,
        Some(PrincipalKind::Service) => pb::PrincipalKind::Service,
        None => pb::PrincipalKind::Unspecified,
    };
    pb::Principal {
        id: row.id.to_string(),
        kind: kind as i32,
        name: row.name,
        display_name: row.display_name,
        roles: row
            .roles
            .iter()
            .filter_map(|r| Role::parse(r))
            .map(|r| role_pb(r) as i32)
            .collect(),
        scope: Some(pb::Scope {
            channel_ids: row.scope_channels,
            store_ids: row.scope_stores,
        }),
        disabled: row.disabled,
        created_at: timestamp(row.created_at),
    }
}

#[tonic::async_trait]
impl IdentityService for Grpc {
    async fn resolve_customer(
        &self,
        request: Request<pb::ResolveCustomerRequest>,
    ) -> std::result::Result<Response<pb::ResolveCustomerResponse>, Status> {
        let actor = auth::principal(&request)?.clone();
        actor.require_any(CHANNEL_ROLES)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let mut input = ResolveInput::default();
        if let Some(a) = &req.channel_account {
            input.account = account(&mut v, "channel_account", a);
        }
        if !req.phone.trim().is_empty() {
            input.phone = v.check("phone", self.phone(&req.phone));
        }
        if !req.member_number.trim().is_empty() {
            input.member_number = v.check("member_number", MemberNumber::parse(&req.member_number));
        }
        if req.channel_account.is_none()
            && req.phone.trim().is_empty()
            && req.member_number.trim().is_empty()
        {
            v.add(
                "channel_account",
                "give at least one of channel_account, phone and member_number",
            );
        }
        if !req.name.is_empty() {
            input.name = v.check("name", domain::parse_name(&req.name));
        }
        if !req.email.is_empty() {
            input.email = v.check("email", domain::parse_email(&req.email));
        }
        v.finish()?;
        let resolved = self.app.resolve(&input, &actor).await?;
        Ok(Response::new(pb::ResolveCustomerResponse {
            customer: Some(customer_pb(resolved.customer)),
            created: resolved.created,
            linked: resolved.linked,
        }))
    }

    async fn get_customer(
        &self,
        request: Request<pb::GetCustomerRequest>,
    ) -> std::result::Result<Response<pb::GetCustomerResponse>, Status> {
        auth::principal(&request)?.require_any(READ_ROLES)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let key = match req.key.and_then(|k| k.key) {
            None => {
                v.add("key", "give an id, member_number, phone or channel_account");
                None
            }
            Some(pb::customer_key::Key::Id(id)) => {
                v.check("key.id", uuid(&id)).map(CustomerKey::Id)
            }
            Some(pb::customer_key::Key::MemberNumber(m)) => v
                .check("key.member_number", MemberNumber::parse(&m))
                .map(CustomerKey::MemberNumber),
            Some(pb::customer_key::Key::Phone(p)) => {
                v.check("key.phone", self.phone(&p)).map(CustomerKey::Phone)
            }
            Some(pb::customer_key::Key::ChannelAccount(a)) => {
                account(&mut v, "key.channel_account", &a).map(CustomerKey::Account)
            }
        };
        v.finish()?;
        let key = key.ok_or_else(|| Error::internal("validated key missing"))?;
        let (customer, alias) = self.app.get(&key).await?;
        Ok(Response::new(pb::GetCustomerResponse {
            customer: Some(customer_pb(customer)),
            alias_of: alias.map(|a| a.to_string()).unwrap_or_default(),
        }))
    }

    async fn merge_customers(
        &self,
        request: Request<pb::MergeCustomersRequest>,
    ) -> std::result::Result<Response<pb::MergeCustomersResponse>, Status> {
        let actor = auth::principal(&request)?.clone();
        actor.require_any(MANAGER_ROLES)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let survivor = v.check("survivor_id", uuid(&req.survivor_id));
        let duplicate = v.check("duplicate_id", uuid(&req.duplicate_id));
        if req.reason.trim().is_empty() {
            v.add("reason", "say why these are the same person");
        }
        v.finish()?;
        let (Some(survivor), Some(duplicate)) = (survivor, duplicate) else {
            return Err(Error::internal("validated ids missing").into());
        };
        let customer = self
            .app
            .merge(survivor, duplicate, req.reason.trim(), &actor)
            .await?;
        Ok(Response::new(pb::MergeCustomersResponse {
            survivor: Some(customer_pb(customer)),
        }))
    }

    async fn erase_customer(
        &self,
        request: Request<pb::EraseCustomerRequest>,
    ) -> std::result::Result<Response<pb::EraseCustomerResponse>, Status> {
        let actor = auth::principal(&request)?.clone();
        actor.require_any(MANAGER_ROLES)?;
        let req = request.into_inner();
        let id = uuid(&req.customer_id).map_err(|e| Error::invalid("customer_id", e))?;
        let customer = self.app.erase(id, &actor).await?;
        Ok(Response::new(pb::EraseCustomerResponse {
            customer: Some(customer_pb(customer)),
        }))
    }

    async fn set_consent(
        &self,
        request: Request<pb::SetConsentRequest>,
    ) -> std::result::Result<Response<pb::SetConsentResponse>, Status> {
        let actor = auth::principal(&request)?.clone();
        actor.require_any(CHANNEL_ROLES)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = v.check("customer_id", uuid(&req.customer_id));
        let kind = v.check("channel_kind", channel_kind(req.channel_kind));
        v.finish()?;
        let (Some(id), Some(kind)) = (id, kind) else {
            return Err(Error::internal("validated fields missing").into());
        };
        let customer = self
            .app
            .set_consent(id, kind, req.marketing_opt_in, &actor)
            .await?;
        Ok(Response::new(pb::SetConsentResponse {
            customer: Some(customer_pb(customer)),
        }))
    }
}

#[tonic::async_trait]
impl PrincipalService for Grpc {
    async fn create_staff(
        &self,
        request: Request<pb::CreateStaffRequest>,
    ) -> std::result::Result<Response<pb::CreateStaffResponse>, Status> {
        let actor = auth::principal(&request)?.clone();
        actor.require_any(MANAGER_ROLES)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let login = v.check("login", domain::parse_login(&req.login));
        v.check("password", domain::check_password(&req.password));
        let display_name = if req.display_name.trim().is_empty() {
            String::new()
        } else {
            v.check("display_name", domain::parse_name(&req.display_name))
                .unwrap_or_default()
        };
        let roles = roles(&mut v, &req.roles);
        let scope = scope(&mut v, req.scope);
        require_bounded_scope(&mut v, PrincipalKind::Staff, &roles, &scope);
        v.finish()?;
        let login = login.ok_or_else(|| Error::internal("validated login missing"))?;
        let row = self
            .app
            .create_staff(&login, &req.password, &display_name, &roles, &scope, &actor)
            .await?;
        Ok(Response::new(pb::CreateStaffResponse {
            principal: Some(principal_pb(row)),
        }))
    }

    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> std::result::Result<Response<pb::CreateApiKeyResponse>, Status> {
        let actor = auth::principal(&request)?.clone();
        actor.require_any(&[Role::Admin])?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let kind = match pb::PrincipalKind::try_from(req.kind) {
            Ok(pb::PrincipalKind::ChannelApp) => Some(PrincipalKind::ChannelApp),
            Ok(pb::PrincipalKind::Service) => Some(PrincipalKind::Service),
            _ => {
                v.add(
                    "kind",
                    "must be PRINCIPAL_KIND_CHANNEL_APP or PRINCIPAL_KIND_SERVICE",
                );
                None
            }
        };
        let name = v.check("name", domain::parse_name(&req.name));
        let roles = roles(&mut v, &req.roles);
        let scope = scope(&mut v, req.scope);
        if let Some(kind) = kind {
            require_bounded_scope(&mut v, kind, &roles, &scope);
        }
        v.finish()?;
        let (Some(kind), Some(name)) = (kind, name) else {
            return Err(Error::internal("validated fields missing").into());
        };
        let (row, key) = self
            .app
            .create_api_key(kind, &name, &roles, &scope, &actor)
            .await?;
        Ok(Response::new(pb::CreateApiKeyResponse {
            principal: Some(principal_pb(row)),
            api_key: key,
        }))
    }

    async fn disable_principal(
        &self,
        request: Request<pb::DisablePrincipalRequest>,
    ) -> std::result::Result<Response<pb::DisablePrincipalResponse>, Status> {
        auth::principal(&request)?.require_any(&[Role::Admin])?;
        let req = request.into_inner();
        let id = uuid(&req.principal_id).map_err(|e| Error::invalid("principal_id", e))?;
        let row = self.app.disable(id).await?;
        Ok(Response::new(pb::DisablePrincipalResponse {
            principal: Some(principal_pb(row)),
        }))
    }
}

#[tonic::async_trait]
impl AuthService for Grpc {
    async fn authenticate(
        &self,
        request: Request<pb::AuthenticateRequest>,
    ) -> std::result::Result<Response<pb::AuthenticateResponse>, Status> {
        use pb::authenticate_request::Credential;
        let peer = request.remote_addr().map(|a| a.ip());
        let credential = request.into_inner().credential;
        let login = match &credential {
            Some(Credential::Password(p)) => {
                let mut v = Violations::new();
                if p.login.trim().is_empty() {
                    v.add("credential.password.login", "is required");
                }
                if p.password.is_empty() {
                    v.add("credential.password.password", "is required");
                }
                v.finish()?;
                format!("staff:{}", p.login.trim().to_ascii_lowercase())
            }
            Some(Credential::ApiKey(key)) => format!(
                "key:{}",
                crate::credentials::api_key_prefix(key.trim()).unwrap_or("-")
            ),
            None => {
                return Err(Error::invalid("credential", "give a password or an api_key").into());
            }
        };
        let attempt = Attempt { login, peer };
        self.app.throttle.check(&attempt).await?;
        let outcome = match credential {
            Some(Credential::Password(p)) => {
                self.app
                    .authenticate_password(&p.login.trim().to_ascii_lowercase(), &p.password)
                    .await
            }
            Some(Credential::ApiKey(key)) => self.app.authenticate_api_key(key.trim()).await,
            None => Err(Error::internal("validated credential missing")),
        };
        let row = match outcome {
            Ok(row) => {
                self.app.throttle.succeeded(&attempt).await;
                row
            }
            Err(e @ Error::Unauthenticated(_)) => {
                self.app.throttle.failed(&attempt).await;
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        let (token, expires_at) = self.app.issue_token(&row)?;
        tracing::info!(principal_id = %row.id, "authenticated");
        Ok(Response::new(pb::AuthenticateResponse {
            access_token: token,
            expires_at: timestamp(expires_at),
            principal: Some(principal_pb(row)),
        }))
    }

    async fn get_public_key(
        &self,
        _request: Request<pb::GetPublicKeyRequest>,
    ) -> std::result::Result<Response<pb::GetPublicKeyResponse>, Status> {
        Ok(Response::new(pb::GetPublicKeyResponse {
            public_key_pem: self.app.signer.public_key_pem().to_owned(),
            key_id: self.app.signer.key_id().to_owned(),
            algorithm: "EdDSA".to_owned(),
        }))
    }
}

//! identity's use cases: each runs in one transaction, decides with [`crate::domain`], writes
//! with [`crate::store`] and records its events in the outbox in the same transaction.

use std::sync::Arc;

use omni_proto::events::event::Payload;
use omni_proto::events::{
    CustomerConsentChanged, CustomerErased, CustomerMerged, CustomerRegistered,
};
use omni_runtime::auth::{Principal, PrincipalKind, Role, Scope, TokenSigner};
use omni_runtime::outbox::Outbox;
use omni_runtime::redis::Redis;
use omni_runtime::{Error, Result};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::credentials;
use crate::domain::{self, MemberNumber, Phone, Resolution};
use crate::revocations;
use crate::store::{self, Customer, PrincipalRow};
use crate::throttle::Throttle;

/// A channel account as the caller named it.
#[derive(Debug, Clone)]
pub struct AccountKey {
    pub channel_kind: i16,
    pub external_id: String,
}

/// A validated resolve request.
#[derive(Debug, Clone, Default)]
pub struct ResolveInput {
    pub account: Option<AccountKey>,
    pub phone: Option<Phone>,
    pub member_number: Option<MemberNumber>,
    pub name: Option<String>,
    pub email: Option<String>,
}

#[derive(Debug)]
pub struct Resolved {
    pub customer: Customer,
    pub created: bool,
    pub linked: bool,
}

/// How a customer was looked up.
#[derive(Debug, Clone)]
pub enum CustomerKey {
    Id(Uuid),
    MemberNumber(MemberNumber),
    Phone(Phone),
    Account(AccountKey),
}

#[derive(Debug, Clone)]
pub struct App {
    pub pool: PgPool,
    pub outbox: Outbox,
    pub signer: Arc<TokenSigner>,
    /// For the deny list of disabled principals.
    pub redis: Redis,
    pub throttle: Throttle,
}

/// A resolve attempt that lost a race and must start over with a fresh snapshot.
struct Retry;

impl App {
    /// Finds or creates the customer the keys name. Concurrent resolves of the same phone or
    /// account converge on one customer: a lost insert race retries and finds the winner.
    pub async fn resolve(&self, input: &ResolveInput, actor: &Principal) -> Result<Resolved> {
        for _ in 0..5 {
            match self.try_resolve(input, actor).await {
                Ok(Ok(resolved)) => {
                    if resolved.created || resolved.linked {
                        self.outbox.wake();
                    }
                    return Ok(resolved);
                }
                // Lost a race (a concurrent resolve inserted the same phone or account).
                Ok(Err(Retry)) | Err(Error::AlreadyExists(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Aborted(
            "too much contention on this customer; retry".into(),
        ))
    }

    async fn try_resolve(
        &self,
        input: &ResolveInput,
        actor: &Principal,
    ) -> Result<std::result::Result<Resolved, Retry>> {
        let mut tx = self.pool.begin().await?;
        let by_account = match &input.account {
            Some(a) => match store::id_by_account(&mut tx, a.channel_kind, &a.external_id).await? {
                Some(id) => store::canonical_id(&mut tx, id).await?,
                None => None,
            },
            None => None,
        };
        let by_member = match &input.member_number {
            Some(m) => {
                let id = store::id_by_member_number(&mut tx, m.as_str())
                    .await?
                    .ok_or_else(|| Error::not_found(format!("member number {}", m.as_str())))?;
                store::canonical_id(&mut tx, id).await?
            }
            None => None,
        };
        let by_phone = match &input.phone {
            Some(p) => match store::id_by_phone(&mut tx, p.as_str()).await? {
                Some(id) => store::canonical_id(&mut tx, id).await?,
                None => None,
            },
            None => None,
        };
        let resolution = domain::resolve(&[
            ("channel_account", by_account),
            ("member_number", by_member),
            ("phone", by_phone),
        ])
        .map_err(|conflict| {
            let violations = conflict
                .matches
                .iter()
                .map(|(key, id)| {
                    omni_runtime::error::PreconditionViolation::new(
                        "CUSTOMER_CONFLICT",
                        key.to_string(),
                        format!("names customer {id}"),
                    )
                })
                .collect();
            Error::FailedPrecondition {
                message: "the identifiers name different customers; merge them first".into(),
                violations,
            }
        })?;

        let (id, created) = match resolution {
            Resolution::Existing(id) => {
                let row = store::customer_row(&mut tx, id, true)
                    .await?
                    .ok_or_else(|| Error::not_found(format!("customer {id}")))?;
                if row.erased_at.is_some() {
                    return Err(Error::precondition(
                        "ERASED",
                        format!("customer/{id}"),
                        "the customer's personal data was erased",
                    ));
                }
                if let Some(phone) = &input.phone
                    && row.phone.is_none()
                    && !store::set_phone(&mut tx, id, phone.as_str()).await?
                {
                    return Ok(Err(Retry));
                }
                (id, false)
            }
            Resolution::Create => {
                if input.phone.is_none() && input.account.is_none() {
                    return Err(Error::invalid(
                        "phone",
                        "a new customer needs a phone number or a channel account",
                    ));
                }
                let id = Uuid::now_v7();
                let member =
                    MemberNumber::from_sequence(store::next_member_sequence(&mut tx).await?);
                let inserted = store::insert_customer(
                    &mut tx,
                    id,
                    member.as_str(),
                    input.phone.as_ref().map(Phone::as_str),
                    input.email.as_deref(),
                    input.name.as_deref().unwrap_or_default(),
                )
                .await?;
                if !inserted {
                    return Ok(Err(Retry));
                }
                (id, true)
            }
        };

        let mut linked = false;
        if let Some(account) = &input.account
            && by_account.is_none()
        {
            if !store::link_account(&mut tx, account.channel_kind, &account.external_id, id).await?
            {
                return Ok(Err(Retry));
            }
            linked = true;
        }
        let customer = store::load_customer(&mut tx, id)
            .await?
            .ok_or_else(|| Error::internal("customer vanished inside its transaction"))?;
        if created {
            let row = &customer.row;
            self.outbox
                .add(
                    &mut tx,
                    "identity.customer_registered",
                    &id.to_string(),
                    &actor.id,
                    Payload::CustomerRegistered(CustomerRegistered {
                        customer_id: id.to_string(),
                        member_number: row.member_number.clone(),
                        phone: row.phone.clone().unwrap_or_default(),
                        email: row.email.clone().unwrap_or_default(),
                        name: row.name.clone(),
                        channel_kind: input
                            .account
                            .as_ref()
                            .map_or(0, |a| i32::from(a.channel_kind)),
                    }),
                )
                .await?;
        }
        tx.commit().await?;
        tracing::info!(
            customer_id = %id,
            phone = %input.phone.as_ref().map(|p| p.masked().to_string()).unwrap_or_default(),
            created,
            linked,
            "customer resolved"
        );
        Ok(Ok(Resolved {
            customer,
            created,
            linked,
        }))
    }

    /// The customer a key names, following a merge to its survivor; returns the id asked for
    /// when it was an alias.
    pub async fn get(&self, key: &CustomerKey) -> Result<(Customer, Option<Uuid>)> {
        let mut conn = self.pool.acquire().await?;
        let (found, what) = match key {
            CustomerKey::Id(id) => (Some(*id), format!("customer {id}")),
            CustomerKey::MemberNumber(m) => (
                store::id_by_member_number(&mut conn, m.as_str()).await?,
                format!("member number {}", m.as_str()),
            ),
            CustomerKey::Phone(p) => (
                store::id_by_phone(&mut conn, p.as_str()).await?,
                "a customer with this phone number".to_owned(),
            ),
            CustomerKey::Account(a) => (
                store::id_by_account(&mut conn, a.channel_kind, &a.external_id).await?,
                "a customer with this channel account".to_owned(),
            ),
        };
        let found = found.ok_or_else(|| Error::not_found(what.clone()))?;
        let customer = store::load_canonical(&mut conn, found)
            .await?
            .ok_or_else(|| Error::not_found(what))?;
        let alias = (customer.row.id != found).then_some(found);
        Ok((customer, alias))
    }

    pub async fn merge(
        &self,
        survivor_id: Uuid,
        duplicate_id: Uuid,
        reason: &str,
        actor: &Principal,
    ) -> Result<Customer> {
        if survivor_id == duplicate_id {
            return Err(Error::invalid(
                "duplicate_id",
                "must differ from survivor_id",
            ));
        }
        let mut tx = self.pool.begin().await?;
        // Lock both in id order, so two opposite merges cannot deadlock.
        let (first, second) = if survivor_id < duplicate_id {
            (survivor_id, duplicate_id)
        } else {
            (duplicate_id, survivor_id)
        };
        let a = store::customer_row(&mut tx, first, true).await?;
        let b = store::customer_row(&mut tx, second, true).await?;
        let (survivor, duplicate) = if first == survivor_id { (a, b) } else { (b, a) };
        let survivor =
            survivor.ok_or_else(|| Error::not_found(format!("customer {survivor_id}")))?;
        let duplicate =
            duplicate.ok_or_else(|| Error::not_found(format!("customer {duplicate_id}")))?;
        for (field, row) in [("survivor_id", &survivor), ("duplicate_id", &duplicate)] {
            if let Some(into) = row.merged_into {
                return Err(Error::precondition(
                    "MERGED",
                    field,
                    format!("customer {} was already merged into {into}", row.id),
                ));
            }
            if row.erased_at.is_some() {
                return Err(Error::precondition(
                    "ERASED",
                    field,
                    format!("customer {} was erased", row.id),
                ));
            }
        }
        store::merge(&mut tx, &survivor, &duplicate, reason, &actor.id).await?;
        self.outbox
            .add(
                &mut tx,
                "identity.customer_merged",
                &survivor_id.to_string(),
                &actor.id,
                Payload::CustomerMerged(CustomerMerged {
                    survivor_id: survivor_id.to_string(),
                    merged_id: duplicate_id.to_string(),
                }),
            )
            .await?;
        let customer = store::load_customer(&mut tx, survivor_id)
            .await?
            .ok_or_else(|| Error::internal("survivor vanished inside its transaction"))?;
        tx.commit().await?;
        self.outbox.wake();
        tracing::info!(%survivor_id, %duplicate_id, "customers merged");
        Ok(customer)
    }

    /// Erases the personal data of the customer `id` names (its survivor, for an alias).
    /// Erasing twice is harmless and emits nothing the second time.
    pub async fn erase(&self, id: Uuid, actor: &Principal) -> Result<Customer> {
        let mut tx = self.pool.begin().await?;
        let canonical = store::canonical_id(&mut tx, id)
            .await?
            .ok_or_else(|| Error::not_found(format!("customer {id}")))?;
        let row = store::customer_row(&mut tx, canonical, true)
            .await?
            .ok_or_else(|| Error::not_found(format!("customer {id}")))?;
        if row.erased_at.is_none() {
            let merged = store::erase(&mut tx, canonical).await?;
            let erased: Vec<String> = std::iter::once(canonical)
                .chain(merged.iter().copied())
                .map(|id| id.to_string())
                .collect();
            // The registrations still waiting in the outbox carried the contact details.
            self.outbox
                .redact(
                    &mut tx,
                    "identity.customer_registered",
                    |event| match &mut event.payload {
                        Some(Payload::CustomerRegistered(r)) if erased.contains(&r.customer_id) => {
                            r.phone.clear();
                            r.email.clear();
                            r.name.clear();
                            true
                        }
                        _ => false,
                    },
                )
                .await?;
            self.outbox
                .add(
                    &mut tx,
                    "identity.customer_erased",
                    &canonical.to_string(),
                    &actor.id,
                    Payload::CustomerErased(CustomerErased {
                        customer_id: canonical.to_string(),
                        merged_ids: merged.iter().map(Uuid::to_string).collect(),
                    }),
                )
                .await?;
        }
        let customer = load(&mut tx, canonical).await?;
        tx.commit().await?;
        self.outbox.wake();
        tracing::info!(customer_id = %canonical, "customer erased");
        Ok(customer)
    }

    pub async fn set_consent(
        &self,
        id: Uuid,
        channel_kind: i16,
        opt_in: bool,
        actor: &Principal,
    ) -> Result<Customer> {
        let mut tx = self.pool.begin().await?;
        let canonical = store::canonical_id(&mut tx, id)
            .await?
            .ok_or_else(|| Error::not_found(format!("customer {id}")))?;
        let row = store::customer_row(&mut tx, canonical, true)
            .await?
            .ok_or_else(|| Error::not_found(format!("customer {id}")))?;
        if row.erased_at.is_some() {
            return Err(Error::precondition(
                "ERASED",
                format!("customer/{canonical}"),
                "the customer's personal data was erased",
            ));
        }
        store::upsert_consent(&mut tx, canonical, channel_kind, opt_in).await?;
        self.outbox
            .add(
                &mut tx,
                "identity.customer_consent_changed",
                &canonical.to_string(),
                &actor.id,
                Payload::CustomerConsentChanged(CustomerConsentChanged {
                    customer_id: canonical.to_string(),
                    channel_kind: i32::from(channel_kind),
                    marketing_opt_in: opt_in,
                }),
            )
            .await?;
        let customer = load(&mut tx, canonical).await?;
        tx.commit().await?;
        self.outbox.wake();
        Ok(customer)
    }

    /// Creates a staff member. Admins may create anyone; a channel manager only store
    /// associates and analysts. Either gives only scope it holds: a caller limited to channels
    /// or stores creates staff within them.
    pub async fn create_staff(
        &self,
        login: &str,
        password: &str,
        display_name: &str,
        roles: &[Role],
        scope: &Scope,
        actor: &Principal,
    ) -> Result<PrincipalRow> {
        if !actor.has_any(&[Role::Admin]) {
            actor.require_any(&[Role::ChannelManager])?;
            if roles
                .iter()
                .any(|r| !matches!(r, Role::StoreAssociate | Role::Analyst))
            {
                return Err(Error::permission_denied(
                    "a channel manager may only create store associates and analysts",
                ));
            }
        }
        if !actor.scope.covers(scope) {
            return Err(Error::permission_denied(
                "the new staff member's scope must lie within the caller's",
            ));
        }
        let hash = {
            let password = password.to_owned();
            tokio::task::spawn_blocking(move || credentials::hash_password(&password))
                .await
                .map_err(|e| Error::Internal(e.into()))??
        };
        let roles: Vec<String> = roles.iter().map(|r| r.as_str().to_owned()).collect();
        let mut conn = self.pool.acquire().await?;
        let row = store::insert_principal(
            &mut conn,
            &store::NewPrincipal {
                id: Uuid::now_v7(),
                kind: PrincipalKind::Staff.as_str(),
                name: login,
                display_name,
                password_hash: Some(&hash),
                api_key_prefix: None,
                api_key_hash: None,
                roles: &roles,
                scope_channels: &scope.channels,
                scope_stores: &scope.stores,
                created_by: &actor.id,
            },
        )
        .await
        .map_err(|e| match Error::from(e) {
            Error::AlreadyExists(_) => Error::already_exists("login", "this login is taken"),
            other => other,
        })?;
        tracing::info!(principal_id = %row.id, "staff created");
        Ok(row)
    }

    pub async fn create_api_key(
        &self,
        kind: PrincipalKind,
        name: &str,
        roles: &[Role],
        scope: &Scope,
        actor: &Principal,
    ) -> Result<(PrincipalRow, String)> {
        if !actor.scope.covers(scope) {
            return Err(Error::permission_denied(
                "the key's scope must lie within the caller's",
            ));
        }
        let key = credentials::new_api_key();
        let roles: Vec<String> = roles.iter().map(|r| r.as_str().to_owned()).collect();
        let mut conn = self.pool.acquire().await?;
        let row = store::insert_principal(
            &mut conn,
            &store::NewPrincipal {
                id: Uuid::now_v7(),
                kind: kind.as_str(),
                name,
                display_name: name,
                password_hash: None,
                api_key_prefix: Some(&key.prefix),
                api_key_hash: Some(&key.hash),
                roles: &roles,
                scope_channels: &scope.channels,
                scope_stores: &scope.stores,
                created_by: &actor.id,
            },
        )
        .await?;
        tracing::info!(principal_id = %row.id, kind = kind.as_str(), "api key created");
        Ok((row, key.key))
    }

    /// Disables a principal: it can no longer sign in, and its live tokens are refused by
    /// every service within about a second (the deny list; if Redis cannot be written now,
    /// the next rebuild from the database adds it, see [`revocations`]).
    pub async fn disable(&self, id: Uuid) -> Result<PrincipalRow> {
        let mut conn = self.pool.acquire().await?;
        let row = store::disable_principal(&mut conn, id)
            .await?
            .ok_or_else(|| Error::not_found(format!("principal {id}")))?;
        drop(conn);
        let disabled_at = row
            .disabled_at
            .ok_or_else(|| Error::internal("a disabled principal without disabled_at"))?;
        if let Err(e) = revocations::publish(&self.redis, id, disabled_at).await {
            tracing::warn!(error = %e, principal_id = %id, "deny list not written; the next rebuild adds it");
        }
        tracing::info!(principal_id = %id, "principal disabled");
        Ok(row)
    }

    /// Checks a password; every failure looks the same to the caller.
    pub async fn authenticate_password(&self, login: &str, password: &str) -> Result<PrincipalRow> {
        let mut conn = self.pool.acquire().await?;
        let row = store::staff_by_login(&mut conn, login).await?;
        drop(conn);
        let hash = row.as_ref().and_then(|r| r.password_hash.clone());
        let password = password.to_owned();
        let ok = tokio::task::spawn_blocking(move || {
            credentials::verify_password(&password, hash.as_deref())
        })
        .await
        .map_err(|e| Error::Internal(e.into()))?;
        match row {
            Some(row) if ok && !row.disabled => Ok(row),
            _ => Err(Error::unauthenticated("invalid login or password")),
        }
    }

    pub async fn authenticate_api_key(&self, key: &str) -> Result<PrincipalRow> {
        let invalid = || Error::unauthenticated("invalid API key");
        let prefix = credentials::api_key_prefix(key).ok_or_else(invalid)?;
        let mut conn = self.pool.acquire().await?;
        let row = store::principal_by_api_prefix(&mut conn, prefix)
            .await?
            .ok_or_else(invalid)?;
        let matches = row
            .api_key_hash
            .as_deref()
            .is_some_and(|h| credentials::api_key_matches(key, h));
        if !matches || row.disabled {
            return Err(invalid());
        }
        Ok(row)
    }

    /// A signed token for a principal row.
    pub fn issue_token(
        &self,
        row: &PrincipalRow,
    ) -> Result<(String, chrono::DateTime<chrono::Utc>)> {
        let principal = principal_of(row)?;
        Ok(self.signer.sign(&principal)?)
    }
}

async fn load(conn: &mut PgConnection, id: Uuid) -> Result<Customer> {
    store::load_customer(conn, id)
        .await?
        .ok_or_else(|| Error::not_found(format!("customer {id}")))
}

/// The runtime's view of a stored principal.
pub fn principal_of(row: &PrincipalRow) -> Result<Principal> {
    let kind = PrincipalKind::parse(&row.kind)
        .ok_or_else(|| Error::internal(format!("unknown principal kind {}", row.kind)))?;
    Ok(Principal {
        id: row.id.to_string(),
        kind,
        name: row.name.clone(),
        roles: row.roles.iter().filter_map(|r| Role::parse(r)).collect(),
        scope: Scope {
            channels: row.scope_channels.clone(),
            stores: row.scope_stores.clone(),
        },
        on_behalf_of: None,
    })
}

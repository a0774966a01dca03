//! The services order-management calls, with its own credential and the trace context on every
//! call, and short-lived caches of what rarely changes (channels, locations).
//!
//! A refusal from another service reaches the caller as this service's error with the same
//! code and details ([`omni_runtime::Error::from_dependency`]), re-rooted at the request field
//! it came from.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use omni_proto::omni::catalog::v1 as catalog;
use omni_proto::omni::catalog::v1::channel_service_client::ChannelServiceClient;
use omni_proto::omni::catalog::v1::quote_service_client::QuoteServiceClient;
use omni_proto::omni::crm::v1 as crm;
use omni_proto::omni::crm::v1::coupon_service_client::CouponServiceClient;
use omni_proto::omni::crm::v1::loyalty_service_client::LoyaltyServiceClient;
use omni_proto::omni::identity::v1 as identity;
use omni_proto::omni::identity::v1::identity_service_client::IdentityServiceClient;
use omni_proto::omni::inventory::v1 as inventory;
use omni_proto::omni::inventory::v1::availability_service_client::AvailabilityServiceClient;
use omni_proto::omni::inventory::v1::location_service_client::LocationServiceClient;
use omni_proto::omni::inventory::v1::reservation_service_client::ReservationServiceClient;
use omni_proto::omni::inventory::v1::stock_service_client::StockServiceClient;
use omni_proto::omni::performance::v1 as performance;
use omni_proto::omni::performance::v1::experiment_service_client::ExperimentServiceClient;
use omni_runtime::client::{self, AuthChannel, ServiceToken, TokenSource};
use omni_runtime::{Error, Result};
use tokio_util::sync::CancellationToken;

use crate::config::{Credential, Upstreams as Urls};

const CHANNEL_TTL: Duration = Duration::from_secs(30);
const LOCATION_TTL: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Calls a generated client method and maps a refusal.
macro_rules! call {
    ($dependency:literal, $client:expr, $method:ident, $request:expr) => {
        $client
            .$method($request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| Error::from_dependency($dependency, &status))
    };
}
pub(crate) use call;

#[derive(Clone, Debug)]
pub struct Upstreams {
    pub identity: IdentityServiceClient<AuthChannel>,
    pub channels: ChannelServiceClient<AuthChannel>,
    pub quotes: QuoteServiceClient<AuthChannel>,
    pub locations: LocationServiceClient<AuthChannel>,
    pub stock: StockServiceClient<AuthChannel>,
    pub availability: AvailabilityServiceClient<AuthChannel>,
    pub reservations: ReservationServiceClient<AuthChannel>,
    pub coupons: CouponServiceClient<AuthChannel>,
    pub loyalty: LoyaltyServiceClient<AuthChannel>,
    pub experiments: ExperimentServiceClient<AuthChannel>,
    cache: Arc<Cache>,
}

#[derive(Debug, Default)]
struct Cache {
    channels: RwLock<HashMap<String, (Instant, catalog::Channel)>>,
    locations: RwLock<Option<(Instant, Arc<Locations>)>>,
}

/// Every active location, by id.
#[derive(Debug, Default)]
pub struct Locations {
    pub by_id: HashMap<String, inventory::Location>,
}

impl Upstreams {
    /// Lazy channels to every service; with an API key, a background task keeps this service's
    /// token fresh until `shutdown`.
    pub fn connect(
        urls: &Urls,
        credential: &Credential,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let connect = |url: &str| client::channel(url, CONNECT_TIMEOUT, urls.call_timeout);
        let token = match credential {
            Credential::Token(token) => TokenSource::Static(Arc::from(token.expose().as_str())),
            Credential::ApiKey(key) => TokenSource::Service(ServiceToken::start(
                connect(&urls.identity)?,
                key.clone(),
                shutdown,
            )),
        };
        let auth = |url: &str| -> anyhow::Result<AuthChannel> {
            Ok(client::authenticated(
                connect(url)?,
                token.clone(),
                urls.call_timeout,
            ))
        };
        let inventory = auth(&urls.inventory)?;
        let catalog = auth(&urls.catalog)?;
        let crm = auth(&urls.crm)?;
        Ok(Self {
            identity: IdentityServiceClient::new(auth(&urls.identity)?),
            channels: ChannelServiceClient::new(catalog.clone()),
            quotes: QuoteServiceClient::new(catalog),
            locations: LocationServiceClient::new(inventory.clone()),
            stock: StockServiceClient::new(inventory.clone()),
            availability: AvailabilityServiceClient::new(inventory.clone()),
            reservations: ReservationServiceClient::new(inventory),
            coupons: CouponServiceClient::new(crm.clone()),
            loyalty: LoyaltyServiceClient::new(crm),
            experiments: ExperimentServiceClient::new(auth(&urls.performance)?),
            cache: Arc::default(),
        })
    }

    /// A catalog channel, cached briefly. Unknown: NOT_FOUND on `field`.
    pub async fn channel(&self, id: &str, field: &str) -> Result<catalog::Channel> {
        if let Ok(cached) = self.cache.channels.read()
            && let Some((at, channel)) = cached.get(id)
            && at.elapsed() < CHANNEL_TTL
        {
            return Ok(channel.clone());
        }
        let response = call!(
            "catalog",
            self.channels.clone(),
            get_channel,
            catalog::GetChannelRequest {
                channel_id: id.to_owned(),
            }
        )
        .map_err(|e| match e {
            Error::NotFound(_) | Error::NotFoundAt { .. } | Error::InvalidArgument(_) => {
                Error::not_found_at(field, format!("channel {id}"))
            }
            other => other,
        })?;
        let channel = response
            .channel
            .ok_or_else(|| Error::internal("catalog returned no channel"))?;
        if let Ok(mut cached) = self.cache.channels.write() {
            cached.insert(id.to_owned(), (Instant::now(), channel.clone()));
        }
        Ok(channel)
    }

    /// Every active location, cached briefly; `refresh` forces a new read (an id was missing).
    pub async fn locations(&self, refresh: bool) -> Result<Arc<Locations>> {
        if !refresh
            && let Ok(cached) = self.cache.locations.read()
            && let Some((at, locations)) = cached.as_ref()
            && at.elapsed() < LOCATION_TTL
        {
            return Ok(locations.clone());
        }
        let mut by_id = HashMap::new();
        let mut page_token = String::new();
        loop {
            let page = call!(
                "inventory",
                self.locations.clone(),
                list_locations,
                inventory::ListLocationsRequest {
                    page_size: 500,
                    page_token: page_token.clone(),
                    ..Default::default()
                }
            )?;
            for location in page.locations {
                by_id.insert(location.id.clone(), location);
            }
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        let locations = Arc::new(Locations { by_id });
        if let Ok(mut cached) = self.cache.locations.write() {
            *cached = Some((Instant::now(), locations.clone()));
        }
        Ok(locations)
    }

    /// The locations as last read, however old (read now only when never read): for what
    /// events say about a location (is it a store), which must not make a change that calls
    /// no other service wait on, or fail with, inventory.
    pub async fn known_locations(&self) -> Result<Arc<Locations>> {
        if let Ok(cached) = self.cache.locations.read()
            && let Some((_, locations)) = cached.as_ref()
        {
            return Ok(locations.clone());
        }
        self.locations(false).await
    }

    /// One location by id (refreshing the cache once when it is not known yet).
    pub async fn location(&self, id: &str, field: &str) -> Result<inventory::Location> {
        for refresh in [false, true] {
            if let Some(location) = self.locations(refresh).await?.by_id.get(id) {
                return Ok(location.clone());
            }
        }
        Err(Error::not_found_at(field, format!("location {id}")))
    }

    /// The customer a key names; a merged-away id resolves to the survivor.
    pub async fn customer(
        &self,
        key: identity::customer_key::Key,
        field: &str,
    ) -> Result<identity::Customer> {
        let response = call!(
            "identity",
            self.identity.clone(),
            get_customer,
            identity::GetCustomerRequest {
                key: Some(identity::CustomerKey { key: Some(key) }),
            }
        )
        .map_err(|e| match e {
            Error::NotFound(what) | Error::NotFoundAt { what, .. } => {
                Error::not_found_at(field, what)
            }
            other => other.within(&format!("{field}.")),
        })?;
        response
            .customer
            .ok_or_else(|| Error::internal("identity returned no customer"))
    }

    /// Finds or creates the customer behind a channel account, phone or member number.
    pub async fn resolve_customer(
        &self,
        request: identity::ResolveCustomerRequest,
        field: &str,
    ) -> Result<identity::Customer> {
        let response = call!("identity", self.identity.clone(), resolve_customer, request)
            .map_err(|e| match e {
                Error::NotFound(what) | Error::NotFoundAt { what, .. } => {
                    Error::not_found_at(field, what)
                }
                other => other.within(&format!("{field}.")),
            })?;
        response
            .customer
            .ok_or_else(|| Error::internal("identity returned no customer"))
    }

    /// The customer's crm tier; empty when crm has no account for them yet.
    pub async fn tier(&self, customer_id: &str) -> Result<String> {
        match call!(
            "crm",
            self.loyalty.clone(),
            get_loyalty_account,
            crm::GetLoyaltyAccountRequest {
                customer_id: customer_id.to_owned(),
            }
        ) {
            Ok(response) => Ok(response.account.map(|a| a.tier).unwrap_or_default()),
            Err(Error::NotFound(_) | Error::NotFoundAt { .. }) => Ok(String::new()),
            Err(e) => Err(e),
        }
    }

    /// The variant `subject` falls in, when the experiment is running.
    pub async fn assignment(&self, experiment_id: &str, subject: &str) -> Result<Option<String>> {
        let response = call!(
            "performance",
            self.experiments.clone(),
            get_assignment,
            performance::GetAssignmentRequest {
                experiment_id: experiment_id.to_owned(),
                subject_id: subject.to_owned(),
            }
        )?;
        Ok(response.running.then_some(response.variant))
    }
}

//! What every command runs with: the endpoints, the token, gRPC channels (one per service,
//! reused), and the look-ups that let people type codes where the contracts want ids (a SKU
//! code, a location code, a channel name, a customer's phone).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use omni_proto::omni::catalog::v1 as cat;
use omni_proto::omni::catalog::v1::channel_service_client::ChannelServiceClient;
use omni_proto::omni::catalog::v1::product_service_client::ProductServiceClient;
use omni_proto::omni::identity::v1 as id;
use omni_proto::omni::identity::v1::identity_service_client::IdentityServiceClient;
use omni_proto::omni::inventory::v1 as inv;
use omni_proto::omni::inventory::v1::location_service_client::LocationServiceClient;
use omni_runtime::client::{self, AuthChannel, TokenSource};
use tonic::transport::Channel;

use crate::config::{Endpoints, Service};
use crate::render::{Answer as _, CliError, CliResult, required};

pub struct Ctx {
    pub endpoints: Endpoints,
    token: Result<Arc<str>, String>,
    channels: Mutex<HashMap<Service, Channel>>,
}

impl Ctx {
    /// `token` is the token to call with, or why there is none (shown when one is needed).
    pub fn new(endpoints: Endpoints, token: Result<String, String>) -> Self {
        Self {
            endpoints,
            token: token.map(Arc::from),
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// A channel to `service`, without a token (health, identity's AuthService).
    pub fn plain(&self, service: Service) -> CliResult<Channel> {
        let mut channels = self
            .channels
            .lock()
            .map_err(|_| CliError::Other(anyhow::anyhow!("channel cache poisoned")))?;
        if let Some(channel) = channels.get(&service) {
            return Ok(channel.clone());
        }
        let url = self.endpoints.url(service);
        let channel = client::channel(url, Duration::from_secs(5), Duration::from_secs(60))
            .map_err(|e| CliError::Usage(format!("{} endpoint {url:?}: {e}", service.name())))?;
        channels.insert(service, channel.clone());
        Ok(channel)
    }

    /// A channel to `service` whose calls carry the token.
    pub fn authed(&self, service: Service) -> CliResult<AuthChannel> {
        let token = self.token.clone().map_err(CliError::NotLoggedIn)?;
        Ok(client::authenticated(
            self.plain(service)?,
            TokenSource::Static(token),
            Duration::from_secs(60),
        ))
    }

    /// A SKU id from an id, a SKU code or a barcode.
    pub async fn sku_id(&self, reference: &str) -> CliResult<String> {
        if is_uuid(reference) {
            return Ok(reference.to_owned());
        }
        Ok(self.sku(reference).await?.id)
    }

    /// The SKU behind an id, a SKU code or a barcode.
    pub async fn sku(&self, reference: &str) -> CliResult<cat::Sku> {
        let key = if is_uuid(reference) {
            cat::get_sku_request::Key::SkuId(reference.to_owned())
        } else if reference.len() >= 12 && reference.chars().all(|c| c.is_ascii_digit()) {
            cat::get_sku_request::Key::Barcode(reference.to_owned())
        } else {
            cat::get_sku_request::Key::SkuCode(reference.to_owned())
        };
        let response = ProductServiceClient::new(self.authed(Service::Catalog)?)
            .get_sku(cat::GetSkuRequest {
                key: Some(key),
                channel_id: String::new(),
            })
            .await
            .answer("catalog")?;
        required(response.sku, "SKU")
    }

    /// A location id from an id or a location code (e.g. `LYS-01`).
    pub async fn location_id(&self, reference: &str) -> CliResult<String> {
        if is_uuid(reference) {
            return Ok(reference.to_owned());
        }
        let locations = self.locations().await?;
        locations
            .iter()
            .find(|l| l.code.eq_ignore_ascii_case(reference))
            .map(|l| l.id.clone())
            .ok_or_else(|| CliError::Usage(format!("no location with code {reference:?}")))
    }

    /// Every location, active or not.
    pub async fn locations(&self) -> CliResult<Vec<inv::Location>> {
        let mut client = LocationServiceClient::new(self.authed(Service::Inventory)?);
        let mut all = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = client
                .list_locations(inv::ListLocationsRequest {
                    include_inactive: true,
                    page_size: 500,
                    page_token: page_token.clone(),
                    ..Default::default()
                })
                .await
                .answer("inventory")?;
            all.extend(page.locations);
            if page.next_page_token.is_empty() {
                return Ok(all);
            }
            page_token = page.next_page_token;
        }
    }

    /// A channel id from an id or a channel name (case-insensitive).
    pub async fn channel_id(&self, reference: &str) -> CliResult<String> {
        if is_uuid(reference) {
            return Ok(reference.to_owned());
        }
        let mut client = ChannelServiceClient::new(self.authed(Service::Catalog)?);
        let mut page_token = String::new();
        loop {
            let page = client
                .list_channels(cat::ListChannelsRequest {
                    include_inactive: true,
                    page_size: 500,
                    page_token: page_token.clone(),
                    ..Default::default()
                })
                .await
                .answer("catalog")?;
            if let Some(c) = page
                .channels
                .iter()
                .find(|c| c.name.eq_ignore_ascii_case(reference))
            {
                return Ok(c.id.clone());
            }
            if page.next_page_token.is_empty() {
                return Err(CliError::Usage(format!("no channel named {reference:?}")));
            }
            page_token = page.next_page_token;
        }
    }

    /// A customer id from an id, a member number or a phone number.
    pub async fn customer_id(&self, reference: &str) -> CliResult<String> {
        if is_uuid(reference) {
            return Ok(reference.to_owned());
        }
        let response = IdentityServiceClient::new(self.authed(Service::Identity)?)
            .get_customer(id::GetCustomerRequest {
                key: Some(id::CustomerKey {
                    key: Some(customer_key(reference)),
                }),
            })
            .await
            .answer("identity")?;
        Ok(required(response.customer, "customer")?.id)
    }
}

/// How a typed customer reference is looked up: ten digits are a member number, anything else
/// that is not a UUID a phone number.
pub fn customer_key(reference: &str) -> id::customer_key::Key {
    if is_uuid(reference) {
        id::customer_key::Key::Id(reference.to_owned())
    } else if reference.len() == 10 && reference.chars().all(|c| c.is_ascii_digit()) {
        id::customer_key::Key::MemberNumber(reference.to_owned())
    } else {
        id::customer_key::Key::Phone(reference.to_owned())
    }
}

pub fn is_uuid(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok()
}

/// `SKU:QTY` (or `SKU` for one unit).
pub fn parse_item(item: &str) -> CliResult<(String, i64)> {
    let (sku, quantity) = match item.rsplit_once(':') {
        Some((sku, q)) => (
            sku,
            q.parse::<i64>()
                .map_err(|_| CliError::Usage(format!("{item:?}: quantity must be a number")))?,
        ),
        None => (item, 1),
    };
    if sku.is_empty() {
        return Err(CliError::Usage(format!("{item:?}: expected SKU:QUANTITY")));
    }
    Ok((sku.to_owned(), quantity))
}

/// A fresh idempotency key.
pub fn key() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// A decimal amount (`12.50`) in minor units.
pub fn parse_amount(text: &str) -> CliResult<i64> {
    let bad = || CliError::Usage(format!("{text:?}: expected an amount like 12.50"));
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if fraction.len() > 2 {
        return Err(bad());
    }
    let whole: i64 = whole.parse().map_err(|_| bad())?;
    let fraction: i64 = if fraction.is_empty() {
        0
    } else {
        format!("{fraction:0<2}").parse().map_err(|_| bad())?
    };
    Ok(whole * 100 + if whole < 0 { -fraction } else { fraction })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_and_amounts_parse() {
        assert_eq!(parse_item("TEE-M:3").ok(), Some(("TEE-M".into(), 3)));
        assert_eq!(parse_item("MUG").ok(), Some(("MUG".into(), 1)));
        assert!(parse_item("MUG:x").is_err());
        assert_eq!(parse_amount("12.5").ok(), Some(1250));
        assert_eq!(parse_amount("7").ok(), Some(700));
        assert!(parse_amount("1.234").is_err());
    }

    #[test]
    fn customer_references_pick_their_key() {
        assert!(matches!(
            customer_key("4929000016"),
            id::customer_key::Key::MemberNumber(_)
        ));
        assert!(matches!(
            customer_key("+33 6 12 34 56 78"),
            id::customer_key::Key::Phone(_)
        ));
    }
}

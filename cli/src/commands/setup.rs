//! Building a retailer through the public APIs, shared by `omni demo` and `omni seed`:
//! locations, channels (a store channel tied to its store), products with valid barcodes,
//! listings on every channel, stock receipts and customers.

use omni_proto::common::{Address, ChannelKind, GeoPoint, Money};
use omni_proto::omni::catalog::v1 as cat;
use omni_proto::omni::catalog::v1::channel_service_client::ChannelServiceClient;
use omni_proto::omni::catalog::v1::pricing_service_client::PricingServiceClient;
use omni_proto::omni::catalog::v1::product_service_client::ProductServiceClient;
use omni_proto::omni::identity::v1 as id;
use omni_proto::omni::identity::v1::identity_service_client::IdentityServiceClient;
use omni_proto::omni::inventory::v1 as inv;
use omni_proto::omni::inventory::v1::location_service_client::LocationServiceClient;
use omni_proto::omni::inventory::v1::stock_service_client::StockServiceClient;

use crate::config::Service;
use crate::ctx::{Ctx, key};
use crate::render::{Answer as _, CliResult, required};

pub fn eur(minor_units: i64) -> Option<Money> {
    Some(Money {
        minor_units,
        currency: "EUR".into(),
    })
}

/// A short random tag that keeps codes and names of one run apart from earlier runs'.
pub fn run_tag() -> String {
    use rand::Rng as _;
    format!("{:05X}", rand::thread_rng().gen_range(0..0x10_0000))
}

pub fn address(line: &str, city: &str, postal_code: &str, point: (f64, f64)) -> Address {
    Address {
        recipient_name: String::new(),
        lines: vec![line.to_owned()],
        city: city.to_owned(),
        postal_code: postal_code.to_owned(),
        country_code: "FR".to_owned(),
        location: Some(GeoPoint {
            latitude: point.0,
            longitude: point.1,
        }),
        ..Default::default()
    }
}

/// What a location is for.
#[derive(Debug, Clone, Copy)]
pub struct LocationSpec<'a> {
    pub code: &'a str,
    pub name: &'a str,
    pub kind: inv::LocationKind,
    pub city: &'a str,
    pub point: (f64, f64),
    pub pickup: bool,
    pub ships: bool,
    /// IANA name, e.g. "Europe/Paris": the store's day and pickup cut-off follow it.
    pub time_zone: &'a str,
}

pub async fn create_location(ctx: &Ctx, spec: LocationSpec<'_>) -> CliResult<inv::Location> {
    let response = LocationServiceClient::new(ctx.authed(Service::Inventory)?)
        .create_location(inv::CreateLocationRequest {
            idempotency_key: key(),
            location: Some(inv::Location {
                code: spec.code.to_owned(),
                name: spec.name.to_owned(),
                kind: spec.kind as i32,
                address: Some(address("1 place du Marché", spec.city, "69000", spec.point)),
                // A store's own channel is created next and tied to it then.
                channel_id: if spec.kind == inv::LocationKind::Store {
                    key()
                } else {
                    String::new()
                },
                pickup_enabled: spec.pickup,
                ships_orders: spec.ships,
                time_zone: spec.time_zone.to_owned(),
                ..Default::default()
            }),
        })
        .await
        .answer("inventory")?;
    required(response.location, "location")
}

pub async fn create_channel(
    ctx: &Ctx,
    kind: ChannelKind,
    name: &str,
    store: Option<&inv::Location>,
) -> CliResult<cat::Channel> {
    let channel = required(
        ChannelServiceClient::new(ctx.authed(Service::Catalog)?)
            .create_channel(cat::CreateChannelRequest {
                idempotency_key: key(),
                channel: Some(cat::Channel {
                    kind: kind as i32,
                    name: name.to_owned(),
                    store_location_id: store.map(|s| s.id.clone()).unwrap_or_default(),
                    currency: "EUR".into(),
                    active: true,
                    ..Default::default()
                }),
            })
            .await
            .answer("catalog")?
            .channel,
        "channel",
    )?;
    if let Some(store) = store {
        let mut updated = store.clone();
        updated.channel_id = channel.id.clone();
        LocationServiceClient::new(ctx.authed(Service::Inventory)?)
            .update_location(inv::UpdateLocationRequest {
                location: Some(updated),
            })
            .await
            .answer("inventory")?;
    }
    Ok(channel)
}

pub async fn create_category(ctx: &Ctx, name: &str) -> CliResult<cat::Category> {
    required(
        ProductServiceClient::new(ctx.authed(Service::Catalog)?)
            .create_category(cat::CreateCategoryRequest {
                idempotency_key: key(),
                parent_id: String::new(),
                name: name.to_owned(),
            })
            .await
            .answer("catalog")?
            .category,
        "category",
    )
}

/// A SKU to create: code, price and cost in cents, variant attributes.
#[derive(Debug, Clone)]
pub struct SkuSpec {
    pub code: String,
    pub price: i64,
    pub cost: i64,
    pub variant: Vec<(String, String)>,
}

/// Creates a product with its SKUs (barcodes generated with a valid check digit).
pub async fn create_product(
    ctx: &Ctx,
    category: &str,
    name: &str,
    brand: &str,
    skus: &[SkuSpec],
) -> CliResult<cat::Product> {
    let skus = skus
        .iter()
        .map(|s| cat::Sku {
            sku_code: s.code.clone(),
            barcode: barcode(),
            list_price: eur(s.price),
            unit_cost: eur(s.cost),
            status: cat::SkuStatus::Active as i32,
            variant_attributes: s.variant.iter().cloned().collect(),
            ..Default::default()
        })
        .collect();
    required(
        ProductServiceClient::new(ctx.authed(Service::Catalog)?)
            .create_product(cat::CreateProductRequest {
                idempotency_key: key(),
                product: Some(cat::Product {
                    name: name.to_owned(),
                    brand: brand.to_owned(),
                    category_id: category.to_owned(),
                    status: cat::ProductStatus::Active as i32,
                    ..Default::default()
                }),
                skus,
            })
            .await
            .answer("catalog")?
            .product,
        "product",
    )
}

/// A random EAN-13 in the in-store range (prefix 2), with its check digit.
pub fn barcode() -> String {
    use rand::Rng as _;
    let mut rng = rand::thread_rng();
    let mut digits: Vec<u32> = vec![2];
    digits.extend((0..11).map(|_| rng.gen_range(0..10)));
    let sum: u32 = digits
        .iter()
        .enumerate()
        .map(|(i, d)| if i % 2 == 0 { *d } else { d * 3 })
        .sum();
    digits.push((10 - sum % 10) % 10);
    digits.iter().map(|d| char::from(b'0' + *d as u8)).collect()
}

pub async fn list(ctx: &Ctx, sku_id: &str, channel_id: &str, price: i64) -> CliResult<()> {
    PricingServiceClient::new(ctx.authed(Service::Catalog)?)
        .set_listing(cat::SetListingRequest {
            listing: Some(cat::Listing {
                sku_id: sku_id.to_owned(),
                channel_id: channel_id.to_owned(),
                price: eur(price),
                listed: true,
                ..Default::default()
            }),
        })
        .await
        .answer("catalog")?;
    Ok(())
}

/// The most lines inventory takes in one movement (`RecordMovementRequest.lines`).
const MOVEMENT_LINES: usize = 100;

/// Receives `lines` at `location`, one delivery per hundred lines.
pub async fn receive(ctx: &Ctx, location: &str, lines: &[(String, i64)]) -> CliResult<()> {
    let mut stock = StockServiceClient::new(ctx.authed(Service::Inventory)?);
    for delivery in lines.chunks(MOVEMENT_LINES) {
        stock
            .record_movement(inv::RecordMovementRequest {
                idempotency_key: key(),
                location_id: location.to_owned(),
                kind: inv::MovementKind::Receipt as i32,
                lines: delivery
                    .iter()
                    .map(|(sku, quantity)| inv::MovementLine {
                        sku_id: sku.clone(),
                        quantity: *quantity,
                    })
                    .collect(),
                reason: "supplier delivery".into(),
                reference: String::new(),
            })
            .await
            .answer("inventory")?;
    }
    Ok(())
}

pub async fn resolve(
    ctx: &Ctx,
    phone: &str,
    name: &str,
    account: Option<(ChannelKind, &str)>,
) -> CliResult<id::ResolveCustomerResponse> {
    IdentityServiceClient::new(ctx.authed(Service::Identity)?)
        .resolve_customer(id::ResolveCustomerRequest {
            channel_account: account.map(|(kind, external)| id::ChannelAccountRef {
                channel_kind: kind as i32,
                external_id: external.to_owned(),
            }),
            phone: phone.to_owned(),
            member_number: String::new(),
            name: name.to_owned(),
            email: String::new(),
        })
        .await
        .answer("identity")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn barcodes_carry_a_valid_check_digit() {
        for _ in 0..100 {
            let code = barcode();
            assert_eq!(code.len(), 13);
            let digits: Vec<u32> = code.chars().filter_map(|c| c.to_digit(10)).collect();
            let sum: u32 = digits
                .iter()
                .enumerate()
                .map(|(i, d)| if i % 2 == 0 { *d } else { d * 3 })
                .sum();
            assert_eq!(sum % 10, 0, "{code}");
        }
    }
}

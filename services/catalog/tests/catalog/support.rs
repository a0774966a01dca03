//! Starting the catalog for a test, its clients, and a small retailer's catalog to work on.

use omni_proto::common::{ChannelKind, Money};
use omni_proto::omni::catalog::v1 as pb;
use omni_proto::omni::catalog::v1::channel_service_client::ChannelServiceClient;
use omni_proto::omni::catalog::v1::pricing_service_client::PricingServiceClient;
use omni_proto::omni::catalog::v1::product_service_client::ProductServiceClient;
use omni_proto::omni::catalog::v1::promotion_service_client::PromotionServiceClient;
use omni_proto::omni::catalog::v1::quote_service_client::QuoteServiceClient;
use omni_runtime::auth::Role;
use omni_runtime::client::AuthChannel;
use omni_testkit::Service;
use sqlx::PgPool;
use tonic_types::StatusExt as _;
use uuid::Uuid;

pub struct Catalog {
    pub svc: Service,
    pub db: PgPool,
}

pub async fn start() -> Catalog {
    let common = omni_testkit::common_config("catalog")
        .await
        .expect("test config");
    let config = catalog::Config {
        common: common.clone(),
    };
    let svc = Service::start("catalog", common, move |listener, shutdown| {
        catalog::run(config, listener, shutdown)
    })
    .await
    .expect("catalog starts");
    let db = svc.db().await.expect("db");
    Catalog { svc, db }
}

impl Catalog {
    pub fn channels(&self) -> ChannelServiceClient<AuthChannel> {
        ChannelServiceClient::new(self.svc.admin())
    }

    pub fn products(&self) -> ProductServiceClient<AuthChannel> {
        ProductServiceClient::new(self.svc.admin())
    }

    pub fn pricing(&self) -> PricingServiceClient<AuthChannel> {
        PricingServiceClient::new(self.svc.admin())
    }

    pub fn promotions(&self) -> PromotionServiceClient<AuthChannel> {
        PromotionServiceClient::new(self.svc.admin())
    }

    pub fn quotes(&self) -> QuoteServiceClient<AuthChannel> {
        QuoteServiceClient::new(self.svc.admin())
    }

    pub fn products_as(&self, roles: &[Role]) -> ProductServiceClient<AuthChannel> {
        ProductServiceClient::new(self.svc.as_roles(roles))
    }

    pub fn pricing_as(&self, roles: &[Role]) -> PricingServiceClient<AuthChannel> {
        PricingServiceClient::new(self.svc.as_roles(roles))
    }

    pub async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.db)
            .await
            .expect("count")
    }

    pub async fn events(&self, event_type: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE event_type = $1")
            .bind(event_type)
            .fetch_one(&self.db)
            .await
            .expect("count events")
    }
}

pub fn eur(minor_units: i64) -> Option<Money> {
    Some(Money {
        minor_units,
        currency: "EUR".into(),
    })
}

pub fn minor(m: &Option<Money>) -> i64 {
    m.as_ref().expect("an amount").minor_units
}

/// A valid EAN-13 for `n`: twelve digits of body (prefix 20, in-store numbers) and the
/// GS1 check digit.
pub fn ean(n: u64) -> String {
    with_check(&format!("20{n:010}"))
}

/// A valid UPC-A (12 digits) for `n`; as EAN-13 it is the same code with a leading zero.
pub fn upc(n: u64) -> String {
    with_check(&format!("0{n:011}"))[1..].to_owned()
}

fn with_check(body: &str) -> String {
    let sum: u32 = body
        .bytes()
        .enumerate()
        .map(|(i, d)| u32::from(d - b'0') * if i % 2 == 0 { 1 } else { 3 })
        .sum();
    format!("{body}{}", (10 - sum % 10) % 10)
}

/// The same body with a wrong check digit.
pub fn bad_ean(n: u64) -> String {
    let good = ean(n);
    let check = good.as_bytes()[12] - b'0';
    format!("{}{}", &good[..12], (check + 1) % 10)
}

/// The field names of a status's BadRequest details.
pub fn fields(status: &tonic::Status) -> Vec<String> {
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|f| f.field.clone()).collect())
        .unwrap_or_default()
}

/// The (type, subject) pairs of a status's PreconditionFailure details.
pub fn preconditions(status: &tonic::Status) -> Vec<(String, String)> {
    status
        .get_error_details()
        .precondition_failure()
        .map(|p| {
            p.violations
                .iter()
                .map(|v| (v.r#type.clone(), v.subject.clone()))
                .collect()
        })
        .unwrap_or_default()
}

pub async fn channel(c: &Catalog, kind: ChannelKind, name: &str, store: &str) -> pb::Channel {
    c.channels()
        .create_channel(pb::CreateChannelRequest {
            idempotency_key: String::new(),
            channel: Some(pb::Channel {
                kind: kind as i32,
                name: name.into(),
                store_location_id: store.into(),
                currency: "EUR".into(),
                active: true,
                ..Default::default()
            }),
        })
        .await
        .expect("create channel")
        .into_inner()
        .channel
        .expect("channel")
}

pub async fn category(c: &Catalog, parent: &str, name: &str) -> pb::Category {
    c.products()
        .create_category(pb::CreateCategoryRequest {
            idempotency_key: String::new(),
            parent_id: parent.into(),
            name: name.into(),
        })
        .await
        .expect("create category")
        .into_inner()
        .category
        .expect("category")
}

pub fn sku_spec(code: &str, barcode: &str, list: i64, cost: i64) -> pb::Sku {
    pb::Sku {
        sku_code: code.into(),
        barcode: barcode.into(),
        list_price: eur(list),
        unit_cost: eur(cost),
        status: pb::SkuStatus::Active as i32,
        ..Default::default()
    }
}

pub fn product_spec(name: &str, brand: &str, category: &str) -> pb::Product {
    pb::Product {
        name: name.into(),
        brand: brand.into(),
        category_id: category.into(),
        description: format!("{name} by {brand}"),
        media_urls: vec![format!(
            "https://cdn.example.com/{}.jpg",
            name.replace(' ', "-")
        )],
        attributes: [("material".to_owned(), "cotton".to_owned())].into(),
        status: pb::ProductStatus::Active as i32,
        ..Default::default()
    }
}

pub async fn product(c: &Catalog, product: pb::Product, skus: Vec<pb::Sku>) -> pb::Product {
    c.products()
        .create_product(pb::CreateProductRequest {
            idempotency_key: String::new(),
            product: Some(product),
            skus,
        })
        .await
        .expect("create product")
        .into_inner()
        .product
        .expect("product")
}

/// Lists a SKU on a channel (new listing) at `price`.
pub async fn list(c: &Catalog, sku: &str, channel: &str, price: i64) -> pb::Listing {
    c.pricing()
        .set_listing(pb::SetListingRequest {
            listing: Some(pb::Listing {
                sku_id: sku.into(),
                channel_id: channel.into(),
                price: eur(price),
                listed: true,
                version: 0,
                ..Default::default()
            }),
        })
        .await
        .expect("set listing")
        .into_inner()
        .listing
        .expect("listing")
}

/// A small retailer: an e-shop, a livestream and a social shop, two stores; a category tree
/// (Apparel > Shirts, Apparel > Shoes; Home); five products of four SKUs each, every SKU listed
/// on the e-shop at its list price.
pub struct Retailer {
    pub eshop: pb::Channel,
    pub livestream: pb::Channel,
    pub social: pb::Channel,
    pub store_lyon: pb::Channel,
    pub store_paris: pb::Channel,
    pub apparel: pb::Category,
    pub shirts: pb::Category,
    pub shoes: pb::Category,
    pub home: pb::Category,
    pub products: Vec<pb::Product>,
}

impl Retailer {
    pub fn skus(&self) -> Vec<pb::Sku> {
        self.products.iter().flat_map(|p| p.skus.clone()).collect()
    }

    pub fn sku(&self, code: &str) -> pb::Sku {
        self.skus()
            .into_iter()
            .find(|s| s.sku_code == code)
            .expect("a seeded SKU")
    }
}

pub async fn retailer(c: &Catalog) -> Retailer {
    let eshop = channel(c, ChannelKind::EShop, "e-shop FR", "").await;
    let livestream = channel(c, ChannelKind::Livestream, "Livestream weekly", "").await;
    let social = channel(c, ChannelKind::Social, "Social shop", "").await;
    let store_lyon = channel(
        c,
        ChannelKind::Store,
        "Store Lyon",
        &Uuid::now_v7().to_string(),
    )
    .await;
    let store_paris = channel(
        c,
        ChannelKind::Store,
        "Store Paris",
        &Uuid::now_v7().to_string(),
    )
    .await;
    let apparel = category(c, "", "Apparel").await;
    let shirts = category(c, &apparel.id, "Shirts").await;
    let shoes = category(c, &apparel.id, "Shoes").await;
    let home = category(c, "", "Home").await;
    let specs = [
        ("Oxford shirt", "Maison", &shirts, "SHIRT-OX", 2990, 1200),
        ("Linen shirt", "Maison", &shirts, "SHIRT-LI", 3990, 1500),
        ("Trail runner", "Pace", &shoes, "SHOE-TR", 8990, 4000),
        ("City sneaker", "Pace", &shoes, "SHOE-CS", 6990, 3000),
        ("Cotton throw", "Nid", &home, "HOME-TH", 4990, 2000),
    ];
    let mut products = Vec::new();
    let mut n = 1;
    for (name, brand, category, prefix, list_price, cost) in specs {
        let skus = ["S", "M", "L", "XL"]
            .iter()
            .map(|size| {
                n += 1;
                let mut s = sku_spec(&format!("{prefix}-{size}"), &ean(n), list_price, cost);
                s.variant_attributes = [("size".to_owned(), (*size).to_owned())].into();
                s
            })
            .collect();
        let p = product(c, product_spec(name, brand, &category.id), skus).await;
        for s in &p.skus {
            list(c, &s.id, &eshop.id, minor(&s.list_price)).await;
        }
        products.push(p);
    }
    Retailer {
        eshop,
        livestream,
        social,
        store_lyon,
        store_paris,
        apparel,
        shirts,
        shoes,
        home,
        products,
    }
}

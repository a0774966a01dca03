//! A small retailer around Lyon on the real suite, for the tests of every service: a warehouse
//! outside the city, two stores that do pickup and ship, one that does neither; an e-shop, a
//! livestream and a store channel; a T-shirt in three sizes and a mug, listed everywhere.

use std::time::Duration;

use crate::{OrderClocks, Shop};
use omni_proto::common::{Address, ChannelKind, GeoPoint, Money};
use omni_proto::omni::catalog::v1 as cat;
use omni_proto::omni::catalog::v1::channel_service_client::ChannelServiceClient;
use omni_proto::omni::catalog::v1::pricing_service_client::PricingServiceClient;
use omni_proto::omni::catalog::v1::product_service_client::ProductServiceClient;
use omni_proto::omni::crm::v1 as crm;
use omni_proto::omni::crm::v1::coupon_service_client::CouponServiceClient;
use omni_proto::omni::crm::v1::customer_view_service_client::CustomerViewServiceClient;
use omni_proto::omni::identity::v1 as id;
use omni_proto::omni::identity::v1::identity_service_client::IdentityServiceClient;
use omni_proto::omni::inventory::v1 as inv;
use omni_proto::omni::inventory::v1::availability_service_client::AvailabilityServiceClient;
use omni_proto::omni::inventory::v1::location_service_client::LocationServiceClient;
use omni_proto::omni::inventory::v1::reservation_service_client::ReservationServiceClient;
use omni_proto::omni::inventory::v1::stock_service_client::StockServiceClient;
use omni_proto::omni::orders::v1 as pb;
use omni_proto::omni::orders::v1::fulfilment_service_client::FulfilmentServiceClient;
use omni_proto::omni::orders::v1::order_service_client::OrderServiceClient;
use omni_proto::omni::orders::v1::return_service_client::ReturnServiceClient;
use omni_proto::omni::orders::v1::sourcing_service_client::SourcingServiceClient;
use omni_runtime::auth::{Role, Scope};
use omni_runtime::client::AuthChannel;
use tonic_types::StatusExt as _;
use uuid::Uuid;

pub const TEE_PRICE: i64 = 2000;
pub const MUG_PRICE: i64 = 1000;

pub struct World {
    pub shop: Shop,
    pub eshop: cat::Channel,
    pub livestream: cat::Channel,
    pub store_channel: cat::Channel,
    /// Warehouse outside Lyon (Saint-Quentin-Fallavier), ships orders.
    pub warehouse: String,
    /// Lyon centre: pickup and ship-from-store.
    pub lyon: String,
    /// Villeurbanne, 3.5 km east: pickup and ship-from-store.
    pub villeurbanne: String,
    /// Paris: neither pickup nor shipping.
    pub paris: String,
    pub tee_s: String,
    pub tee_m: String,
    pub tee_l: String,
    pub mug: String,
}

pub fn eur(minor_units: i64) -> Option<Money> {
    Some(Money {
        minor_units,
        currency: "EUR".into(),
    })
}

pub fn key() -> String {
    Uuid::now_v7().to_string()
}

/// An address next to the Villeurbanne store.
pub fn home_villeurbanne() -> Address {
    address("12 cours Emile Zola", "Villeurbanne", 45.7710, 4.8830)
}

/// An address in the south of Lyon, nearer the warehouse than Villeurbanne.
pub fn home_lyon_south() -> Address {
    address("3 rue de Gerland", "Lyon", 45.7300, 4.8330)
}

pub fn address(line: &str, city: &str, latitude: f64, longitude: f64) -> Address {
    Address {
        recipient_name: "Mei Lin".into(),
        lines: vec![line.into()],
        city: city.into(),
        postal_code: "69000".into(),
        country_code: "FR".into(),
        location: Some(GeoPoint {
            latitude,
            longitude,
        }),
        ..Default::default()
    }
}

pub fn ship_to(a: Address) -> Option<pb::Delivery> {
    Some(pb::Delivery {
        kind: pb::DeliveryKind::Ship as i32,
        address: Some(a),
        store_id: String::new(),
    })
}

pub fn at_store(kind: pb::DeliveryKind, store: &str) -> Option<pb::Delivery> {
    Some(pb::Delivery {
        kind: kind as i32,
        address: None,
        store_id: store.into(),
    })
}

pub fn line(sku: &str, quantity: i32) -> pb::OrderLineInput {
    pb::OrderLineInput {
        sku_id: sku.into(),
        quantity,
    }
}

pub fn by_phone(phone: &str) -> Option<pb::CustomerRef> {
    Some(pb::CustomerRef {
        phone: phone.into(),
        name: "Mei Lin".into(),
        ..Default::default()
    })
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

impl World {
    pub async fn start() -> World {
        Self::start_with(OrderClocks::default()).await
    }

    pub async fn start_with(clocks: OrderClocks) -> World {
        Self::around(Shop::start_with(clocks).await.expect("the suite starts")).await
    }

    /// The suite on the Redis at `redis_url` (e.g. a private one a test may flush).
    pub async fn start_on(redis_url: &str) -> World {
        Self::around(
            Shop::start_on(redis_url, OrderClocks::default(), 10)
                .await
                .expect("the suite starts"),
        )
        .await
    }

    async fn around(shop: Shop) -> World {
        let mut locations = LocationServiceClient::new(shop.inventory.admin());
        let mut create = async |code: &str,
                                kind: inv::LocationKind,
                                point: (f64, f64),
                                pickup: bool,
                                ships: bool| {
            locations
                .create_location(inv::CreateLocationRequest {
                    idempotency_key: key(),
                    location: Some(inv::Location {
                        code: code.into(),
                        name: code.into(),
                        kind: kind as i32,
                        address: Some(address("1 rue du Test", "Lyon", point.0, point.1)),
                        channel_id: if kind == inv::LocationKind::Store {
                            Uuid::now_v7().to_string()
                        } else {
                            String::new()
                        },
                        pickup_enabled: pickup,
                        ships_orders: ships,
                        time_zone: "Europe/Paris".into(),
                        ..Default::default()
                    }),
                })
                .await
                .expect("create location")
                .into_inner()
                .location
                .expect("location")
                .id
        };
        let warehouse = create(
            "WH-01",
            inv::LocationKind::Warehouse,
            (45.6400, 5.1100),
            false,
            true,
        )
        .await;
        let lyon = create(
            "LYS-01",
            inv::LocationKind::Store,
            (45.7640, 4.8357),
            true,
            true,
        )
        .await;
        let villeurbanne = create(
            "VIL-01",
            inv::LocationKind::Store,
            (45.7700, 4.8800),
            true,
            true,
        )
        .await;
        let paris = create(
            "PAR-01",
            inv::LocationKind::Store,
            (48.8566, 2.3522),
            false,
            false,
        )
        .await;

        let mut channels = ChannelServiceClient::new(shop.catalog.admin());
        let mut channel = async |kind: ChannelKind, name: &str, store: &str| {
            channels
                .create_channel(cat::CreateChannelRequest {
                    idempotency_key: String::new(),
                    channel: Some(cat::Channel {
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
        };
        let eshop = channel(ChannelKind::EShop, "e-shop FR", "").await;
        let livestream = channel(ChannelKind::Livestream, "Livestream", "").await;
        let store_channel = channel(ChannelKind::Store, "Store Lyon", &lyon).await;

        let mut products = ProductServiceClient::new(shop.catalog.admin());
        let category = products
            .create_category(cat::CreateCategoryRequest {
                idempotency_key: String::new(),
                parent_id: String::new(),
                name: "Apparel".into(),
            })
            .await
            .expect("category")
            .into_inner()
            .category
            .expect("category");
        let sku = |code: &str, barcode: &str, price: i64, cost: i64| cat::Sku {
            sku_code: code.into(),
            barcode: barcode.into(),
            list_price: eur(price),
            unit_cost: eur(cost),
            status: cat::SkuStatus::Active as i32,
            ..Default::default()
        };
        let mut product = async |name: &str, skus: Vec<cat::Sku>| {
            products
                .create_product(cat::CreateProductRequest {
                    idempotency_key: String::new(),
                    product: Some(cat::Product {
                        name: name.into(),
                        brand: "Maison".into(),
                        category_id: category.id.clone(),
                        status: cat::ProductStatus::Active as i32,
                        ..Default::default()
                    }),
                    skus,
                })
                .await
                .expect("create product")
                .into_inner()
                .product
                .expect("product")
        };
        let tee = product(
            "Tee",
            vec![
                sku("TEE-S", "2000000000015", TEE_PRICE, 800),
                sku("TEE-M", "2000000000022", TEE_PRICE, 800),
                sku("TEE-L", "2000000000039", TEE_PRICE, 800),
            ],
        )
        .await;
        let mug = product("Mug", vec![sku("MUG", "2000000000046", MUG_PRICE, 300)]).await;
        let id_of = |code: &str| {
            tee.skus
                .iter()
                .chain(&mug.skus)
                .find(|s| s.sku_code == code)
                .expect("seeded sku")
                .id
                .clone()
        };
        let (tee_s, tee_m, tee_l, mug) =
            (id_of("TEE-S"), id_of("TEE-M"), id_of("TEE-L"), id_of("MUG"));
        let mut pricing = PricingServiceClient::new(shop.catalog.admin());
        for channel in [&eshop, &livestream, &store_channel] {
            for (sku, price) in [
                (&tee_s, TEE_PRICE),
                (&tee_m, TEE_PRICE),
                (&tee_l, TEE_PRICE),
                (&mug, MUG_PRICE),
            ] {
                pricing
                    .set_listing(cat::SetListingRequest {
                        listing: Some(cat::Listing {
                            sku_id: sku.clone(),
                            channel_id: channel.id.clone(),
                            price: eur(price),
                            listed: true,
                            ..Default::default()
                        }),
                    })
                    .await
                    .expect("listing");
            }
        }
        World {
            shop,
            eshop,
            livestream,
            store_channel,
            warehouse,
            lyon,
            villeurbanne,
            paris,
            tee_s,
            tee_m,
            tee_l,
            mug,
        }
    }

    // Clients.

    pub fn orders(&self) -> OrderServiceClient<AuthChannel> {
        OrderServiceClient::new(self.shop.orders.as_roles(&[Role::ChannelApp]))
    }

    pub fn orders_admin(&self) -> OrderServiceClient<AuthChannel> {
        OrderServiceClient::new(self.shop.orders.admin())
    }

    /// A store associate of `store`.
    pub fn orders_at(&self, store: &str) -> OrderServiceClient<AuthChannel> {
        OrderServiceClient::new(self.associate(store))
    }

    pub fn associate(&self, store: &str) -> AuthChannel {
        self.shop.orders.with_token(&crate::token(
            &[Role::StoreAssociate],
            Scope {
                channels: Vec::new(),
                stores: vec![store.to_owned()],
            },
        ))
    }

    pub fn fulfilment(&self, store: &str) -> FulfilmentServiceClient<AuthChannel> {
        FulfilmentServiceClient::new(self.associate(store))
    }

    pub fn fulfilment_admin(&self) -> FulfilmentServiceClient<AuthChannel> {
        FulfilmentServiceClient::new(self.shop.orders.admin())
    }

    pub fn returns_at(&self, store: &str) -> ReturnServiceClient<AuthChannel> {
        ReturnServiceClient::new(self.associate(store))
    }

    pub fn returns_admin(&self) -> ReturnServiceClient<AuthChannel> {
        ReturnServiceClient::new(self.shop.orders.admin())
    }

    pub fn sourcing(&self) -> SourcingServiceClient<AuthChannel> {
        SourcingServiceClient::new(self.shop.orders.admin())
    }

    // Stock.

    pub async fn receive(&self, location: &str, sku: &str, quantity: i64) {
        StockServiceClient::new(self.shop.inventory.admin())
            .record_movement(inv::RecordMovementRequest {
                idempotency_key: key(),
                location_id: location.into(),
                kind: inv::MovementKind::Receipt as i32,
                lines: vec![inv::MovementLine {
                    sku_id: sku.into(),
                    quantity,
                }],
                reason: "delivery".into(),
                reference: String::new(),
            })
            .await
            .expect("receipt");
    }

    /// (on hand, reserved) of a SKU at a location.
    pub async fn level(&self, location: &str, sku: &str) -> (i64, i64) {
        let levels = StockServiceClient::new(self.shop.inventory.admin())
            .list_stock_levels(inv::ListStockLevelsRequest {
                sku_ids: vec![sku.into()],
                location_id: location.into(),
                ..Default::default()
            })
            .await
            .expect("levels")
            .into_inner()
            .levels;
        levels.first().map_or((0, 0), |l| (l.on_hand, l.reserved))
    }

    /// Network available-to-promise of a SKU.
    pub async fn available(&self, sku: &str) -> i64 {
        AvailabilityServiceClient::new(self.shop.inventory.admin())
            .get_availability(inv::GetAvailabilityRequest {
                sku_ids: vec![sku.into()],
                ..Default::default()
            })
            .await
            .expect("availability")
            .into_inner()
            .skus[0]
            .network_available
    }

    pub async fn reservation(&self, id: &str) -> inv::Reservation {
        ReservationServiceClient::new(self.shop.inventory.admin())
            .get_reservation(inv::GetReservationRequest {
                reservation_id: id.into(),
            })
            .await
            .expect("reservation")
            .into_inner()
            .reservation
            .expect("reservation")
    }

    // Customers and coupons.

    pub async fn customer(&self, phone: &str) -> id::Customer {
        IdentityServiceClient::new(self.shop.identity.admin())
            .resolve_customer(id::ResolveCustomerRequest {
                phone: phone.into(),
                name: "Mei Lin".into(),
                ..Default::default()
            })
            .await
            .expect("resolve")
            .into_inner()
            .customer
            .expect("customer")
    }

    /// Issues a coupon of `amount_off` to the customer once crm knows them.
    pub async fn coupon(
        &self,
        customer_id: &str,
        amount_off: i64,
        issuing_channel: &str,
    ) -> String {
        let mut views = CustomerViewServiceClient::new(self.shop.crm.admin());
        eventually(async || {
            views
                .get_customer_view(crm::GetCustomerViewRequest {
                    customer_id: customer_id.into(),
                    ..Default::default()
                })
                .await
                .is_ok()
        })
        .await;
        let mut coupons = CouponServiceClient::new(self.shop.crm.admin());
        let template = coupons
            .create_coupon_template(crm::CreateCouponTemplateRequest {
                idempotency_key: key(),
                template: Some(crm::CouponTemplate {
                    name: "Welcome".into(),
                    discount: Some(crm::coupon_template::Discount::AmountOff(Money {
                        minor_units: amount_off,
                        currency: "EUR".into(),
                    })),
                    valid_days: 30,
                    issuing_channel_id: issuing_channel.into(),
                    active: true,
                    ..Default::default()
                }),
            })
            .await
            .expect("template")
            .into_inner()
            .template
            .expect("template");
        coupons
            .issue_coupons(crm::IssueCouponsRequest {
                idempotency_key: key(),
                template_id: template.id,
                recipients: Some(crm::issue_coupons_request::Recipients::CustomerId(
                    customer_id.into(),
                )),
                issuing_channel_id: String::new(),
            })
            .await
            .expect("issue")
            .into_inner()
            .coupons[0]
            .code
            .clone()
    }

    // Orders.

    pub fn request(
        &self,
        channel: &cat::Channel,
        lines: Vec<pb::OrderLineInput>,
        delivery: Option<pb::Delivery>,
    ) -> pb::PlaceOrderRequest {
        pb::PlaceOrderRequest {
            idempotency_key: key(),
            channel_id: channel.id.clone(),
            channel_order_ref: format!("ref-{}", key()),
            customer: by_phone("+33 6 12 34 56 78"),
            lines,
            delivery,
            ..Default::default()
        }
    }

    pub async fn place(&self, request: pb::PlaceOrderRequest) -> Result<pb::Order, tonic::Status> {
        self.orders_admin()
            .place_order(request)
            .await
            .map(|r| r.into_inner().order.expect("order"))
    }

    pub async fn pay(&self, order: &pb::Order) -> pb::Order {
        self.orders_admin()
            .record_payment(pb::RecordPaymentRequest {
                idempotency_key: key(),
                order_id: order.id.clone(),
                payment: Some(payment(order.total.as_ref().expect("total").minor_units)),
            })
            .await
            .expect("payment")
            .into_inner()
            .order
            .expect("order")
    }

    /// One unit of `sku` ordered on the e-shop for pickup at `store`, and paid.
    pub async fn paid_pickup(&self, sku: &str, store: &str) -> pb::Order {
        let placed = self
            .place(self.request(
                &self.eshop,
                vec![line(sku, 1)],
                at_store(pb::DeliveryKind::Pickup, store),
            ))
            .await
            .expect("placed");
        self.pay(&placed).await
    }

    /// A paid pickup picked and marked ready by an associate of `store`.
    pub async fn make_ready(&self, order: &pb::Order, store: &str) -> pb::Order {
        let mut fulfilment = self.fulfilment(store);
        fulfilment
            .start_picking(pb::StartPickingRequest {
                order_id: order.id.clone(),
                fulfilment_id: String::new(),
            })
            .await
            .expect("picking");
        fulfilment
            .mark_ready_for_pickup(pb::MarkReadyForPickupRequest {
                order_id: order.id.clone(),
            })
            .await
            .expect("ready")
            .into_inner()
            .order
            .expect("order")
    }

    pub async fn get(&self, order_id: &str) -> pb::Order {
        self.orders_admin()
            .get_order(pb::GetOrderRequest {
                key: Some(pb::get_order_request::Key::OrderId(order_id.into())),
            })
            .await
            .expect("get order")
            .into_inner()
            .order
            .expect("order")
    }

    /// Rows in order-management's own tables.
    pub async fn count(&self, sql: &'static str) -> i64 {
        let db = self.shop.orders.db().await.expect("db");
        let n: i64 = sqlx::query_scalar(sql).fetch_one(&db).await.expect("count");
        db.close().await;
        n
    }

    /// Ships (or hands over) and completes a paid order with one fulfilment.
    pub async fn complete_shipping(&self, order: &pb::Order) -> pb::Order {
        let mut f = self.fulfilment_admin();
        let fid = order.fulfilments[0].id.clone();
        f.start_picking(pb::StartPickingRequest {
            order_id: order.id.clone(),
            fulfilment_id: fid.clone(),
        })
        .await
        .expect("pick");
        f.ship_fulfilment(pb::ShipFulfilmentRequest {
            order_id: order.id.clone(),
            fulfilment_id: fid.clone(),
            carrier: "Colissimo".into(),
            tracking_number: format!("6A{}", &key()[..8]),
        })
        .await
        .expect("ship");
        f.confirm_delivery(pb::ConfirmDeliveryRequest {
            order_id: order.id.clone(),
            fulfilment_id: fid,
            delivered_at: None,
        })
        .await
        .expect("deliver")
        .into_inner()
        .order
        .expect("order")
    }
}

pub fn payment(amount: i64) -> pb::Payment {
    pb::Payment {
        amount: eur(amount),
        method: pb::PaymentMethod::Card as i32,
        provider_reference: format!("psp-{}", key()),
        paid_at: None,
    }
}

/// Polls `check` until it holds (10 s at most): for effects that travel through events.
pub async fn eventually(mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

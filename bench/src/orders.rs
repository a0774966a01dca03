//! `omni-bench orders`: PlaceOrder throughput and latency with every hop real — identity
//! (GetCustomer), crm (the customer's tier), catalog (Quote), inventory (per-location
//! availability, then Reserve), and the order, its lines and its event committed in Postgres —
//! every service in this process on the machine's cores, as one node would run them.
//!
//! With `--external`, the services are not started here: the bench calls the ones at
//! `OMNI_IDENTITY_URL`, `OMNI_CATALOG_URL`, `OMNI_INVENTORY_URL` and `OMNI_ORDERS_URL` with
//! tokens signed by the key in `OMNI_SIGNING_KEY_FILE` (how `scripts/bench memory` loads
//! services running as their own processes).
//!
//! Seeds an e-shop, a warehouse and four ship-from-stores with geo points, `--skus` SKUs with
//! deep stock, `--customers` customers; then `--concurrency` clients place orders of one to
//! three lines shipped to random addresses around Lyon for `--seconds`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

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
use omni_proto::omni::orders::v1 as pb;
use omni_proto::omni::orders::v1::order_service_client::OrderServiceClient;
use omni_runtime::auth::{Principal, PrincipalKind, Role, Scope, TokenSigner};
use omni_runtime::client::{self, AuthChannel, TokenSource};
use omni_testkit::{OrderClocks, Shop};
use uuid::Uuid;

use crate::{Args, percentile};

fn eur(minor_units: i64) -> Option<Money> {
    Some(Money {
        minor_units,
        currency: "EUR".into(),
    })
}

/// A delivery address in Lyon at this point.
fn lyon(latitude: f64, longitude: f64) -> Address {
    Address {
        recipient_name: "Bench".into(),
        lines: vec!["1 rue de la République".into()],
        city: "Lyon".into(),
        postal_code: "69001".into(),
        country_code: "FR".into(),
        location: Some(GeoPoint {
            latitude,
            longitude,
        }),
        ..Default::default()
    }
}

/// A valid EAN-13 for `n`.
fn ean(n: u64) -> String {
    let body = format!("20{n:010}");
    let sum: u32 = body
        .bytes()
        .enumerate()
        .map(|(i, d)| u32::from(d - b'0') * if i % 2 == 0 { 1 } else { 3 })
        .sum();
    format!("{body}{}", (10 - sum % 10) % 10)
}

/// A small pseudo-random sequence (xorshift), so runs are comparable.
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn unit(&mut self) -> f64 {
        (self.next() % 1_000_000) as f64 / 1_000_000.0
    }
}

/// Admin channels to the services the bench seeds through, and the channel app it orders as.
pub(crate) struct Endpoints {
    identity: AuthChannel,
    catalog: AuthChannel,
    inventory: AuthChannel,
    orders: AuthChannel,
}

impl Endpoints {
    pub(crate) fn in_process(shop: &Shop) -> Self {
        Self {
            identity: shop.identity.admin(),
            catalog: shop.catalog.admin(),
            inventory: shop.inventory.admin(),
            orders: shop.orders.as_roles(&[Role::ChannelApp]),
        }
    }

    fn external() -> anyhow::Result<Self> {
        let var = |name: &str| {
            std::env::var(name).map_err(|_| anyhow::anyhow!("{name} is required with --external"))
        };
        let pem = std::fs::read_to_string(var("OMNI_SIGNING_KEY_FILE")?)?;
        let signer = TokenSigner::from_private_pem(&pem, Duration::from_secs(3600))?;
        let token = |roles: &[Role]| -> anyhow::Result<TokenSource> {
            let principal = Principal {
                id: Uuid::now_v7().to_string(),
                kind: PrincipalKind::Staff,
                name: "omni-bench".to_owned(),
                roles: roles.to_vec(),
                scope: Scope::default(),
                on_behalf_of: None,
            };
            Ok(TokenSource::Static(Arc::from(
                signer.sign(&principal)?.0.as_str(),
            )))
        };
        let channel = |url: &str, roles: &[Role]| -> anyhow::Result<AuthChannel> {
            Ok(client::authenticated(
                client::channel(url, Duration::from_secs(5), Duration::from_secs(30))?,
                token(roles)?,
                Duration::from_secs(30),
            ))
        };
        Ok(Self {
            identity: channel(&var("OMNI_IDENTITY_URL")?, &[Role::Admin])?,
            catalog: channel(&var("OMNI_CATALOG_URL")?, &[Role::Admin])?,
            inventory: channel(&var("OMNI_INVENTORY_URL")?, &[Role::Admin])?,
            orders: channel(&var("OMNI_ORDERS_URL")?, &[Role::ChannelApp])?,
        })
    }
}

pub(crate) struct Seeded {
    pub(crate) channel: String,
    pub(crate) skus: Vec<String>,
    pub(crate) customers: Vec<String>,
}

pub(crate) async fn seed(at: &Endpoints, skus: usize, customers: usize) -> anyhow::Result<Seeded> {
    let mut locations = LocationServiceClient::new(at.inventory.clone());
    let mut stock = StockServiceClient::new(at.inventory.clone());
    let places = [
        ("WH-01", inv::LocationKind::Warehouse, 45.64, 5.11),
        ("LYS-01", inv::LocationKind::Store, 45.764, 4.8357),
        ("VIL-01", inv::LocationKind::Store, 45.77, 4.88),
        ("CAL-01", inv::LocationKind::Store, 45.79, 4.85),
        ("GER-01", inv::LocationKind::Store, 45.73, 4.83),
    ];
    let mut location_ids = Vec::new();
    for (code, kind, latitude, longitude) in places {
        let location = locations
            .create_location(inv::CreateLocationRequest {
                idempotency_key: Uuid::now_v7().to_string(),
                location: Some(inv::Location {
                    code: code.into(),
                    name: code.into(),
                    kind: kind as i32,
                    channel_id: if kind == inv::LocationKind::Store {
                        Uuid::now_v7().to_string()
                    } else {
                        String::new()
                    },
                    address: Some(Address {
                        location: Some(GeoPoint {
                            latitude,
                            longitude,
                        }),
                        ..Default::default()
                    }),
                    pickup_enabled: kind == inv::LocationKind::Store,
                    ships_orders: true,
                    time_zone: "Europe/Paris".into(),
                    ..Default::default()
                }),
            })
            .await?
            .into_inner()
            .location
            .ok_or_else(|| anyhow::anyhow!("no location"))?;
        location_ids.push(location.id);
    }
    let channel = ChannelServiceClient::new(at.catalog.clone())
        .create_channel(cat::CreateChannelRequest {
            idempotency_key: String::new(),
            channel: Some(cat::Channel {
                kind: ChannelKind::EShop as i32,
                name: "e-shop".into(),
                currency: "EUR".into(),
                active: true,
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .channel
        .ok_or_else(|| anyhow::anyhow!("no channel"))?
        .id;
    let mut products = ProductServiceClient::new(at.catalog.clone());
    let category = products
        .create_category(cat::CreateCategoryRequest {
            idempotency_key: String::new(),
            parent_id: String::new(),
            name: "Everything".into(),
        })
        .await?
        .into_inner()
        .category
        .ok_or_else(|| anyhow::anyhow!("no category"))?
        .id;
    let mut pricing = PricingServiceClient::new(at.catalog.clone());
    let mut sku_ids = Vec::new();
    for n in 0..skus {
        let product = products
            .create_product(cat::CreateProductRequest {
                idempotency_key: String::new(),
                product: Some(cat::Product {
                    name: format!("Product {n}"),
                    brand: "Bench".into(),
                    category_id: category.clone(),
                    status: cat::ProductStatus::Active as i32,
                    ..Default::default()
                }),
                skus: vec![cat::Sku {
                    sku_code: format!("SKU-{n:04}"),
                    barcode: ean(n as u64 + 1),
                    list_price: eur(1000 + 100 * (n as i64 % 50)),
                    unit_cost: eur(400),
                    status: cat::SkuStatus::Active as i32,
                    ..Default::default()
                }],
            })
            .await?
            .into_inner()
            .product
            .ok_or_else(|| anyhow::anyhow!("no product"))?;
        let sku = product.skus[0].id.clone();
        pricing
            .set_listing(cat::SetListingRequest {
                listing: Some(cat::Listing {
                    sku_id: sku.clone(),
                    channel_id: channel.clone(),
                    price: eur(1000 + 100 * (n as i64 % 50)),
                    listed: true,
                    ..Default::default()
                }),
            })
            .await?;
        for (i, location) in location_ids.iter().enumerate() {
            // The warehouse has everything; each store a share of the range.
            if i == 0 || n % 4 == i - 1 {
                stock
                    .record_movement(inv::RecordMovementRequest {
                        idempotency_key: Uuid::now_v7().to_string(),
                        location_id: location.clone(),
                        kind: inv::MovementKind::Receipt as i32,
                        lines: vec![inv::MovementLine {
                            sku_id: sku.clone(),
                            quantity: 10_000_000,
                        }],
                        reason: "bench".into(),
                        reference: String::new(),
                    })
                    .await?;
            }
        }
        sku_ids.push(sku);
    }
    let mut identity = IdentityServiceClient::new(at.identity.clone());
    let mut customer_ids = Vec::new();
    for n in 0..customers {
        let customer = identity
            .resolve_customer(id::ResolveCustomerRequest {
                phone: format!(
                    "+33 6 {:02} {:02} {:02} {:02}",
                    n / 1_000_000 % 100,
                    n / 10_000 % 100,
                    n / 100 % 100,
                    n % 100
                ),
                name: format!("Customer {n}"),
                ..Default::default()
            })
            .await?
            .into_inner()
            .customer
            .ok_or_else(|| anyhow::anyhow!("no customer"))?;
        customer_ids.push(customer.id);
    }
    Ok(Seeded {
        channel,
        skus: sku_ids,
        customers: customer_ids,
    })
}

pub async fn orders(args: &Args) -> anyhow::Result<()> {
    let seconds = args.get("--seconds", 20)?;
    let concurrency = args.get("--concurrency", 32)?;
    let skus = args.get("--skus", 40)?;
    let customers = args.get("--customers", 500)?;
    let pool = u32::try_from(args.get("--pool", 32)?)?;
    // First, on an idle machine: what Postgres alone allows.
    let ceiling = if args.flag("--external") {
        None
    } else {
        let ceiling_seconds = args.get("--ceiling-seconds", 5)?;
        println!(
            "measuring the order commit ceiling: {concurrency} writers, {pool} connections, {ceiling_seconds} s"
        );
        let rate = commit_ceiling(ceiling_seconds, concurrency, pool).await?;
        println!(
            "order commit ceiling: {rate:.0} orders/s (order-management's own statements per order, no service calls)"
        );
        Some(rate)
    };
    // Kept alive for the run when the services run in this process.
    let (_shop, endpoints) = if args.flag("--external") {
        (None, Endpoints::external()?)
    } else {
        println!("starting identity, catalog, inventory, crm, performance and order-management");
        let shop = Shop::start_tuned(OrderClocks::default(), pool).await?;
        let endpoints = Endpoints::in_process(&shop);
        (Some(shop), endpoints)
    };
    println!("seeding {skus} SKUs in 5 locations and {customers} customers");
    let seeded = Arc::new(seed(&endpoints, skus, customers).await?);
    let intake = place_orders(&endpoints, &seeded, seconds, concurrency).await?;
    intake.print();
    if let Some(ceiling) = ceiling {
        println!(
            "PlaceOrder reached {:.0}% of the commit ceiling",
            100.0 * intake.rate() / ceiling
        );
    }
    println!("target: >= 1,000 orders/s with p99 <= 50 ms");
    Ok(())
}

/// An order as PlaceOrder stores it: two lines from two locations, shipped, with its
/// sourcing decision and history (what sets the size of the row and the event).
fn typical_order() -> pb::Order {
    let line = |n: u32| pb::OrderLine {
        id: Uuid::now_v7().to_string(),
        sku_id: Uuid::now_v7().to_string(),
        sku_code: format!("SKU-{n:04}"),
        product_id: Uuid::now_v7().to_string(),
        product_name: format!("Product {n}"),
        category_id: Uuid::now_v7().to_string(),
        quantity: 2,
        unit_price: eur(1900),
        unit_cost: eur(400),
        discount: eur(0),
        net_amount: eur(3800),
        location_id: Uuid::now_v7().to_string(),
        fulfilment_id: Uuid::now_v7().to_string(),
        ..Default::default()
    };
    let lines = vec![line(1), line(2)];
    let now = Some(prost_types::Timestamp::from(std::time::SystemTime::now()));
    pb::Order {
        channel_id: Uuid::now_v7().to_string(),
        channel_kind: ChannelKind::EShop as i32,
        customer_id: Uuid::now_v7().to_string(),
        status: pb::OrderStatus::PendingPayment as i32,
        delivery: Some(pb::Delivery {
            kind: pb::DeliveryKind::Ship as i32,
            address: Some(lyon(45.76, 4.83)),
            store_id: String::new(),
        }),
        fulfilments: lines
            .iter()
            .map(|l| pb::Fulfilment {
                id: l.fulfilment_id.clone(),
                location_id: l.location_id.clone(),
                status: pb::OrderStatus::PendingPayment as i32,
                line_ids: vec![l.id.clone()],
                ..Default::default()
            })
            .collect(),
        sourcing: Some(pb::SourcingDecision {
            allocations: lines
                .iter()
                .map(|l| pb::SourcingAllocation {
                    location_id: l.location_id.clone(),
                    line_ids: vec![l.id.clone()],
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
        lines,
        subtotal: eur(7600),
        discount_total: eur(0),
        total: eur(7600),
        refunded_total: eur(0),
        reservation_id: Uuid::now_v7().to_string(),
        history: vec![pb::StatusChange {
            status: pb::OrderStatus::PendingPayment as i32,
            changed_at: now,
            actor_id: Uuid::now_v7().to_string(),
            ..Default::default()
        }],
        placed_at: now,
        payment_due_at: now,
        address_change_deadline: now,
        updated_at: now,
        ..Default::default()
    }
}

/// Orders per second this machine's Postgres commits when nothing else runs: per order the
/// statements PlaceOrder itself makes (the key's lease with the order number, then in one
/// transaction the idempotency key with its reply, the order row, its OrderPlaced event in the
/// outbox and the settled lease), through order-management's own store, outbox and
/// idempotency code, on a fresh database with its migrations; `writers` concurrent writers on
/// `pool` connections for `seconds`. PlaceOrder's rate is read against it.
async fn commit_ceiling(seconds: usize, writers: usize, pool: u32) -> anyhow::Result<f64> {
    use omni_proto::events::OrderPlaced;
    use omni_proto::events::event::Payload;
    use omni_runtime::idempotency;
    use order_management::store;

    let url = omni_testkit::fresh_database("ceiling").await?;
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(pool)
        .connect(&url)
        .await?;
    omni_runtime::db::migrate(
        &db,
        order_management::MIGRATOR,
        &tokio_util::sync::CancellationToken::new(),
    )
    .await?;
    let outbox = Arc::new(omni_runtime::outbox::Outbox::new("ceiling"));
    let template = Arc::new(typical_order());
    let locations = Arc::new(order_management::upstream::Locations::default());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let (db, outbox, template, locations, stop) = (
            db.clone(),
            outbox.clone(),
            template.clone(),
            locations.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let actor = Uuid::now_v7().to_string();
            let scope = format!("PlaceOrder/{}", template.channel_id);
            let mut committed = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let key = Uuid::now_v7().to_string();
                let request = pb::PlaceOrderRequest {
                    idempotency_key: key.clone(),
                    channel_id: template.channel_id.clone(),
                    ..Default::default()
                };
                let caller_key = idempotency::caller_key(&actor, &key);
                let lease = store::take_lease(
                    &db,
                    &scope,
                    &caller_key,
                    Uuid::now_v7(),
                    &[],
                    &template.channel_id,
                    Duration::from_secs(60),
                )
                .await?
                .ok_or_else(|| anyhow::anyhow!("a fresh key is leased"))?;
                let mut order = (*template).clone();
                order.id = lease.order_id.to_string();
                order.order_number = format!("2026-12-{:07}", lease.sequence);
                let subject = order.id.clone();
                let reply = pb::PlaceOrderResponse {
                    order: Some(order.clone()),
                    created: true,
                };
                let mut tx = db.begin().await?;
                idempotency::record_about(
                    &mut tx,
                    &scope,
                    &actor,
                    "idempotency_key",
                    &key,
                    &request,
                    &subject,
                    &reply,
                )
                .await?;
                store::insert_order(&mut tx, &order, 0).await?;
                outbox
                    .add(
                        &mut tx,
                        "orders.order_placed",
                        &order.id,
                        &actor,
                        Payload::OrderPlaced(OrderPlaced {
                            order: Some(order_management::app::facts(&order, &locations)),
                        }),
                    )
                    .await?;
                store::settle_attempt(&mut tx, &scope, &caller_key).await?;
                tx.commit().await?;
                committed += 1;
            }
            anyhow::Ok(committed)
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds as u64)).await;
    stop.store(true, Ordering::Relaxed);
    let mut committed = 0;
    for task in tasks {
        committed += task.await??;
    }
    let rate = committed as f64 / started.elapsed().as_secs_f64();
    db.close().await;
    Ok(rate)
}

/// What [`place_orders`] measured.
pub(crate) struct Intake {
    pub(crate) latencies: Vec<Duration>,
    pub(crate) errors: usize,
    pub(crate) elapsed: Duration,
}

impl Intake {
    pub(crate) fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    pub(crate) fn print(&self) {
        println!(
            "PlaceOrder: {} orders in {:.1} s = {:.0} orders/s, {} errors; p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.latencies.len(),
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.errors,
            percentile(&self.latencies, 50.0).as_secs_f64() * 1000.0,
            percentile(&self.latencies, 99.0).as_secs_f64() * 1000.0,
            self.latencies
                .last()
                .copied()
                .unwrap_or_default()
                .as_secs_f64()
                * 1000.0,
        );
    }
}

/// `concurrency` clients placing orders for `seconds`, after a warm-up.
pub(crate) async fn place_orders(
    endpoints: &Endpoints,
    seeded: &Arc<Seeded>,
    seconds: usize,
    concurrency: usize,
) -> anyhow::Result<Intake> {
    let client = OrderServiceClient::new(endpoints.orders.clone());

    // Warm-up: connections, caches, prepared statements.
    let mut warm = client.clone();
    for i in 0..50 {
        warm.place_order(request(seeded, &mut Dice(i + 1))).await?;
    }

    println!("placing orders: {concurrency} concurrent clients for {seconds} s");
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let (mut client, seeded, stop) = (client.clone(), seeded.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut dice = Dice(0x9E37_79B9_7F4A_7C15 ^ (w as u64 + 1));
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let request = request(&seeded, &mut dice);
                let t = Instant::now();
                match client.place_order(request).await {
                    Ok(_) => latencies.push(t.elapsed()),
                    Err(status) => {
                        errors += 1;
                        if errors <= 3 {
                            eprintln!("refused: {:?} {}", status.code(), status.message());
                        }
                    }
                }
            }
            (latencies, errors)
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds as u64)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut errors = 0;
    for worker in workers {
        let (l, e) = worker.await?;
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed();
    latencies.sort();
    Ok(Intake {
        latencies,
        errors,
        elapsed,
    })
}

fn request(seeded: &Seeded, dice: &mut Dice) -> pb::PlaceOrderRequest {
    let lines = 1 + dice.below(3);
    let mut chosen: Vec<usize> = Vec::new();
    while chosen.len() < lines {
        let s = dice.below(seeded.skus.len());
        if !chosen.contains(&s) {
            chosen.push(s);
        }
    }
    pb::PlaceOrderRequest {
        idempotency_key: Uuid::now_v7().to_string(),
        channel_id: seeded.channel.clone(),
        channel_order_ref: String::new(),
        customer: Some(pb::CustomerRef {
            customer_id: seeded.customers[dice.below(seeded.customers.len())].clone(),
            ..Default::default()
        }),
        lines: chosen
            .iter()
            .map(|&s| pb::OrderLineInput {
                sku_id: seeded.skus[s].clone(),
                quantity: 1 + dice.below(2) as i32,
            })
            .collect(),
        delivery: Some(pb::Delivery {
            kind: pb::DeliveryKind::Ship as i32,
            address: Some(lyon(45.70 + dice.unit() * 0.12, 4.78 + dice.unit() * 0.14)),
            store_id: String::new(),
        }),
        ..Default::default()
    }
}

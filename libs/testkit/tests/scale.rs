//! Scale-out: two processes of every service on a real Redis Cluster, in one run.
//!
//! Run by `scripts/test-scale`, which builds the service binaries and starts a 3-master Redis
//! Cluster, then runs this test with `OMNI_TEST_REDIS_URL` listing the cluster's nodes (the
//! test is ignored in a plain run, which has neither). What it shows, in order:
//!
//! 1. a hot sale (the SKU marked hot: its Redis gate runs as a Lua script on the cluster) of
//!    50 units to 400 concurrent buyers, alternating between the two inventory replicas,
//!    sells exactly 50; the holds expire and both replicas' expiry sweepers release each once;
//! 2. orders placed through both order-management replicas, half paid at once: both replicas'
//!    payment sweepers cancel each unpaid one once, and only the paid ones keep stock;
//! 3. both replicas of crm and performance share their consumer groups and apply every event
//!    once (their state equals order-management's);
//! 4. one replica of every service is killed (SIGKILL) while orders are being placed: callers
//!    retry on the other, its consumers take over the dead one's pending entries, and nothing
//!    is lost or applied twice; crm's purchase figures, kept by deltas by both replicas, equal
//!    the same figures aggregated from its orders.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
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
use omni_proto::omni::inventory::v1::reservation_service_client::ReservationServiceClient;
use omni_proto::omni::inventory::v1::stock_service_client::StockServiceClient;
use omni_proto::omni::orders::v1 as pb;
use omni_proto::omni::orders::v1::order_service_client::OrderServiceClient;
use omni_runtime::auth::{Role, Scope};
use omni_runtime::client::AuthChannel;
use omni_runtime::redis::Redis;
use omni_testkit::process::ServiceProcess;
use sqlx::PgPool;
use tonic::{Code, Status};
use uuid::Uuid;

/// The payment window of the order-management replicas: orders not paid within it lapse. Wider
/// than a caller's retries take around a killed replica on a loaded machine (at 5 s, an order
/// whose payment was retried that long lapsed first, rightly refusing the late payment).
const PAYMENT_WINDOW_SECS: u64 = 15;
/// How long a consumer's pending entry stays with it before another replica takes it over.
const RECLAIM_MS: u64 = 3_000;

/// The replicas of one service, and the database they share.
struct Replicas {
    processes: Vec<ServiceProcess>,
    database_url: String,
}

impl Replicas {
    /// Starts `count` processes of `binary` at once (they migrate the same database
    /// concurrently, as a rollout does).
    async fn start(
        label: &str,
        binary: &str,
        count: usize,
        env: &[(String, String)],
    ) -> anyhow::Result<Self> {
        let database_url = omni_testkit::fresh_database(label).await?;
        let mut env = env.to_vec();
        env.push(("DATABASE_URL".into(), database_url.clone()));
        let started = futures::future::try_join_all((0..count).map(|n| {
            let env = env.clone();
            async move { ServiceProcess::start(&format!("{label}-{n}"), binary, &env).await }
        }))
        .await?;
        Ok(Self {
            processes: started,
            database_url,
        })
    }

    /// Every replica's URL, comma-separated: how a service is told where another one runs.
    fn urls(&self) -> String {
        self.processes
            .iter()
            .map(ServiceProcess::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The replicas' channels for a caller holding `roles`, in turn.
    fn callers(&self, roles: &[Role]) -> Vec<AuthChannel> {
        self.processes.iter().map(|p| p.as_roles(roles)).collect()
    }

    async fn db(&self) -> PgPool {
        PgPool::connect(&self.database_url).await.expect("db")
    }

    async fn kill_first(&mut self) {
        self.processes[0].kill().await.expect("kill");
    }
}

/// Round robin over a service's replicas, with failover: a call that finds its replica gone
/// (or an earlier try of the same key still running) is sent again, to the next one.
#[derive(Clone)]
struct RoundRobin {
    channels: Arc<Vec<AuthChannel>>,
    next: Arc<AtomicUsize>,
    /// Calls sent again to the next replica.
    retried: Arc<AtomicUsize>,
}

impl RoundRobin {
    fn new(channels: Vec<AuthChannel>) -> Self {
        Self {
            channels: Arc::new(channels),
            next: Arc::new(AtomicUsize::new(0)),
            retried: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn pick(&self) -> AuthChannel {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.channels[n % self.channels.len()].clone()
    }

    /// `call` on the next replica; retried on the next one while the failure is one a
    /// replica dying causes, for at most two minutes.
    async fn call<T, F, Fut>(&self, call: F) -> Result<T, Status>
    where
        F: Fn(AuthChannel) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            match call(self.pick()).await {
                Ok(reply) => return Ok(reply.into_inner()),
                Err(status)
                    if matches!(
                        status.code(),
                        Code::Unavailable
                            | Code::Unknown
                            | Code::Cancelled
                            | Code::Aborted
                            | Code::DeadlineExceeded
                    ) && Instant::now() < deadline =>
                {
                    self.retried.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(status) => return Err(status),
            }
        }
    }
}

struct Fleet {
    identity: Replicas,
    catalog: Replicas,
    inventory: Replicas,
    crm: Replicas,
    performance: Replicas,
    orders: Replicas,
    redis: Redis,
}

impl Fleet {
    async fn start(redis_url: &str) -> anyhow::Result<Self> {
        let prefix = omni_testkit::fresh_redis_prefix();
        let common = vec![
            ("REDIS_URL".to_owned(), redis_url.to_owned()),
            ("OMNI_REDIS_PREFIX".to_owned(), prefix.clone()),
            (
                "OMNI_AUTH_PUBLIC_KEY".to_owned(),
                omni_testkit::public_key_pem(),
            ),
            ("OMNI_HEALTH_INTERVAL_MS".to_owned(), "100".to_owned()),
            ("OMNI_OUTBOX_POLL_MS".to_owned(), "50".to_owned()),
            (
                "OMNI_CONSUMER_RECLAIM_IDLE_MS".to_owned(),
                RECLAIM_MS.to_string(),
            ),
            ("OMNI_SHUTDOWN_GRACE_MS".to_owned(), "1000".to_owned()),
        ];
        let with = |more: &[(&str, String)]| {
            let mut env = common.clone();
            env.extend(more.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
            env
        };
        let service_token = omni_testkit::token(&[Role::Service], Scope::default());
        let identity = Replicas::start(
            "identity",
            "identity",
            2,
            &with(&[(
                "OMNI_SIGNING_KEY",
                omni_testkit::signing_key_pem().expose().to_owned(),
            )]),
        )
        .await?;
        let catalog = Replicas::start("catalog", "catalog", 2, &with(&[])).await?;
        let inventory = Replicas::start(
            "inventory",
            "inventory",
            2,
            &with(&[("OMNI_EXPIRY_INTERVAL_MS", "200".to_owned())]),
        )
        .await?;
        let crm = Replicas::start("crm", "crm", 2, &with(&[])).await?;
        let performance = Replicas::start(
            "performance",
            "performance",
            2,
            &with(&[
                ("OMNI_SERVICE_TOKEN", service_token.clone()),
                ("OMNI_IDENTITY_URL", identity.urls()),
                ("OMNI_INVENTORY_URL", inventory.urls()),
            ]),
        )
        .await?;
        let orders = Replicas::start(
            "orders",
            "order-management",
            2,
            &with(&[
                ("OMNI_SERVICE_TOKEN", service_token),
                ("OMNI_IDENTITY_URL", identity.urls()),
                ("OMNI_CATALOG_URL", catalog.urls()),
                ("OMNI_INVENTORY_URL", inventory.urls()),
                ("OMNI_CRM_URL", crm.urls()),
                ("OMNI_PERFORMANCE_URL", performance.urls()),
                ("OMNI_PAYMENT_WINDOW_SECS", PAYMENT_WINDOW_SECS.to_string()),
                ("OMNI_SWEEP_INTERVAL_MS", "200".to_owned()),
            ]),
        )
        .await?;
        Ok(Self {
            identity,
            catalog,
            inventory,
            crm,
            performance,
            orders,
            redis: Redis::new(redis_url, &prefix)?,
        })
    }

    fn all(&mut self) -> [&mut Replicas; 6] {
        [
            &mut self.identity,
            &mut self.catalog,
            &mut self.inventory,
            &mut self.crm,
            &mut self.performance,
            &mut self.orders,
        ]
    }
}

fn eur(minor_units: i64) -> Option<Money> {
    Some(Money {
        minor_units,
        currency: "EUR".into(),
    })
}

fn lyon() -> Address {
    Address {
        recipient_name: "Scale".into(),
        lines: vec!["1 rue de la République".into()],
        city: "Lyon".into(),
        postal_code: "69001".into(),
        country_code: "FR".into(),
        location: Some(GeoPoint {
            latitude: 45.76,
            longitude: 4.83,
        }),
        ..Default::default()
    }
}

fn key() -> String {
    Uuid::now_v7().to_string()
}

/// What the shop sells: a channel, a SKU listed on it with plenty of stock, a warehouse, and
/// customers.
struct Shop {
    channel: String,
    sku: String,
    warehouse: String,
    customers: Vec<String>,
}

async fn seed(fleet: &Fleet) -> Shop {
    let admin = |r: &Replicas| r.processes[0].as_roles(&[Role::Admin]);
    let channel = ChannelServiceClient::new(admin(&fleet.catalog))
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
        .await
        .expect("channel")
        .into_inner()
        .channel
        .expect("channel")
        .id;
    let mut products = ProductServiceClient::new(admin(&fleet.catalog));
    let category = products
        .create_category(cat::CreateCategoryRequest {
            idempotency_key: String::new(),
            parent_id: String::new(),
            name: "Everything".into(),
        })
        .await
        .expect("category")
        .into_inner()
        .category
        .expect("category")
        .id;
    let product = products
        .create_product(cat::CreateProductRequest {
            idempotency_key: String::new(),
            product: Some(cat::Product {
                name: "Mug".into(),
                brand: "Scale".into(),
                category_id: category,
                status: cat::ProductStatus::Active as i32,
                ..Default::default()
            }),
            skus: vec![cat::Sku {
                sku_code: "MUG-1".into(),
                barcode: "4006381333931".into(),
                list_price: eur(1200),
                unit_cost: eur(400),
                status: cat::SkuStatus::Active as i32,
                ..Default::default()
            }],
        })
        .await
        .expect("product")
        .into_inner()
        .product
        .expect("product");
    let sku = product.skus[0].id.clone();
    PricingServiceClient::new(admin(&fleet.catalog))
        .set_listing(cat::SetListingRequest {
            listing: Some(cat::Listing {
                sku_id: sku.clone(),
                channel_id: channel.clone(),
                price: eur(1200),
                listed: true,
                ..Default::default()
            }),
        })
        .await
        .expect("listing");
    let warehouse = LocationServiceClient::new(admin(&fleet.inventory))
        .create_location(inv::CreateLocationRequest {
            idempotency_key: key(),
            location: Some(inv::Location {
                code: "WH-01".into(),
                name: "Warehouse".into(),
                kind: inv::LocationKind::Warehouse as i32,
                address: Some(lyon()),
                ships_orders: true,
                time_zone: "Europe/Paris".into(),
                ..Default::default()
            }),
        })
        .await
        .expect("warehouse")
        .into_inner()
        .location
        .expect("warehouse")
        .id;
    receive(fleet, &warehouse, &sku, 100_000).await;
    let mut identity = IdentityServiceClient::new(admin(&fleet.identity));
    let mut customers = Vec::new();
    for n in 0..20 {
        let customer = identity
            .resolve_customer(id::ResolveCustomerRequest {
                phone: format!("+33 6 12 34 56 {n:02}"),
                name: format!("Customer {n}"),
                ..Default::default()
            })
            .await
            .expect("customer")
            .into_inner()
            .customer
            .expect("customer");
        customers.push(customer.id);
    }
    Shop {
        channel,
        sku,
        warehouse,
        customers,
    }
}

async fn receive(fleet: &Fleet, location: &str, sku: &str, units: i64) {
    StockServiceClient::new(fleet.inventory.processes[0].as_roles(&[Role::Admin]))
        .record_movement(inv::RecordMovementRequest {
            idempotency_key: key(),
            location_id: location.into(),
            kind: inv::MovementKind::Receipt as i32,
            lines: vec![inv::MovementLine {
                sku_id: sku.into(),
                quantity: units,
            }],
            reason: "scale".into(),
            reference: String::new(),
        })
        .await
        .expect("receipt");
}

/// Units of `sku` reserved (held) and on hand, in inventory's database.
async fn stock(db: &PgPool, sku: &str) -> (i64, i64) {
    sqlx::query_as(
        "SELECT coalesce(sum(reserved), 0)::bigint, coalesce(sum(on_hand), 0)::bigint \
         FROM stock_levels WHERE sku_id = $1",
    )
    .bind(sku)
    .fetch_one(db)
    .await
    .expect("stock")
}

/// Polls `check` until it holds (`within` at most); for effects that travel through events
/// and sweepers.
async fn eventually(within: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn place_request(shop: &Shop, n: usize) -> pb::PlaceOrderRequest {
    pb::PlaceOrderRequest {
        idempotency_key: key(),
        channel_id: shop.channel.clone(),
        customer: Some(pb::CustomerRef {
            customer_id: shop.customers[n % shop.customers.len()].clone(),
            ..Default::default()
        }),
        lines: vec![pb::OrderLineInput {
            sku_id: shop.sku.clone(),
            quantity: 1,
        }],
        delivery: Some(pb::Delivery {
            kind: pb::DeliveryKind::Ship as i32,
            address: Some(lyon()),
            store_id: String::new(),
        }),
        ..Default::default()
    }
}

/// Places `count` orders with `workers` concurrent callers, paying those `pay` picks at once;
/// `midway` runs once half of them are placed. Returns how many were paid.
async fn place_orders(
    orders: &RoundRobin,
    shop: &Arc<Shop>,
    count: usize,
    workers: usize,
    pay: fn(usize) -> bool,
    midway: impl std::future::Future<Output = ()>,
) -> usize {
    let issued = Arc::new(AtomicUsize::new(0));
    let placed = Arc::new(AtomicUsize::new(0));
    let half = Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (orders, shop, issued, placed, half) = (
            orders.clone(),
            shop.clone(),
            issued.clone(),
            placed.clone(),
            half.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut paid = 0;
            loop {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    return paid;
                }
                // One key per order, kept across retries: a retry never places it twice.
                let request = place_request(&shop, n);
                let order = orders
                    .call(|c| {
                        let request = request.clone();
                        async move { OrderServiceClient::new(c).place_order(request).await }
                    })
                    .await
                    .unwrap_or_else(|s| panic!("order {n} not placed: {s:?}"))
                    .order
                    .expect("order");
                if placed.fetch_add(1, Ordering::Relaxed) + 1 == count / 2 {
                    half.notify_one();
                }
                if pay(n) {
                    let request = pb::RecordPaymentRequest {
                        idempotency_key: key(),
                        order_id: order.id.clone(),
                        payment: Some(pb::Payment {
                            amount: order.total.clone(),
                            method: pb::PaymentMethod::Card as i32,
                            provider_reference: format!("psp-{n}"),
                            paid_at: None,
                        }),
                    };
                    orders
                        .call(|c| {
                            let request = request.clone();
                            async move { OrderServiceClient::new(c).record_payment(request).await }
                        })
                        .await
                        .unwrap_or_else(|s| panic!("order {n} not paid: {s:?}"));
                    paid += 1;
                }
            }
        }));
    }
    half.notified().await;
    midway.await;
    let mut paid = 0;
    for task in tasks {
        paid += task.await.expect("worker");
    }
    paid
}

/// What order-management, crm and performance know of the orders: (orders, cancelled) in
/// order-management and in crm, and performance's order facts.
#[derive(Debug, PartialEq, Eq)]
struct Views {
    orders: (i64, i64),
    crm: (i64, i64),
    facts: i64,
}

async fn views(fleet: &Fleet) -> Views {
    let cancelled = pb::OrderStatus::Cancelled as i32;
    let counts = async |db: &PgPool, table: &str| -> (i64, i64) {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT count(*), count(*) FILTER (WHERE status = $1) FROM {table}"
        )))
        .bind(cancelled)
        .fetch_one(db)
        .await
        .expect("counts")
    };
    let facts: i64 = sqlx::query_scalar("SELECT count(*) FROM order_facts")
        .fetch_one(&fleet.performance.db().await)
        .await
        .expect("facts");
    Views {
        orders: counts(&fleet.orders.db().await, "orders").await,
        crm: counts(&fleet.crm.db().await, "customer_orders").await,
        facts,
    }
}

/// Pending entries of every consumer group of `source`'s stream, and its consumers by group.
async fn pending_and_consumers(redis: &Redis, source: &str) -> (i64, Vec<(String, usize)>) {
    let stream = redis.event_stream(source);
    let groups = omni_runtime::metrics::groups(redis, &stream)
        .await
        .expect("groups");
    let mut pending = 0;
    let mut consumers = Vec::new();
    for (group, info) in groups {
        pending += info.pending;
        let listed: Vec<redis::Value> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&stream)
            .arg(&group)
            .query_async(&mut redis.conn())
            .await
            .expect("consumers");
        consumers.push((group, listed.len()));
    }
    (pending, consumers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs a Redis Cluster and the service binaries: run scripts/test-scale"]
async fn two_replicas_of_every_service_on_a_redis_cluster() {
    let redis_url = omni_testkit::redis_url();
    assert!(
        omni_runtime::redis::node_urls(&redis_url).len() > 1,
        "OMNI_TEST_REDIS_URL must list the nodes of a Redis Cluster (scripts/test-scale starts one)"
    );
    let mut fleet = Fleet::start(&redis_url).await.expect("fleet");
    assert!(fleet.redis.is_cluster());
    let shop = Arc::new(seed(&fleet).await);
    let inventory_db = fleet.inventory.db().await;

    // 1. A hot sale across both inventory replicas.
    let hot = key();
    receive(&fleet, &shop.warehouse, &hot, 50).await;
    StockServiceClient::new(fleet.inventory.processes[1].as_roles(&[Role::Admin]))
        .set_hot_sku(inv::SetHotSkuRequest {
            sku_id: hot.clone(),
            hot: true,
            reason: "livestream".into(),
            until: None,
        })
        .await
        .expect("hot");
    let buyers = RoundRobin::new(fleet.inventory.callers(&[Role::Admin]));
    let started = Instant::now();
    let sale = futures::future::join_all((0..400).map(|_| {
        let (buyers, hot) = (buyers.clone(), hot.clone());
        async move {
            let request = inv::ReserveRequest {
                idempotency_key: key(),
                lines: vec![inv::ReserveLine {
                    sku_id: hot,
                    quantity: 1,
                    location_ids: vec![],
                }],
                channel_id: "livestream".into(),
                ttl: Some(prost_types::Duration {
                    seconds: 3,
                    nanos: 0,
                }),
                reference: String::new(),
            };
            let t = Instant::now();
            let outcome = ReservationServiceClient::new(buyers.pick())
                .reserve(request)
                .await;
            (outcome.map(|_| ()).map_err(|s| s.code()), t.elapsed())
        }
    }))
    .await;
    let elapsed = started.elapsed();
    let sold = sale.iter().filter(|(o, _)| o.is_ok()).count();
    let mut refusals: Vec<Code> = sale.iter().filter_map(|(o, _)| o.err()).collect();
    refusals.dedup();
    let mut latencies: Vec<Duration> = sale.iter().map(|(_, t)| *t).collect();
    latencies.sort();
    println!(
        "hot sale: 400 buyers over 2 inventory replicas, {sold} sold in {elapsed:?} \
         ({:.0} attempts/s), p50 {:?}, p99 {:?}",
        400.0 / elapsed.as_secs_f64(),
        latencies[200],
        latencies[396]
    );
    assert_eq!(sold, 50, "exactly the 50 units are sold");
    assert!(
        refusals.iter().all(|c| *c == Code::FailedPrecondition),
        "the others are refused as sold out: {refusals:?}"
    );
    assert_eq!(stock(&inventory_db, &hot).await, (50, 50));
    // The holds expire: both replicas' sweepers run, each hold is released once.
    eventually(
        Duration::from_secs(30),
        "the sale's holds expired",
        async || stock(&inventory_db, &hot).await.0 == 0,
    )
    .await;
    let expired: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT r.id) FROM reservations r JOIN reservation_lines l \
         ON l.reservation_id = r.id WHERE l.sku_id = $1 AND r.status = 'expired'",
    )
    .bind(&hot)
    .fetch_one(&inventory_db)
    .await
    .expect("expired");
    assert_eq!(expired, 50);
    assert_eq!(
        stock(&inventory_db, &hot).await,
        (0, 50),
        "released once each"
    );

    // 2. Orders through both order-management replicas; the unpaid lapse.
    let orders = RoundRobin::new(fleet.orders.callers(&[Role::ChannelApp]));
    let paid = place_orders(&orders, &shop, 60, 6, |n| n % 2 == 0, async {}).await;
    assert_eq!(paid, 30);
    eventually(
        Duration::from_secs(60),
        "both replicas' sweepers cancel the unpaid orders, once each",
        async || views(&fleet).await.orders == (60, 30),
    )
    .await;
    assert_eq!(
        stock(&inventory_db, &shop.sku).await.0,
        30,
        "only the paid orders keep their units"
    );

    // 3. crm and performance, two replicas each, apply every event once.
    eventually(
        Duration::from_secs(60),
        "crm and performance caught up",
        async || {
            views(&fleet).await
                == Views {
                    orders: (60, 30),
                    crm: (60, 30),
                    facts: 60,
                }
        },
    )
    .await;
    let (_, consumers) = pending_and_consumers(&fleet.redis, "orders").await;
    for (group, count) in &consumers {
        assert_eq!(*count, 2, "both replicas of {group} read the orders stream");
    }
    assert!(consumers.iter().any(|(g, _)| g == "crm"));
    assert!(consumers.iter().any(|(g, _)| g == "performance"));

    // 4. One replica of every service killed mid-run.
    let wave = Instant::now();
    let retried_before = orders.retried.load(Ordering::Relaxed);
    let paid_later = place_orders(&orders, &shop, 80, 8, |n| n % 4 == 0, async {
        for replicas in fleet.all() {
            replicas.kill_first().await;
        }
    })
    .await;
    println!(
        "kill: one replica of each service killed after 40 of 80 orders; the 80 placed in {:?}, \
         {} calls sent again to the surviving replica",
        wave.elapsed(),
        orders.retried.load(Ordering::Relaxed) - retried_before
    );
    assert_eq!(paid_later, 20);
    assert_eq!(
        views(&fleet).await.orders.0,
        140,
        "every order placed once, whatever replica took its retries"
    );
    eventually(
        Duration::from_secs(120),
        "after the kill: unpaid orders cancelled, every event applied, nothing pending",
        async || {
            let mut pending = 0;
            for source in ["orders", "inventory", "identity", "catalog"] {
                pending += pending_and_consumers(&fleet.redis, source).await.0;
            }
            pending == 0
                && views(&fleet).await
                    == Views {
                        orders: (140, 90),
                        crm: (140, 90),
                        facts: 140,
                    }
        },
    )
    .await;
    println!(
        "after the kill: every event applied once and nothing pending {:?} after the wave began",
        wave.elapsed()
    );
    assert_eq!(
        stock(&inventory_db, &shop.sku).await.0,
        50,
        "the 50 paid orders hold their units, no more, no less"
    );
    let unpublished: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(&fleet.orders.db().await)
            .await
            .expect("outbox");
    assert_eq!(unpublished, 0, "the surviving relay published everything");
    // Two replicas filed the same orders side by side, one killed midway: crm's purchase
    // figures, kept by deltas, still count each order once.
    let crm_db = fleet.crm.db().await;
    for (kept, aggregated) in [
        ("customer_stats", "customer_stats_aggregated"),
        ("customer_purchases", "customer_purchases_aggregated"),
    ] {
        // The relation names are the constants above.
        let differing: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM ((SELECT * FROM {kept} EXCEPT ALL SELECT * FROM {aggregated})
                 UNION ALL (SELECT * FROM {aggregated} EXCEPT ALL SELECT * FROM {kept})) d"
        )))
        .fetch_one(&crm_db)
        .await
        .expect("figures");
        assert_eq!(differing, 0, "crm's {kept} against its aggregate");
    }
}

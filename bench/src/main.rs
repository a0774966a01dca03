//! Omni's benchmarks. Speed targets live here, never in tests.
//!
//! `omni-bench flash-sale`: one SKU, many concurrent gRPC buyers reserving one unit each, run
//! twice in one process: through the hot path (Redis admission gate + batched decisions) and
//! through the plain Postgres row-lock path; two scenarios: a sell-out flood (few units, many
//! attempts, mostly refusals) and a sustained sale (many units, mostly acceptances).
//!
//! `omni-bench availability`: GetAvailability throughput and latency beside the same server's
//! grpc.health.v1 Check (a near-empty call: the framework's own ceiling), then GetAvailability
//! paced at half its ceiling to read its latency under moderate load.
//!
//! `omni-bench orders`: PlaceOrder with every hop real (see [`orders`]).
//!
//! `omni-bench events`: crm and performance applying the events of many orders, beside the
//! order intake rate of the same run (see [`events`]).
//!
//! The service runs in this process (started by the testkit on real Postgres and Redis), so
//! client and server share the machine's cores, as they would on one node.

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod events;
mod orders;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use omni_proto::omni::inventory::v1 as pb;
use omni_proto::omni::inventory::v1::availability_service_client::AvailabilityServiceClient;
use omni_proto::omni::inventory::v1::location_service_client::LocationServiceClient;
use omni_proto::omni::inventory::v1::reservation_service_client::ReservationServiceClient;
use omni_proto::omni::inventory::v1::stock_service_client::StockServiceClient;
use omni_runtime::client::AuthChannel;
use omni_testkit::Service;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

struct Args(Vec<String>);

impl Args {
    fn flag(&self, name: &str) -> bool {
        self.0.iter().any(|a| a == name)
    }

    fn get(&self, name: &str, default: usize) -> anyhow::Result<usize> {
        match self.0.iter().position(|a| a == name) {
            None => Ok(default),
            Some(i) => self
                .0
                .get(i + 1)
                .ok_or_else(|| anyhow::anyhow!("{name} needs a value"))?
                .parse()
                .map_err(|e| anyhow::anyhow!("{name}: {e}")),
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let telemetry = omni_runtime::telemetry::init("omni-bench")?;
        omni_testkit::disable_span_capture();
        let result = match args.first().map(String::as_str) {
            Some("flash-sale") => flash_sale(&Args(args[1..].to_vec())).await,
            Some("availability") => availability(&Args(args[1..].to_vec())).await,
            Some("orders") => orders::orders(&Args(args[1..].to_vec())).await,
            Some("events") => events::events(&Args(args[1..].to_vec())).await,
            _ => Err(anyhow::anyhow!(
                "usage: omni-bench flash-sale [--flood-units 1000] [--flood-attempts 50000] \
                 [--sustained-units 100000] [--buyers 64] [--hot-only]\n       omni-bench availability \
                 [--seconds 10] [--concurrency 64] [--skus 50]\n       omni-bench orders \
                 [--seconds 20] [--concurrency 32] [--skus 40] [--customers 500] [--pool 32] [--external]\n       \
                 omni-bench events [--orders 100000] [--intake-seconds 10] [--concurrency 32] [--pool 32]"
            )),
        };
        telemetry.shutdown();
        result
    })
}

async fn start_inventory() -> anyhow::Result<Service> {
    let common = omni_testkit::common_config("bench").await?;
    let mut common = common;
    common.database_max_connections = 32;
    let config = inventory::Config {
        common: common.clone(),
        default_ttl: Duration::from_secs(3600),
        expiry_interval: Duration::from_secs(5),
        // Detection would turn the row-lock run hot by itself; the operator decides here.
        hot_detect_concurrency: usize::MAX,
    };
    Service::start("inventory", common, move |listener, shutdown| {
        inventory::run(config, listener, shutdown)
    })
    .await
}

struct Clients {
    locations: LocationServiceClient<AuthChannel>,
    stock: StockServiceClient<AuthChannel>,
    reservations: ReservationServiceClient<AuthChannel>,
    availability: AvailabilityServiceClient<AuthChannel>,
}

impl Clients {
    fn new(svc: &Service) -> Self {
        let admin = svc.admin();
        Self {
            locations: LocationServiceClient::new(admin.clone()),
            stock: StockServiceClient::new(admin.clone()),
            reservations: ReservationServiceClient::new(admin.clone()),
            availability: AvailabilityServiceClient::new(admin),
        }
    }

    async fn location(
        &mut self,
        code: &str,
        kind: pb::LocationKind,
        point: Option<(f64, f64)>,
    ) -> anyhow::Result<String> {
        let location = pb::Location {
            code: code.into(),
            name: code.into(),
            kind: kind as i32,
            channel_id: if kind == pb::LocationKind::Store {
                uuid::Uuid::now_v7().to_string()
            } else {
                String::new()
            },
            address: point.map(|(latitude, longitude)| omni_proto::common::Address {
                location: Some(omni_proto::common::GeoPoint {
                    latitude,
                    longitude,
                }),
                ..Default::default()
            }),
            pickup_enabled: kind == pb::LocationKind::Store,
            ships_orders: true,
            ..Default::default()
        };
        Ok(self
            .locations
            .create_location(pb::CreateLocationRequest {
                idempotency_key: uuid::Uuid::now_v7().to_string(),
                location: Some(location),
            })
            .await?
            .into_inner()
            .location
            .ok_or_else(|| anyhow::anyhow!("no location"))?
            .id)
    }

    async fn receive(&mut self, location: &str, sku: &str, units: i64) -> anyhow::Result<()> {
        self.stock
            .record_movement(pb::RecordMovementRequest {
                idempotency_key: uuid::Uuid::now_v7().to_string(),
                location_id: location.into(),
                kind: pb::MovementKind::Receipt as i32,
                lines: vec![pb::MovementLine {
                    sku_id: sku.into(),
                    quantity: units,
                }],
                reason: "bench".into(),
                reference: String::new(),
            })
            .await?;
        Ok(())
    }
}

#[derive(Debug)]
struct SaleResult {
    accepted: usize,
    refused: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    sold_in_postgres: i64,
}

impl SaleResult {
    fn per_second(&self, n: usize) -> f64 {
        n as f64 / self.elapsed.as_secs_f64()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Sells `units` of a fresh SKU to `buyers` concurrent buyers; stops after `attempts` (flood) or
/// at the first refusal once sold out (sustained).
async fn sale(
    svc: &Service,
    units: i64,
    buyers: usize,
    attempts: Option<usize>,
    hot: bool,
) -> anyhow::Result<SaleResult> {
    let mut clients = Clients::new(svc);
    let sku = uuid::Uuid::now_v7().to_string();
    let warehouse = clients
        .location(
            &format!("WH-{}", &sku[24..]),
            pb::LocationKind::Warehouse,
            None,
        )
        .await?;
    clients.receive(&warehouse, &sku, units).await?;
    if hot {
        clients
            .stock
            .set_hot_sku(pb::SetHotSkuRequest {
                sku_id: sku.clone(),
                hot: true,
                reason: "bench".into(),
                until: None,
            })
            .await?;
    }
    let issued = Arc::new(AtomicUsize::new(0));
    let sold_out = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(buyers);
    for _ in 0..buyers {
        let mut client = clients.reservations.clone();
        let (sku, issued, sold_out) = (sku.clone(), issued.clone(), sold_out.clone());
        tasks.push(tokio::spawn(async move {
            let (mut accepted, mut refused, mut latencies) = (0usize, 0usize, Vec::new());
            loop {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                let stop = match attempts {
                    Some(max) => n >= max,
                    None => sold_out.load(Ordering::Relaxed),
                };
                if stop {
                    break;
                }
                let request = pb::ReserveRequest {
                    idempotency_key: uuid::Uuid::now_v7().to_string(),
                    lines: vec![pb::ReserveLine {
                        sku_id: sku.clone(),
                        quantity: 1,
                        location_ids: vec![],
                    }],
                    channel_id: "livestream".into(),
                    ttl: None,
                    reference: String::new(),
                };
                let t = Instant::now();
                let outcome = client.reserve(request).await;
                latencies.push(t.elapsed());
                match outcome {
                    Ok(_) => accepted += 1,
                    Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                        refused += 1;
                        sold_out.store(true, Ordering::Relaxed);
                    }
                    Err(status) => return Err(anyhow::anyhow!("unexpected reply: {status:?}")),
                }
            }
            anyhow::Ok((accepted, refused, latencies))
        }));
    }
    let (mut accepted, mut refused, mut latencies) = (0, 0, Vec::new());
    for task in tasks {
        let (a, r, l) = task.await??;
        accepted += a;
        refused += r;
        latencies.extend(l);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let db = svc.db().await?;
    let sold_in_postgres: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(reserved), 0)::bigint FROM stock_levels WHERE sku_id = $1",
    )
    .bind(&sku)
    .fetch_one(&db)
    .await?;
    Ok(SaleResult {
        accepted,
        refused,
        elapsed,
        latencies,
        sold_in_postgres,
    })
}

fn report(name: &str, units: i64, r: &SaleResult) -> bool {
    let exact = r.accepted as i64 == units && r.sold_in_postgres == units;
    println!(
        "  {name:<22} {:>9} {:>9} {:>11.0} {:>11.0} {:>11.0} {:>8.2} {:>8.2}   sold {} of {units} {}",
        r.accepted,
        r.refused,
        r.per_second(r.accepted + r.refused),
        r.per_second(r.accepted),
        r.per_second(r.refused),
        percentile(&r.latencies, 50.0).as_secs_f64() * 1000.0,
        percentile(&r.latencies, 99.0).as_secs_f64() * 1000.0,
        r.sold_in_postgres,
        if exact { "(exact)" } else { "(WRONG)" },
    );
    exact
}

fn header() {
    println!(
        "  {:<22} {:>9} {:>9} {:>11} {:>11} {:>11} {:>8} {:>8}",
        "path", "accepted", "refused", "attempts/s", "accepted/s", "refused/s", "p50 ms", "p99 ms"
    );
}

async fn flash_sale(args: &Args) -> anyhow::Result<()> {
    let flood_units = args.get("--flood-units", 1_000)? as i64;
    let flood_attempts = args.get("--flood-attempts", 50_000)?;
    let sustained_units = args.get("--sustained-units", 100_000)? as i64;
    let buyers = args.get("--buyers", 64)?;
    // For iterating on the hot path only; the figures to record come from full runs.
    let hot_only = args.flag("--hot-only");
    let svc = start_inventory().await?;
    let mut exact = true;

    println!(
        "\nsell-out flood: {flood_units} units, {buyers} buyers, {flood_attempts} attempts of one unit"
    );
    header();
    let gate = sale(&svc, flood_units, buyers, Some(flood_attempts), true).await?;
    exact &= report("hot gate + batching", flood_units, &gate);
    if !hot_only {
        let plain = sale(&svc, flood_units, buyers, Some(flood_attempts), false).await?;
        exact &= report("postgres row lock", flood_units, &plain);
        println!(
            "  attempts/s ratio (hot / row lock): {:.1}x",
            gate.per_second(gate.accepted + gate.refused)
                / plain.per_second(plain.accepted + plain.refused)
        );
    }

    println!(
        "\nsustained sale: {sustained_units} units, {buyers} buyers, one unit each until sold out"
    );
    header();
    let gate = sale(&svc, sustained_units, buyers, None, true).await?;
    exact &= report("hot gate + batching", sustained_units, &gate);
    if !hot_only {
        let plain = sale(&svc, sustained_units, buyers, None, false).await?;
        exact &= report("postgres row lock", sustained_units, &plain);
        println!(
            "  accepted/s ratio (hot / row lock): {:.1}x",
            gate.per_second(gate.accepted) / plain.per_second(plain.accepted)
        );
    }
    svc.stop().await?;
    anyhow::ensure!(exact, "a sale did not sell exactly its units");
    Ok(())
}

/// Runs `call` from `concurrency` tasks for `duration`, optionally paced to `rate` calls/s in
/// total; returns (calls per second, sorted latencies).
async fn drive<F, Fut>(
    concurrency: usize,
    duration: Duration,
    rate: Option<f64>,
    call: F,
) -> anyhow::Result<(f64, Vec<Duration>)>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let call = Arc::new(call);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut ticker = rate.map(|r| {
                let mut t = tokio::time::interval(Duration::from_secs_f64(concurrency as f64 / r));
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            let mut i = worker;
            while started.elapsed() < duration {
                if let Some(t) = ticker.as_mut() {
                    t.tick().await;
                }
                let t = Instant::now();
                call(i).await?;
                latencies.push(t.elapsed());
                i += concurrency;
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    let elapsed = started.elapsed();
    all.sort();
    Ok((all.len() as f64 / elapsed.as_secs_f64(), all))
}

async fn availability(args: &Args) -> anyhow::Result<()> {
    let seconds = args.get("--seconds", 10)?;
    let concurrency = args.get("--concurrency", 64)?;
    let sku_count = args.get("--skus", 50)?;
    let svc = start_inventory().await?;
    let mut clients = Clients::new(&svc);
    let mut locations = vec![
        clients
            .location("WH-A", pb::LocationKind::Warehouse, None)
            .await?,
    ];
    for (i, (lat, lon)) in [(45.76, 4.83), (48.85, 2.35), (43.30, 5.37)]
        .iter()
        .enumerate()
    {
        locations.push(
            clients
                .location(
                    &format!("ST-{i}"),
                    pb::LocationKind::Store,
                    Some((*lat, *lon)),
                )
                .await?,
        );
    }
    let skus: Vec<String> = (0..sku_count)
        .map(|_| uuid::Uuid::now_v7().to_string())
        .collect();
    for sku in &skus {
        for l in &locations {
            clients.receive(l, sku, 100).await?;
        }
    }
    let duration = Duration::from_secs(seconds as u64);
    let skus = Arc::new(skus);

    let health_channel = svc.channel();
    let (health_rps, health_lat) = drive(concurrency, duration, None, move |_| {
        let mut client = HealthClient::new(health_channel.clone());
        async move {
            client
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await?;
            Ok(())
        }
    })
    .await?;
    let make_call = |client: AvailabilityServiceClient<AuthChannel>, skus: Arc<Vec<String>>| {
        move |i: usize| {
            let mut client = client.clone();
            let sku = skus[i % skus.len()].clone();
            async move {
                client
                    .get_availability(pb::GetAvailabilityRequest {
                        sku_ids: vec![sku],
                        channel_id: String::new(),
                        include_locations: true,
                        location_ids: vec![],
                    })
                    .await?;
                Ok(())
            }
        }
    };
    let (avail_rps, avail_lat) = drive(
        concurrency,
        duration,
        None,
        make_call(clients.availability.clone(), skus.clone()),
    )
    .await?;
    let paced = avail_rps / 2.0;
    let (paced_rps, paced_lat) = drive(
        concurrency,
        duration,
        Some(paced),
        make_call(clients.availability.clone(), skus.clone()),
    )
    .await?;

    println!(
        "\navailability: {sku_count} SKUs at 4 locations, {concurrency} concurrent callers, {seconds} s per run"
    );
    println!(
        "  {:<36} {:>10} {:>8} {:>8}",
        "call", "calls/s", "p50 ms", "p99 ms"
    );
    for (name, rps, lat) in [
        ("grpc.health.v1 Check (ceiling)", health_rps, &health_lat),
        ("GetAvailability, flat out", avail_rps, &avail_lat),
        ("GetAvailability, paced at half", paced_rps, &paced_lat),
    ] {
        println!(
            "  {name:<36} {rps:>10.0} {:>8.2} {:>8.2}",
            percentile(lat, 50.0).as_secs_f64() * 1000.0,
            percentile(lat, 99.0).as_secs_f64() * 1000.0
        );
    }
    println!(
        "  GetAvailability / health throughput: {:.0}%",
        100.0 * avail_rps / health_rps
    );
    svc.stop().await?;
    Ok(())
}

//! `omni seed`: a realistic demo dataset through the public APIs - three cities with two stores
//! each and a warehouse, every kind of channel, 200 SKUs listed everywhere and in stock,
//! 5,000 customers known in different channels, 50,000 orders over the last 180 days in every
//! channel, some returned in stores, and 180 days of traffic and marketing spend per channel.
//! `--scale` shrinks the counts (tests use a small fraction).
//!
//! The 180 days of orders are history: they go through order-management's `ImportOrders`
//! (priced by catalog as of their day, published with their own dates, so crm and performance
//! see half a year), in batches, which is what makes 50,000 of them a matter of minutes. Today's
//! orders (one in 250) are placed live through `PlaceOrder` and carried through payment,
//! picking, hand-over or delivery and returns, as any channel's would be, so stock moves and
//! today's sales show up.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use clap::Args;
use omni_proto::common::{ChannelKind, DateRange, Money};
use omni_proto::omni::catalog::v1 as cat;
use omni_proto::omni::catalog::v1::quote_service_client::QuoteServiceClient;
use omni_proto::omni::identity::v1 as id;
use omni_proto::omni::inventory::v1 as inv;
use omni_proto::omni::orders::v1 as pb;
use omni_proto::omni::orders::v1::fulfilment_service_client::FulfilmentServiceClient;
use omni_proto::omni::orders::v1::order_service_client::OrderServiceClient;
use omni_proto::omni::orders::v1::return_service_client::ReturnServiceClient;
use omni_proto::omni::performance::v1 as perf;
use omni_proto::omni::performance::v1::input_service_client::InputServiceClient;
use omni_proto::omni::performance::v1::kpi_service_client::KpiServiceClient;
use omni_runtime::client::AuthChannel;
use omni_runtime::time::timestamp;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::json;
use tokio::sync::Mutex;
use tokio::task::JoinSet;

use super::setup::{self, LocationSpec, SkuSpec, eur};
use crate::config::Service;
use crate::ctx::{Ctx, key};
use crate::render::{CliError, CliResult, Fields, Output, code_name};

/// One order in this many is placed live today; the rest are the 180 days of history.
const LIVE_SHARE: usize = 250;

#[derive(Debug, Args)]
pub struct SeedArgs {
    /// Multiplies the SKU, customer and order counts (1 = 200 SKUs, 5,000 customers, 50,000
    /// orders, of which 200 are placed live today).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Return once the orders are in, without waiting for performance to count them (its
    /// consumer then catches up in the background).
    #[arg(long)]
    no_wait: bool,
    /// Seed of the random choices, for a repeatable dataset.
    #[arg(long, default_value_t = 7)]
    random_seed: u64,
}

const CITIES: [(&str, &str, (f64, f64)); 3] = [
    ("LYS", "Lyon", (45.7640, 4.8357)),
    ("PAR", "Paris", (48.8566, 2.3522)),
    ("MRS", "Marseille", (43.2965, 5.3698)),
];

const CATEGORIES: [(&str, &[&str]); 4] = [
    (
        "Apparel",
        &[
            "Linen shirt",
            "Organic tee",
            "Wool sweater",
            "Denim jacket",
            "Silk blouse",
        ],
    ),
    (
        "Accessories",
        &[
            "Leather belt",
            "Silk scarf",
            "Canvas tote",
            "Wool beanie",
            "Sunglasses",
        ],
    ),
    (
        "Home",
        &[
            "Stoneware mug",
            "Linen napkins",
            "Scented candle",
            "Cotton throw",
            "Oak tray",
        ],
    ),
    (
        "Beauty",
        &[
            "Hand cream",
            "Face serum",
            "Lip balm",
            "Body oil",
            "Shampoo bar",
        ],
    ),
];

const SIZES: [&str; 4] = ["S", "M", "L", "XL"];

/// How orders spread over channels: (channel kind, how the order reaches the customer, weight).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Route {
    Ship,
    Pickup,
    CarryOut,
}

const MIX: [(ChannelKind, Route, u32); 8] = [
    (ChannelKind::EShop, Route::Ship, 30),
    (ChannelKind::EShop, Route::Pickup, 15),
    (ChannelKind::Store, Route::CarryOut, 25),
    (ChannelKind::Livestream, Route::Ship, 10),
    (ChannelKind::Social, Route::Ship, 7),
    (ChannelKind::Associate, Route::Pickup, 3),
    (ChannelKind::Marketplace, Route::Ship, 5),
    (ChannelKind::Store, Route::Pickup, 5),
];

struct Dataset {
    warehouse: inv::Location,
    stores: Vec<inv::Location>,
    /// Store channel per store, by store id.
    store_channels: BTreeMap<String, cat::Channel>,
    /// The remote channels, by kind.
    remote: BTreeMap<i32, cat::Channel>,
    skus: Vec<(String, i64)>,
    customers: Vec<String>,
}

impl Dataset {
    /// The channel of a store (where returns made there are recorded).
    fn store_channel_id(&self, store: &inv::Location) -> String {
        self.store_channels
            .get(&store.id)
            .map(|c| c.id.clone())
            .unwrap_or_default()
    }
}

#[derive(Default)]
struct Tally {
    placed: usize,
    completed: usize,
    returns: usize,
    failed: BTreeMap<String, usize>,
    first_error: Option<String>,
}

pub async fn run(ctx: &Ctx, args: SeedArgs, out: &mut dyn Write) -> CliResult<Output> {
    if !(args.scale > 0.0 && args.scale <= 10.0) {
        return Err(CliError::Usage("--scale must be in (0, 10]".into()));
    }
    let scaled = |n: f64, min: usize| ((n * args.scale).round() as usize).max(min);
    let (sku_count, customer_count, order_count) =
        (scaled(200.0, 20), scaled(5000.0, 5), scaled(50_000.0, 10));
    let concurrency = args.concurrency.clamp(1, 256);
    let started = Instant::now();
    let tag = setup::run_tag();
    writeln!(
        out,
        "seeding {sku_count} SKUs, {customer_count} customers and {order_count} orders (tag {tag})"
    )?;

    let mut data = places(ctx, &tag).await?;
    writeln!(
        out,
        "  {} stores in {} cities and a warehouse; {} channels",
        data.stores.len(),
        CITIES.len(),
        data.store_channels.len() + data.remote.len()
    )?;
    data.skus = catalog(ctx, &tag, sku_count, &data, concurrency, &mut *out).await?;
    stock(ctx, &data).await?;
    writeln!(out, "  stock received at every location")?;
    data.customers = customers(ctx, &tag, customer_count, concurrency, &mut *out).await?;
    let days = inputs(ctx, &data, args.random_seed).await?;
    writeln!(
        out,
        "  {days} days of traffic and spend recorded per channel"
    )?;
    let live_count = order_count.div_ceil(LIVE_SHARE);
    let past = history(
        ctx,
        &data,
        &tag,
        order_count - live_count,
        args.random_seed,
        &mut *out,
    )
    .await?;
    let mut channel_ids: Vec<String> = data.store_channels.values().map(|c| c.id.clone()).collect();
    channel_ids.extend(data.remote.values().map(|c| c.id.clone()));
    let tally = orders(
        ctx,
        Arc::new(data),
        live_count,
        concurrency,
        args.random_seed,
        &mut *out,
    )
    .await?;

    // What the KPIs must count once performance has read the events: every completed order.
    // (Today's few unpaid orders count too, until the sweeper cancels them; they are left out of
    // the target so that an early cancellation cannot keep it out of reach.)
    let countable = past.completed + tally.completed;
    let counted = if args.no_wait {
        None
    } else {
        Some(wait_counted(ctx, &channel_ids, countable, &mut *out).await?)
    };

    let failed: usize = tally.failed.values().sum();
    let mut fields = Fields::new();
    fields
        .add("orders imported (180 days)", past.imported.to_string())
        .add("  completed", past.completed.to_string())
        .add("  cancelled", past.cancelled.to_string())
        .add("  returned", past.returned.to_string())
        .add("orders placed today", tally.placed.to_string())
        .add("  completed", tally.completed.to_string())
        .add("  returned", tally.returns.to_string())
        .add("  failed", failed.to_string())
        .add(
            "counted by performance",
            counted.map_or_else(
                || "not waited for (--no-wait): it catches up in the background".to_owned(),
                |n| format!("{n} of {countable}"),
            ),
        )
        .add("took", format!("{:.0} s", started.elapsed().as_secs_f64()));
    for (code, n) in &tally.failed {
        fields.add(&format!("    {code}"), n.to_string());
    }
    if let Some(e) = &tally.first_error {
        fields.add("first failure", e.trim());
    }
    Ok(Output::new(
        json!({
            "tag": tag,
            "locations": CITIES.len() * 2 + 1,
            "skus": sku_count,
            "customers": customer_count,
            "orders": {
                "asked": order_count,
                "imported": past.imported,
                "importedCompleted": past.completed,
                "importedCancelled": past.cancelled,
                "importedReturns": past.returned,
                "placed": tally.placed,
                "completed": tally.completed,
                "returned": tally.returns,
                "failed": tally.failed,
            },
            "countable": countable,
            "counted": counted,
            "inputDays": days,
            "seconds": started.elapsed().as_secs(),
        }),
        fields.render(),
    ))
}

async fn places(ctx: &Ctx, tag: &str) -> CliResult<Dataset> {
    let warehouse = setup::create_location(
        ctx,
        LocationSpec {
            code: &format!("WH-{tag}"),
            name: "Central warehouse",
            kind: inv::LocationKind::Warehouse,
            city: "Saint-Quentin-Fallavier",
            point: (45.6400, 5.1100),
            pickup: false,
            ships: true,
            time_zone: "Europe/Paris",
        },
    )
    .await?;
    let mut stores = Vec::new();
    let mut store_channels = BTreeMap::new();
    for (code, city, (lat, lon)) in CITIES {
        for n in 1..=2 {
            let offset = f64::from(n) * 0.01;
            let store = setup::create_location(
                ctx,
                LocationSpec {
                    code: &format!("{code}-{n:02}-{tag}"),
                    name: &format!("{city} {n}"),
                    kind: inv::LocationKind::Store,
                    city,
                    point: (lat + offset, lon - offset),
                    pickup: true,
                    ships: n == 1,
                    time_zone: "Europe/Paris",
                },
            )
            .await?;
            let channel = setup::create_channel(
                ctx,
                ChannelKind::Store,
                &format!("Store {city} {n} {tag}"),
                Some(&store),
            )
            .await?;
            store_channels.insert(store.id.clone(), channel);
            stores.push(store);
        }
    }
    let mut remote = BTreeMap::new();
    for (kind, name) in [
        (ChannelKind::EShop, "E-shop"),
        (ChannelKind::Livestream, "Livestream"),
        (ChannelKind::Social, "Social shop"),
        (ChannelKind::Associate, "Associates"),
        (ChannelKind::Marketplace, "Marketplace"),
    ] {
        let channel = setup::create_channel(ctx, kind, &format!("{name} {tag}"), None).await?;
        remote.insert(kind as i32, channel);
    }
    Ok(Dataset {
        warehouse,
        stores,
        store_channels,
        remote,
        skus: Vec::new(),
        customers: Vec::new(),
    })
}

/// Products of four SKUs (sizes), listed on every channel at their list price.
async fn catalog(
    ctx: &Ctx,
    tag: &str,
    sku_count: usize,
    data: &Dataset,
    concurrency: usize,
    out: &mut dyn Write,
) -> CliResult<Vec<(String, i64)>> {
    let mut rng = StdRng::seed_from_u64(sku_count as u64);
    let mut skus = Vec::new();
    let mut categories = Vec::new();
    for (name, _) in CATEGORIES {
        categories.push(
            setup::create_category(ctx, &format!("{name} {tag}"))
                .await?
                .id,
        );
    }
    let mut product = 0usize;
    while skus.len() < sku_count {
        let (_, names) = CATEGORIES[product % CATEGORIES.len()];
        let name = names[(product / CATEGORIES.len()) % names.len()];
        let price = rng.gen_range(5..=120) * 100 - 10;
        let specs: Vec<SkuSpec> = SIZES
            .iter()
            .take(sku_count - skus.len())
            .map(|size| SkuSpec {
                code: format!("P{product:03}-{size}-{tag}"),
                price,
                cost: price * 2 / 5,
                variant: vec![("size".into(), (*size).into())],
            })
            .collect();
        let created = setup::create_product(
            ctx,
            &categories[product % categories.len()],
            &format!("{name} no. {}", product / CATEGORIES.len() + 1),
            "Maison Lumière",
            &specs,
        )
        .await?;
        skus.extend(created.skus.into_iter().map(|s| (s.id, price)));
        product += 1;
    }
    let channels: Vec<String> = data
        .store_channels
        .values()
        .chain(data.remote.values())
        .map(|c| c.id.clone())
        .collect();
    let listings: Vec<(String, String, i64)> = skus
        .iter()
        .flat_map(|(sku, price)| {
            channels
                .iter()
                .map(move |channel| (sku.clone(), channel.clone(), *price))
        })
        .collect();
    let total = listings.len();
    let listings = Arc::new(Mutex::new(listings));
    let mut tasks = JoinSet::new();
    for _ in 0..concurrency {
        let listings = listings.clone();
        let channel = ctx.authed(Service::Catalog)?;
        tasks.spawn(async move {
            let mut pricing =
                omni_proto::omni::catalog::v1::pricing_service_client::PricingServiceClient::new(
                    channel,
                );
            loop {
                let next = listings.lock().await.pop();
                let Some((sku, channel, price)) = next else {
                    return Ok::<_, tonic::Status>(());
                };
                pricing
                    .set_listing(cat::SetListingRequest {
                        listing: Some(cat::Listing {
                            sku_id: sku,
                            channel_id: channel,
                            price: eur(price),
                            listed: true,
                            ..Default::default()
                        }),
                    })
                    .await?;
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined
            .map_err(|e| CliError::Other(e.into()))?
            .map_err(|status| CliError::Status {
                service: "catalog",
                status,
            })?;
    }
    writeln!(
        out,
        "  {} SKUs of {product} products, {total} listings",
        skus.len()
    )?;
    Ok(skus)
}

async fn stock(ctx: &Ctx, data: &Dataset) -> CliResult<()> {
    let lines = |per_sku: i64| -> Vec<(String, i64)> {
        data.skus
            .iter()
            .map(|(sku, _)| (sku.clone(), per_sku))
            .collect()
    };
    setup::receive(ctx, &data.warehouse.id, &lines(2_000)).await?;
    for store in &data.stores {
        setup::receive(ctx, &store.id, &lines(300)).await?;
    }
    Ok(())
}

/// Customers with a phone, each known in one channel by an account there.
async fn customers(
    ctx: &Ctx,
    tag: &str,
    count: usize,
    concurrency: usize,
    out: &mut dyn Write,
) -> CliResult<Vec<String>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    // Phone numbers unique to this run: a number derived from the tag, then the index.
    let prefix = u32::from_str_radix(tag, 16).unwrap_or(0) % 90 + 10;
    for _ in 0..concurrency {
        let next = next.clone();
        let tag = tag.to_owned();
        let mut identity =
            omni_proto::omni::identity::v1::identity_service_client::IdentityServiceClient::new(
                ctx.authed(Service::Identity)?,
            );
        tasks.spawn(async move {
            let mut ids = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return Ok::<_, tonic::Status>(ids);
                }
                let kinds = [
                    ChannelKind::Store,
                    ChannelKind::EShop,
                    ChannelKind::Livestream,
                    ChannelKind::Social,
                ];
                let kind = kinds[i % kinds.len()];
                let response = identity
                    .resolve_customer(id::ResolveCustomerRequest {
                        channel_account: Some(id::ChannelAccountRef {
                            channel_kind: kind as i32,
                            external_id: format!("seed-{tag}-{i}"),
                        }),
                        phone: format!("+33 7 {prefix} {:06}", i),
                        member_number: String::new(),
                        name: format!("Customer {i}"),
                        email: String::new(),
                    })
                    .await?
                    .into_inner();
                if let Some(c) = response.customer {
                    ids.push(c.id);
                }
            }
        });
    }
    let mut ids = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        ids.extend(
            joined
                .map_err(|e| CliError::Other(e.into()))?
                .map_err(|status| CliError::Status {
                    service: "identity",
                    status,
                })?,
        );
    }
    ids.sort();
    writeln!(out, "  {} customers", ids.len())?;
    Ok(ids)
}

/// Traffic for every channel and marketing spend for the remote ones, for the last 180 days.
async fn inputs(ctx: &Ctx, data: &Dataset, seed: u64) -> CliResult<usize> {
    const DAYS: usize = 180;
    let mut rng = StdRng::seed_from_u64(seed);
    let today = chrono::Utc::now().date_naive();
    let mut calls = Vec::new();
    for day in 0..DAYS {
        let date = crate::commands::kpi::date(today - chrono::Days::new(day as u64));
        for channel in data.store_channels.values() {
            calls.push((
                Some(perf::Traffic {
                    channel_id: channel.id.clone(),
                    day: Some(date),
                    visits: rng.gen_range(150..400),
                    ..Default::default()
                }),
                None,
            ));
        }
        for channel in data.remote.values() {
            let impressions = rng.gen_range(5_000..40_000);
            calls.push((
                Some(perf::Traffic {
                    channel_id: channel.id.clone(),
                    day: Some(date),
                    visits: rng.gen_range(400..3_000),
                    impressions,
                    interactions: impressions / rng.gen_range(8..30),
                    reach: impressions / 2,
                    recorded_at: None,
                }),
                Some(perf::Spend {
                    channel_id: channel.id.clone(),
                    day: Some(date),
                    category: perf::SpendCategory::Marketing as i32,
                    amount: Some(Money {
                        minor_units: rng.gen_range(5_000..60_000),
                        currency: "EUR".into(),
                    }),
                    recorded_at: None,
                }),
            ));
        }
    }
    let calls = Arc::new(Mutex::new(calls));
    let mut tasks = JoinSet::new();
    for _ in 0..8 {
        let calls = calls.clone();
        let mut client = InputServiceClient::new(ctx.authed(Service::Performance)?);
        tasks.spawn(async move {
            loop {
                let next = calls.lock().await.pop();
                let Some((traffic, spend)) = next else {
                    return Ok::<_, tonic::Status>(());
                };
                client
                    .record_traffic(perf::RecordTrafficRequest { traffic })
                    .await?;
                if spend.is_some() {
                    client
                        .record_spend(perf::RecordSpendRequest { spend })
                        .await?;
                }
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined
            .map_err(|e| CliError::Other(e.into()))?
            .map_err(|status| CliError::Status {
                service: "performance",
                status,
            })?;
    }
    Ok(DAYS)
}

/// Clients one order worker uses.
struct Clients {
    orders: OrderServiceClient<AuthChannel>,
    fulfilment: FulfilmentServiceClient<AuthChannel>,
    returns: ReturnServiceClient<AuthChannel>,
    quotes: QuoteServiceClient<AuthChannel>,
}

enum Outcome {
    Completed { returned: bool },
    Placed,
}

async fn orders(
    ctx: &Ctx,
    data: Arc<Dataset>,
    count: usize,
    concurrency: usize,
    seed: u64,
    out: &mut dyn Write,
) -> CliResult<Tally> {
    let next = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut tasks = JoinSet::new();
    for _ in 0..concurrency {
        let (next, finished, tally, data) =
            (next.clone(), finished.clone(), tally.clone(), data.clone());
        let mut clients = Clients {
            orders: OrderServiceClient::new(ctx.authed(Service::Orders)?),
            fulfilment: FulfilmentServiceClient::new(ctx.authed(Service::Orders)?),
            returns: ReturnServiceClient::new(ctx.authed(Service::Orders)?),
            quotes: QuoteServiceClient::new(ctx.authed(Service::Catalog)?),
        };
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return;
                }
                let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(1_000_003) + i as u64);
                let result = one_order(&mut clients, &data, &mut rng).await;
                finished.fetch_add(1, Ordering::Relaxed);
                let mut t = tally.lock().await;
                match result {
                    Ok(Outcome::Completed { returned }) => {
                        t.placed += 1;
                        t.completed += 1;
                        t.returns += usize::from(returned);
                    }
                    Ok(Outcome::Placed) => t.placed += 1,
                    Err(status) => {
                        *t.failed
                            .entry(code_name(status.code()).to_owned())
                            .or_default() += 1;
                        if t.first_error.is_none() {
                            t.first_error = Some(
                                CliError::Status {
                                    service: "order-management",
                                    status,
                                }
                                .human(),
                            );
                        }
                    }
                }
            }
        });
    }
    // Progress: a bar redrawn in place about every second.
    let mut ticker = tokio::time::interval(std::time::Duration::from_secs(1));
    let started = Instant::now();
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                Some(result) => result.map_err(|e| CliError::Other(e.into()))?,
                None => break,
            },
            _ = ticker.tick() => {
                let done = finished.load(Ordering::Relaxed);
                progress(out, "today", (done, count), (started, 0))?;
            }
        }
    }
    progress(out, "today", (count, count), (started, 0))?;
    writeln!(out)?;
    let tally = std::mem::take(&mut *tally.lock().await);
    Ok(tally)
}

/// Waits until performance counts at least `expected` orders in the seeded channels over the
/// 180 days (its consumer reads the orders' events after they are written), with a progress
/// bar; gives up, without failing, when the count stops moving for two minutes.
async fn wait_counted(
    ctx: &Ctx,
    channel_ids: &[String],
    expected: usize,
    out: &mut dyn Write,
) -> CliResult<usize> {
    let mut kpis = KpiServiceClient::new(ctx.authed(Service::Performance)?);
    let today = chrono::Utc::now().date_naive();
    let request = perf::GetKpiReportRequest {
        range: Some(DateRange {
            start: Some(crate::commands::kpi::date(today - chrono::Days::new(179))),
            end: Some(crate::commands::kpi::date(today)),
        }),
        channel_ids: channel_ids.to_vec(),
        ..Default::default()
    };
    let started = Instant::now();
    let (mut last, mut moved) = (0, Instant::now());
    let mut first = None;
    loop {
        let report = match kpis.get_kpi_report(request.clone()).await {
            Ok(response) => response.into_inner(),
            // Everything is written; only the waiting ends (identity's tokens last 15 minutes by
            // default; dev-up makes them last a working day).
            Err(status) if status.code() == tonic::Code::Unauthenticated => {
                writeln!(out)?;
                writeln!(
                    out,
                    "  the login expired while waiting at {last} of {expected} orders counted; \
                     performance keeps counting (omni login, then omni kpi report)"
                )?;
                return Ok(last);
            }
            Err(status) => {
                return Err(CliError::Status {
                    service: "performance",
                    status,
                });
            }
        };
        let counted = report
            .total
            .and_then(|t| t.current)
            .map_or(0, |c| usize::try_from(c.orders).unwrap_or(0));
        let from = *first.get_or_insert(counted);
        progress(
            out,
            "counted",
            (counted.min(expected), expected),
            (started, from),
        )?;
        if counted >= expected {
            writeln!(out)?;
            return Ok(counted);
        }
        if counted != last {
            (last, moved) = (counted, Instant::now());
        } else if moved.elapsed() > std::time::Duration::from_secs(120) {
            writeln!(out)?;
            writeln!(
                out,
                "  performance stopped counting at {counted} of {expected} orders; see its logs"
            )?;
            return Ok(counted);
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// What the history import brought in.
#[derive(Debug, Default)]
struct History {
    imported: usize,
    completed: usize,
    cancelled: usize,
    returned: usize,
}

/// Orders per ImportOrders call (the contract's maximum) and calls in flight.
const IMPORT_BATCH: usize = 500;
const IMPORTS_IN_FLIGHT: usize = 2;

/// `count` orders over the 180 days before today, imported in batches with their own dates.
async fn history(
    ctx: &Ctx,
    data: &Dataset,
    tag: &str,
    count: usize,
    seed: u64,
    out: &mut dyn Write,
) -> CliResult<History> {
    let now = chrono::Utc::now();
    let mut rng = StdRng::seed_from_u64(seed ^ 0x4157_0000);
    let mut tally = History::default();
    let mut orders = Vec::with_capacity(count);
    for i in 0..count {
        let order = historical_order(data, &mut rng, &format!("seed-{tag}-{i}"), now).map_err(
            |status| CliError::Status {
                service: "order-management",
                status,
            },
        )?;
        if order.status() == pb::OrderStatus::Cancelled {
            tally.cancelled += 1;
        } else {
            tally.completed += 1;
        }
        tally.returned += order.returns.len();
        orders.push(order);
    }
    let batches: Vec<Vec<pb::HistoricalOrder>> =
        orders.chunks(IMPORT_BATCH).map(<[_]>::to_vec).collect();
    let batches = Arc::new(Mutex::new(batches));
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..IMPORTS_IN_FLIGHT {
        let (batches, done) = (batches.clone(), done.clone());
        let mut client = OrderServiceClient::new(ctx.authed(Service::Orders)?);
        tasks.spawn(async move {
            loop {
                let next = batches.lock().await.pop();
                let Some(orders) = next else {
                    return Ok::<_, tonic::Status>(());
                };
                let n = orders.len();
                client
                    .import_orders(pb::ImportOrdersRequest { orders })
                    .await?;
                done.fetch_add(n, Ordering::Relaxed);
            }
        });
    }
    let mut ticker = tokio::time::interval(std::time::Duration::from_secs(1));
    let started = Instant::now();
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                Some(result) => result
                    .map_err(|e| CliError::Other(e.into()))?
                    .map_err(|status| CliError::Status { service: "order-management", status })?,
                None => break,
            },
            _ = ticker.tick() => {
                progress(out, "history", (done.load(Ordering::Relaxed), count), (started, 0))?;
            }
        }
    }
    progress(out, "history", (count, count), (started, 0))?;
    writeln!(out)?;
    tally.imported = count;
    Ok(tally)
}

/// Most returns go back on the shelf; one in ten is damaged.
fn returned_condition(rng: &mut StdRng) -> pb::ItemCondition {
    if rng.gen_bool(0.9) {
        pb::ItemCondition::Resellable
    } else {
        pb::ItemCondition::Damaged
    }
}

/// One order of the last 180 days, closed by now: handed over, carried out or delivered (a
/// few cancelled), some returned later in a store.
fn historical_order(
    data: &Dataset,
    rng: &mut StdRng,
    reference: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<pb::HistoricalOrder, tonic::Status> {
    use chrono::Duration as Span;
    let d = draft(data, rng)?;
    let latest = now - Span::minutes(1);
    // Business grows: later days see more orders. Shops open 9:00 to 20:00 (UTC here).
    // Today and the 179 days before it make the 180 (today's orders are placed live).
    let days_ago = 1 + (178.0 * rng.gen_range(0.0f64..1.0).powf(1.3)).round() as i64;
    let placed = (now - Span::days(days_ago))
        .date_naive()
        .and_hms_opt(9, 0, 0)
        .map(|t| t.and_utc())
        .unwrap_or(now)
        + Span::seconds(rng.gen_range(0..11 * 3600));
    let cancelled = d.route != Route::CarryOut && rng.gen_bool(0.03);
    let mut ready_at = None;
    let closed = match d.route {
        Route::CarryOut => placed + Span::minutes(2),
        _ if cancelled => placed + Span::hours(rng.gen_range(1..48)),
        Route::Pickup => {
            // Most stores are ready within the 30-minute promise; some are late.
            let slowest = if rng.gen_bool(0.85) { 30 } else { 90 };
            let ready = placed + Span::minutes(rng.gen_range(8..slowest));
            ready_at = Some(ready.min(latest));
            ready + Span::hours(rng.gen_range(1..30))
        }
        Route::Ship => placed + Span::hours(rng.gen_range(20..120)),
    }
    .min(latest);
    let ready_at = ready_at.map(|r: chrono::DateTime<chrono::Utc>| r.min(closed));
    let shipping_stores: Vec<&inv::Location> =
        data.stores.iter().filter(|s| s.ships_orders).collect();
    let lines: Vec<pb::HistoricalOrderLine> = d
        .lines
        .iter()
        .map(|l| pb::HistoricalOrderLine {
            sku_id: l.sku_id.clone(),
            quantity: l.quantity,
            // Shipped orders leave the warehouse, or a store when it has the stock nearer.
            location_id: match d.route {
                Route::Ship if !shipping_stores.is_empty() && rng.gen_bool(0.25) => shipping_stores
                    [rng.gen_range(0..shipping_stores.len())]
                .id
                .clone(),
                Route::Ship => data.warehouse.id.clone(),
                _ => String::new(),
            },
        })
        .collect();
    // About one order in twelve comes back to a store some days later, one unit of one line.
    let mut returns = Vec::new();
    let returned_at = closed + Span::days(rng.gen_range(1..20));
    if !cancelled
        && rng.gen_bool(0.08)
        && returned_at <= latest
        && let Some(line) = lines.first()
    {
        let at = &data.stores[rng.gen_range(0..data.stores.len())];
        returns.push(pb::HistoricalReturn {
            channel_id: data.store_channel_id(at),
            location_id: at.id.clone(),
            completed_at: Some(timestamp(returned_at)),
            lines: vec![pb::HistoricalReturnLine {
                sku_id: line.sku_id.clone(),
                quantity: 1,
                reason: pb::ReturnReason::NoLongerWanted as i32,
                condition: returned_condition(rng) as i32,
            }],
        });
    }
    Ok(pb::HistoricalOrder {
        channel_id: d.channel.id.clone(),
        channel_order_ref: reference.to_owned(),
        customer_id: d.customer.unwrap_or_default(),
        lines,
        delivery: Some(d.delivery),
        store_id: d.taken_at,
        associate_id: String::new(),
        status: if cancelled {
            pb::OrderStatus::Cancelled
        } else {
            pb::OrderStatus::Completed
        } as i32,
        placed_at: Some(timestamp(placed)),
        closed_at: Some(timestamp(closed)),
        payment_method: if d.route == Route::CarryOut && rng.gen_bool(0.2) {
            pb::PaymentMethod::Cash
        } else {
            pb::PaymentMethod::Card
        } as i32,
        ready_at: ready_at.map(timestamp),
        returns,
    })
}

/// Draws a progress bar; the rate counts what was done since `started`, when `from` was done.
fn progress(
    out: &mut dyn Write,
    label: &str,
    (done, total): (usize, usize),
    (started, from): (Instant, usize),
) -> CliResult<()> {
    const WIDTH: usize = 30;
    let filled = done * WIDTH / total.max(1);
    let rate = done.saturating_sub(from) as f64 / started.elapsed().as_secs_f64().max(0.001);
    let eta = if done == 0 || done >= total || rate <= 0.0 {
        String::new()
    } else {
        let secs = ((total - done) as f64 / rate).round() as u64;
        format!(", {}m{:02}s left", secs / 60, secs % 60)
    };
    write!(
        out,
        "\r  {label} [{}{}] {done}/{total} {rate:.0}/s{eta}   ",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled)
    )?;
    out.flush()?;
    Ok(())
}

/// What an order is, before it is placed or imported: channel, route, lines, customer.
struct Draft<'a> {
    route: Route,
    channel: &'a cat::Channel,
    lines: Vec<pb::OrderLineInput>,
    customer: Option<String>,
    delivery: pb::Delivery,
    /// The store the order is taken at (store and associate channels).
    taken_at: String,
}

fn weighted<T: Copy>(rng: &mut StdRng, choices: &[(T, u32)]) -> T {
    let total: u32 = choices.iter().map(|c| c.1).sum();
    let mut pick = rng.gen_range(0..total.max(1));
    for (choice, weight) in choices {
        if pick < *weight {
            return *choice;
        }
        pick -= weight;
    }
    choices[0].0
}

/// A customer's usual way of buying: customers mostly stay with the channel they came from,
/// and sometimes try another (which is what the attribution matrix shows).
fn route_for(rng: &mut StdRng, customer: Option<usize>) -> (ChannelKind, Route) {
    let mix: Vec<((ChannelKind, Route), u32)> =
        MIX.iter().map(|(k, r, w)| ((*k, *r), *w)).collect();
    match customer {
        Some(c) if rng.gen_bool(0.65) => {
            // The home channel: a stable pick per customer, with the mix's weights.
            let mut home = StdRng::seed_from_u64(c as u64 ^ 0x5EED);
            weighted(&mut home, &mix)
        }
        _ => weighted(rng, &mix),
    }
}

fn draft<'a>(data: &'a Dataset, rng: &mut StdRng) -> Result<Draft<'a>, tonic::Status> {
    let customer_index = rng.gen_range(0..data.customers.len());
    let (kind, route) = route_for(rng, Some(customer_index));
    let store = &data.stores[rng.gen_range(0..data.stores.len())];
    let channel = if kind == ChannelKind::Store {
        data.store_channels.get(&store.id)
    } else {
        data.remote.get(&(kind as i32))
    }
    .ok_or_else(|| tonic::Status::internal("seed: a channel is missing"))?;
    let n_lines = if rng.gen_bool(0.7) {
        1
    } else {
        rng.gen_range(2..=3)
    };
    let mut lines: Vec<pb::OrderLineInput> = Vec::new();
    for _ in 0..n_lines {
        // A few best sellers sell much more than the long tail.
        let index = if rng.gen_bool(0.3) {
            rng.gen_range(0..data.skus.len().min(12))
        } else {
            rng.gen_range(0..data.skus.len())
        };
        let sku = &data.skus[index].0;
        if !lines.iter().any(|l| &l.sku_id == sku) {
            lines.push(pb::OrderLineInput {
                sku_id: sku.clone(),
                quantity: if rng.gen_bool(0.85) { 1 } else { 2 },
            });
        }
    }
    // A carry-out at a till is often anonymous; everyone else is a known customer.
    let customer = if route == Route::CarryOut && rng.gen_bool(0.3) {
        None
    } else {
        Some(data.customers[customer_index].clone())
    };
    let delivery = match route {
        Route::Ship => {
            let (_, city, (lat, lon)) = CITIES[rng.gen_range(0..CITIES.len())];
            let mut a = setup::address(
                &format!("{} rue de la République", rng.gen_range(1..200)),
                city,
                "00000",
                (
                    lat + rng.gen_range(-0.05..0.05),
                    lon + rng.gen_range(-0.05..0.05),
                ),
            );
            a.recipient_name = "Seed customer".into();
            pb::Delivery {
                kind: pb::DeliveryKind::Ship as i32,
                address: Some(a),
                store_id: String::new(),
            }
        }
        Route::Pickup | Route::CarryOut => pb::Delivery {
            kind: if route == Route::Pickup {
                pb::DeliveryKind::Pickup
            } else {
                pb::DeliveryKind::CarryOut
            } as i32,
            address: None,
            store_id: store.id.clone(),
        },
    };
    let taken_at = if kind == ChannelKind::Store || kind == ChannelKind::Associate {
        store.id.clone()
    } else {
        String::new()
    };
    Ok(Draft {
        route,
        channel,
        lines,
        customer,
        delivery,
        taken_at,
    })
}

async fn one_order(
    c: &mut Clients,
    data: &Dataset,
    rng: &mut StdRng,
) -> Result<Outcome, tonic::Status> {
    let Draft {
        route,
        channel,
        lines,
        customer,
        delivery,
        taken_at,
        ..
    } = draft(data, rng)?;
    let customer = customer.map(|customer_id| pb::CustomerRef {
        customer_id,
        ..Default::default()
    });
    let payment = if route == Route::CarryOut {
        let total = c
            .quotes
            .quote(cat::QuoteRequest {
                channel_id: channel.id.clone(),
                lines: lines
                    .iter()
                    .map(|l| cat::QuoteLineInput {
                        sku_id: l.sku_id.clone(),
                        quantity: l.quantity,
                        line_ref: String::new(),
                    })
                    .collect(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .total;
        Some(pb::Payment {
            amount: total,
            method: pb::PaymentMethod::Card as i32,
            provider_reference: format!("seed-{}", key()),
            paid_at: None,
        })
    } else {
        None
    };
    let mut order = c
        .orders
        .place_order(pb::PlaceOrderRequest {
            idempotency_key: key(),
            channel_id: channel.id.clone(),
            channel_order_ref: format!("seed-{}", key()),
            customer,
            lines,
            delivery: Some(delivery),
            store_id: taken_at,
            payment,
            ..Default::default()
        })
        .await?
        .into_inner()
        .order
        .unwrap_or_default();
    // Some online orders are never paid (they expire); the rest go all the way.
    if route != Route::CarryOut {
        if rng.gen_bool(0.04) {
            return Ok(Outcome::Placed);
        }
        order = c
            .orders
            .record_payment(pb::RecordPaymentRequest {
                idempotency_key: key(),
                order_id: order.id.clone(),
                payment: Some(pb::Payment {
                    amount: order.total.clone(),
                    method: pb::PaymentMethod::Card as i32,
                    provider_reference: format!("seed-{}", key()),
                    paid_at: None,
                }),
            })
            .await?
            .into_inner()
            .order
            .unwrap_or_default();
        for f in order.fulfilments.clone() {
            c.fulfilment
                .start_picking(pb::StartPickingRequest {
                    order_id: order.id.clone(),
                    fulfilment_id: f.id.clone(),
                })
                .await?;
            if route == Route::Pickup {
                let ready = c
                    .fulfilment
                    .mark_ready_for_pickup(pb::MarkReadyForPickupRequest {
                        order_id: order.id.clone(),
                    })
                    .await?
                    .into_inner()
                    .order
                    .unwrap_or_default();
                let code = ready.pickup.map(|p| p.pickup_code).unwrap_or_default();
                order = c
                    .fulfilment
                    .hand_over_pickup(pb::HandOverPickupRequest {
                        order_id: order.id.clone(),
                        pickup_code: code,
                    })
                    .await?
                    .into_inner()
                    .order
                    .unwrap_or_default();
            } else {
                c.fulfilment
                    .ship_fulfilment(pb::ShipFulfilmentRequest {
                        order_id: order.id.clone(),
                        fulfilment_id: f.id.clone(),
                        carrier: "Colissimo".into(),
                        tracking_number: format!("6A{}", &key()[..8]),
                    })
                    .await?;
                order = c
                    .fulfilment
                    .confirm_delivery(pb::ConfirmDeliveryRequest {
                        order_id: order.id.clone(),
                        fulfilment_id: f.id.clone(),
                        delivered_at: None,
                    })
                    .await?
                    .into_inner()
                    .order
                    .unwrap_or_default();
            }
        }
    }
    // About one order in twelve comes back to a store, one line of it.
    let returned = rng.gen_bool(0.08);
    if returned && let Some(line) = order.lines.first() {
        let at = &data.stores[rng.gen_range(0..data.stores.len())];
        c.returns
            .create_return(pb::CreateReturnRequest {
                idempotency_key: key(),
                order_id: order.id.clone(),
                lines: vec![pb::ReturnLineInput {
                    order_line_id: line.id.clone(),
                    quantity: 1,
                    reason: pb::ReturnReason::NoLongerWanted as i32,
                    condition: returned_condition(rng) as i32,
                }],
                channel_id: data.store_channel_id(at),
                location_id: at.id.clone(),
                items_received: true,
                note: String::new(),
            })
            .await?;
    }
    Ok(Outcome::Completed { returned })
}

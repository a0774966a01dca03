//! `omni-bench events`: how fast crm and performance apply order events, beside how fast
//! orders come in, measured in the same run on the same machine.
//!
//! 1. Starts every service (as `omni-bench orders` does), seeds SKUs and customers, and measures
//!    the PlaceOrder intake rate with `--concurrency` clients for `--intake-seconds`.
//!    crm has three segments (RFM, tier, purchase rhythm), kept up to date as events land.
//! 2. Waits until crm and performance have applied the intake's events.
//! 3. Appends the events of `--orders` orders (default 100,000) to order-management's stream as
//!    it would publish them: placed, paid and fulfilled; one in twenty cancelled instead, one in
//!    fifteen returned after delivery. Customers, SKUs and the channel are the seeded ones.
//! 4. Times each consumer group until it has read and acknowledged every entry, and reports
//!    events/s and orders/s per consumer against the intake rate (target: at least 3x).
//!
//! The events are appended directly, faster than the consumers read, so what is timed is the
//! consumers alone; both consume side by side on the same cores, as in production on one node.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use omni_proto::common::{ChannelKind, Money};
use omni_proto::events::event::Payload;
use omni_proto::events::{
    Event, OrderCancelled, OrderFacts, OrderFulfilled, OrderLineFacts, OrderPaid, OrderPlaced,
    ReturnCompleted, ReturnLineFacts,
};
use omni_proto::omni::crm::v1 as crm;
use omni_proto::omni::crm::v1::segment_service_client::SegmentServiceClient;
use omni_runtime::redis::Redis;
use omni_testkit::{OrderClocks, Shop};
use prost::Message as _;
use uuid::Uuid;

use crate::Args;
use crate::orders::{self, Endpoints, Seeded};

const GROUPS: [&str; 2] = ["crm", "performance"];

/// The segments crm keeps up to date while the events land.
const SEGMENTS: &[(&str, &str)] = &[
    ("Best customers", "rfm.monetary >= 4 and rfm.frequency >= 4"),
    ("Gold", "tier = \"gold\""),
    (
        "Regulars",
        "bought(min_orders = 3, within_days = 90) and lifecycle = \"active\"",
    ),
];

fn eur(minor_units: i64) -> Option<Money> {
    Some(Money {
        minor_units,
        currency: "EUR".into(),
    })
}

pub async fn events(args: &Args) -> anyhow::Result<()> {
    let orders_n = args.get("--orders", 100_000)?;
    let intake_seconds = args.get("--intake-seconds", 10)?;
    let concurrency = args.get("--concurrency", 32)?;
    let pool = u32::try_from(args.get("--pool", 32)?)?;
    println!("starting identity, catalog, inventory, crm, performance and order-management");
    let shop = Shop::start_tuned(OrderClocks::default(), pool).await?;
    let endpoints = Endpoints::in_process(&shop);
    println!("seeding 40 SKUs in 5 locations and 500 customers");
    let seeded = Arc::new(orders::seed(&endpoints, 40, 500).await?);
    // A retailer's crm has segments: each event refreshes its customer's memberships.
    let mut segments = SegmentServiceClient::new(shop.crm.admin());
    for (name, rule) in SEGMENTS {
        segments
            .create_segment(crm::CreateSegmentRequest {
                idempotency_key: Uuid::now_v7().to_string(),
                segment: Some(crm::Segment {
                    name: (*name).into(),
                    rule: (*rule).into(),
                    ..Default::default()
                }),
                validate_only: false,
            })
            .await?;
    }
    let redis = Redis::new(&omni_testkit::redis_url(), shop.orders.redis_prefix())?;
    let stream = redis.event_stream("orders");

    println!("order intake: {concurrency} clients for {intake_seconds} s");
    let intake = orders::place_orders(&endpoints, &seeded, intake_seconds, concurrency).await?;
    intake.print();
    let intake_rate = intake.rate();
    wait_drained(&redis, &stream, Instant::now(), Duration::from_secs(600)).await?;
    println!("consumers caught up with the intake's events");

    println!("appending the events of {orders_n} orders to {stream}");
    let started = Instant::now();
    let appended = append(&redis, &stream, &seeded, orders_n).await?;
    println!(
        "appended {appended} events in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let done = wait_drained(&redis, &stream, started, Duration::from_secs(3600)).await?;
    for (group, elapsed) in done {
        let secs = elapsed.as_secs_f64();
        let orders_per_s = orders_n as f64 / secs;
        println!(
            "{group}: {appended} events in {secs:.1} s = {:.0} events/s = {orders_per_s:.0} orders/s, {:.1}x the intake ({intake_rate:.0} orders/s)",
            appended as f64 / secs,
            orders_per_s / intake_rate,
        );
    }
    println!("target: each consumer >= 3x the intake");
    drop(shop);
    Ok(())
}

/// Until every group has read and acknowledged everything on `stream`; how long each took
/// from `since`.
async fn wait_drained(
    redis: &Redis,
    stream: &str,
    since: Instant,
    limit: Duration,
) -> anyhow::Result<Vec<(&'static str, Duration)>> {
    let mut done: Vec<(&'static str, Duration)> = Vec::new();
    while done.len() < GROUPS.len() {
        anyhow::ensure!(
            since.elapsed() < limit,
            "the consumers did not catch up within {limit:?}"
        );
        let groups = omni_runtime::metrics::groups(redis, stream).await?;
        for group in GROUPS {
            if done.iter().any(|(g, _)| *g == group) {
                continue;
            }
            if groups
                .iter()
                .any(|(name, info)| name == group && info.lag == 0 && info.pending == 0)
            {
                done.push((group, since.elapsed()));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(done)
}

/// A small deterministic generator, so every run appends the same history.
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn event(kind: &str, order_id: &str, at: SystemTime, payload: Payload) -> Event {
    Event {
        id: Uuid::now_v7().to_string(),
        r#type: kind.into(),
        occurred_at: Some(at.into()),
        aggregate_id: order_id.into(),
        source: "orders".into(),
        actor_id: "omni-bench".into(),
        payload: Some(payload),
        ..Default::default()
    }
}

/// The events of one order's life.
fn life(seeded: &Seeded, dice: &mut Dice, n: usize) -> Vec<Event> {
    let now = SystemTime::now();
    let order_id = Uuid::now_v7().to_string();
    let lines: Vec<OrderLineFacts> = (0..1 + dice.below(3))
        .map(|i| {
            let quantity = 1 + dice.below(2) as i32;
            let price = 1000 + 100 * dice.below(50) as i64;
            OrderLineFacts {
                line_id: format!("l{i}"),
                sku_id: seeded.skus[dice.below(seeded.skus.len())].clone(),
                quantity,
                unit_price: eur(price),
                net_amount: eur(price * i64::from(quantity)),
                unit_cost: eur(400),
                ..Default::default()
            }
        })
        .collect();
    let total: i64 = lines
        .iter()
        .map(|l| l.net_amount.as_ref().map_or(0, |m| m.minor_units))
        .sum();
    let mut facts = OrderFacts {
        order_id: order_id.clone(),
        order_number: format!("B-{n:07}"),
        channel_id: seeded.channel.clone(),
        channel_kind: ChannelKind::EShop as i32,
        customer_id: seeded.customers[dice.below(seeded.customers.len())].clone(),
        status: 1,
        lines,
        subtotal: eur(total),
        total: eur(total),
        placed_at: Some(now.into()),
        ..Default::default()
    };
    let mut out = vec![event(
        "orders.order_placed",
        &order_id,
        now,
        Payload::OrderPlaced(OrderPlaced {
            order: Some(facts.clone()),
        }),
    )];
    if n % 20 == 19 {
        facts.status = 8;
        out.push(event(
            "orders.order_cancelled",
            &order_id,
            now,
            Payload::OrderCancelled(OrderCancelled {
                order: Some(facts),
                ..Default::default()
            }),
        ));
        return out;
    }
    facts.status = 2;
    out.push(event(
        "orders.order_paid",
        &order_id,
        now,
        Payload::OrderPaid(OrderPaid {
            order: Some(facts.clone()),
            amount: eur(total),
            ..Default::default()
        }),
    ));
    facts.status = 7;
    facts.completed_at = Some(now.into());
    out.push(event(
        "orders.order_fulfilled",
        &order_id,
        now,
        Payload::OrderFulfilled(OrderFulfilled {
            order: Some(facts.clone()),
            fulfilled_at: Some(now.into()),
        }),
    ));
    if n % 15 == 7 {
        let line = &facts.lines[0];
        out.push(event(
            "orders.return_completed",
            &order_id,
            now,
            Payload::ReturnCompleted(ReturnCompleted {
                return_id: Uuid::now_v7().to_string(),
                order_id: order_id.clone(),
                order_channel_id: facts.channel_id.clone(),
                channel_id: facts.channel_id.clone(),
                customer_id: facts.customer_id.clone(),
                refund_total: line.net_amount.clone(),
                completed_at: Some(now.into()),
                lines: vec![ReturnLineFacts {
                    sku_id: line.sku_id.clone(),
                    quantity: line.quantity,
                    refund_amount: line.net_amount.clone(),
                    unit_cost: eur(400),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        ));
    }
    out
}

/// Appends the events of `orders` orders in pipelines of a few thousand; returns how many.
async fn append(
    redis: &Redis,
    stream: &str,
    seeded: &Seeded,
    orders: usize,
) -> anyhow::Result<usize> {
    let mut dice = Dice(0x2545_F491_4F6C_DD1D);
    let mut conn = redis.conn();
    let mut appended = 0;
    let mut pipe = redis::pipe();
    let mut queued = 0;
    for n in 0..orders {
        for e in life(seeded, &mut dice, n) {
            pipe.xadd(stream, "*", &[("event", e.encode_to_vec())])
                .ignore();
            queued += 1;
        }
        if queued >= 2_000 || n + 1 == orders {
            pipe.query_async::<()>(&mut conn).await?;
            appended += queued;
            queued = 0;
            pipe = redis::pipe();
        }
    }
    Ok(appended)
}

//! A batch applies its runs of order events set-based: applying a history as one batch leaves
//! every table exactly as applying it event by event does, points earned at the tier of each
//! moment included. Either way, the purchase figures kept by deltas are what aggregating the
//! orders gives, and so are the counts and spends read from them.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use crm::events::Events;
use crm::grpc::Grpc;
use crm::purchases;
use crm::segment_rule::PurchaseFilter;
use crm::tiers::{Rules, Tier};
use omni_proto::common::ChannelKind;
use omni_proto::events::event::Payload;
use omni_proto::events::{
    ChannelChanged, CustomerConsentChanged, CustomerMerged, CustomerRegistered, Event,
    OrderCancelled, OrderFacts, OrderFulfilled, OrderLineFacts, OrderPaid, OrderPlaced,
    OrderStatusChanged, ReturnCompleted,
};
use omni_proto::omni::crm::v1 as pb;
use omni_runtime::consumer::Handler as _;
use omni_runtime::outbox::Outbox;
use prost::Message as _;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::support::eur;

/// Columns that differ between two applications of the same events: generated ids and the
/// times rows were written.
const UNCOMPARED: &[(&str, &[&str])] = &[
    ("customers", &["created_at", "registered_at"]),
    ("points_entries", &["id", "created_at"]),
    ("consents", &["updated_at"]),
    ("customer_tiers", &["changed_at"]),
    ("deliveries", &["id", "created_at", "updated_at"]),
    ("interactions", &["id", "occurred_at"]),
    ("segments", &["created_at", "updated_at"]),
    ("offer_rules", &["created_at", "updated_at"]),
    ("contact_policy", &["updated_at"]),
    ("loyalty_rules", &["updated_at"]),
];

/// Rows left out of the comparison. A batch recomputes the tiers of the survivors of the
/// customers it touched; applied one by one, a customer merged away later in the history had
/// its own tier recorded before the merge, and that row stays.
const ROWS_COMPARED: &[(&str, &str)] = &[(
    "customer_tiers",
    "customer_id IN (SELECT customer_id FROM customers WHERE merged_into IS NULL)",
)];

/// Every crm table as rows of text (the compared columns), sorted; the points ledger in
/// entry order. The runtime's tables are left out: the outbox holds one tier announcement per
/// change, and applying events one by one sees more intermediate tiers than a batch does.
async fn dump(pool: &PgPool) -> Vec<(String, Vec<String>)> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE'
           AND table_name NOT IN ('_sqlx_migrations', 'outbox', 'processed_events',
                                  'idempotency_keys')
         ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .expect("tables");
    let mut out = Vec::new();
    for table in tables {
        let skipped = UNCOMPARED
            .iter()
            .find(|(t, _)| *t == table)
            .map_or(&[][..], |(_, columns)| *columns);
        let columns: Vec<String> = sqlx::query_scalar(
            "SELECT column_name::text FROM information_schema.columns
             WHERE table_schema = 'public' AND table_name = $1 ORDER BY ordinal_position",
        )
        .bind(&table)
        .fetch_all(pool)
        .await
        .expect("columns");
        let columns: Vec<String> = columns
            .into_iter()
            .filter(|c| !skipped.contains(&c.as_str()))
            .map(|c| format!("\"{c}\""))
            .collect();
        let order = if table == "points_entries" { "id" } else { "1" };
        let filter = ROWS_COMPARED
            .iter()
            .find(|(t, _)| *t == table)
            .map_or("true", |(_, filter)| *filter);
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT ROW({})::text FROM \"{table}\" WHERE {filter} ORDER BY {order}",
            columns.join(", ")
        )))
        .fetch_all(pool)
        .await
        .expect("rows");
        out.push((table, rows));
    }
    out
}

/// A fresh crm database with the given loyalty rules, a fulfilment offer and three segments.
async fn database(rules: Option<&Rules>) -> PgPool {
    let url = omni_testkit::fresh_database("crm_batches")
        .await
        .expect("db");
    let pool = PgPool::connect(&url).await.expect("pool");
    omni_runtime::db::migrate(&pool, crm::MIGRATOR, &CancellationToken::new())
        .await
        .expect("migrate");
    if let Some(rules) = rules {
        let mut conn = pool.acquire().await.expect("conn");
        crm::tiers::save(&mut conn, rules).await.expect("rules");
    }
    let condition = pb::OfferCondition {
        trigger: pb::OfferTrigger::OrderFulfilled as i32,
        ..Default::default()
    };
    let action = pb::OfferAction {
        content: Some(pb::MessageContent {
            title: "Thank you".into(),
            body: "Come back soon".into(),
            ..Default::default()
        }),
        channel_ids: vec!["eshop".into()],
        ..Default::default()
    };
    sqlx::query(
        "INSERT INTO offer_rules (id, name, condition, action, trigger, cooldown_days)
         VALUES ($1, 'Thanks', $2, $3, $4, 0)",
    )
    .bind(Uuid::from_u128(1))
    .bind(condition.encode_to_vec())
    .bind(action.encode_to_vec())
    .bind(condition.trigger)
    .execute(&pool)
    .await
    .expect("offer rule");
    for (id, name, rule) in [
        (2, "Gold", "tier = \"gold\""),
        (3, "Regulars", "bought(min_orders = 2, within_days = 90)"),
        (
            4,
            "Category l3 buyers",
            "bought(category = \"category-l3\")",
        ),
    ] {
        sqlx::query("INSERT INTO segments (id, name, rule) VALUES ($1, $2, $3)")
            .bind(Uuid::from_u128(id))
            .bind(name)
            .bind(rule)
            .execute(&pool)
            .await
            .expect("segment");
    }
    pool
}

/// Member at the base rate, silver from 50.00 at twice, gold from 150.00 at three times.
fn tiered_rules() -> Rules {
    let tier = |code: &str, min_spend, earn_bps| Tier {
        code: code.into(),
        name: code.into(),
        min_spend,
        earn_bps,
    };
    Rules {
        currency: "EUR".into(),
        tiers: vec![
            tier("member", 0, 10_000),
            tier("silver", 5_000, 20_000),
            tier("gold", 15_000, 30_000),
        ],
        ..Rules::default()
    }
}

/// Two days ago plus `minutes`: inside the tier window.
fn at(minutes: u64) -> SystemTime {
    SystemTime::now() - Duration::from_secs(2 * 86_400) + Duration::from_secs(60 * minutes)
}

/// A placed order of `lines` (line id, quantity, net amount).
fn order(
    id: &str,
    customer: &str,
    (channel, kind): (&str, ChannelKind),
    lines: &[(&str, i32, i64)],
    placed_minute: u64,
) -> OrderFacts {
    let total: i64 = lines.iter().map(|l| l.2).sum();
    OrderFacts {
        order_id: id.into(),
        order_number: format!("N-{id}"),
        channel_id: channel.into(),
        channel_kind: kind as i32,
        customer_id: customer.into(),
        store_id: if kind == ChannelKind::Store {
            "store-1".into()
        } else {
            String::new()
        },
        status: 1,
        lines: lines
            .iter()
            .map(|(line, quantity, net)| OrderLineFacts {
                line_id: (*line).into(),
                sku_id: format!("sku-{id}-{line}"),
                product_id: format!("product-{line}"),
                category_id: format!("category-{line}"),
                quantity: *quantity,
                net_amount: eur(*net),
                ..Default::default()
            })
            .collect(),
        total: eur(total),
        subtotal: eur(total),
        placed_at: Some(at(placed_minute).into()),
        ..Default::default()
    }
}

fn with_status(o: &OrderFacts, status: i32) -> Option<OrderFacts> {
    Some(OrderFacts {
        status,
        ..o.clone()
    })
}

fn placed(o: &OrderFacts) -> Payload {
    Payload::OrderPlaced(OrderPlaced {
        order: Some(o.clone()),
    })
}

fn paid(o: &OrderFacts) -> Payload {
    Payload::OrderPaid(OrderPaid {
        order: with_status(o, 2),
        amount: o.total.clone(),
        ..Default::default()
    })
}

fn fulfilled(o: &OrderFacts) -> Payload {
    Payload::OrderFulfilled(OrderFulfilled {
        order: with_status(o, 7),
        ..Default::default()
    })
}

fn cancelled(o: &OrderFacts) -> Payload {
    Payload::OrderCancelled(OrderCancelled {
        order: with_status(o, 8),
        ..Default::default()
    })
}

fn returned(return_id: &str, order_id: &str, customer: &str, refund: i64) -> Payload {
    Payload::ReturnCompleted(ReturnCompleted {
        return_id: return_id.into(),
        order_id: order_id.into(),
        customer_id: customer.into(),
        order_channel_id: "eshop".into(),
        channel_id: "eshop".into(),
        refund_total: eur(refund),
        ..Default::default()
    })
}

fn registered(customer: &str) -> Payload {
    Payload::CustomerRegistered(CustomerRegistered {
        customer_id: customer.into(),
        member_number: format!("M-{customer}"),
        name: format!("Name {customer}"),
        phone: format!("+44 {customer}"),
        email: format!("{customer}@example.test"),
        channel_kind: ChannelKind::EShop as i32,
    })
}

/// A history touching every path: registrations before and after orders, several orders per
/// customer over two channels, multi-line orders, a cancellation delivered before its
/// placement (whose stale placement changes a line), a placement re-sent after fulfilment, a
/// fulfilment said twice, returns (of orders filed in the same run or before it, of an order
/// crm never heard of, under a merged-away id, beyond the balance), a merge between order
/// events, an anonymous order, an event crm does not keep, a fulfilment after cancellation.
fn history() -> Vec<Event> {
    let eshop = ("eshop", ChannelKind::EShop);
    let store = ("store-1", ChannelKind::Store);
    let o1 = order(
        "o-1",
        "c-1",
        eshop,
        &[("l1", 1, 1_000), ("l2", 2, 2_000)],
        5,
    );
    let o2 = order("o-2", "c-2", store, &[("l1", 1, 2_000)], 6);
    let o3 = order(
        "o-3",
        "c-1",
        eshop,
        &[("l1", 1, 1_000), ("l2", 1, 1_000), ("l3", 2, 2_000)],
        8,
    );
    let o4 = order("o-4", "c-2", eshop, &[("l1", 3, 1_500)], 10);
    let mut o4_stale = o4.clone();
    o4_stale.lines[0].quantity = 2;
    o4_stale.lines[0].net_amount = eur(1_000);
    let o5 = order("o-5", "c-3", store, &[("l1", 1, 6_000)], 14);
    let o6 = order(
        "o-6",
        "c-3",
        eshop,
        &[("l1", 1, 4_000), ("l2", 1, 5_000)],
        20,
    );
    let o7 = order("o-7", "c-4", eshop, &[("l1", 1, 1_500)], 22);
    let o8 = order("o-8", "c-2", store, &[("l1", 1, 800)], 27);
    let anonymous = order("o-9", "", eshop, &[("l1", 1, 700)], 26);
    let entries: Vec<(u64, Payload)> = vec![
        (
            0,
            Payload::ChannelChanged(ChannelChanged {
                channel_id: "eshop".into(),
                kind: ChannelKind::EShop as i32,
                ..Default::default()
            }),
        ),
        (1, registered("c-1")),
        (2, registered("c-2")),
        (3, registered("c-3")),
        (
            4,
            Payload::CustomerConsentChanged(CustomerConsentChanged {
                customer_id: "c-1".into(),
                channel_kind: ChannelKind::EShop as i32,
                marketing_opt_in: true,
            }),
        ),
        (5, placed(&o1)),
        (6, placed(&o2)),
        (7, paid(&o1)),
        // Fulfilled at 30.00 of spend (member), before o-3 takes c-1 to silver.
        (9, fulfilled(&o1)),
        (8, placed(&o3)),
        // Cancelled at 11, delivered before its placement of 10.
        (11, cancelled(&o4)),
        (10, placed(&o4_stale)),
        // Nothing crm keeps.
        (
            12,
            Payload::OrderStatusChanged(OrderStatusChanged {
                order_id: "o-3".into(),
                customer_id: "c-1".into(),
                status: 3,
                ..Default::default()
            }),
        ),
        (12, paid(&o3)),
        (13, fulfilled(&o3)),
        // Re-sent placement, long after the fulfilment.
        (5, placed(&o1)),
        (14, placed(&o5)),
        (15, paid(&o5)),
        (16, fulfilled(&o5)),
        (17, returned("r-1", "o-1", "c-1", 1_000)),
        (18, fulfilled(&o3)),
        (
            19,
            Payload::CustomerMerged(CustomerMerged {
                survivor_id: "c-1".into(),
                merged_id: "c-3".into(),
            }),
        ),
        // Still filed under the merged-away id.
        (20, placed(&o6)),
        (21, paid(&o6)),
        (22, placed(&o7)),
        // Refunded before fulfilment; c-4 has no points to take back yet.
        (22, returned("r-2", "o-7", "c-4", 500)),
        (23, fulfilled(&o6)),
        (24, fulfilled(&o7)),
        (25, paid(&o2)),
        // An order filed before the merge, returned under the merged-away id.
        (25, returned("r-3", "o-3", "c-3", 2_000)),
        (26, placed(&anonymous)),
        // A return without customer concerns nobody.
        (26, returned("r-4", "o-2", "", 2_000)),
        (27, placed(&o8)),
        (28, fulfilled(&o2)),
        // An order crm never heard of: nothing to refund, points taken back all the same, no
        // more than the balance.
        (28, returned("r-5", "o-404", "c-2", 5_000)),
        (29, cancelled(&o8)),
        (31, fulfilled(&o8)),
        (30, registered("c-4")),
    ];
    entries
        .into_iter()
        .enumerate()
        .map(|(n, (minute, payload))| event(n as u128 + 1, at(minute), payload))
        .collect()
}

/// Event number `n`, which happened at `at`.
fn event(n: u128, at: SystemTime, payload: Payload) -> Event {
    Event {
        id: Uuid::from_u128(n).to_string(),
        r#type: "test".into(),
        occurred_at: Some(at.into()),
        payload: Some(payload),
        ..Default::default()
    }
}

/// crm's event handler on `pool`.
fn handler(pool: &PgPool) -> Events {
    Events {
        grpc: Grpc::new(pool.clone(), Outbox::new("crm")),
    }
}

/// Applies the history event by event on one database and as one batch on another; returns
/// both databases' tables and the batched database.
async fn apply_both_ways(rules: Option<&Rules>) -> (Vec<(String, Vec<String>)>, PgPool) {
    let history = history();
    let (one_by_one, batched) = (database(rules).await, database(rules).await);
    let events = handler(&one_by_one);
    for e in &history {
        let mut tx = one_by_one.begin().await.expect("tx");
        events.handle(&mut tx, e).await.expect("event");
        tx.commit().await.expect("commit");
    }
    let events = handler(&batched);
    let mut tx = batched.begin().await.expect("tx");
    events.handle_batch(&mut tx, &history).await.expect("batch");
    tx.commit().await.expect("commit");

    let (expected, got) = (dump(&one_by_one).await, dump(&batched).await);
    for table in [
        "customer_orders",
        "order_lines",
        "points_entries",
        "customer_stats",
        "customer_purchases",
        "deliveries",
        "segment_members",
    ] {
        assert!(
            expected
                .iter()
                .any(|(t, rows)| t == table && !rows.is_empty()),
            "the history wrote {table}: {expected:#?}"
        );
    }
    assert_eq!(got, expected);
    for pool in [&one_by_one, &batched] {
        assert_figures_match_the_orders(pool).await;
        assert_members_match_the_orders(pool).await;
    }
    (got, batched)
}

/// The purchase figures kept by deltas equal the same figures aggregated from the orders.
async fn assert_figures_match_the_orders(pool: &PgPool) {
    for (kept, aggregated) in [
        ("customer_stats", "customer_stats_aggregated"),
        ("customer_purchases", "customer_purchases_aggregated"),
    ] {
        let rows = |relation: &str| {
            // The relation names are the constants above.
            sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(format!(
                "SELECT x::text FROM {relation} x ORDER BY 1"
            )))
            .fetch_all(pool)
        };
        let (kept_rows, aggregated_rows) = (rows(kept).await, rows(aggregated).await);
        assert_eq!(
            kept_rows.expect("kept"),
            aggregated_rows.expect("aggregated"),
            "{kept} against its aggregate"
        );
    }
}

/// The members of the three segments of [`database`] are the customers whose orders, read
/// directly, satisfy the rules.
async fn assert_members_match_the_orders(pool: &PgPool) {
    let members = |segment: u128| {
        sqlx::query_scalar::<_, String>(
            "SELECT customer_id FROM segment_members WHERE segment_id = $1 ORDER BY 1",
        )
        .bind(Uuid::from_u128(segment))
        .fetch_all(pool)
    };
    let expected = |sql: &'static str| sqlx::query_scalar::<_, String>(sql).fetch_all(pool);
    let regulars = expected(
        "SELECT customer_id FROM customer_orders
         WHERE status <> 8 AND placed_at >= now() - interval '90 days'
         GROUP BY customer_id HAVING count(*) >= 2 ORDER BY 1",
    )
    .await
    .expect("regulars");
    assert!(!regulars.is_empty());
    assert_eq!(members(3).await.expect("members"), regulars);
    let l3 = expected(
        "SELECT DISTINCT o.customer_id FROM customer_orders o
         JOIN order_lines l ON l.order_id = o.order_id
         WHERE o.status <> 8 AND l.category_id = 'category-l3' ORDER BY 1",
    )
    .await
    .expect("category buyers");
    assert!(!l3.is_empty());
    assert_eq!(members(4).await.expect("members"), l3);
}

/// The points each order earned, in ledger order.
async fn earned(pool: &PgPool) -> Vec<(String, String, i64, i64)> {
    sqlx::query_as(
        "SELECT customer_id, order_id, points, balance_after FROM points_entries
         ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .expect("entries")
}

#[tokio::test]
async fn a_batch_leaves_every_table_as_event_by_event_application_does() {
    let (_, batched) = apply_both_ways(None).await;
    // The built-in ladder earns at the base rate whatever the tier.
    let entries = earned(&batched).await;
    assert_eq!(entries.len(), 10, "{entries:#?}");
}

#[tokio::test]
async fn a_batch_earns_and_takes_back_points_at_the_tier_of_each_moment() {
    let rules = tiered_rules();
    let (_, batched) = apply_both_ways(Some(&rules)).await;
    let entries = earned(&batched).await;
    let entry = |customer: &str, order: &str, points: i64, after: i64| {
        (customer.to_owned(), order.to_owned(), points, after)
    };
    assert_eq!(
        entries,
        vec![
            // 30.00 of spend: member, base rate.
            entry("c-1", "o-1", 30, 30),
            // 70.00 with the order placed since: silver, twice the rate.
            entry("c-1", "o-3", 80, 110),
            // c-3's own tier, before the merge moved the entry to c-1.
            entry("c-1", "o-5", 120, 120),
            // The return of 10.00 of o-1, at silver.
            entry("c-1", "o-1", -20, 90),
            // 210.00 with c-3's orders merged in: gold, three times; the balance moved too.
            entry("c-1", "o-6", 270, 480),
            // Placed for 15.00, 5.00 of it refunded before: member.
            entry("c-4", "o-7", 15, 15),
            // 20.00 of o-3 refunded at gold (190.00 of spend with it).
            entry("c-1", "o-3", -60, 420),
            entry("c-2", "o-2", 20, 20),
            // 50 points owed, 20 left to take.
            entry("c-2", "o-404", -20, 0),
            // Fulfilled after its cancellation: still credited once, at c-2's tier.
            entry("c-2", "o-8", 8, 8),
        ]
    );
}

/// A small deterministic generator: the same history on every run.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// Orders of five customers placed over the last 40 days (a few just either side of the
/// start of a 30-day window), over two channels and a store, with lines of three categories,
/// four products and six SKUs; some paid, cancelled or refunded, some paid with a line more,
/// some of it twice, applied in batches of varied length.
fn long_history(now: SystemTime) -> Vec<Vec<Event>> {
    let mut rng = Lcg(7);
    let window_start = now - Duration::from_secs(30 * 86_400);
    let mut events: Vec<Payload> = Vec::new();
    let mut grown_later: Vec<Payload> = Vec::new();
    for n in 0..160u64 {
        let placed_at = match n {
            // Either side of the window's start, on its first day.
            0 => window_start + Duration::from_secs(600),
            1 => window_start - Duration::from_secs(600),
            _ => now - Duration::from_secs(rng.below(40 * 86_400)),
        };
        let (channel, kind) = match rng.below(3) {
            0 => ("eshop", ChannelKind::EShop),
            1 => ("social", ChannelKind::Social),
            _ => ("store-1", ChannelKind::Store),
        };
        let lines: Vec<OrderLineFacts> = (0..1 + rng.below(3))
            .map(|l| {
                let sku = rng.below(6);
                OrderLineFacts {
                    line_id: format!("l{l}"),
                    sku_id: format!("sku-{sku}"),
                    product_id: format!("product-{}", sku % 4),
                    category_id: format!("category-{}", sku % 4 % 3),
                    quantity: 1,
                    net_amount: eur(1_000 + 100 * sku as i64),
                    ..Default::default()
                }
            })
            .collect();
        let total: i64 = lines
            .iter()
            .map(|l| l.net_amount.as_ref().map_or(0, |m| m.minor_units))
            .sum();
        let o = OrderFacts {
            order_id: format!("o-{n}"),
            order_number: format!("N-{n}"),
            channel_id: channel.into(),
            channel_kind: kind as i32,
            customer_id: format!("c-{}", rng.below(5)),
            store_id: if kind == ChannelKind::Store {
                "store-1".into()
            } else {
                String::new()
            },
            status: 1,
            lines,
            total: eur(total),
            subtotal: eur(total),
            placed_at: Some(placed_at.into()),
            ..Default::default()
        };
        events.push(placed(&o));
        match rng.below(6) {
            0 => events.push(cancelled(&o)),
            1 => {
                events.push(paid(&o));
                events.push(returned(
                    &format!("r-{n}"),
                    &o.order_id,
                    &o.customer_id,
                    700,
                ));
            }
            2 => {
                events.push(paid(&o));
                events.push(fulfilled(&o));
                events.push(cancelled(&o));
            }
            // Paid, then said again much later with a line it did not have (a SKU it may
            // already hold), when the order is filed long since.
            3 => {
                let mut grown = o.clone();
                let sku = rng.below(6);
                grown.lines.push(OrderLineFacts {
                    line_id: "l9".into(),
                    sku_id: format!("sku-{sku}"),
                    product_id: format!("product-{}", sku % 4),
                    category_id: format!("category-{}", sku % 4 % 3),
                    quantity: 1,
                    net_amount: eur(0),
                    ..Default::default()
                });
                events.push(paid(&o));
                grown_later.push(paid(&grown));
            }
            _ => events.push(paid(&o)),
        }
    }
    events.extend(grown_later);
    // Each event happened a second after the one before; some are said again at the end, as
    // a re-published stream would, with the time they happened.
    let mut events: Vec<(u64, Payload)> =
        events.into_iter().zip(0..).map(|(p, t)| (t, p)).collect();
    let again: Vec<(u64, Payload)> = events.iter().step_by(7).cloned().collect();
    events.extend(again);
    let mut batches = Vec::new();
    let mut n = 0u128;
    let mut rest = events.as_slice();
    while !rest.is_empty() {
        let take = (1 + rng.below(40) as usize).min(rest.len());
        let (batch, tail) = rest.split_at(take);
        batches.push(
            batch
                .iter()
                .map(|(second, payload)| {
                    n += 1;
                    let at = now - Duration::from_secs(86_400) + Duration::from_secs(*second);
                    event(n, at, payload.clone())
                })
                .collect(),
        );
        rest = tail;
    }
    batches
}

#[tokio::test]
async fn purchase_figures_kept_by_deltas_count_what_the_orders_say() {
    let pool = database(None).await;
    let events = handler(&pool);
    let now = SystemTime::now();
    for batch in long_history(now) {
        let mut tx = pool.begin().await.expect("tx");
        events.handle_batch(&mut tx, &batch).await.expect("batch");
        tx.commit().await.expect("commit");
    }
    assert_figures_match_the_orders(&pool).await;

    // Every bought(...) a rule can ask, counted from the figures, against the orders read
    // directly: the same distinct orders, at the same instant.
    let now: chrono::DateTime<chrono::Utc> = now.into();
    let filter = |within: Option<i64>,
                  channel: Option<&str>,
                  kind: Option<ChannelKind>,
                  category: Option<&str>,
                  product: Option<&str>,
                  sku: Option<&str>| PurchaseFilter {
        within_days: within,
        channel: channel.map(Into::into),
        channel_kind: kind.map(|k| k as i32),
        store: None,
        category: category.map(Into::into),
        product: product.map(Into::into),
        sku: sku.map(Into::into),
    };
    let filters = [
        filter(None, None, None, None, None, None),
        filter(Some(30), None, None, None, None, None),
        filter(Some(7), Some("eshop"), None, None, None, None),
        filter(
            Some(30),
            None,
            Some(ChannelKind::Store),
            Some("category-1"),
            None,
            None,
        ),
        filter(None, None, None, Some("category-0"), None, None),
        filter(Some(30), None, None, None, Some("product-2"), None),
        filter(
            Some(20),
            Some("social"),
            None,
            Some("category-1"),
            Some("product-1"),
            Some("sku-1"),
        ),
        filter(Some(30), None, None, None, None, Some("sku-5")),
        PurchaseFilter {
            store: Some("store-1".into()),
            within_days: Some(35),
            ..Default::default()
        },
    ];
    let some: Vec<String> = vec!["c-1".into(), "c-3".into(), "c-9".into()];
    let mut conn = pool.acquire().await.expect("conn");
    for f in &filters {
        let since = f.within_days.map(|d| now - chrono::Duration::days(d));
        let expected: HashMap<String, i64> = sqlx::query_as(
            "SELECT o.customer_id, count(DISTINCT o.order_id)
             FROM customer_orders o LEFT JOIN order_lines l ON l.order_id = o.order_id
             WHERE o.status <> 8
               AND ($1::timestamptz IS NULL OR o.placed_at >= $1)
               AND ($2::text IS NULL OR o.channel_id = $2)
               AND ($3::int IS NULL OR o.channel_kind = $3)
               AND ($4::text IS NULL OR o.store_id = $4)
               AND ($5::text IS NULL OR l.category_id = $5)
               AND ($6::text IS NULL OR l.product_id = $6)
               AND ($7::text IS NULL OR l.sku_id = $7)
             GROUP BY o.customer_id",
        )
        .bind(since)
        .bind(&f.channel)
        .bind(f.channel_kind)
        .bind(&f.store)
        .bind(&f.category)
        .bind(&f.product)
        .bind(&f.sku)
        .fetch_all(&mut *conn)
        .await
        .expect("expected")
        .into_iter()
        .collect();
        assert!(!expected.is_empty(), "{f:?} matches some orders");
        let all = purchases::orders_matching(&mut conn, f, None, now)
            .await
            .expect("all");
        assert_eq!(all, expected, "{f:?} over every customer");
        let asked = purchases::orders_matching(&mut conn, f, Some(&some), now)
            .await
            .expect("some");
        let expected_asked: HashMap<String, i64> = expected
            .into_iter()
            .filter(|(c, _)| some.contains(c))
            .collect();
        assert_eq!(asked, expected_asked, "{f:?} for some customers");
    }

    // The rolling spend from the months and days of the figures and the first day's orders,
    // for windows of a few days, a month and a year starting on every hour of a day.
    let customers: Vec<&str> = vec!["c-0", "c-1", "c-2", "c-3", "c-4", "c-9"];
    let windows = [3, 30, 365]
        .into_iter()
        .flat_map(|days| (0..24).map(move |hours| (days, hours)));
    for (days, hours) in windows {
        let since = now - chrono::Duration::days(days) + chrono::Duration::hours(hours);
        let spends = purchases::rolling_spends(&mut conn, Some(&customers), since)
            .await
            .expect("spends");
        let expected: HashMap<String, i64> = sqlx::query_as(
            "SELECT c, coalesce((SELECT sum(total_minor - refunded_minor) FROM customer_orders
                 WHERE customer_id = c AND status <> 8 AND placed_at >= $2), 0)::bigint
             FROM unnest($1::text[]) AS c",
        )
        .bind(&customers)
        .bind(since)
        .fetch_all(&mut *conn)
        .await
        .expect("expected spends")
        .into_iter()
        .collect();
        assert_eq!(spends, expected, "since {since}");
        let all = purchases::rolling_spends(&mut conn, None, since)
            .await
            .expect("all spends");
        let nonzero: HashMap<String, i64> = expected.into_iter().filter(|(_, s)| *s != 0).collect();
        assert_eq!(
            all.into_iter()
                .filter(|(_, s)| *s != 0)
                .collect::<HashMap<_, _>>(),
            nonzero
        );
    }
}

/// Two transactions filing the same new orders side by side (a placement and a payment read
/// by two replicas): the second waits for the first, reads the orders it filed, and the
/// figures count each order once.
#[tokio::test]
async fn two_transactions_filing_the_same_new_orders_count_each_once() {
    let pool = database(None).await;
    let events = handler(&pool);
    let orders: Vec<OrderFacts> = (0..20)
        .map(|n| {
            order(
                &format!("o-{n}"),
                &format!("c-{}", n % 3),
                ("eshop", ChannelKind::EShop),
                &[("l1", 1, 1_000), ("l2", 1, 500)],
                n,
            )
        })
        .collect();
    let batch = |payload: fn(&OrderFacts) -> Payload, first_id: u128| -> Vec<Event> {
        orders
            .iter()
            .enumerate()
            .map(|(n, o)| {
                let n = first_id + n as u128;
                event(n, at(100 + n as u64), payload(o))
            })
            .collect()
    };
    let (placements, payments) = (batch(placed, 1), batch(paid, 1_000));
    // The customers are known already, so neither transaction waits to create them.
    let registrations: Vec<Event> = (0..3)
        .map(|n| event(5_000 + n, at(0), registered(&format!("c-{n}"))))
        .collect();
    let mut tx = pool.begin().await.expect("tx");
    events
        .handle_batch(&mut tx, &registrations)
        .await
        .expect("registrations");
    tx.commit().await.expect("commit");

    let mut first = pool.begin().await.expect("tx");
    events
        .handle_batch(&mut first, &placements)
        .await
        .expect("placements");
    let second = {
        let (pool, events) = (pool.clone(), events.clone());
        tokio::spawn(async move {
            let mut tx = pool.begin().await.expect("tx");
            events
                .handle_batch(&mut tx, &payments)
                .await
                .expect("payments");
            tx.commit().await.expect("commit");
        })
    };
    // The second waits on a lock the first holds.
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE NOT l.granted AND a.datname = current_database()",
        )
        .fetch_one(&pool)
        .await
        .expect("locks");
        if waiting > 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    first.commit().await.expect("commit");
    second.await.expect("second");

    assert_figures_match_the_orders(&pool).await;
    let (paid_orders, counted): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM customer_orders WHERE status = 2),
             (SELECT sum(orders)::bigint FROM customer_stats)",
    )
    .fetch_one(&pool)
    .await
    .expect("counts");
    assert_eq!((paid_orders, counted), (20, 20));
}

//! A batch folds each order's events into one change: applying a history as one batch leaves
//! every table exactly as applying it event by event does.

use omni_proto::common::ChannelKind;
use omni_proto::events::Event;
use omni_proto::events::event::Payload;
use omni_runtime::consumer::Handler as _;
use performance::events::Facts;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::support::*;

/// The tables the handler writes, each as sorted rows of text.
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
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT t::text FROM \"{table}\" t ORDER BY 1"
        )))
        .fetch_all(pool)
        .await
        .expect("rows");
        out.push((table, rows));
    }
    out
}

async fn database() -> PgPool {
    let url = omni_testkit::fresh_database("perf_batches")
        .await
        .expect("db");
    let pool = PgPool::connect(&url).await.expect("pool");
    omni_runtime::db::migrate(&pool, performance::MIGRATOR, &CancellationToken::new())
        .await
        .expect("migrate");
    pool
}

/// A fresh database with `history` applied in batches of `size` (one: event by event).
async fn applied(history: &[Event], size: usize) -> PgPool {
    let (sales_changed, _) = tokio::sync::broadcast::channel(4);
    let facts = Facts { sales_changed };
    let pool = database().await;
    let mut conn = pool.acquire().await.expect("conn");
    for batch in history.chunks(size) {
        match batch {
            [one] => facts.handle(&mut conn, one).await.expect("event"),
            _ => facts.handle_batch(&mut conn, batch).await.expect("batch"),
        }
    }
    drop(conn);
    pool
}

fn event(n: usize, (kind, payload): (&str, Payload)) -> Event {
    Event {
        id: uuid::Uuid::from_u128(n as u128 + 1).to_string(),
        r#type: kind.into(),
        occurred_at: ts(at(3, 1, 12, 0) + chrono::Duration::seconds(n as i64)),
        payload: Some(payload),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_batch_leaves_every_table_as_event_by_event_application_does() {
    let first = Order {
        id: "o-1",
        channel: "eshop",
        store: "",
        associate: "",
        customer: "c-1",
        placed_at: at(3, 1, 9, 0),
        quantity: 2,
        net: 4_000,
        unit_cost: 900,
    };
    let pickup = Order {
        id: "o-2",
        channel: "store-lyon",
        store: "S1",
        customer: "c-1",
        placed_at: at(3, 1, 10, 0),
        ..first
    };
    let cancelled = Order {
        id: "o-3",
        customer: "c-2",
        placed_at: at(3, 1, 8, 0),
        ..first
    };
    let later = Order {
        id: "o-4",
        customer: "c-2",
        placed_at: at(3, 2, 8, 0),
        ..first
    };
    let history: Vec<Event> = [
        channel("eshop", ChannelKind::EShop),
        first.placed(),
        pickup.placed(),
        cancelled.placed(),
        later.placed(),
        ready_for_pickup("o-2", at(3, 1, 10, 30), at(3, 1, 10, 20)),
        first.fulfilled_pickup(at(3, 1, 9, 30), at(3, 1, 9, 45)),
        cancelled.cancelled(),
        // A late placement of a cancelled order does not bring it back.
        cancelled.placed(),
        pickup.fulfilled_pickup(at(3, 1, 10, 30), at(3, 1, 10, 20)),
        returned("r-1", "o-1", "eshop", 2_000, 1, 900, at(3, 2, 9, 0)),
        later.cancelled(),
        later.placed(),
    ]
    .into_iter()
    .enumerate()
    .map(|(n, e)| event(n, e))
    .collect();

    let (one_by_one, batched) = (
        applied(&history, 1).await,
        applied(&history, usize::MAX).await,
    );

    let (expected, got) = (dump(&one_by_one).await, dump(&batched).await);
    assert!(
        expected
            .iter()
            .any(|(t, rows)| t == "daily_rollups" && !rows.is_empty()),
        "the history wrote rollups: {expected:#?}"
    );
    assert_eq!(got, expected);
}

/// A longer history, in the shapes a busy hour brings: many customers with several orders,
/// an order placed earlier than its customer's first arriving late (the first order moves),
/// cancellations before and after their placements (one of a first order, long after), pickups made ready, returns of orders
/// applied batches ago and of orders still in the batch, a merge and a channel announced
/// midway. Applied event by event, in batches of seven and as one batch, every table ends the
/// same, and a rebuild from the facts finds nothing to change.
#[tokio::test]
async fn batches_of_any_size_leave_every_table_as_event_by_event_application_does() {
    const CUSTOMERS: [&str; 6] = ["c-1", "c-2", "c-3", "c-4", "c-5", ""];
    const CHANNELS: [(&str, &str); 3] = [("eshop", ""), ("store-lyon", "S1"), ("social", "")];
    let ids: Vec<String> = (0..40).map(|n| format!("o-{n:02}")).collect();
    let orders: Vec<Order<'_>> = ids
        .iter()
        .enumerate()
        .map(|(n, id)| {
            let (channel, store) = CHANNELS[n % 3];
            Order {
                id,
                channel,
                store,
                associate: if n % 4 == 0 { "A1" } else { "" },
                customer: CUSTOMERS[n % 6],
                // Order 37 was placed first of all: its customer's first order moves when it
                // arrives.
                placed_at: if n == 37 {
                    at(2, 27, 8, 0)
                } else {
                    at(3, 1 + (n as u32 % 5), 9 + n as u32 % 8, 0)
                },
                quantity: 1 + n as i32 % 3,
                net: 1_000 + 250 * n as i64,
                unit_cost: 300,
            }
        })
        .collect();
    let mut history = Vec::new();
    for (n, o) in orders.iter().enumerate() {
        if n == 5 {
            // Cancelled before its placement arrives.
            history.push(o.cancelled());
        }
        history.push(o.placed());
        if n >= 2 {
            let before = &orders[n - 2];
            match (n - 2) % 5 {
                0 => history.push(before.fulfilled_pickup(
                    before.placed_at + chrono::Duration::minutes(30),
                    before.placed_at + chrono::Duration::minutes(20 + n as i64),
                )),
                1 => history.push(before.cancelled()),
                2 => history.push(ready_for_pickup(
                    before.id,
                    before.placed_at + chrono::Duration::minutes(30),
                    before.placed_at + chrono::Duration::minutes(40),
                )),
                _ => history.push(before.placed()),
            }
        }
        if n >= 9 && n % 3 == 0 {
            // A return of an order from well before this batch, and of the one just placed.
            let old = &orders[n - 9];
            let r = format!("r-{n}");
            history.push(returned(
                &r,
                old.id,
                old.channel,
                500,
                1,
                300,
                at(3, 7, 10, 0),
            ));
            if n % 2 == 0 {
                let r = format!("r-{n}-new");
                history.push(returned(&r, o.id, o.channel, 400, 1, 300, at(3, 7, 11, 0)));
            }
        }
        if n == 20 {
            history.push((
                "identity.customer_merged",
                Payload::CustomerMerged(omni_proto::events::CustomerMerged {
                    survivor_id: "c-1".into(),
                    merged_id: "c-5".into(),
                }),
            ));
        }
        if n == 25 {
            history.push(channel("social", ChannelKind::Social));
        }
    }
    // A first order cancelled long after its placement: order 20 (March 1st) is c-3's
    // earliest, and the earliest of its other orders, order 32, applied batches ago, becomes
    // its first.
    history.push(orders[20].cancelled());
    let history: Vec<Event> = history
        .into_iter()
        .enumerate()
        .map(|(n, e)| event(n, e))
        .collect();

    let one_by_one = applied(&history, 1).await;
    let sevens = applied(&history, 7).await;
    let whole = applied(&history, usize::MAX).await;

    let expected = dump(&one_by_one).await;
    assert!(
        expected
            .iter()
            .any(|(t, rows)| t == "pair_rollups" && rows.len() > 100),
        "the history wrote pair rollups: {expected:#?}"
    );
    assert_eq!(dump(&sevens).await, expected, "in batches of seven");
    assert_eq!(dump(&whole).await, expected, "as one batch");
    for (pool, size) in [(&one_by_one, 1), (&sevens, 7), (&whole, usize::MAX)] {
        let rebuilt = performance::store::rebuild(pool, None)
            .await
            .expect("rebuild");
        assert_eq!(
            rebuilt.rows_changed, 0,
            "a rebuild from facts changes nothing (batches of {size})"
        );
    }
}

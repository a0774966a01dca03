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

    let (sales_changed, _) = tokio::sync::broadcast::channel(4);
    let facts = Facts { sales_changed };
    let (one_by_one, batched) = (database().await, database().await);
    let mut conn = one_by_one.acquire().await.expect("conn");
    for e in &history {
        facts.handle(&mut conn, e).await.expect("event");
    }
    drop(conn);
    let mut conn = batched.acquire().await.expect("conn");
    facts
        .handle_batch(&mut conn, &history)
        .await
        .expect("batch");
    drop(conn);

    let (expected, got) = (dump(&one_by_one).await, dump(&batched).await);
    assert!(
        expected
            .iter()
            .any(|(t, rows)| t == "daily_rollups" && !rows.is_empty()),
        "the history wrote rollups: {expected:#?}"
    );
    assert_eq!(got, expected);
}

//! Inventory value snapshots read from a real inventory service (`ListInventoryValues`, with
//! unit costs inventory learned from catalog events) turn into a channel's inventory turnover.

use std::time::Duration;

use chrono::{Datelike as _, Utc};
use omni_proto::common::{ChannelKind, Money};
use omni_proto::events::{ProductChanged, SkuSnapshot, event::Payload};
use omni_proto::omni::inventory::v1 as inv;
use omni_proto::omni::inventory::v1::location_service_client::LocationServiceClient;
use omni_proto::omni::inventory::v1::stock_service_client::StockServiceClient;
use omni_proto::omni::performance::v1 as pb;
use omni_runtime::auth::{Role, Scope};
use omni_runtime::outbox::Outbox;
use omni_runtime::redis::Redis;
use sqlx::PgPool;

use crate::support::*;

/// Publishes the catalog's cost of `sku` to inventory's namespace and waits until inventory
/// has applied it.
async fn catalog_cost(inventory: &omni_testkit::Service, sku: &str, cost: i64) {
    let db = inventory.db().await.expect("inventory db");
    let applied = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM processed_events WHERE consumer = 'inventory'",
        )
        .fetch_one(&db)
        .await
        .expect("count")
    };
    let before = applied().await;
    let feed_url = omni_testkit::fresh_database("catalog_feed")
        .await
        .expect("feed db");
    let feed = PgPool::connect(&feed_url).await.expect("feed pool");
    omni_runtime::db::migrate(&feed, sqlx::migrate::Migrator::DEFAULT, &Default::default())
        .await
        .expect("migrate feed");
    let redis = Redis::new(&omni_testkit::redis_url(), inventory.redis_prefix()).expect("redis");
    let outbox = Outbox::new("catalog");
    let mut tx = feed.begin().await.expect("tx");
    outbox
        .add(
            &mut tx,
            "catalog.product_changed",
            "product",
            "test",
            Payload::ProductChanged(ProductChanged {
                product_id: "product".into(),
                skus: vec![SkuSnapshot {
                    sku_id: sku.to_owned(),
                    unit_cost: Some(Money {
                        minor_units: cost,
                        currency: CURRENCY.into(),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        )
        .await
        .expect("outbox");
    tx.commit().await.expect("commit");
    let relay = outbox.relay(feed, redis, Duration::from_millis(50));
    while relay.publish_pending().await.expect("relay") > 0 {}
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while applied().await <= before {
        assert!(tokio::time::Instant::now() < deadline, "cost not applied");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn inventory_values_are_read_from_inventory_into_the_channels_turnover() {
    let inventory = omni_testkit::inventory().await.expect("inventory starts");
    // The store and its stock: 8 units costing 500.
    let store = LocationServiceClient::new(inventory.admin())
        .create_location(inv::CreateLocationRequest {
            idempotency_key: "store".into(),
            location: Some(inv::Location {
                code: "S1".into(),
                name: "Store one".into(),
                kind: inv::LocationKind::Store as i32,
                channel_id: "store".into(),
                address: Some(omni_proto::common::Address {
                    location: Some(omni_proto::common::GeoPoint {
                        latitude: 45.76,
                        longitude: 4.84,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        })
        .await
        .expect("location")
        .into_inner()
        .location
        .expect("location")
        .id;
    let sku = uuid::Uuid::now_v7().to_string();
    catalog_cost(&inventory, &sku, 500).await;
    StockServiceClient::new(inventory.admin())
        .record_movement(inv::RecordMovementRequest {
            idempotency_key: "receipt".into(),
            location_id: store.clone(),
            kind: inv::MovementKind::Receipt as i32,
            lines: vec![inv::MovementLine {
                sku_id: sku.clone(),
                quantity: 8,
            }],
            ..Default::default()
        })
        .await
        .expect("receipt");

    // Performance reads inventory as a service would.
    let token = omni_testkit::token(&[Role::Service], Scope::default());
    let mut p = start_with(Some(performance::InventoryFeed {
        client: StockServiceClient::new(inventory.with_token(&token)),
        every: Duration::from_millis(50),
    }))
    .await;
    let (kind, payload) = channel("store", ChannelKind::Store);
    let payload = match payload {
        Payload::ChannelChanged(mut c) => {
            c.store_location_id = store.clone();
            Payload::ChannelChanged(c)
        }
        other => other,
    };
    p.publish("catalog", vec![(kind, payload)]).await;
    let now = Utc::now();
    p.publish(
        "orders",
        vec![
            Order {
                id: "o1",
                channel: "store",
                store: &store,
                associate: "",
                customer: "A",
                placed_at: now,
                quantity: 2,
                net: 3000,
                unit_cost: 500,
            }
            .placed(),
        ],
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let value: Option<i64> = sqlx::query_scalar(
            "SELECT value FROM inventory_values WHERE location_id = $1 AND day = $2",
        )
        .bind(&store)
        .bind(now.date_naive())
        .fetch_optional(&p.db)
        .await
        .expect("value");
        if value == Some(4000) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "value not read: {value:?}"
        );
        tokio::task::yield_now().await;
    }

    let today = day(
        now.year(),
        i32::try_from(now.month()).expect("month"),
        i32::try_from(now.day()).expect("day"),
    );
    let r = p
        .report(pb::GetKpiReportRequest {
            range: range(today, today),
            ..Default::default()
        })
        .await;
    let row = r
        .rows
        .iter()
        .find(|r| r.channel_id == "store")
        .and_then(|r| r.current.as_ref())
        .expect("store row");
    // Cost of goods sold 1000 over the store's stock worth 4000.
    assert_eq!(minor(&row.average_inventory_value), Some(4000));
    assert!(close(row.inventory_turnover, 0.25));
}

//! ListInventoryValues: end-of-day value (on hand x unit cost) per location, with unit costs
//! learned from the catalog's ProductChanged events through a real outbox, relay and stream;
//! the cost in force at each day's end; paging; bad input and roles.

use std::time::Duration;

use chrono::{Datelike as _, Utc};
use omni_proto::common::{Date, DateRange, Money};
use omni_proto::events::{ProductChanged, SkuSnapshot, event::Payload};
use omni_proto::omni::inventory::v1 as pb;
use omni_proto::omni::inventory::v1::stock_service_client::StockServiceClient;
use omni_runtime::auth::{Role, Scope};
use omni_runtime::outbox::Outbox;
use omni_runtime::redis::Redis;
use sqlx::PgPool;

use crate::support::*;

/// The catalog's side: an outbox in its own database, relayed to inventory's Redis namespace.
struct Catalog {
    db: PgPool,
    redis: Redis,
}

impl Catalog {
    async fn new(inv: &Inventory) -> Self {
        let url = omni_testkit::fresh_database("inventory_catalog_feed")
            .await
            .expect("feed db");
        let db = PgPool::connect(&url).await.expect("feed pool");
        omni_runtime::db::migrate(&db, sqlx::migrate::Migrator::DEFAULT, &Default::default())
            .await
            .expect("migrate feed");
        let redis = Redis::new(&omni_testkit::redis_url(), inv.svc.redis_prefix()).expect("redis");
        Self { db, redis }
    }

    /// Publishes a product whose SKUs cost what `costs` says, and waits until inventory has
    /// applied it.
    async fn costs(&self, inv: &Inventory, costs: &[(&str, i64)]) {
        let before = applied(inv).await;
        let outbox = Outbox::new("catalog");
        let mut tx = self.db.begin().await.expect("tx");
        outbox
            .add(
                &mut tx,
                "catalog.product_changed",
                "product",
                "test",
                Payload::ProductChanged(ProductChanged {
                    product_id: "product".into(),
                    skus: costs
                        .iter()
                        .map(|(sku, cost)| SkuSnapshot {
                            sku_id: (*sku).to_owned(),
                            unit_cost: Some(Money {
                                minor_units: *cost,
                                currency: "EUR".into(),
                            }),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }),
            )
            .await
            .expect("outbox");
        tx.commit().await.expect("commit");
        let relay = outbox.relay(
            self.db.clone(),
            self.redis.clone(),
            Duration::from_millis(50),
        );
        while relay.publish_pending().await.expect("relay") > 0 {}
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while applied(inv).await <= before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "cost event not applied"
            );
            tokio::task::yield_now().await;
        }
    }
}

async fn applied(inv: &Inventory) -> i64 {
    inv.count("SELECT count(*) FROM processed_events WHERE consumer = 'inventory'")
        .await
}

fn date(d: chrono::NaiveDate) -> Option<Date> {
    Some(Date {
        year: d.year(),
        month: i32::try_from(d.month()).expect("month"),
        day: i32::try_from(d.day()).expect("day"),
    })
}

fn days(first: chrono::NaiveDate, last: chrono::NaiveDate) -> Option<DateRange> {
    Some(DateRange {
        start: date(first),
        end: date(last),
    })
}

/// Every value of the request, following page tokens.
async fn all_values(
    client: &mut StockServiceClient<omni_runtime::client::AuthChannel>,
    mut request: pb::ListInventoryValuesRequest,
) -> Vec<pb::InventoryValue> {
    let mut values = Vec::new();
    loop {
        let page = client
            .list_inventory_values(request.clone())
            .await
            .expect("values")
            .into_inner();
        values.extend(page.values);
        if page.next_page_token.is_empty() {
            return values;
        }
        request.page_token = page.next_page_token;
    }
}

fn figures(values: &[pb::InventoryValue], location: &str) -> Vec<(Option<Date>, i64, i64)> {
    values
        .iter()
        .filter(|v| v.location_id == location)
        .map(|v| {
            let value = v.value.as_ref().expect("value");
            assert_eq!(value.currency, "EUR");
            (v.day, v.units, value.minor_units)
        })
        .collect()
}

#[tokio::test]
async fn values_are_on_hand_times_the_cost_in_force_at_each_days_end() {
    let mut inv = start().await;
    let catalog = Catalog::new(&inv).await;
    let (shirt, shoe, uncosted) = (sku(), sku(), sku());
    let warehouse = inv.warehouse("W1").await;
    let store = inv.store("S1", 45.76, 4.84, true).await;
    inv.receive(&warehouse, &shirt, 10).await;
    inv.receive(&warehouse, &shoe, 2).await;
    inv.receive(&store, &shirt, 4).await;
    inv.receive(&store, &uncosted, 5).await;
    // As if the locations had opened and received this stock yesterday.
    sqlx::query("UPDATE locations SET created_at = created_at - interval '2 days'")
        .execute(&inv.db)
        .await
        .expect("backdate locations");
    sqlx::query("UPDATE movements SET occurred_at = occurred_at - interval '1 day'")
        .execute(&inv.db)
        .await
        .expect("backdate ledger");
    // The catalog announces costs only today: yesterday is valued at the first known cost.
    catalog.costs(&inv, &[(&shirt, 250), (&shoe, 1000)]).await;
    // Today the shirt costs more and the store sells two of them.
    catalog.costs(&inv, &[(&shirt, 300), (&shoe, 1000)]).await;
    inv.movement(&store, pb::MovementKind::WriteOff, &shirt, 2)
        .await;

    let today = Utc::now().date_naive();
    let yesterday = today.pred_opt().expect("yesterday");
    let two_days_ago = yesterday.pred_opt().expect("day before");
    let request = pb::ListInventoryValuesRequest {
        days: days(two_days_ago, today),
        location_ids: vec![warehouse.clone(), store.clone()],
        page_size: 1,
        ..Default::default()
    };
    let values = all_values(&mut inv.stock, request).await;
    // Ordered by day, then location; one page per value at page size 1.
    let keys: Vec<_> = values
        .iter()
        .map(|v| (v.day, v.location_id.clone()))
        .collect();
    let mut sorted = keys.clone();
    sorted.sort_by_key(|(d, l)| (d.map(|d| (d.year, d.month, d.day)), l.clone()));
    assert_eq!(keys, sorted);
    assert_eq!(values.len(), 6);

    assert_eq!(
        figures(&values, &warehouse),
        vec![
            (date(two_days_ago), 0, 0),
            (date(yesterday), 12, 10 * 250 + 2 * 1000),
            (date(today), 12, 10 * 300 + 2 * 1000),
        ]
    );
    // The uncosted SKU counts in units, not in value.
    assert_eq!(
        figures(&values, &store),
        vec![
            (date(two_days_ago), 0, 0),
            (date(yesterday), 9, 4 * 250),
            (date(today), 7, 2 * 300),
        ]
    );

    // Every location when none is named: the in-transit one too, with nothing in it.
    let everywhere = all_values(
        &mut inv.stock,
        pb::ListInventoryValuesRequest {
            days: days(today, today),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(everywhere.len(), 3);
    assert_eq!(everywhere.iter().map(|v| v.units).sum::<i64>(), 19);
}

#[tokio::test]
async fn bad_value_requests_are_refused_with_their_fields() {
    let mut inv = start().await;
    let today = Utc::now().date_naive();
    let yesterday = today.pred_opt().expect("yesterday");
    let status = inv
        .stock
        .list_inventory_values(pb::ListInventoryValuesRequest {
            days: days(today, yesterday),
            location_ids: vec!["not-an-id".into()],
            page_token: "zz".into(),
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        fields(&status),
        ["days.end", "location_ids[0]", "page_token"]
    );
    let status = inv
        .stock
        .list_inventory_values(pb::ListInventoryValuesRequest::default())
        .await
        .expect_err("refused");
    assert_eq!(fields(&status), ["days"]);
    let status = inv
        .stock
        .list_inventory_values(pb::ListInventoryValuesRequest {
            days: days(today - chrono::Duration::days(400), today),
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(fields(&status), ["days"]);

    // Store associates and channel apps do not read values.
    let associate = inv.svc.with_token(&omni_testkit::token(
        &[Role::StoreAssociate],
        Scope::default(),
    ));
    let status = StockServiceClient::new(associate)
        .list_inventory_values(pb::ListInventoryValuesRequest {
            days: days(today, today),
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
}

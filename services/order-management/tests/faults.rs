//! Faults across services: what is left when order-management dies between holding stock and
//! committing the order, and inventory without Redis.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use omni_proto::omni::inventory::v1 as inv;
use omni_proto::omni::inventory::v1::availability_service_client::AvailabilityServiceClient;
use omni_proto::omni::inventory::v1::location_service_client::LocationServiceClient;
use omni_proto::omni::inventory::v1::reservation_service_client::ReservationServiceClient;
use omni_proto::omni::inventory::v1::stock_service_client::StockServiceClient;
use omni_runtime::client::AuthChannel;
use omni_testkit::{OrderClocks, TcpProxy};
use tonic_health::pb::health_check_response::ServingStatus;

#[path = "orders/support.rs"]
#[allow(dead_code)]
mod support;

use support::*;

/// order-management holds the stock, then stops before committing and cannot give the hold
/// back (it lost inventory, as a killed process would): the hold expires by itself, no order
/// exists, and the stock is sellable again.
#[tokio::test]
async fn stock_held_by_an_order_that_never_committed_is_free_once_the_hold_expires() {
    // The hold lasts twice the payment window: long enough that "still held right after"
    // is checked before it ends even on a loaded machine, short enough to wait out.
    let w = Arc::new(
        World::start_with(OrderClocks {
            payment_window: Duration::from_secs(5),
            ..OrderClocks::default()
        })
        .await,
    );
    w.receive(&w.warehouse, &w.tee_l, 3).await;
    // The order row waits, then fails: the window in which order-management "dies".
    let db = w.shop.orders.db().await.unwrap();
    sqlx::query(
        "CREATE FUNCTION stall() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM pg_sleep(1); RAISE EXCEPTION 'process gone'; END $$",
    )
    .execute(&db)
    .await
    .unwrap();
    sqlx::query(
        "CREATE TRIGGER stall BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION stall()",
    )
    .execute(&db)
    .await
    .unwrap();

    let placing = {
        let w = w.clone();
        tokio::spawn(async move {
            w.place(w.request(
                &w.eshop,
                vec![line(&w.tee_l, 2)],
                ship_to(home_villeurbanne()),
            ))
            .await
        })
    };
    eventually(async || w.level(&w.warehouse, &w.tee_l).await == (3, 2)).await;
    // Held; now order-management loses inventory before it could release anything.
    w.shop.inventory_link.cut();
    placing.await.unwrap().expect_err("the order never commits");
    assert_eq!(w.count("SELECT count(*) FROM orders").await, 0);
    assert_eq!(
        w.level(&w.warehouse, &w.tee_l).await,
        (3, 2),
        "still held right after"
    );

    // The hold runs out (payment window + as much again, 10 s) and inventory frees it; the
    // available-to-promise figure (served from Redis, written after the expiry commits)
    // follows.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while w.level(&w.warehouse, &w.tee_l).await != (3, 0) || w.available(&w.tee_l).await != 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the hold never expired: {:?} held, {} available",
            w.level(&w.warehouse, &w.tee_l).await,
            w.available(&w.tee_l).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    db.close().await;
}

/// inventory keeps answering from Postgres while Redis is unreachable, and recovers when it
/// returns.
#[tokio::test]
async fn inventory_answers_from_postgres_while_redis_is_unreachable() {
    let mut common = omni_testkit::common_config("inventory").await.unwrap();
    let proxy = TcpProxy::start("127.0.0.1:6379".parse().unwrap())
        .await
        .unwrap();
    common.redis_url = format!("redis://{}", proxy.addr()).into();
    let svc = omni_testkit::inventory_with(common).await.unwrap();
    let admin: AuthChannel = svc.admin();
    let warehouse = LocationServiceClient::new(admin.clone())
        .create_location(inv::CreateLocationRequest {
            idempotency_key: key(),
            location: Some(inv::Location {
                code: "WH-01".into(),
                name: "Warehouse".into(),
                kind: inv::LocationKind::Warehouse as i32,
                ships_orders: true,
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .location
        .unwrap()
        .id;
    let sku = uuid::Uuid::now_v7().to_string();
    StockServiceClient::new(admin.clone())
        .record_movement(inv::RecordMovementRequest {
            idempotency_key: key(),
            location_id: warehouse.clone(),
            kind: inv::MovementKind::Receipt as i32,
            lines: vec![inv::MovementLine {
                sku_id: sku.clone(),
                quantity: 10,
            }],
            reason: "delivery".into(),
            reference: String::new(),
        })
        .await
        .unwrap();
    let mut availability = AvailabilityServiceClient::new(admin.clone());
    let available = |c: &mut AvailabilityServiceClient<AuthChannel>| {
        let request = inv::GetAvailabilityRequest {
            sku_ids: vec![sku.clone()],
            ..Default::default()
        };
        let mut c = c.clone();
        async move {
            c.get_availability(request)
                .await
                .map(|r| r.into_inner().skus[0].network_available)
        }
    };
    assert_eq!(available(&mut availability).await.unwrap(), 10);

    proxy.cut();
    svc.wait_for(ServingStatus::NotServing).await.unwrap();
    // Still answering, from Postgres, and still reserving.
    assert_eq!(available(&mut availability).await.unwrap(), 10);
    ReservationServiceClient::new(admin)
        .reserve(inv::ReserveRequest {
            idempotency_key: key(),
            lines: vec![inv::ReserveLine {
                sku_id: sku.clone(),
                quantity: 3,
                location_ids: Vec::new(),
            }],
            channel_id: "web".into(),
            ..Default::default()
        })
        .await
        .expect("reserves without Redis");
    assert_eq!(available(&mut availability).await.unwrap(), 7);

    proxy.restore();
    svc.wait_for(ServingStatus::Serving).await.unwrap();
    // The snapshot written while Redis was away is repaired: Redis serves the new figure.
    eventually(async || available(&mut availability).await.ok() == Some(7)).await;
}

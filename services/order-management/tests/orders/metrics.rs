//! Every service serves Prometheus metrics on its own port; scraped here after real traffic.

use crate::support::*;

/// The value of the first sample whose line starts with `prefix` (name and labels).
fn sample(page: &str, prefix: &str) -> Option<f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn services_serve_rpc_dependency_outbox_and_consumer_metrics() {
    let w = World::start().await;
    w.receive(&w.warehouse, &w.mug, 5).await;
    let order = w
        .place(w.request(
            &w.eshop,
            vec![line(&w.mug, 1)],
            ship_to(home_villeurbanne()),
        ))
        .await
        .expect("placed");
    let refused = w
        .place(w.request(
            &w.eshop,
            vec![line(&w.mug, 99)],
            ship_to(home_villeurbanne()),
        ))
        .await
        .expect_err("shortage");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);

    let page = w
        .shop
        .orders
        .scrape()
        .await
        .expect("scrape order-management");
    assert_eq!(
        sample(
            &page,
            r#"omni_rpc_requests_total{code="OK",method="omni.orders.v1.OrderService/PlaceOrder"}"#
        ),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        sample(
            &page,
            r#"omni_rpc_requests_total{code="FAILED_PRECONDITION",method="omni.orders.v1.OrderService/PlaceOrder"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &page,
            r#"omni_rpc_duration_seconds_count{method="omni.orders.v1.OrderService/PlaceOrder"}"#
        ),
        Some(2.0)
    );
    assert!(page.contains("omni_db_pool_connections{state=\"idle\"}"));
    assert!(sample(&page, "omni_outbox_backlog").is_some());
    // Health checks and reflection are not counted as RPCs.
    assert!(!page.contains("grpc.health"));

    // inventory saw the reservation that order-management made.
    let inventory = w.shop.inventory.scrape().await.expect("scrape inventory");
    assert_eq!(
        sample(
            &inventory,
            r#"omni_rpc_requests_total{code="OK",method="omni.inventory.v1.ReservationService/Reserve"}"#
        ),
        Some(1.0)
    );
    // The dependency gauges follow the health watcher.
    eventually(async || {
        let page = w.shop.orders.scrape().await.expect("scrape");
        sample(&page, r#"omni_dependency_up{dependency="postgres"}"#) == Some(1.0)
            && sample(&page, r#"omni_dependency_up{dependency="redis"}"#) == Some(1.0)
    })
    .await;
    // crm consumes the order events: its lag on the orders stream drains to zero.
    eventually(async || {
        let page = w.shop.crm.scrape().await.expect("scrape crm");
        let stream = format!("{}omni:events:{{orders}}", w.shop.crm.redis_prefix());
        page.lines().any(|l| {
            l.starts_with("omni_consumer_lag{") && l.contains(&stream) && l.ends_with(" 0")
        })
    })
    .await;
    assert!(!order.id.is_empty());
}

#[tokio::test]
async fn inventory_counts_its_hot_gate_decisions() {
    use omni_proto::omni::inventory::v1 as inv;
    use omni_proto::omni::inventory::v1::reservation_service_client::ReservationServiceClient;
    use omni_proto::omni::inventory::v1::stock_service_client::StockServiceClient;

    let w = World::start().await;
    w.receive(&w.warehouse, &w.tee_s, 2).await;
    StockServiceClient::new(w.shop.inventory.admin())
        .set_hot_sku(inv::SetHotSkuRequest {
            sku_id: w.tee_s.clone(),
            hot: true,
            reason: "livestream".into(),
            until: None,
        })
        .await
        .expect("hot");
    let mut reservations = ReservationServiceClient::new(w.shop.inventory.admin());
    let mut outcomes = Vec::new();
    for buyer in 0..3 {
        if buyer == 2 {
            // The gate is reset from each stock snapshot written through to Redis; once the
            // snapshot after both holds is there, the third buyer meets a sold-out gate
            // (before that, an earlier snapshot landing late may let Postgres refuse instead).
            eventually(async || w.available(&w.tee_s).await == 0).await;
        }
        let reserved = reservations
            .reserve(inv::ReserveRequest {
                idempotency_key: key(),
                lines: vec![inv::ReserveLine {
                    sku_id: w.tee_s.clone(),
                    quantity: 1,
                    location_ids: Vec::new(),
                }],
                channel_id: "web".into(),
                ..Default::default()
            })
            .await;
        outcomes.push(reserved.is_ok());
    }
    assert_eq!(outcomes, [true, true, false], "two units, three buyers");
    let page = w.shop.inventory.scrape().await.expect("scrape inventory");
    assert_eq!(
        sample(
            &page,
            r#"omni_inventory_hot_gate_total{decision="admitted"}"#
        ),
        Some(2.0),
        "{page}"
    );
    assert_eq!(
        sample(
            &page,
            r#"omni_inventory_hot_gate_total{decision="refused"}"#
        ),
        Some(1.0)
    );
}

//! The event pipeline under a Redis data loss: crm and performance learn of orders only through
//! events, so a flush of Redis in the middle of a run must leave them exactly where a run
//! without it would be.

use chrono::Utc;
use omni_proto::common::{Date, DateRange};
use omni_proto::omni::crm::v1 as crm;
use omni_proto::omni::crm::v1::customer_view_service_client::CustomerViewServiceClient;
use omni_proto::omni::performance::v1 as perf;
use omni_proto::omni::performance::v1::kpi_service_client::KpiServiceClient;

use crate::support::{World, eventually, home_villeurbanne, line, ship_to};

/// Places, pays and completes one order of a medium tee for the test customer.
async fn complete_one(w: &World) {
    let placed = w
        .place(w.request(
            &w.eshop,
            vec![line(&w.tee_m, 1)],
            ship_to(home_villeurbanne()),
        ))
        .await
        .expect("placed");
    let paid = w.pay(&placed).await;
    w.complete_shipping(&paid).await;
}

/// (orders, net spend, points) in crm's view of the customer.
async fn crm_figures(w: &World, customer: &str) -> Option<(i64, i64, i64)> {
    let view = CustomerViewServiceClient::new(w.shop.crm.admin())
        .get_customer_view(crm::GetCustomerViewRequest {
            customer_id: customer.into(),
            ..Default::default()
        })
        .await
        .ok()?
        .into_inner()
        .view?;
    Some((
        view.order_count,
        view.total_spend.map_or(0, |m| m.minor_units),
        view.points_balance,
    ))
}

/// (orders, net sales) of the e-shop today, as performance counts them.
async fn kpis_today(w: &World) -> (i64, i64) {
    let today = Utc::now().date_naive();
    let day = Date {
        year: chrono::Datelike::year(&today),
        month: chrono::Datelike::month(&today) as i32,
        day: chrono::Datelike::day(&today) as i32,
    };
    let report = KpiServiceClient::new(w.shop.performance.admin())
        .get_kpi_report(perf::GetKpiReportRequest {
            range: Some(DateRange {
                start: Some(day),
                end: Some(day),
            }),
            channel_ids: vec![w.eshop.id.clone()],
            ..Default::default()
        })
        .await
        .expect("report")
        .into_inner();
    report.total.and_then(|t| t.current).map_or((0, 0), |c| {
        (c.orders, c.net_sales.map_or(0, |m| m.minor_units))
    })
}

/// Until order-management has relayed its events and crm and performance have read and acknowledged every event on their streams (their
/// own metrics say so), and can read (`omni_consumer_up` 1).
async fn drained(w: &World) {
    // First everything order-management committed is on its stream.
    eventually(async || {
        let page = w.shop.orders.scrape().await.unwrap_or_default();
        page.lines().any(|l| l == "omni_outbox_backlog 0")
    })
    .await;
    for service in [&w.shop.crm, &w.shop.performance] {
        eventually(async || {
            let page = service.scrape().await.unwrap_or_default();
            let backlog = page.lines().filter(|l| {
                l.starts_with("omni_consumer_lag{") || l.starts_with("omni_consumer_pending{")
            });
            let lines: Vec<&str> = backlog.collect();
            !lines.is_empty()
                && lines.iter().all(|l| l.ends_with(" 0"))
                && page
                    .lines()
                    .any(|l| l.starts_with("omni_consumer_up{") && l.ends_with(" 1"))
        })
        .await;
    }
}

#[tokio::test]
async fn a_redis_flush_mid_stream_leaves_crm_and_performance_where_they_would_be() {
    let redis = omni_testkit::PrivateRedis::start().await.expect("redis");
    let w = World::start_on(redis.url()).await;
    w.receive(&w.warehouse, &w.tee_m, 20).await;
    let customer = w.customer("+33 6 12 34 56 78").await.id;

    for _ in 0..3 {
        complete_one(&w).await;
    }
    drained(&w).await;
    let (orders, spend, points) = crm_figures(&w, &customer).await.expect("crm's view");
    let (counted, sales) = kpis_today(&w).await;
    assert_eq!((orders, counted), (3, 3));
    assert!(points > 0);

    // Redis loses everything: streams, consumer groups, pending entries, hot stock.
    redis.flush_all().await.expect("flush");

    for _ in 0..3 {
        complete_one(&w).await;
    }
    // Exactly twice the figures of three orders: nothing lost, nothing counted twice.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (crm_now, kpis_now) = (crm_figures(&w, &customer).await, kpis_today(&w).await);
        if crm_now == Some((6, 2 * spend, 2 * points)) && kpis_now == (6, 2 * sales) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "crm {crm_now:?} and performance {kpis_now:?} never reached {:?} and {:?}",
            (6, 2 * spend, 2 * points),
            (6, 2 * sales)
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Still so once every stream has been read again from the start.
    drained(&w).await;
    assert_eq!(
        crm_figures(&w, &customer).await,
        Some((6, 2 * spend, 2 * points))
    );
    assert_eq!(kpis_today(&w).await, (6, 2 * sales));
}

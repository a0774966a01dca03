//! ImportOrders: history from before the service, with its own dates, seen by crm and
//! performance, never touching stock, all or nothing, and safe to send twice.

use chrono::{DateTime, Days, Duration, NaiveDate, Utc};
use omni_proto::common::{Date, DateRange};
use omni_proto::omni::crm::v1 as crm;
use omni_proto::omni::crm::v1::loyalty_service_client::LoyaltyServiceClient;
use omni_proto::omni::orders::v1 as pb;
use omni_proto::omni::orders::v1::order_service_client::OrderServiceClient;
use omni_proto::omni::performance::v1 as perf;
use omni_proto::omni::performance::v1::kpi_service_client::KpiServiceClient;
use omni_runtime::auth::Role;
use omni_runtime::time::timestamp;
use uuid::Uuid;

use crate::support::{
    MUG_PRICE, TEE_PRICE, World, at_store, eventually, fields, home_villeurbanne, key, ship_to,
};

fn at(days_ago: u64, hour: u32) -> DateTime<Utc> {
    (Utc::now().date_naive() - Days::new(days_ago))
        .and_hms_opt(hour, 0, 0)
        .expect("a time")
        .and_utc()
}

fn date(d: NaiveDate) -> Date {
    use chrono::Datelike as _;
    Date {
        year: d.year(),
        month: d.month() as i32,
        day: d.day() as i32,
    }
}

fn line(sku: &str, quantity: i32, location: &str) -> pb::HistoricalOrderLine {
    pb::HistoricalOrderLine {
        sku_id: sku.into(),
        quantity,
        location_id: location.into(),
    }
}

/// Three orders of the past: shipped then partly returned in a store, picked up late, and
/// cancelled.
fn history(w: &World, customer: &str) -> Vec<pb::HistoricalOrder> {
    let reference = key();
    vec![
        pb::HistoricalOrder {
            channel_id: w.eshop.id.clone(),
            channel_order_ref: format!("legacy-{reference}-1"),
            customer_id: customer.into(),
            lines: vec![line(&w.tee_m, 2, &w.warehouse)],
            delivery: ship_to(home_villeurbanne()),
            status: pb::OrderStatus::Completed as i32,
            placed_at: Some(timestamp(at(40, 10))),
            closed_at: Some(timestamp(at(38, 15))),
            returns: vec![pb::HistoricalReturn {
                channel_id: w.store_channel.id.clone(),
                location_id: w.lyon.clone(),
                completed_at: Some(timestamp(at(33, 11))),
                lines: vec![pb::HistoricalReturnLine {
                    sku_id: w.tee_m.clone(),
                    quantity: 1,
                    reason: pb::ReturnReason::WrongSize as i32,
                    condition: pb::ItemCondition::Resellable as i32,
                }],
            }],
            ..Default::default()
        },
        pb::HistoricalOrder {
            channel_id: w.eshop.id.clone(),
            channel_order_ref: format!("legacy-{reference}-2"),
            customer_id: customer.into(),
            lines: vec![line(&w.mug, 1, "")],
            delivery: at_store(pb::DeliveryKind::Pickup, &w.lyon),
            status: pb::OrderStatus::Completed as i32,
            placed_at: Some(timestamp(at(10, 10))),
            ready_at: Some(timestamp(at(10, 10) + Duration::minutes(45))),
            closed_at: Some(timestamp(at(10, 13))),
            ..Default::default()
        },
        pb::HistoricalOrder {
            channel_id: w.livestream.id.clone(),
            channel_order_ref: format!("legacy-{reference}-3"),
            customer_id: customer.into(),
            lines: vec![line(&w.tee_s, 1, &w.warehouse)],
            delivery: ship_to(home_villeurbanne()),
            status: pb::OrderStatus::Cancelled as i32,
            placed_at: Some(timestamp(at(20, 10))),
            closed_at: Some(timestamp(at(20, 12))),
            ..Default::default()
        },
    ]
}

async fn import(
    w: &World,
    orders: Vec<pb::HistoricalOrder>,
) -> Result<pb::ImportOrdersResponse, tonic::Status> {
    w.orders_admin()
        .import_orders(pb::ImportOrdersRequest { orders })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn history_comes_in_with_its_own_dates_and_a_resent_batch_changes_nothing() {
    let w = World::start().await;
    let customer = w.customer("+33611000001").await.id;
    w.receive(&w.warehouse, &w.tee_m, 10).await;
    let available = w.available(&w.tee_m).await;

    let batch = history(&w, &customer);
    let imported = import(&w, batch.clone()).await.expect("imported");
    assert_eq!(imported.orders.len(), 3);
    assert!(imported.orders.iter().all(|o| o.created));

    // Shipped, then one of two returned in a store: priced by the catalog, refunded in part.
    let shipped = w.get(&imported.orders[0].order_id).await;
    assert!(shipped.imported);
    assert_eq!(shipped.status(), pb::OrderStatus::Completed);
    assert_eq!(shipped.placed_at, Some(timestamp(at(40, 10))));
    assert_eq!(shipped.completed_at, Some(timestamp(at(38, 15))));
    assert_eq!(shipped.channel_order_ref, batch[0].channel_order_ref);
    assert_eq!(
        shipped.total.as_ref().map(|m| m.minor_units),
        Some(2 * TEE_PRICE)
    );
    assert_eq!(shipped.lines[0].location_id, w.warehouse);
    assert_eq!(shipped.lines[0].returned_quantity, 1);
    assert_eq!(
        shipped.refunded_total.as_ref().map(|m| m.minor_units),
        Some(TEE_PRICE)
    );
    assert_eq!(shipped.fulfilments.len(), 1);
    assert_eq!(shipped.fulfilments[0].status(), pb::OrderStatus::Completed);
    let returns = w
        .returns_admin()
        .list_returns(pb::ListReturnsRequest {
            order_id: shipped.id.clone(),
            ..Default::default()
        })
        .await
        .expect("returns")
        .into_inner()
        .returns;
    assert_eq!(returns.len(), 1);
    assert_eq!(returns[0].status(), pb::ReturnStatus::Completed);
    assert_eq!(returns[0].location_id, w.lyon);
    assert_eq!(returns[0].completed_at, Some(timestamp(at(33, 11))));

    // Picked up: the 30-minute promise counts from placement, and was missed.
    let picked_up = w.get(&imported.orders[1].order_id).await;
    let pickup = picked_up.pickup.clone().expect("pickup");
    assert_eq!(
        pickup.promised_ready_at,
        Some(timestamp(at(10, 10) + Duration::minutes(30)))
    );
    assert!(!pickup.ready_within_promise);
    assert_eq!(
        picked_up.total.as_ref().map(|m| m.minor_units),
        Some(MUG_PRICE)
    );

    let cancelled = w.get(&imported.orders[2].order_id).await;
    assert_eq!(cancelled.status(), pb::OrderStatus::Cancelled);
    assert!(cancelled.payment.is_none());
    assert_eq!(cancelled.cancelled_at, Some(timestamp(at(20, 12))));

    // History already left the shelves: stock is untouched, and nothing was reserved.
    assert_eq!(w.available(&w.tee_m).await, available);
    assert_eq!(w.level(&w.warehouse, &w.tee_m).await, (10, 0));

    // Sent again (a retry after a lost reply): the same orders, nothing new.
    let orders_before = w.count("SELECT count(*) FROM orders").await;
    let again = import(&w, batch.clone()).await.expect("resent");
    assert!(again.orders.iter().all(|o| !o.created));
    let ids = |r: &pb::ImportOrdersResponse| -> Vec<String> {
        r.orders.iter().map(|o| o.order_id.clone()).collect()
    };
    assert_eq!(ids(&again), ids(&imported));
    assert_eq!(w.count("SELECT count(*) FROM orders").await, orders_before);
    assert_eq!(w.count("SELECT count(*) FROM returns").await, 1);

    // Resent with one more order that catalog cannot price: refused whole, and the order is
    // named by its place in this batch, although it is the only one priced.
    let mut grown = batch;
    let mut unknown = grown[1].clone();
    unknown.channel_order_ref = format!("{}-late", unknown.channel_order_ref);
    unknown.lines[0].sku_id = Uuid::now_v7().to_string();
    grown.push(unknown);
    let refused = import(&w, grown).await.expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::NotFound);
    assert!(
        refused.message().contains("orders[3].lines[0].sku_id"),
        "{refused:?}"
    );
    assert_eq!(w.count("SELECT count(*) FROM orders").await, orders_before);

    // Performance counts each order on its own day; crm credited the points (less the return).
    let mut kpis = KpiServiceClient::new(w.shop.performance.admin());
    let day = at(40, 10).date_naive();
    eventually(async || {
        let report = kpis
            .get_kpi_report(perf::GetKpiReportRequest {
                range: Some(DateRange {
                    start: Some(date(day)),
                    end: Some(date(day)),
                }),
                channel_ids: vec![w.eshop.id.clone()],
                ..Default::default()
            })
            .await
            .expect("report")
            .into_inner();
        report
            .total
            .and_then(|t| t.current)
            .is_some_and(|c| c.orders == 1 && c.new_customers == 1)
    })
    .await;
    let mut loyalty = LoyaltyServiceClient::new(w.shop.crm.admin());
    eventually(async || {
        loyalty
            .get_loyalty_account(crm::GetLoyaltyAccountRequest {
                customer_id: customer.clone(),
            })
            .await
            .ok()
            .and_then(|r| r.into_inner().account)
            .is_some_and(|a| a.points_balance > 0)
    })
    .await;
}

#[tokio::test]
async fn a_bad_batch_is_refused_whole_naming_each_field_and_writes_nothing() {
    let w = World::start().await;
    let customer = w.customer("+33611000002").await.id;
    let good = history(&w, &customer);

    let mut bad = good.clone();
    bad[1].channel_order_ref = String::new();
    bad[1].closed_at = Some(timestamp(at(12, 10)));
    bad[2].status = pb::OrderStatus::Shipped as i32;
    bad[0].returns[0].lines[0].sku_id = w.mug.clone();
    bad[0].lines[0].location_id = String::new();
    // A ready time belongs to a completed pickup only.
    bad[2].ready_at = Some(timestamp(at(20, 11)));
    let refused = import(&w, bad).await.expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let named = fields(&refused);
    for field in [
        "orders[0].lines[0].location_id",
        "orders[0].returns[0].lines[0].sku_id",
        "orders[1].channel_order_ref",
        "orders[1].closed_at",
        "orders[2].status",
        "orders[2].ready_at",
    ] {
        assert!(named.iter().any(|f| f == field), "{field} in {named:?}");
    }

    let mut twice = good.clone();
    twice[1].channel_order_ref = twice[0].channel_order_ref.clone();
    let refused = import(&w, twice).await.expect_err("refused");
    assert_eq!(fields(&refused), ["orders[1].channel_order_ref"]);

    let mut too_many = good.clone();
    too_many[0].returns[0].lines[0].quantity = 3;
    let refused = import(&w, too_many).await.expect_err("refused");
    assert_eq!(fields(&refused), ["orders[0].returns[0].lines[0].quantity"]);

    let refused = import(&w, Vec::new()).await.expect_err("refused");
    assert_eq!(fields(&refused), ["orders"]);

    // What only the other services know is checked before anything is written too.
    let mut stranger = good.clone();
    stranger[2].customer_id = Uuid::now_v7().to_string();
    let refused = import(&w, stranger).await.expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::NotFound);
    assert!(
        refused.message().contains("orders[2].customer_id"),
        "{refused:?}"
    );

    let mut nowhere = good.clone();
    nowhere[1].channel_id = Uuid::now_v7().to_string();
    let refused = import(&w, nowhere).await.expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::NotFound);
    assert!(
        refused.message().contains("orders[1].channel_id"),
        "{refused:?}"
    );

    let mut warehouse_pickup = good.clone();
    warehouse_pickup[1].delivery = at_store(pb::DeliveryKind::Pickup, &w.warehouse);
    let refused = import(&w, warehouse_pickup).await.expect_err("refused");
    assert_eq!(fields(&refused), ["orders[1].delivery.store_id"]);

    // Only an admin brings history in.
    let denied = OrderServiceClient::new(w.shop.orders.as_roles(&[Role::ChannelApp]))
        .import_orders(pb::ImportOrdersRequest {
            orders: good.clone(),
        })
        .await
        .expect_err("denied");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);

    assert_eq!(w.count("SELECT count(*) FROM orders").await, 0);
    assert_eq!(w.count("SELECT count(*) FROM returns").await, 0);
    assert_eq!(w.count("SELECT count(*) FROM imported_orders").await, 0);
    assert_eq!(w.count("SELECT count(*) FROM outbox").await, 0);

    // The good batch still goes in afterwards.
    let imported = import(&w, good).await.expect("imported");
    assert!(imported.orders.iter().all(|o| o.created));
}

//! KPI reports on a crafted dataset, every figure computed by hand; the previous period; zero
//! visits and zero new customers; duplicates and late events; rollups against the rebuild and
//! against a scan of raw facts; bad input.

use omni_proto::common::ChannelKind;
use omni_proto::omni::performance::v1 as pb;
use omni_runtime::auth::{Role, Scope};

use crate::support::*;

/// The dataset (range 2026-03-01..07, previous period 02-22..28):
///
/// - P1 eshop, customer A, 02-25: 1 unit, paid 5000, cost 2000 (A acquired by eshop).
/// - O1 eshop, A, 03-01: 2 units, paid 10000, unit cost 3000 (a returning customer).
/// - O2 eshop, B, 03-02: 1 unit, 4000, cost 1500 (B acquired by eshop...).
/// - O3 store S1 by associate U1, B, 03-03: 1 unit, 6000, cost 2500 (...published before O2,
///   so B is first taken as acquired in store, then moved to eshop when O2 arrives).
/// - O4 store S1 by U1, C, 03-03 13:00: 3000, cost 1000; pickup promised 13:30, ready 13:20.
/// - O5 eshop, D, 03-04: 2000, cancelled (counts nowhere; D is not acquired).
/// - O6 store S1, anonymous, 03-05: 1000, cost 400; pickup promised 10:30, ready 10:45.
/// - R1 return of one unit of O1 on 03-06: refund 5000, unit cost 3000.
/// - Traffic: eshop 100 visits on 03-01 and on 03-02, 1000 impressions, 50 interactions, a
///   reach of 400 and 300;
///   live 10 visits on 03-03; the store channel none (zero visits).
/// - Spend: eshop marketing 3000 (03-01) and operations 1000 (03-02), eshop marketing 4000
///   on 02-25; live marketing 500 (zero new customers).
/// - Feedback: eshop CSAT 4 and 5, NPS 10, 3 and 8; store S1 CSAT 3.
/// - Inventory value of store S1: 10000 on 03-01, 20000 on 03-05 (average 15000).
pub async fn crafted(p: &mut Performance) {
    p.publish(
        "catalog",
        vec![
            channel("eshop", ChannelKind::EShop),
            channel("store", ChannelKind::Store),
            channel("live", ChannelKind::Livestream),
        ],
    )
    .await;
    let p1 = Order {
        id: "p1",
        channel: "eshop",
        store: "",
        associate: "",
        customer: "A",
        placed_at: at(2, 25, 9, 0),
        quantity: 1,
        net: 5000,
        unit_cost: 2000,
    };
    let o1 = Order {
        id: "o1",
        customer: "A",
        placed_at: at(3, 1, 10, 0),
        quantity: 2,
        net: 10_000,
        unit_cost: 3000,
        ..p1
    };
    let o2 = Order {
        id: "o2",
        customer: "B",
        placed_at: at(3, 2, 11, 0),
        quantity: 1,
        net: 4000,
        unit_cost: 1500,
        ..p1
    };
    let o3 = Order {
        id: "o3",
        channel: "store",
        store: "S1",
        associate: "U1",
        customer: "B",
        placed_at: at(3, 3, 12, 0),
        quantity: 1,
        net: 6000,
        unit_cost: 2500,
    };
    let o4 = Order {
        id: "o4",
        customer: "C",
        placed_at: at(3, 3, 13, 0),
        net: 3000,
        unit_cost: 1000,
        ..o3
    };
    let o5 = Order {
        id: "o5",
        customer: "D",
        placed_at: at(3, 4, 9, 0),
        net: 2000,
        unit_cost: 800,
        ..p1
    };
    let o6 = Order {
        id: "o6",
        associate: "",
        customer: "",
        placed_at: at(3, 5, 10, 0),
        net: 1000,
        unit_cost: 400,
        ..o3
    };
    p.publish(
        "orders",
        vec![
            p1.placed(),
            o1.placed(),
            o3.placed(),
            o2.placed(),
            o4.placed(),
            ready_for_pickup("o4", at(3, 3, 13, 30), at(3, 3, 13, 20)),
            o5.placed(),
            o5.cancelled(),
            o6.placed(),
            o6.fulfilled_pickup(at(3, 5, 10, 30), at(3, 5, 10, 45)),
            returned("r1", "o1", "eshop", 5000, 1, 3000, at(3, 6, 15, 0)),
        ],
    )
    .await;
    p.publish(
        "crm",
        vec![
            feedback("f1", "eshop", "", false, 4, at(3, 2, 12, 0)),
            feedback("f2", "eshop", "", false, 5, at(3, 3, 12, 0)),
            feedback("f3", "eshop", "", true, 10, at(3, 3, 12, 0)),
            feedback("f4", "eshop", "", true, 3, at(3, 4, 12, 0)),
            feedback("f5", "eshop", "", true, 8, at(3, 4, 12, 0)),
            feedback("f6", "store", "S1", false, 3, at(3, 5, 12, 0)),
        ],
    )
    .await;
    p.publish(
        "inventory",
        vec![
            inventory_value("S1", day(2026, 3, 1), 10_000),
            inventory_value("S1", day(2026, 3, 5), 20_000),
        ],
    )
    .await;
    for (channel, d, visits, impressions, interactions, reach) in [
        ("eshop", day(2026, 3, 1), 100, 600, 30, 400),
        ("eshop", day(2026, 3, 2), 100, 400, 20, 300),
        ("live", day(2026, 3, 3), 10, 0, 0, 0),
    ] {
        p.inputs
            .record_traffic(pb::RecordTrafficRequest {
                traffic: Some(pb::Traffic {
                    channel_id: channel.into(),
                    day: Some(d),
                    visits,
                    impressions,
                    interactions,
                    reach,
                    ..Default::default()
                }),
            })
            .await
            .expect("traffic");
    }
    for (channel, d, category, amount) in [
        ("eshop", day(2026, 3, 1), pb::SpendCategory::Marketing, 3000),
        (
            "eshop",
            day(2026, 3, 2),
            pb::SpendCategory::ChannelOperations,
            1000,
        ),
        (
            "eshop",
            day(2026, 2, 25),
            pb::SpendCategory::Marketing,
            4000,
        ),
        ("live", day(2026, 3, 3), pb::SpendCategory::Marketing, 500),
    ] {
        p.inputs
            .record_spend(pb::RecordSpendRequest {
                spend: Some(pb::Spend {
                    channel_id: channel.into(),
                    day: Some(d),
                    category: category as i32,
                    amount: eur(amount),
                    ..Default::default()
                }),
            })
            .await
            .expect("spend");
    }
}

pub fn march() -> pb::GetKpiReportRequest {
    pb::GetKpiReportRequest {
        range: range(day(2026, 3, 1), day(2026, 3, 7)),
        ..Default::default()
    }
}

fn row<'a>(r: &'a pb::GetKpiReportResponse, channel: &str) -> &'a pb::KpiRow {
    r.rows
        .iter()
        .find(|row| row.channel_id == channel)
        .unwrap_or_else(|| panic!("no row for {channel}"))
}

/// Every figure of the channel report, against the hand computation above.
fn check_channel_report(r: &pb::GetKpiReportResponse) {
    assert_eq!(r.previous_range, range(day(2026, 2, 22), day(2026, 2, 28)));
    let channels: Vec<&str> = r.rows.iter().map(|r| r.channel_id.as_str()).collect();
    assert_eq!(channels, ["eshop", "live", "store"]);

    let e = row(r, "eshop").current.as_ref().expect("current");
    assert_eq!(minor(&e.gross_sales), Some(14_000));
    assert_eq!(minor(&e.returns), Some(5_000));
    assert_eq!(minor(&e.net_sales), Some(9_000));
    assert_eq!(minor(&e.cost_of_goods_sold), Some(4_500));
    assert_eq!(minor(&e.gross_margin), Some(4_500));
    assert!(close(e.sales_share, 9_000.0 / 19_000.0));
    assert_eq!(e.orders, 2);
    assert_eq!(minor(&e.average_order_value), Some(4_500));
    assert_eq!(e.new_customers, 1);
    assert!(close(e.acquisition_share, 0.5));
    assert_eq!(minor(&e.customer_acquisition_cost), Some(3_000));
    assert_eq!(e.visits, 200);
    assert!(close(e.conversion_rate, 0.01));
    assert_eq!(e.customers, 2);
    assert!(close(e.repeat_purchase_rate, 0.0));
    assert!(close(e.new_customer_repeat_rate, 1.0));
    assert!(close(e.repurchase_share, 5_000.0 / 9_000.0));
    assert!(close(e.return_rate, 5_000.0 / 14_000.0));
    assert_eq!(minor(&e.customer_lifetime_value), Some(10_000));
    assert_eq!(e.pickup_orders, 0);
    assert_eq!(e.pickup_sla_hit_rate, None);
    assert_eq!(e.impressions, 1_000);
    assert_eq!(e.interactions, 50);
    assert!(close(e.interaction_rate, 0.05));
    assert_eq!(e.reach, 700);
    assert_eq!(minor(&e.marketing_spend), Some(3_000));
    assert_eq!(minor(&e.operations_spend), Some(1_000));
    assert!(close(e.channel_roi, 1.125));
    assert!(close(e.satisfaction, 4.5));
    assert!(close(e.nps, 0.0));
    assert_eq!(e.feedback_count, 5);

    let s = row(r, "store").current.as_ref().expect("current");
    assert_eq!(minor(&s.net_sales), Some(10_000));
    assert_eq!(minor(&s.cost_of_goods_sold), Some(3_900));
    assert_eq!(minor(&s.gross_margin), Some(6_100));
    assert_eq!(s.orders, 3);
    assert_eq!(minor(&s.average_order_value), Some(3_333));
    assert_eq!(s.new_customers, 1);
    assert_eq!(s.customers, 2);
    assert!(close(s.new_customer_repeat_rate, 0.0));
    assert!(close(s.repurchase_share, 0.6));
    assert!(close(s.return_rate, 0.0));
    assert_eq!(minor(&s.customer_lifetime_value), Some(3_000));
    // Zero visits: conversion is undefined, not a division by zero.
    assert_eq!(s.visits, 0);
    assert_eq!(s.conversion_rate, None);
    assert_eq!(minor(&s.customer_acquisition_cost), Some(0));
    assert_eq!(s.channel_roi, None);
    assert_eq!(s.pickup_orders, 2);
    assert!(close(s.pickup_sla_hit_rate, 0.5));
    assert!(close(s.satisfaction, 3.0));
    assert_eq!(s.nps, None);
    assert_eq!(s.feedback_count, 1);

    // Zero new customers: CAC is undefined; no orders: no average order value.
    let l = row(r, "live").current.as_ref().expect("current");
    assert_eq!(l.orders, 0);
    assert_eq!(l.new_customers, 0);
    assert_eq!(minor(&l.marketing_spend), Some(500));
    assert_eq!(l.customer_acquisition_cost, None);
    assert_eq!(l.average_order_value, None);
    assert!(close(l.conversion_rate, 0.0));
    assert!(close(l.sales_share, 0.0));
    assert_eq!(l.new_customer_repeat_rate, None);

    let t = r
        .total
        .as_ref()
        .and_then(|t| t.current.as_ref())
        .expect("total");
    assert_eq!(minor(&t.net_sales), Some(19_000));
    assert_eq!(t.orders, 5);
    assert_eq!(t.new_customers, 2);
    assert_eq!(t.customers, 3);
    assert!(close(t.repeat_purchase_rate, 1.0 / 3.0));
    assert_eq!(t.visits, 210);
    assert_eq!(t.reach, 700);
    assert!(close(t.conversion_rate, 5.0 / 210.0));
    assert_eq!(minor(&t.customer_acquisition_cost), Some(1_750));
    assert!(close(t.sales_share, 1.0));
    // Every location's value, averaged over the valued days: 8400 / 15000.
    assert_eq!(minor(&t.average_inventory_value), Some(15_000));
    assert!(close(t.inventory_turnover, 0.56));
    assert_eq!(e.inventory_turnover, None);

    // The previous period: A's first order, the 4000 of marketing.
    let pe = row(r, "eshop").previous.as_ref().expect("previous");
    assert_eq!(minor(&pe.net_sales), Some(5_000));
    assert_eq!(pe.orders, 1);
    assert_eq!(pe.new_customers, 1);
    assert_eq!(minor(&pe.customer_acquisition_cost), Some(4_000));
    assert_eq!(pe.conversion_rate, None);
    let ps = row(r, "store").previous.as_ref().expect("previous");
    assert_eq!(ps.orders, 0);
    assert_eq!(ps.new_customer_repeat_rate, None);
    assert_eq!(ps.sales_share, Some(0.0));
}

#[tokio::test]
async fn every_kpi_matches_the_hand_computed_figures() {
    let mut p = start().await;
    crafted(&mut p).await;
    let r = p.report(march()).await;
    check_channel_report(&r);
}

#[tokio::test]
async fn events_applied_twice_change_nothing_and_rollups_equal_the_rebuild() {
    let mut p = start().await;
    crafted(&mut p).await;
    let first = p.report(march()).await;

    p.publish_again().await;
    let again = p.report(march()).await;
    assert_eq!(again.rows, first.rows);
    assert_eq!(again.total, first.total);

    // The same report computed by a plain scan over raw facts.
    let raw = p
        .report(pb::GetKpiReportRequest {
            source: pb::KpiSource::RawFacts as i32,
            ..march()
        })
        .await;
    assert_eq!(raw.rows, first.rows);
    assert_eq!(raw.total, first.total);

    let rebuilt = p
        .kpis
        .rebuild_rollups(pb::RebuildRollupsRequest::default())
        .await
        .expect("rebuild")
        .into_inner();
    assert_eq!(rebuilt.facts_scanned, 8);
    assert!(rebuilt.rollup_rows_written > 0);
    assert_eq!(rebuilt.rollup_rows_changed, 0);
    let after = p.report(march()).await;
    assert_eq!(after.rows, first.rows);
    check_channel_report(&after);
}

#[tokio::test]
async fn a_rebuild_repairs_rollups_that_drifted() {
    let mut p = start().await;
    crafted(&mut p).await;
    let before = p.report(march()).await;
    sqlx::query("UPDATE daily_rollups SET sales = sales + 1 WHERE channel_id = 'eshop'")
        .execute(&p.db)
        .await
        .expect("drift");
    let drifted = p.report(march()).await;
    assert_ne!(drifted.rows, before.rows);
    let rebuilt = p
        .kpis
        .rebuild_rollups(pb::RebuildRollupsRequest {
            range: range(day(2026, 2, 1), day(2026, 3, 31)),
        })
        .await
        .expect("rebuild")
        .into_inner();
    assert_eq!(rebuilt.rollup_rows_changed, 4);
    assert_eq!(p.report(march()).await.rows, before.rows);
}

#[tokio::test]
async fn store_and_associate_rows_carry_their_own_figures() {
    let mut p = start().await;
    crafted(&mut p).await;
    let stores = p
        .report(pb::GetKpiReportRequest {
            dimension: pb::KpiDimension::Store as i32,
            ..march()
        })
        .await;
    assert_eq!(stores.rows.len(), 1);
    let s1 = &stores.rows[0];
    assert_eq!(
        (s1.channel_id.as_str(), s1.store_id.as_str()),
        ("store", "S1")
    );
    let c = s1.current.as_ref().expect("current");
    assert_eq!(c.orders, 3);
    assert_eq!(minor(&c.net_sales), Some(10_000));
    assert!(close(c.pickup_sla_hit_rate, 0.5));
    assert!(close(c.satisfaction, 3.0));
    // Cost of goods sold 3900 over an average inventory value of 15000.
    assert_eq!(minor(&c.average_inventory_value), Some(15_000));
    assert!(close(c.inventory_turnover, 0.26));

    let associates = p
        .report(pb::GetKpiReportRequest {
            dimension: pb::KpiDimension::Associate as i32,
            ..march()
        })
        .await;
    assert_eq!(associates.rows.len(), 1);
    let u1 = &associates.rows[0];
    assert_eq!(u1.associate_id, "U1");
    let c = u1.current.as_ref().expect("current");
    assert_eq!(c.orders, 2);
    assert_eq!(minor(&c.net_sales), Some(9_000));
    assert_eq!(c.new_customers, 1);

    // A store associate reads its own store only.
    let mut own = omni_proto::omni::performance::v1::kpi_service_client::KpiServiceClient::new(
        p.svc.with_token(&omni_testkit::token(
            &[Role::StoreAssociate],
            Scope {
                stores: vec!["S1".into()],
                ..Scope::default()
            },
        )),
    );
    let mine = own
        .get_kpi_report(pb::GetKpiReportRequest {
            dimension: pb::KpiDimension::Store as i32,
            ..march()
        })
        .await
        .expect("own store")
        .into_inner();
    assert_eq!(mine.rows.len(), 1);
    let denied = own
        .get_kpi_report(pb::GetKpiReportRequest {
            store_ids: vec!["S2".into()],
            ..march()
        })
        .await
        .expect_err("other store");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    // So does an analyst limited to that store: the scope limits whatever the role.
    let mut store_analyst =
        omni_proto::omni::performance::v1::kpi_service_client::KpiServiceClient::new(
            p.svc.with_token(&omni_testkit::token(
                &[Role::Analyst],
                Scope {
                    stores: vec!["S1".into()],
                    ..Scope::default()
                },
            )),
        );
    let theirs = store_analyst
        .get_kpi_report(pb::GetKpiReportRequest {
            dimension: pb::KpiDimension::Store as i32,
            ..march()
        })
        .await
        .expect("own store")
        .into_inner();
    assert_eq!(
        theirs
            .rows
            .iter()
            .map(|r| r.store_id.as_str())
            .collect::<Vec<_>>(),
        ["S1"]
    );
}

#[tokio::test]
async fn bad_report_requests_are_refused_with_their_fields() {
    let mut p = start().await;
    crafted(&mut p).await;
    let reversed = p
        .kpis
        .get_kpi_report(pb::GetKpiReportRequest {
            range: range(day(2026, 3, 7), day(2026, 3, 1)),
            ..Default::default()
        })
        .await
        .expect_err("reversed");
    assert_eq!(bad_fields(&reversed), ["range"]);
    let empty = p
        .kpis
        .get_kpi_report(pb::GetKpiReportRequest::default())
        .await
        .expect_err("no range");
    assert_eq!(bad_fields(&empty), ["range"]);
    let half = p
        .kpis
        .get_kpi_report(pb::GetKpiReportRequest {
            range: Some(omni_proto::common::DateRange {
                start: Some(day(2026, 2, 30)),
                end: None,
            }),
            ..Default::default()
        })
        .await
        .expect_err("bad dates");
    assert_eq!(bad_fields(&half), ["range.start", "range.end"]);
    let unknown = p
        .kpis
        .get_kpi_report(pb::GetKpiReportRequest {
            channel_ids: vec!["eshop".into(), "nowhere".into()],
            ..march()
        })
        .await
        .expect_err("unknown channel");
    assert_eq!(bad_fields(&unknown), ["channel_ids"]);
    assert!(unknown.message().contains("nowhere"));
    let malformed = p
        .kpis
        .get_kpi_report(pb::GetKpiReportRequest {
            channel_ids: vec!["no spaces".into()],
            ..march()
        })
        .await
        .expect_err("malformed channel");
    assert_eq!(bad_fields(&malformed), ["channel_ids[0]"]);

    let denied = omni_proto::omni::performance::v1::kpi_service_client::KpiServiceClient::new(
        p.svc.as_roles(&[Role::ChannelApp]),
    )
    .get_kpi_report(march())
    .await
    .expect_err("channel app");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    let rebuild = omni_proto::omni::performance::v1::kpi_service_client::KpiServiceClient::new(
        p.svc.as_roles(&[Role::Analyst]),
    )
    .rebuild_rollups(pb::RebuildRollupsRequest::default())
    .await
    .expect_err("analyst");
    assert_eq!(rebuild.code(), tonic::Code::PermissionDenied);
}

#[tokio::test]
async fn live_sales_start_with_today_and_follow_new_orders() {
    use futures::StreamExt as _;
    let mut p = start().await;
    p.publish("catalog", vec![channel("eshop", ChannelKind::EShop)])
        .await;
    let now = chrono::Utc::now();
    let first = Order {
        id: "t1",
        channel: "eshop",
        store: "",
        associate: "",
        customer: "A",
        placed_at: now,
        quantity: 1,
        net: 2500,
        unit_cost: 1000,
    };
    p.publish("orders", vec![first.placed()]).await;
    let mut stream = p
        .kpis
        .watch_live_sales(pb::WatchLiveSalesRequest::default())
        .await
        .expect("watch")
        .into_inner();
    let initial = stream.next().await.expect("first").expect("ok");
    assert_eq!(initial.total_orders, 1);
    assert_eq!(minor(&initial.total_net_sales), Some(2500));
    assert_eq!(initial.channels[0].channel_id, "eshop");

    let second = Order {
        id: "t2",
        net: 1500,
        ..first
    };
    p.publish("orders", vec![second.placed()]).await;
    let update = tokio::time::timeout(std::time::Duration::from_secs(10), stream.next())
        .await
        .expect("an update")
        .expect("item")
        .expect("ok");
    assert_eq!(update.total_orders, 2);
    assert_eq!(minor(&update.total_net_sales), Some(4000));
}

#[tokio::test]
async fn clv_by_cohort_multi_channel_customers_and_retention() {
    let mut p = start().await;
    crafted(&mut p).await;
    for source in [pb::KpiSource::Rollups, pb::KpiSource::RawFacts] {
        let clv = p
            .kpis
            .get_clv_report(pb::GetClvReportRequest {
                acquired: range(day(2026, 2, 1), day(2026, 3, 31)),
                channel_ids: vec![],
                source: source as i32,
            })
            .await
            .expect("clv")
            .into_inner();
        let cohorts: Vec<(i32, &str, i64, Option<i64>)> = clv
            .cohorts
            .iter()
            .map(|c| {
                (
                    c.month.as_ref().map_or(0, |m| m.month),
                    c.acquisition_channel_id.as_str(),
                    c.customers,
                    minor(&c.clv),
                )
            })
            .collect();
        // A (February, online): 5000 + 10000 - 5000 returned; B (March, online): 4000 + 6000;
        // C (March, store): 3000.
        assert_eq!(
            cohorts,
            [
                (2, "eshop", 1, Some(10_000)),
                (3, "eshop", 1, Some(10_000)),
                (3, "store", 1, Some(3_000)),
            ]
        );
        // B bought online and in store; A and C in one channel each.
        let multi = clv.multi_channel.expect("multi");
        assert_eq!((multi.customers, minor(&multi.clv)), (1, Some(10_000)));
        assert!((multi.average_orders - 2.0).abs() < 1e-12);
        let single = clv.single_channel.expect("single");
        assert_eq!((single.customers, minor(&single.clv)), (2, Some(6_500)));
        assert!((single.average_orders - 1.5).abs() < 1e-12);

        let retention = p
            .kpis
            .get_cohort_retention(pb::GetCohortRetentionRequest {
                acquired: range(day(2026, 2, 1), day(2026, 3, 31)),
                channel_ids: vec![],
                months: 2,
                source: source as i32,
            })
            .await
            .expect("retention")
            .into_inner()
            .cohorts;
        let retention: Vec<(i32, &str, i64, Vec<f64>)> = retention
            .iter()
            .map(|c| {
                (
                    c.month.as_ref().map_or(0, |m| m.month),
                    c.acquisition_channel_id.as_str(),
                    c.customers,
                    c.retention.clone(),
                )
            })
            .collect();
        // A, acquired in February, bought again in March (month 1).
        assert_eq!(
            retention,
            [
                (2, "eshop", 1, vec![1.0, 0.0]),
                (3, "eshop", 1, vec![0.0, 0.0]),
                (3, "store", 1, vec![0.0, 0.0]),
            ]
        );
    }
}

#[tokio::test]
async fn a_customer_merge_moves_facts_to_the_survivor() {
    let mut p = start().await;
    p.publish(
        "catalog",
        vec![
            channel("eshop", ChannelKind::EShop),
            channel("store", ChannelKind::Store),
        ],
    )
    .await;
    let online = Order {
        id: "m1",
        channel: "eshop",
        store: "",
        associate: "",
        customer: "Y",
        placed_at: at(3, 1, 9, 0),
        quantity: 1,
        net: 1000,
        unit_cost: 500,
    };
    let in_store = Order {
        id: "m2",
        channel: "store",
        store: "S1",
        customer: "X",
        placed_at: at(3, 2, 9, 0),
        ..online
    };
    p.publish("orders", vec![online.placed(), in_store.placed()])
        .await;
    let before = p.report(march()).await;
    assert_eq!(
        before
            .total
            .as_ref()
            .and_then(|t| t.current.as_ref())
            .expect("t")
            .new_customers,
        2
    );
    p.publish(
        "identity",
        vec![(
            "identity.customer_merged",
            omni_proto::events::event::Payload::CustomerMerged(
                omni_proto::events::CustomerMerged {
                    survivor_id: "Y".into(),
                    merged_id: "X".into(),
                },
            ),
        )],
    )
    .await;
    let after = p.report(march()).await;
    let t = after
        .total
        .as_ref()
        .and_then(|t| t.current.as_ref())
        .expect("total");
    assert_eq!(t.new_customers, 1);
    assert_eq!(t.customers, 1);
    assert!(close(t.repeat_purchase_rate, 1.0));
    let store = after
        .rows
        .iter()
        .find(|r| r.channel_id == "store")
        .and_then(|r| r.current.as_ref())
        .expect("store row");
    assert_eq!(store.new_customers, 0);
    assert!(close(store.repurchase_share, 1.0));
    let rebuilt = p
        .kpis
        .rebuild_rollups(pb::RebuildRollupsRequest::default())
        .await
        .expect("rebuild")
        .into_inner();
    assert_eq!(rebuilt.rollup_rows_changed, 0);
}

#[tokio::test]
async fn a_channel_row_turns_over_the_stock_of_the_location_it_sells_from() {
    let mut p = start().await;
    crafted(&mut p).await;
    // The catalog links the store channel to its inventory location S1 (valued 10000 on 03-01
    // and 20000 on 03-05); e-shop and live sell from no location of their own.
    let (kind, payload) = channel("store", ChannelKind::Store);
    let payload = match payload {
        omni_proto::events::event::Payload::ChannelChanged(mut c) => {
            c.store_location_id = "S1".into();
            c.created = false;
            omni_proto::events::event::Payload::ChannelChanged(c)
        }
        other => other,
    };
    p.publish("catalog", vec![(kind, payload)]).await;
    let r = p.report(march()).await;
    let store = row(&r, "store").current.as_ref().expect("current");
    // Cost of goods sold 3900 (O3 2500, O4 1000, O6 400) over 15000.
    assert_eq!(minor(&store.average_inventory_value), Some(15_000));
    assert!(close(store.inventory_turnover, 0.26));
    let eshop = row(&r, "eshop").current.as_ref().expect("current");
    assert_eq!(eshop.average_inventory_value, None);
    assert_eq!(eshop.inventory_turnover, None);
    // A total over the store channel alone turns over the same stock; rollups and the raw
    // scan agree.
    let only_store = pb::GetKpiReportRequest {
        channel_ids: vec!["store".into()],
        ..march()
    };
    let filtered = p.report(only_store.clone()).await;
    let t = filtered
        .total
        .as_ref()
        .and_then(|t| t.current.as_ref())
        .expect("total");
    assert!(close(t.inventory_turnover, 0.26));
    let raw = p
        .report(pb::GetKpiReportRequest {
            source: pb::KpiSource::RawFacts as i32,
            ..only_store
        })
        .await;
    assert_eq!(raw.rows, filtered.rows);
    assert_eq!(raw.total, filtered.total);
    // The previous week had no valuation: no turnover rather than a division by zero.
    let previous = row(&r, "store").previous.as_ref().expect("previous");
    assert_eq!(previous.inventory_turnover, None);
}

/// A report read while orders are being applied adds up: its rows and its total are read as of
/// one moment, though the reads run side by side on several connections.
#[tokio::test]
async fn a_report_read_while_orders_arrive_adds_up() {
    let mut p = start().await;
    p.publish(
        "catalog",
        vec![
            channel("eshop", ChannelKind::EShop),
            channel("store", ChannelKind::Store),
        ],
    )
    .await;
    let mut kpis = p.kpis.clone();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reading = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut reports = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let report = kpis
                    .get_kpi_report(march())
                    .await
                    .expect("report")
                    .into_inner();
                let total = report
                    .total
                    .as_ref()
                    .and_then(|t| t.current.as_ref())
                    .map_or(0, |v| v.orders);
                let rows: i64 = report
                    .rows
                    .iter()
                    .filter_map(|r| r.current.as_ref())
                    .map(|v| v.orders)
                    .sum();
                assert_eq!(rows, total, "rows and total of report {reports} disagree");
                reports += 1;
            }
            reports
        })
    };
    for n in 0..60 {
        let id = format!("live-{n}");
        let order = Order {
            id: &id,
            channel: if n % 2 == 0 { "eshop" } else { "store" },
            store: "",
            associate: "",
            customer: "",
            placed_at: at(3, 2, 10, 0),
            quantity: 1,
            net: 1000,
            unit_cost: 400,
        };
        p.publish("orders", vec![order.placed()]).await;
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let reports = reading.await.expect("every report added up");
    assert!(reports > 0);
}

/// More reports at once than the pool has connections: each is answered. (A report holds its
/// snapshot's connection while its reads wait for theirs; were every connection a snapshot's,
/// no read could run and the reports would fail UNAVAILABLE at the pool's acquire timeout.)
#[tokio::test]
async fn more_reports_at_once_than_pooled_connections_are_all_answered() {
    let mut p = start().await;
    p.publish("catalog", vec![channel("eshop", ChannelKind::EShop)])
        .await;
    let order = Order {
        id: "busy-1",
        channel: "eshop",
        store: "",
        associate: "",
        customer: "",
        placed_at: at(3, 2, 10, 0),
        quantity: 1,
        net: 1000,
        unit_cost: 400,
    };
    p.publish("orders", vec![order.placed()]).await;
    // The suite's pool holds 10 connections.
    let reports = (0..30).map(|_| {
        let mut kpis = p.kpis.clone();
        async move { kpis.get_kpi_report(march()).await.map(|r| r.into_inner()) }
    });
    for report in futures::future::join_all(reports).await {
        let report = report.expect("every report is answered");
        let total = report.total.and_then(|t| t.current).map_or(0, |v| v.orders);
        assert_eq!(total, 1);
    }
}

//! Distinct-customer KPIs (customers, repeat-purchase rate, new-customer repeat rate, CLV) from
//! the pair rollups, over ranges that start and end inside months and span several: the same
//! figures as the plain scan of raw facts for every dimension, after out-of-order, cancelled,
//! returned and merged orders, and the rollups equal to the rebuild.

use omni_proto::common::ChannelKind;
use omni_proto::omni::performance::v1 as pb;

use crate::support::*;

const CHANNELS: [(&str, &str); 5] = [
    ("eshop", ""),
    ("store", "S1"),
    ("store", "S2"),
    ("live", ""),
    ("store", "S1"),
];

/// 60 orders of 9 customers (and some anonymous ones) from January to June, in a scrambled
/// order, a few cancelled, a few returned.
async fn dataset(p: &mut Performance) {
    p.publish(
        "catalog",
        vec![
            channel("eshop", ChannelKind::EShop),
            channel("store", ChannelKind::Store),
            channel("live", ChannelKind::Livestream),
        ],
    )
    .await;
    let ids: Vec<String> = (0..60).map(|i| format!("d{i}")).collect();
    let customers: Vec<String> = (0..9).map(|i| format!("K{i}")).collect();
    let mut orders = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        // A scrambled but fixed walk over days, channels and customers.
        let n = u32::try_from(i * 37 % 60).expect("small");
        let (channel, store) = CHANNELS[i * 7 % CHANNELS.len()];
        let month = 1 + n % 6;
        let dom = 1 + (n * 11) % 28;
        orders.push(Order {
            id,
            channel,
            store,
            associate: if store == "S1" && i % 2 == 0 {
                "U1"
            } else {
                ""
            },
            customer: if i % 11 == 5 {
                ""
            } else {
                &customers[(i * 5) % customers.len()]
            },
            placed_at: at(month, dom, 8 + (n % 10), 0),
            quantity: 1 + i32::try_from(i % 3).expect("small"),
            net: 1000 + i64::try_from(i).expect("small") * 130,
            unit_cost: 300,
        });
    }
    let mut events: Vec<_> = orders.iter().map(Order::placed).collect();
    events.push(orders[3].cancelled());
    events.push(orders[17].cancelled());
    events.push(orders[40].cancelled());
    events.push(returned(
        "x1",
        "d8",
        orders[8].channel,
        500,
        1,
        300,
        at(6, 20, 9, 0),
    ));
    events.push(returned(
        "x2",
        "d21",
        orders[21].channel,
        1500,
        1,
        300,
        at(4, 2, 9, 0),
    ));
    p.publish("orders", events).await;
}

fn ranges() -> Vec<Option<omni_proto::common::DateRange>> {
    vec![
        // Within one month.
        range(day(2026, 3, 4), day(2026, 3, 21)),
        // Two neighbouring months.
        range(day(2026, 2, 10), day(2026, 3, 12)),
        // Several months, starting and ending mid-month.
        range(day(2026, 1, 15), day(2026, 5, 9)),
        range(day(2026, 4, 3), day(2026, 6, 27)),
        // Whole months.
        range(day(2026, 1, 1), day(2026, 6, 30)),
        // One day.
        range(day(2026, 5, 12), day(2026, 5, 12)),
    ]
}

async fn same_as_raw(p: &mut Performance, request: pb::GetKpiReportRequest) {
    let rollups = p.report(request.clone()).await;
    let raw = p
        .report(pb::GetKpiReportRequest {
            source: pb::KpiSource::RawFacts as i32,
            ..request.clone()
        })
        .await;
    assert_eq!(rollups.rows, raw.rows, "rows of {request:?}");
    assert_eq!(rollups.total, raw.total, "total of {request:?}");
}

async fn every_report_matches_the_raw_scan(p: &mut Performance) {
    for r in ranges() {
        for dimension in [
            pb::KpiDimension::Channel,
            pb::KpiDimension::Store,
            pb::KpiDimension::Associate,
        ] {
            same_as_raw(
                p,
                pb::GetKpiReportRequest {
                    range: r,
                    dimension: dimension as i32,
                    ..Default::default()
                },
            )
            .await;
        }
        // One channel (its total is that channel's key), several (a union of keys), and a
        // channel row limited to one store.
        for (channels, stores) in [
            (vec!["store"], vec![]),
            (vec!["store", "eshop"], vec![]),
            (vec![], vec!["S1"]),
        ] {
            same_as_raw(
                p,
                pb::GetKpiReportRequest {
                    range: r,
                    channel_ids: channels.iter().map(|c| (*c).to_owned()).collect(),
                    store_ids: stores.iter().map(|s| (*s).to_owned()).collect(),
                    ..Default::default()
                },
            )
            .await;
        }
    }
}

#[tokio::test]
async fn distinct_customer_figures_equal_the_raw_scan_over_any_range() {
    let mut p = start().await;
    dataset(&mut p).await;
    // The dataset does exercise what the pairs count.
    let whole = p
        .report(pb::GetKpiReportRequest {
            range: range(day(2026, 1, 1), day(2026, 6, 30)),
            ..Default::default()
        })
        .await;
    let t = whole.total.and_then(|t| t.current).expect("total");
    assert_eq!(t.customers, 9);
    assert!(t.repeat_purchase_rate.is_some_and(|r| r > 0.0));
    assert!(t.new_customer_repeat_rate.is_some_and(|r| r > 0.0));
    every_report_matches_the_raw_scan(&mut p).await;

    // A merge moves every pair of the merged customer to the survivor.
    p.publish(
        "identity",
        vec![(
            "identity.customer_merged",
            omni_proto::events::event::Payload::CustomerMerged(
                omni_proto::events::CustomerMerged {
                    survivor_id: "K1".into(),
                    merged_id: "K2".into(),
                },
            ),
        )],
    )
    .await;
    every_report_matches_the_raw_scan(&mut p).await;

    let rebuilt = p
        .kpis
        .rebuild_rollups(pb::RebuildRollupsRequest::default())
        .await
        .expect("rebuild")
        .into_inner();
    assert_eq!(rebuilt.rollup_rows_changed, 0);
}

#[tokio::test]
async fn a_rebuild_repairs_pair_rollups_that_drifted() {
    let mut p = start().await;
    dataset(&mut p).await;
    let request = pb::GetKpiReportRequest {
        range: range(day(2026, 2, 10), day(2026, 5, 9)),
        ..Default::default()
    };
    let before = p.report(request.clone()).await;
    let drifted = sqlx::query("UPDATE pair_rollups SET value = value + 1 WHERE family = 0")
        .execute(&p.db)
        .await
        .expect("drift")
        .rows_affected();
    assert!(drifted > 0);
    assert_ne!(p.report(request.clone()).await.rows, before.rows);
    let rebuilt = p
        .kpis
        .rebuild_rollups(pb::RebuildRollupsRequest::default())
        .await
        .expect("rebuild")
        .into_inner();
    assert_eq!(
        rebuilt.rollup_rows_changed,
        i64::try_from(drifted).expect("count")
    );
    assert_eq!(p.report(request).await.rows, before.rows);
}

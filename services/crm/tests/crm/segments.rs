//! RFM quintiles, lifecycle stages and rule-based segments whose membership follows events.

use omni_proto::common::ChannelKind;
use omni_proto::omni::crm::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt;

use crate::campaigns::{segment, segments};
use crate::support::{World, order_at};

fn rfm(view: &pb::CustomerView) -> (i32, i32, i32) {
    let r = view.rfm.expect("rfm");
    (r.recency, r.frequency, r.monetary)
}

#[tokio::test]
async fn rfm_scores_are_quintiles_across_a_crafted_customer_base() {
    let w = World::start().await;
    // Five buyers: the i-th (0-based) last bought 50 - 10i days ago, made i + 1 orders and
    // spent (5 - i) x 100.00 in total, so recency and frequency rise with i, monetary falls.
    let mut ids = Vec::new();
    for i in 0..5i64 {
        let id = w
            .register(&format!("+44770090040{i}"), &format!("Buyer {i}"))
            .await;
        let orders = i + 1;
        let per_order = (5 - i) * 10_000 / orders;
        for n in 0..orders {
            let days_ago = 50 - 10 * i + n * 60;
            w.orders
                .complete(&order_at(
                    &id,
                    "web",
                    ChannelKind::EShop,
                    per_order,
                    days_ago,
                    &[],
                ))
                .await;
        }
        ids.push((id, orders));
    }
    // A registered customer without any purchase scores zero.
    let idle = w.register("+447700900409", "Idle").await;
    for (id, orders) in &ids {
        w.view_when(id, |v| v.order_count == *orders).await;
    }
    for (i, (id, _)) in ids.iter().enumerate() {
        let view = w.view_when(id, |_| true).await;
        let i = i as i32;
        assert_eq!(rfm(&view), (i + 1, i + 1, 5 - i), "buyer {i}");
    }
    let view = w.view_when(&idle, |_| true).await;
    assert_eq!(rfm(&view), (0, 0, 0));
    assert_eq!(view.lifecycle_stage, 1, "no purchase yet: new");
    // Buyer 0 bought once, 50 days ago: active; buyer 4 bought 5 times, 60 days apart, the
    // last 10 days ago: active.
    let first = w.view_when(&ids[0].0, |_| true).await;
    assert_eq!(first.lifecycle_stage, 2);

    let top = segment(&w, "rfm.monetary >= 4").await;
    assert_eq!(top.member_count, 2);
    let members = segments(&w)
        .list_segment_members(pb::ListSegmentMembersRequest {
            segment_id: top.id.clone(),
            ..Default::default()
        })
        .await
        .expect("members")
        .into_inner()
        .members;
    let mut got: Vec<String> = members.into_iter().map(|m| m.customer_id).collect();
    got.sort();
    let mut want = vec![ids[0].0.clone(), ids[1].0.clone()];
    want.sort();
    assert_eq!(got, want);
}

#[tokio::test]
async fn segment_membership_follows_events_and_shows_in_the_view() {
    let w = World::start().await;
    let ada = w.register("+447700900411", "Ada").await;
    w.view_when(&ada, |_| true).await;
    let shoes_online = segment(
        &w,
        r#"bought(category = "shoes", within_days = 30) and not bought(channel_kind = "store")"#,
    )
    .await;
    assert_eq!(shoes_online.member_count, 0);

    w.orders
        .complete(&order_at(
            &ada,
            "web",
            ChannelKind::EShop,
            8_000,
            2,
            &[("s1", "shoes")],
        ))
        .await;
    let view = w
        .view_when(&ada, |v| {
            v.segments.iter().any(|s| s.segment_id == shoes_online.id)
        })
        .await;
    assert_eq!(view.segments.len(), 1);

    // A store purchase takes her out again.
    w.orders
        .complete(&order_at(
            &ada,
            "store-1",
            ChannelKind::Store,
            1_000,
            1,
            &[("b1", "bags")],
        ))
        .await;
    w.view_when(&ada, |v| v.order_count == 2 && v.segments.is_empty())
        .await;
    let got = segments(&w)
        .get_segment(pb::GetSegmentRequest {
            segment_id: shoes_online.id.clone(),
        })
        .await
        .expect("segment")
        .into_inner()
        .segment
        .expect("segment");
    assert_eq!(got.member_count, 0);
}

#[tokio::test]
async fn a_segment_rule_that_does_not_parse_is_refused_with_its_position_and_nothing_is_saved() {
    let w = World::start().await;
    let error = segments(&w)
        .create_segment(pb::CreateSegmentRequest {
            segment: Some(pb::Segment {
                name: "broken".into(),
                rule: r#"bought(colour = "red")"#.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("bad rule");
    assert_eq!(error.code(), Code::InvalidArgument);
    let violation = error
        .get_details_bad_request()
        .expect("bad request")
        .field_violations
        .into_iter()
        .find(|v| v.field == "segment.rule")
        .expect("segment.rule violation");
    assert!(
        violation.description.starts_with("column 8:"),
        "{}",
        violation.description
    );
    let listed = segments(&w)
        .list_segments(pb::ListSegmentsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .segments;
    assert!(listed.is_empty());

    // Validation only: parsed and counted, not saved.
    let checked = segments(&w)
        .create_segment(pb::CreateSegmentRequest {
            segment: Some(pb::Segment {
                name: "ok".into(),
                rule: r#"lifecycle = "lapsed""#.into(),
                ..Default::default()
            }),
            validate_only: true,
            ..Default::default()
        })
        .await
        .expect("valid")
        .into_inner()
        .segment
        .expect("segment");
    assert!(checked.id.is_empty());
    let listed = segments(&w)
        .list_segments(pb::ListSegmentsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .segments;
    assert!(listed.is_empty());
}

#[tokio::test]
async fn a_batch_of_customers_gets_the_rfm_scores_each_gets_alone() {
    use chrono::{Duration, TimeZone as _, Utc};
    use tokio_util::sync::CancellationToken;

    let url = omni_testkit::fresh_database("crm_rfm").await.expect("db");
    let pool = sqlx::PgPool::connect(&url).await.expect("pool");
    omni_runtime::db::migrate(&pool, crm::MIGRATOR, &CancellationToken::new())
        .await
        .expect("migrate");
    // Forty customers with ties on every dimension.
    let start = Utc
        .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .expect("date");
    let ids: Vec<String> = (0..40).map(|i| format!("c-{i:02}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let i = i as i64;
        sqlx::query(
            "INSERT INTO customer_stats (customer_id, first_purchase, last_purchase, orders, monetary)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(start)
        .bind(start + Duration::days(i % 7) + Duration::microseconds(i % 2))
        .bind(1 + i % 5)
        .bind(1_000 * (i % 9))
        .execute(&pool)
        .await
        .expect("stats");
    }
    let mut conn = pool.acquire().await.expect("conn");
    let together = crm::facts::scored(&mut conn, &ids).await.expect("batch");
    assert_eq!(together.len(), ids.len());
    for id in &ids {
        let alone = crm::facts::scored(&mut conn, std::slice::from_ref(id))
            .await
            .expect("one");
        assert_eq!(together[id].1, alone[id].1, "{id}");
    }
    // The whole-base ranking agrees too.
    let base = crm::facts::base(&mut conn).await.expect("base");
    let ranked = crm::rfm::scores(&base);
    for id in &ids {
        assert_eq!(together[id].1, ranked[id], "{id}");
    }
}

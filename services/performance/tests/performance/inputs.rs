//! Traffic and spend: one figure per (channel, day[, category]), replaced when recorded again;
//! unknown channels and bad figures refused with nothing written; channel apps record and read
//! their own channels only.

use omni_proto::common::ChannelKind;
use omni_proto::omni::performance::v1 as pb;
use omni_proto::omni::performance::v1::input_service_client::InputServiceClient;
use omni_runtime::auth::{Role, Scope};

use crate::support::*;

fn traffic(channel: &str, d: omni_proto::common::Date, visits: i64) -> pb::RecordTrafficRequest {
    pb::RecordTrafficRequest {
        traffic: Some(pb::Traffic {
            channel_id: channel.into(),
            day: Some(d),
            visits,
            impressions: 10,
            interactions: 2,
            reach: 7,
            ..Default::default()
        }),
    }
}

#[tokio::test]
async fn recording_again_replaces_the_figure() {
    let mut p = start().await;
    p.publish("catalog", vec![channel("eshop", ChannelKind::EShop)])
        .await;
    let first = p
        .inputs
        .record_traffic(traffic("eshop", day(2026, 3, 1), 100))
        .await
        .expect("traffic")
        .into_inner()
        .traffic
        .expect("traffic");
    assert_eq!(first.visits, 100);
    assert!(first.recorded_at.is_some());
    p.inputs
        .record_traffic(traffic("eshop", day(2026, 3, 1), 120))
        .await
        .expect("again");
    p.inputs
        .record_traffic(traffic("eshop", day(2026, 3, 2), 5))
        .await
        .expect("next day");
    let listed = p
        .inputs
        .list_traffic(pb::ListTrafficRequest {
            days: range(day(2026, 3, 1), day(2026, 3, 31)),
            page_size: 1,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.traffic.len(), 1);
    assert_eq!(listed.traffic[0].visits, 120);
    let rest = p
        .inputs
        .list_traffic(pb::ListTrafficRequest {
            days: range(day(2026, 3, 1), day(2026, 3, 31)),
            page_size: 1,
            page_token: listed.next_page_token,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(rest.traffic.len(), 1);
    assert_eq!(rest.traffic[0].visits, 5);

    for amount in [700, 900] {
        p.inputs
            .record_spend(pb::RecordSpendRequest {
                spend: Some(pb::Spend {
                    channel_id: "eshop".into(),
                    day: Some(day(2026, 3, 1)),
                    category: pb::SpendCategory::Marketing as i32,
                    amount: eur(amount),
                    ..Default::default()
                }),
            })
            .await
            .expect("spend");
    }
    let spend = p
        .inputs
        .list_spend(pb::ListSpendRequest {
            days: range(day(2026, 3, 1), day(2026, 3, 1)),
            category: pb::SpendCategory::Marketing as i32,
            ..Default::default()
        })
        .await
        .expect("list spend")
        .into_inner()
        .spend;
    assert_eq!(spend.len(), 1);
    assert_eq!(minor(&spend[0].amount), Some(900));
}

#[tokio::test]
async fn bad_inputs_are_refused_and_nothing_is_written() {
    let mut p = start().await;
    p.publish("catalog", vec![channel("eshop", ChannelKind::EShop)])
        .await;
    let unknown = p
        .inputs
        .record_traffic(traffic("nowhere", day(2026, 3, 1), 1))
        .await
        .expect_err("unknown channel");
    assert_eq!(bad_fields(&unknown), ["traffic.channel_id"]);
    let negative = p
        .inputs
        .record_traffic(traffic("eshop", day(2026, 3, 1), -1))
        .await
        .expect_err("negative");
    assert_eq!(bad_fields(&negative), ["traffic.visits"]);
    let no_day = p
        .inputs
        .record_traffic(pb::RecordTrafficRequest {
            traffic: Some(pb::Traffic {
                channel_id: "eshop".into(),
                ..Default::default()
            }),
        })
        .await
        .expect_err("no day");
    assert_eq!(bad_fields(&no_day), ["traffic.day"]);
    let spend = p
        .inputs
        .record_spend(pb::RecordSpendRequest {
            spend: Some(pb::Spend {
                channel_id: "eshop".into(),
                day: Some(day(2026, 3, 1)),
                category: 0,
                amount: Some(omni_proto::common::Money {
                    minor_units: 5,
                    currency: "USD".into(),
                }),
                ..Default::default()
            }),
        })
        .await
        .expect_err("bad spend");
    assert_eq!(
        bad_fields(&spend),
        ["spend.category", "spend.amount.currency"]
    );
    let written: i64 =
        sqlx::query_scalar("SELECT (SELECT count(*) FROM traffic) + (SELECT count(*) FROM spend)")
            .fetch_one(&p.db)
            .await
            .expect("count");
    assert_eq!(written, 0);
}

#[tokio::test]
async fn a_channel_app_records_its_own_channel_only() {
    let mut p = start().await;
    p.publish(
        "catalog",
        vec![
            channel("eshop", ChannelKind::EShop),
            channel("live", ChannelKind::Livestream),
        ],
    )
    .await;
    let mut app = InputServiceClient::new(p.svc.with_token(&omni_testkit::token(
        &[Role::ChannelApp],
        Scope {
            channels: vec!["live".into()],
            ..Scope::default()
        },
    )));
    app.record_traffic(traffic("live", day(2026, 3, 1), 3))
        .await
        .expect("own channel");
    let other = app
        .record_traffic(traffic("eshop", day(2026, 3, 1), 3))
        .await
        .expect_err("other channel");
    assert_eq!(other.code(), tonic::Code::PermissionDenied);
    let analyst = InputServiceClient::new(p.svc.as_roles(&[Role::Analyst]))
        .record_traffic(traffic("live", day(2026, 3, 1), 3))
        .await
        .expect_err("analysts read only");
    assert_eq!(analyst.code(), tonic::Code::PermissionDenied);
    // The livestream's manager records the livestream's figures, not the e-shop's.
    let mut live_manager = InputServiceClient::new(p.svc.with_token(&omni_testkit::token(
        &[Role::ChannelManager],
        Scope {
            channels: vec!["live".into()],
            ..Scope::default()
        },
    )));
    live_manager
        .record_traffic(traffic("live", day(2026, 3, 2), 4))
        .await
        .expect("own channel");
    let other = live_manager
        .record_traffic(traffic("eshop", day(2026, 3, 2), 4))
        .await
        .expect_err("another channel");
    assert_eq!(other.code(), tonic::Code::PermissionDenied);

    // It reads its own channel's figures only: everything it may see when it names none, a
    // refusal naming the channel when it asks for another.
    p.inputs
        .record_traffic(traffic("eshop", day(2026, 3, 1), 40))
        .await
        .expect("the e-shop's figure, by an admin");
    let all = |channel_ids: Vec<String>| pb::ListTrafficRequest {
        days: range(day(2026, 3, 1), day(2026, 3, 31)),
        channel_ids,
        ..Default::default()
    };
    let own = app
        .list_traffic(all(Vec::new()))
        .await
        .expect("own traffic")
        .into_inner();
    assert!(!own.traffic.is_empty());
    assert!(
        own.traffic.iter().all(|t| t.channel_id == "live"),
        "{:?}",
        own.traffic
    );
    let other = app
        .list_traffic(all(vec!["eshop".into()]))
        .await
        .expect_err("another channel's traffic");
    assert_eq!(other.code(), tonic::Code::PermissionDenied);
    assert!(other.message().contains("eshop"), "{}", other.message());
    // An analyst limited to a store has no channel of its own to read figures of.
    let store_analyst = InputServiceClient::new(p.svc.with_token(&omni_testkit::token(
        &[Role::Analyst],
        Scope {
            stores: vec!["lyon".into()],
            ..Scope::default()
        },
    )))
    .list_spend(pb::ListSpendRequest {
        days: range(day(2026, 3, 1), day(2026, 3, 31)),
        ..Default::default()
    })
    .await;
    assert!(
        store_analyst
            .as_ref()
            .is_err_and(|e| e.code() == tonic::Code::PermissionDenied),
        "{store_analyst:?}"
    );
}

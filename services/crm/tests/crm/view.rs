//! The event-fed customer 360: one customer across channels, merges, erasure, replays.

use omni_proto::common::ChannelKind;
use omni_proto::omni::crm::v1 as pb;
use omni_proto::omni::identity::v1 as idpb;
use tonic::Code;

use crate::support::{World, order};

/// Whether identity's registration of the customer has reached crm's view.
fn named(view: &pb::CustomerView, name: &str) -> bool {
    view.profile.as_ref().is_some_and(|p| p.name == name)
}

fn spend(view: &pb::CustomerView, channel: &str) -> (i64, i64, i32) {
    let s = view
        .spend_per_channel
        .iter()
        .find(|s| s.channel_id == channel)
        .unwrap_or_else(|| panic!("no spend for {channel}: {view:#?}"));
    (
        s.order_count,
        s.net_spend.as_ref().map_or(0, |m| m.minor_units),
        s.channel_kind,
    )
}

#[tokio::test]
async fn a_customer_who_buys_online_in_store_and_in_a_livestream_appears_once_with_all_three() {
    let w = World::start().await;
    let id = w.register("+447700900101", "Ada").await;
    let online = order(&id, "web", ChannelKind::EShop, 12_000);
    let store = order(&id, "store-1", ChannelKind::Store, 5_050);
    let live = order(&id, "live", ChannelKind::Livestream, 3_000);
    for o in [&online, &store, &live] {
        w.orders.complete(o).await;
    }

    let view = w
        .view_when(&id, |v| {
            // The profile comes from identity's stream, the orders from another.
            v.order_count == 3 && v.points_balance == 120 + 50 + 30 && named(v, "Ada")
        })
        .await;
    let profile = view.profile.clone().expect("profile");
    assert_eq!(profile.customer_id, id);
    assert_eq!(profile.name, "Ada");
    assert!(!profile.erased);
    assert_eq!(view.orders.len(), 3);
    assert_eq!(
        view.total_spend.as_ref().map(|m| m.minor_units),
        Some(20_050)
    );
    assert_eq!(spend(&view, "web"), (1, 12_000, ChannelKind::EShop as i32));
    assert_eq!(
        spend(&view, "store-1"),
        (1, 5_050, ChannelKind::Store as i32)
    );
    assert_eq!(
        spend(&view, "live"),
        (1, 3_000, ChannelKind::Livestream as i32)
    );
    assert_eq!(view.acquisition_channel_id, "web");
    assert!(view.first_purchase_at.is_some() && view.last_purchase_at.is_some());
    let store_summary = view
        .orders
        .iter()
        .find(|o| o.order_id == store.order_id)
        .expect("store order");
    assert_eq!(store_summary.store_id, "store-1");
    assert_eq!(store_summary.status, 7);
    assert_eq!(store_summary.item_count, 2);
}

#[tokio::test]
async fn cancelled_orders_do_not_count_and_returns_reduce_spend_and_points() {
    let w = World::start().await;
    let id = w.register("+447700900102", "Bea").await;
    let kept = order(&id, "web", ChannelKind::EShop, 10_000);
    let cancelled = order(&id, "web", ChannelKind::EShop, 7_000);
    w.orders.complete(&kept).await;
    w.orders.cancel(&cancelled).await;
    w.orders.return_of(&kept, 4_000).await;

    let view = w
        .view_when(&id, |v| {
            v.orders.len() == 2 && v.points_balance == 60 && v.order_count == 1
        })
        .await;
    assert_eq!(
        view.total_spend.as_ref().map(|m| m.minor_units),
        Some(6_000)
    );
    let returned = view
        .orders
        .iter()
        .find(|o| o.order_id == kept.order_id)
        .expect("kept order");
    assert_eq!(
        returned.refunded.as_ref().map(|m| m.minor_units),
        Some(4_000)
    );
}

#[tokio::test]
async fn an_order_cancelled_before_its_placement_arrives_stays_cancelled() {
    use omni_proto::events::event::Payload;
    use omni_proto::events::{OrderCancelled, OrderPlaced};
    let w = World::start().await;
    let id = w.register("+447700900109", "Ines").await;
    let now = std::time::SystemTime::now();
    let late = order(&id, "web", ChannelKind::EShop, 9_000);
    let mut cancelled = late.clone();
    cancelled.status = 8;
    w.orders
        .publish_as_of(
            "orders.order_cancelled",
            &late.order_id,
            Payload::OrderCancelled(OrderCancelled {
                order: Some(cancelled),
                ..Default::default()
            }),
            now - std::time::Duration::from_secs(5),
        )
        .await;
    // The placement happened first but arrives last (a reclaimed entry, say).
    w.orders
        .publish_as_of(
            "orders.order_placed",
            &late.order_id,
            Payload::OrderPlaced(OrderPlaced {
                order: Some(late.clone()),
            }),
            now - std::time::Duration::from_secs(10),
        )
        .await;
    // An order after both: once it shows, both earlier events have been applied.
    let kept = order(&id, "web", ChannelKind::EShop, 1_000);
    w.orders.complete(&kept).await;
    let view = w
        .view_when(&id, |v| v.orders.len() == 2 && v.points_balance == 10)
        .await;
    let stale = view
        .orders
        .iter()
        .find(|o| o.order_id == late.order_id)
        .expect("the cancelled order");
    assert_eq!(stale.status, 8, "still cancelled: {stale:#?}");
    assert_eq!(view.order_count, 1);
    assert_eq!(
        view.total_spend.as_ref().map(|m| m.minor_units),
        Some(1_000)
    );
}

#[tokio::test]
async fn a_merge_combines_two_histories_under_the_survivor() {
    let w = World::start().await;
    let survivor = w.register("+447700900103", "Cy").await;
    let duplicate = w.register("+447700900104", "Cy Two").await;
    w.orders
        .complete(&order(&survivor, "web", ChannelKind::EShop, 2_000))
        .await;
    w.orders
        .complete(&order(&duplicate, "store-1", ChannelKind::Store, 3_000))
        .await;
    w.view_when(&duplicate, |v| v.points_balance == 30).await;
    w.view_when(&survivor, |v| v.points_balance == 20).await;

    w.identity_client()
        .merge_customers(idpb::MergeCustomersRequest {
            survivor_id: survivor.clone(),
            duplicate_id: duplicate.clone(),
            reason: "same person".into(),
        })
        .await
        .expect("merge");

    let view = w
        .view_when(&survivor, |v| v.order_count == 2 && v.points_balance == 50)
        .await;
    assert_eq!(spend(&view, "web").0, 1);
    assert_eq!(spend(&view, "store-1").0, 1);
    // The merged-away id answers with its survivor.
    let via_duplicate = w.view_when(&duplicate, |v| v.order_count == 2).await;
    assert_eq!(
        via_duplicate.profile.expect("profile").customer_id,
        survivor
    );
    // An order the channel still files under the old id lands with the survivor.
    w.orders
        .complete(&order(&duplicate, "live", ChannelKind::Livestream, 1_000))
        .await;
    let view = w
        .view_when(&survivor, |v| v.order_count == 3 && v.points_balance == 60)
        .await;
    assert_eq!(spend(&view, "live").0, 1);
}

#[tokio::test]
async fn an_erase_removes_personal_data_but_keeps_the_history() {
    let w = World::start().await;
    let id = w.register("+447700900105", "Dee").await;
    w.orders
        .complete(&order(&id, "web", ChannelKind::EShop, 1_500))
        .await;
    let before = w
        .view_when(&id, |v| v.order_count == 1 && named(v, "Dee"))
        .await;
    assert_eq!(before.profile.expect("profile").name, "Dee");

    w.identity_client()
        .erase_customer(idpb::EraseCustomerRequest {
            customer_id: id.clone(),
            reason: "request".into(),
        })
        .await
        .expect("erase");
    let view = w
        .view_when(&id, |v| v.profile.as_ref().is_some_and(|p| p.erased))
        .await;
    let profile = view.profile.expect("profile");
    assert_eq!(profile.name, "");
    assert_eq!(profile.phone, "");
    assert_eq!(profile.email, "");
    assert_eq!(profile.member_number, "");
    assert_eq!(view.order_count, 1);
    let db = w.crm.db().await.expect("db");
    let leftovers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM customers WHERE phone <> '' OR name <> '' OR email <> ''",
    )
    .fetch_one(&db)
    .await
    .expect("count");
    assert_eq!(leftovers, 0);
}

#[tokio::test]
async fn replaying_every_event_twice_changes_nothing() {
    let w = World::start().await;
    let a = w.register("+447700900106", "Eve").await;
    let b = w.register("+447700900107", "Fay").await;
    let first = order(&a, "web", ChannelKind::EShop, 9_900);
    w.orders.complete(&first).await;
    w.orders
        .complete(&order(&a, "store-1", ChannelKind::Store, 1_000))
        .await;
    w.orders
        .complete(&order(&b, "live", ChannelKind::Livestream, 2_500))
        .await;
    w.orders.return_of(&first, 900).await;
    w.identity_client()
        .merge_customers(idpb::MergeCustomersRequest {
            survivor_id: a.clone(),
            duplicate_id: b.clone(),
            reason: "same person".into(),
        })
        .await
        .expect("merge");
    let settled = w
        .view_when(&a, |v| {
            v.order_count == 3 && v.points_balance == 99 + 10 + 25 - 9
        })
        .await;
    let db = w.crm.db().await.expect("db");
    let entries = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM points_entries")
            .fetch_one(&db)
            .await
            .expect("count")
    };
    let entries_before = entries().await;

    // Every event again, with the same ids: identity's relay republishes its outbox, the
    // orders outbox is relayed again.
    let identity_db = w.identity.db().await.expect("identity db");
    sqlx::query("UPDATE outbox SET published_at = NULL")
        .execute(&identity_db)
        .await
        .expect("reset identity outbox");
    w.orders.replay_all().await;
    // A fresh event behind the replays on each stream tells when they have been consumed.
    let marker = w.register("+447700900108", "Gus").await;
    w.orders
        .complete(&order(&marker, "web", ChannelKind::EShop, 100))
        .await;
    w.view_when(&marker, |v| v.order_count == 1 && v.points_balance == 1)
        .await;

    let mut again = w.view_when(&a, |_| true).await;
    // RFM scores rank Eve against the whole base, which the marker customer joined: compare
    // them on their own, everything else as it was.
    let rfm = again.rfm.take().expect("rfm");
    assert_eq!((rfm.recency, rfm.frequency, rfm.monetary), (1, 3, 3));
    let mut settled = settled;
    settled.rfm = None;
    assert_eq!(again, settled);
    assert_eq!(entries().await, entries_before + 1);
}

#[tokio::test]
async fn an_unknown_or_blank_customer_is_refused() {
    let w = World::start().await;
    let missing = w
        .views()
        .get_customer_view(pb::GetCustomerViewRequest {
            customer_id: uuid::Uuid::now_v7().to_string(),
            ..Default::default()
        })
        .await
        .expect_err("unknown");
    assert_eq!(missing.code(), Code::NotFound);
    let blank = w
        .views()
        .get_customer_view(pb::GetCustomerViewRequest::default())
        .await
        .expect_err("blank");
    assert_eq!(blank.code(), Code::InvalidArgument);
    let anonymous =
        pb::customer_view_service_client::CustomerViewServiceClient::new(w.crm.channel())
            .get_customer_view(pb::GetCustomerViewRequest {
                customer_id: "x".into(),
                ..Default::default()
            })
            .await
            .expect_err("no token");
    assert_eq!(anonymous.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn events_wait_out_a_database_outage_and_none_is_dead_lettered() {
    use omni_proto::events::ListDeadLettersRequest;
    use omni_proto::events::dead_letter_service_client::DeadLetterServiceClient;
    let w = World::start_with_database_link().await;
    let link = w.database_link.as_ref().expect("link");
    let id = w.register("+447700900110", "Jo").await;
    let first = order(&id, "web", ChannelKind::EShop, 2_000);
    w.orders.complete(&first).await;
    w.view_when(&id, |v| v.order_count == 1 && v.points_balance == 20)
        .await;

    // crm loses its database while two more orders complete.
    link.cut();
    for total in [3_000, 5_000] {
        w.orders
            .complete(&order(&id, "web", ChannelKind::EShop, total))
            .await;
    }
    // Its consumer says it cannot read: health NOT_SERVING, omni_consumer_up 0.
    w.crm
        .wait_for(tonic_health::pb::health_check_response::ServingStatus::NotServing)
        .await
        .expect("not serving");
    let mut down = false;
    for _ in 0..200 {
        let page = w.crm.scrape().await.expect("scrape");
        if page.contains("omni_consumer_up{group=\"crm\"} 0") {
            down = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(down, "the consumer never reported that it cannot read");
    // Out for many reclaim horizons (200 ms): every pending entry is redelivered over and over.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    link.restore();

    let view = w
        .view_when(&id, |v| v.order_count == 3 && v.points_balance == 100)
        .await;
    assert_eq!(
        view.total_spend.as_ref().map(|m| m.minor_units),
        Some(10_000)
    );
    let dead = DeadLetterServiceClient::new(w.crm.admin())
        .list_dead_letters(ListDeadLettersRequest::default())
        .await
        .expect("dead letters")
        .into_inner();
    assert!(dead.dead_letters.is_empty(), "{dead:?}");
    // Only admins see them.
    let refused =
        DeadLetterServiceClient::new(w.crm.as_roles(&[omni_runtime::auth::Role::Analyst]))
            .list_dead_letters(ListDeadLettersRequest::default())
            .await
            .expect_err("not an admin");
    assert_eq!(refused.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn a_scoped_caller_sees_the_whole_customer_but_only_the_orders_its_scope_reaches() {
    use omni_proto::omni::crm::v1::customer_view_service_client::CustomerViewServiceClient;
    use omni_runtime::auth::{Role, Scope};

    let w = World::start().await;
    let id = w.register("+447700900191", "Ada").await;
    let online = order(&id, "web", ChannelKind::EShop, 12_000);
    let store = order(&id, "store-1", ChannelKind::Store, 5_050);
    let live = order(&id, "live", ChannelKind::Livestream, 3_000);
    for o in [&online, &store, &live] {
        w.orders.complete(o).await;
    }
    for (channel, store) in [("live", ""), ("store-1", "store-1")] {
        omni_proto::omni::crm::v1::engagement_service_client::EngagementServiceClient::new(
            w.crm.admin(),
        )
        .record_interaction(pb::RecordInteractionRequest {
            interaction: Some(pb::Interaction {
                customer_id: id.clone(),
                kind: 1,
                channel_id: channel.into(),
                store_id: store.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("interaction");
    }
    w.view_when(&id, |v| {
        v.order_count == 3 && v.recent_interactions.len() == 2 && named(v, "Ada")
    })
    .await;

    let view_as = async |roles: &[Role], channels: &[&str], stores: &[&str]| {
        let token = omni_testkit::token(
            roles,
            Scope {
                channels: channels.iter().map(|c| (*c).to_owned()).collect(),
                stores: stores.iter().map(|s| (*s).to_owned()).collect(),
            },
        );
        CustomerViewServiceClient::new(w.crm.with_token(&token))
            .get_customer_view(pb::GetCustomerViewRequest {
                customer_id: id.clone(),
                ..Default::default()
            })
            .await
            .expect("view")
            .into_inner()
            .view
            .expect("view")
    };
    let channels = |v: &pb::CustomerView| {
        let mut c: Vec<String> = v.orders.iter().map(|o| o.channel_id.clone()).collect();
        c.sort();
        c
    };

    // An associate of store-1 serves the whole customer (profile, totals, points), and sees
    // the orders that touched its store, not those of the e-shop or the livestream.
    let associate = view_as(&[Role::StoreAssociate], &["store-1"], &["store-1"]).await;
    assert_eq!(
        associate.profile.as_ref().map(|p| p.name.as_str()),
        Some("Ada")
    );
    assert_eq!(associate.order_count, 3);
    assert_eq!(
        associate.total_spend.as_ref().map(|m| m.minor_units),
        Some(20_050)
    );
    assert_eq!(channels(&associate), ["store-1"]);
    assert_eq!(associate.spend_per_channel.len(), 1);
    let touched: Vec<&str> = associate
        .recent_interactions
        .iter()
        .map(|i| i.channel_id.as_str())
        .collect();
    assert_eq!(touched, ["store-1"]);

    // The e-shop's app sees its own orders only; an unscoped manager sees all three.
    let app = view_as(&[Role::ChannelApp], &["web"], &[]).await;
    assert_eq!(channels(&app), ["web"]);
    assert_eq!(spend(&app, "web").1, 12_000);
    let manager = view_as(&[Role::ChannelManager], &[], &[]).await;
    assert_eq!(channels(&manager), ["live", "store-1", "web"]);
}

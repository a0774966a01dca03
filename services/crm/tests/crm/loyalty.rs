//! The points ledger: earned on fulfilment, redeemed anywhere, never negative.

use futures::future::join_all;
use omni_proto::common::ChannelKind;
use omni_proto::omni::crm::v1 as pb;
use omni_proto::omni::crm::v1::loyalty_service_client::LoyaltyServiceClient;
use omni_runtime::auth::Role;
use tonic::Code;

use crate::support::{World, order};

#[tokio::test]
async fn fifty_concurrent_redemptions_never_take_the_balance_below_zero() {
    let w = World::start().await;
    let id = w.register("+447700900201", "Hal").await;
    w.orders
        .complete(&order(&id, "web", ChannelKind::EShop, 10_000))
        .await;
    w.view_when(&id, |v| v.points_balance == 100).await;

    let calls = (0..50).map(|i| {
        let mut client = LoyaltyServiceClient::new(w.crm.as_roles(&[Role::ChannelApp]));
        let id = id.clone();
        async move {
            client
                .redeem_points(pb::RedeemPointsRequest {
                    idempotency_key: format!("k{i}"),
                    customer_id: id,
                    points: 3,
                    channel_id: if i % 2 == 0 { "web" } else { "store-1" }.into(),
                    ..Default::default()
                })
                .await
        }
    });
    let results = join_all(calls).await;
    let won = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, 33);
    for refused in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    }
    let account = LoyaltyServiceClient::new(w.crm.admin())
        .get_loyalty_account(pb::GetLoyaltyAccountRequest {
            customer_id: id.clone(),
        })
        .await
        .expect("account")
        .into_inner()
        .account
        .expect("account");
    assert_eq!(account.points_balance, 1);

    let db = w.crm.db().await.expect("db");
    let (ledger, redemptions): (i64, i64) = sqlx::query_as(
        "SELECT COALESCE(sum(points), 0)::bigint, count(*) FILTER (WHERE kind = 3)
         FROM points_entries WHERE customer_id = $1",
    )
    .bind(&id)
    .fetch_one(&db)
    .await
    .expect("ledger");
    assert_eq!(ledger, 1, "the ledger sums to the balance");
    assert_eq!(redemptions, 33);
    let negative: i64 =
        sqlx::query_scalar("SELECT count(*) FROM points_entries WHERE balance_after < 0")
            .fetch_one(&db)
            .await
            .expect("count");
    assert_eq!(negative, 0);
}

#[tokio::test]
async fn redeeming_more_than_the_balance_or_for_nobody_writes_nothing() {
    let w = World::start().await;
    let id = w.register("+447700900202", "Ivy").await;
    w.orders
        .complete(&order(&id, "web", ChannelKind::EShop, 500))
        .await;
    w.view_when(&id, |v| v.points_balance == 5).await;
    let mut client = LoyaltyServiceClient::new(w.crm.admin());

    let too_many = client
        .redeem_points(pb::RedeemPointsRequest {
            customer_id: id.clone(),
            points: 6,
            ..Default::default()
        })
        .await
        .expect_err("over balance");
    assert_eq!(too_many.code(), Code::FailedPrecondition);
    let unknown = client
        .redeem_points(pb::RedeemPointsRequest {
            customer_id: "nobody".into(),
            points: 1,
            ..Default::default()
        })
        .await
        .expect_err("unknown");
    assert_eq!(unknown.code(), Code::NotFound);
    let zero = client
        .redeem_points(pb::RedeemPointsRequest {
            customer_id: id.clone(),
            points: 0,
            ..Default::default()
        })
        .await
        .expect_err("zero");
    assert_eq!(zero.code(), Code::InvalidArgument);

    let db = w.crm.db().await.expect("db");
    let redemptions: i64 = sqlx::query_scalar("SELECT count(*) FROM points_entries WHERE kind = 3")
        .fetch_one(&db)
        .await
        .expect("count");
    assert_eq!(redemptions, 0);

    let ok = client
        .redeem_points(pb::RedeemPointsRequest {
            customer_id: id.clone(),
            points: 5,
            channel_id: "store-1".into(),
            ..Default::default()
        })
        .await
        .expect("redeem")
        .into_inner()
        .entry
        .expect("entry");
    assert_eq!((ok.points, ok.balance_after, ok.kind), (-5, 0, 3));
}

#[tokio::test]
async fn a_return_after_redemption_takes_back_only_what_is_left() {
    let w = World::start().await;
    let id = w.register("+447700900203", "Jo").await;
    let o = order(&id, "web", ChannelKind::EShop, 2_000);
    w.orders.complete(&o).await;
    w.view_when(&id, |v| v.points_balance == 20).await;
    LoyaltyServiceClient::new(w.crm.admin())
        .redeem_points(pb::RedeemPointsRequest {
            customer_id: id.clone(),
            points: 15,
            ..Default::default()
        })
        .await
        .expect("redeem");
    w.orders.return_of(&o, 2_000).await;
    let view = w
        .view_when(&id, |v| {
            v.orders
                .first()
                .and_then(|o| o.refunded.as_ref())
                .is_some_and(|m| m.minor_units == 2_000)
        })
        .await;
    assert_eq!(view.points_balance, 0);
}

#[tokio::test]
async fn roles_without_redemption_rights_are_refused() {
    let w = World::start().await;
    let refused = LoyaltyServiceClient::new(w.crm.as_roles(&[Role::Analyst]))
        .redeem_points(pb::RedeemPointsRequest {
            customer_id: "x".into(),
            points: 1,
            ..Default::default()
        })
        .await
        .expect_err("analyst");
    assert_eq!(refused.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn the_tier_follows_rolling_spend_across_channels_and_returns() {
    let w = World::start().await;
    let id = w.register("+447700900204", "Lu").await;
    let online = order(&id, "web", ChannelKind::EShop, 30_000);
    w.orders.complete(&online).await;
    let view = w.view_when(&id, |v| v.points_balance == 300).await;
    assert_eq!(view.tier, "member");
    w.orders
        .complete(&order(&id, "store-1", ChannelKind::Store, 25_000))
        .await;
    let view = w.view_when(&id, |v| v.points_balance == 550).await;
    assert_eq!(view.tier, "silver");
    let account = LoyaltyServiceClient::new(w.crm.admin())
        .get_loyalty_account(pb::GetLoyaltyAccountRequest {
            customer_id: id.clone(),
        })
        .await
        .expect("account")
        .into_inner()
        .account
        .expect("account");
    assert_eq!(account.tier, "silver");
    assert_eq!(account.next_tier, "gold");
    assert_eq!(
        account.rolling_spend.as_ref().map(|m| m.minor_units),
        Some(55_000)
    );
    assert_eq!(
        account.spend_to_next_tier.as_ref().map(|m| m.minor_units),
        Some(145_000)
    );

    w.orders.return_of(&online, 10_000).await;
    let view = w.view_when(&id, |v| v.points_balance == 450).await;
    assert_eq!(view.tier, "member");
}

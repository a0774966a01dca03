//! Coupons: redeemed at most once across channels, also at the same instant; validity and
//! channel refusals write nothing; release gives a coupon back.

use futures::future::join_all;
use omni_proto::common::{Money, TimeRange};
use omni_proto::omni::crm::v1 as pb;
use omni_proto::omni::crm::v1::coupon_service_client::CouponServiceClient;
use omni_runtime::auth::Role;
use omni_runtime::client::AuthChannel;
use tonic::Code;

use crate::support::World;

fn coupons(w: &World) -> CouponServiceClient<AuthChannel> {
    CouponServiceClient::new(w.crm.admin())
}

fn at(offset_secs: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: chrono::Utc::now().timestamp() + offset_secs,
        nanos: 0,
    })
}

/// A registered customer and a coupon of a 5.00 EUR template valid in `channels`.
async fn issued(
    w: &World,
    phone: &str,
    channels: &[&str],
    validity: TimeRange,
) -> (String, pb::Coupon) {
    let customer = w.register(phone, "Kim").await;
    w.view_when(&customer, |_| true).await;
    let template = coupons(w)
        .create_coupon_template(pb::CreateCouponTemplateRequest {
            template: Some(pb::CouponTemplate {
                name: "five off".into(),
                discount: Some(pb::coupon_template::Discount::AmountOff(Money {
                    minor_units: 500,
                    currency: "EUR".into(),
                })),
                channel_ids: channels.iter().map(|c| (*c).to_owned()).collect(),
                validity: Some(validity),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("template")
        .into_inner()
        .template
        .expect("template");
    let coupon = coupons(w)
        .issue_coupons(pb::IssueCouponsRequest {
            template_id: template.id,
            recipients: Some(pb::issue_coupons_request::Recipients::CustomerId(
                customer.clone(),
            )),
            issuing_channel_id: "web".into(),
            ..Default::default()
        })
        .await
        .expect("issue")
        .into_inner()
        .coupons
        .pop()
        .expect("one coupon");
    (customer, coupon)
}

fn redeem(customer: &str, code: &str, channel: &str, order: &str) -> pb::RedeemCouponRequest {
    pb::RedeemCouponRequest {
        code: code.into(),
        customer_id: customer.into(),
        channel_id: channel.into(),
        order_id: order.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_coupon_redeemed_from_several_channels_at_once_succeeds_once() {
    let w = World::start().await;
    let (customer, coupon) = issued(&w, "+447700900301", &[], TimeRange::default()).await;
    let channels = ["web", "store-1", "live", "social"];
    let attempts = (0..8).map(|i| {
        let mut client = CouponServiceClient::new(w.crm.as_roles(&[Role::Service]));
        let request = redeem(
            &customer,
            &coupon.code,
            channels[i % channels.len()],
            &format!("order-{i}"),
        );
        async move { client.redeem_coupon(request).await }
    });
    let results = join_all(attempts).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    for refused in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    }
    let db = w.crm.db().await.expect("db");
    let events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE event_type = 'crm.coupon_redeemed'")
            .fetch_one(&db)
            .await
            .expect("count");
    assert_eq!(events, 1);
    let stored = coupons(&w)
        .get_coupon(pb::GetCouponRequest {
            code: coupon.code.clone(),
        })
        .await
        .expect("get")
        .into_inner()
        .coupon
        .expect("coupon");
    assert_eq!(stored.status, pb::CouponStatus::Redeemed as i32);
}

#[tokio::test]
async fn a_retry_returns_the_first_redemption_and_a_release_gives_the_coupon_back() {
    let w = World::start().await;
    let (customer, coupon) = issued(&w, "+447700900302", &["web"], TimeRange::default()).await;
    let first = coupons(&w)
        .redeem_coupon(redeem(&customer, &coupon.code, "web", "o1"))
        .await
        .expect("redeem")
        .into_inner()
        .coupon
        .expect("coupon");
    let retry = coupons(&w)
        .redeem_coupon(redeem(&customer, &coupon.code, "web", "o1"))
        .await
        .expect("retry")
        .into_inner()
        .coupon
        .expect("coupon");
    assert_eq!(retry.redeemed_at, first.redeemed_at);
    let other = coupons(&w)
        .redeem_coupon(redeem(&customer, &coupon.code, "web", "o2"))
        .await
        .expect_err("taken");
    assert_eq!(other.code(), Code::FailedPrecondition);

    let wrong_order = coupons(&w)
        .release_coupon(pb::ReleaseCouponRequest {
            code: coupon.code.clone(),
            order_id: "o2".into(),
            reason: "cancelled".into(),
        })
        .await
        .expect_err("not its order");
    assert_eq!(wrong_order.code(), Code::FailedPrecondition);
    let released = coupons(&w)
        .release_coupon(pb::ReleaseCouponRequest {
            code: coupon.code.clone(),
            order_id: "o1".into(),
            reason: "cancelled".into(),
        })
        .await
        .expect("release")
        .into_inner()
        .coupon
        .expect("coupon");
    assert_eq!(released.status, pb::CouponStatus::Issued as i32);
    coupons(&w)
        .redeem_coupon(redeem(&customer, &coupon.code, "web", "o2"))
        .await
        .expect("redeem again after release");
}

#[tokio::test]
async fn a_coupon_outside_its_channel_or_validity_or_unknown_is_refused_and_nothing_changes() {
    let w = World::start().await;
    let (customer, web_only) = issued(&w, "+447700900303", &["web"], TimeRange::default()).await;
    let wrong_channel = coupons(&w)
        .redeem_coupon(redeem(&customer, &web_only.code, "store-1", "o1"))
        .await
        .expect_err("store");
    assert_eq!(wrong_channel.code(), Code::FailedPrecondition);
    assert!(
        wrong_channel.message().contains("channel"),
        "{wrong_channel:?}"
    );
    let check = coupons(&w)
        .check_coupon(pb::CheckCouponRequest {
            code: web_only.code.clone(),
            customer_id: customer.clone(),
            channel_id: "store-1".into(),
        })
        .await
        .expect("check")
        .into_inner();
    assert!(!check.usable);
    let check = coupons(&w)
        .check_coupon(pb::CheckCouponRequest {
            code: web_only.code.clone(),
            customer_id: customer.clone(),
            channel_id: "web".into(),
        })
        .await
        .expect("check")
        .into_inner();
    assert!(check.usable, "{check:?}");

    let (late, expired) = issued(
        &w,
        "+447700900304",
        &[],
        TimeRange {
            start: at(-7200),
            end: at(-3600),
        },
    )
    .await;
    let outside = coupons(&w)
        .redeem_coupon(redeem(&late, &expired.code, "web", "o2"))
        .await
        .expect_err("expired");
    assert_eq!(outside.code(), Code::FailedPrecondition);
    assert!(outside.message().contains("validity"), "{outside:?}");

    let someone_else = coupons(&w)
        .redeem_coupon(redeem(&late, &web_only.code, "web", "o3"))
        .await
        .expect_err("not hers");
    assert_eq!(someone_else.code(), Code::FailedPrecondition);

    let unknown = coupons(&w)
        .redeem_coupon(redeem(&customer, "NOSUCHCODE", "web", "o4"))
        .await
        .expect_err("unknown");
    assert_eq!(unknown.code(), Code::NotFound);

    let db = w.crm.db().await.expect("db");
    let redeemed: i64 = sqlx::query_scalar("SELECT count(*) FROM coupons WHERE status <> 1")
        .fetch_one(&db)
        .await
        .expect("count");
    assert_eq!(redeemed, 0);
}

#[tokio::test]
async fn a_template_without_a_discount_is_refused() {
    let w = World::start().await;
    let refused = coupons(&w)
        .create_coupon_template(pb::CreateCouponTemplateRequest {
            template: Some(pb::CouponTemplate {
                name: "nothing".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("no discount");
    assert_eq!(refused.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_merge_moves_coupons_to_the_survivor() {
    let w = World::start().await;
    let (duplicate, coupon) = issued(&w, "+447700900305", &[], TimeRange::default()).await;
    let survivor = w.register("+447700900306", "Kim Two").await;
    w.view_when(&survivor, |_| true).await;
    w.identity_client()
        .merge_customers(omni_proto::omni::identity::v1::MergeCustomersRequest {
            survivor_id: survivor.clone(),
            duplicate_id: duplicate.clone(),
            reason: "same person".into(),
        })
        .await
        .expect("merge");
    w.view_when(&duplicate, |v| {
        v.profile
            .as_ref()
            .is_some_and(|p| p.customer_id == survivor)
    })
    .await;
    let redeemed = coupons(&w)
        .redeem_coupon(redeem(&survivor, &coupon.code, "store-1", "o1"))
        .await
        .expect("the survivor redeems the coupon")
        .into_inner()
        .coupon
        .expect("coupon");
    assert_eq!(redeemed.customer_id, survivor);
}

#[tokio::test]
async fn a_channels_manager_makes_coupons_for_its_own_channels_only() {
    use omni_runtime::auth::Scope;

    let w = World::start().await;
    let mut web_manager = CouponServiceClient::new(w.crm.with_token(&omni_testkit::token(
        &[Role::ChannelManager],
        Scope {
            channels: vec!["web".into()],
            ..Scope::default()
        },
    )));
    let template = |channels: &[&str]| pb::CreateCouponTemplateRequest {
        template: Some(pb::CouponTemplate {
            name: "five off".into(),
            discount: Some(pb::coupon_template::Discount::AmountOff(Money {
                minor_units: 500,
                currency: "EUR".into(),
            })),
            channel_ids: channels.iter().map(|c| (*c).to_owned()).collect(),
            validity: Some(TimeRange {
                start: at(-60),
                end: at(3_600),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    web_manager
        .create_coupon_template(template(&["web"]))
        .await
        .expect("its own channel");
    for channels in [&["live"][..], &[][..]] {
        let err = web_manager
            .create_coupon_template(template(channels))
            .await
            .expect_err("another channel, or every channel");
        assert_eq!(err.code(), Code::PermissionDenied, "{channels:?}");
    }
}

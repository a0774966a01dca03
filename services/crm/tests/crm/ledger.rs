//! The points ledger listing, manual adjustments, cancelled redemptions and idempotent
//! redemptions; coupon listings and issuing to a segment.

use omni_proto::common::{ChannelKind, Money};
use omni_proto::omni::crm::v1 as pb;
use omni_proto::omni::crm::v1::coupon_service_client::CouponServiceClient;
use omni_proto::omni::crm::v1::loyalty_service_client::LoyaltyServiceClient;
use omni_runtime::client::AuthChannel;
use tonic::Code;

use crate::campaigns::segment;
use crate::support::{World, order};

fn loyalty(w: &World) -> LoyaltyServiceClient<AuthChannel> {
    LoyaltyServiceClient::new(w.crm.admin())
}

#[tokio::test]
async fn adjustments_cancellations_and_retried_redemptions_keep_the_ledger_right() {
    let w = World::start().await;
    let ada = w.register("+447700900701", "Ada").await;
    w.orders
        .complete(&order(&ada, "web", ChannelKind::EShop, 10_000))
        .await;
    w.view_when(&ada, |v| v.points_balance == 100).await;

    let redeem = pb::RedeemPointsRequest {
        idempotency_key: "redeem-1".into(),
        customer_id: ada.clone(),
        points: 40,
        channel_id: "store-1".into(),
        order_id: "o-1".into(),
    };
    let first = loyalty(&w)
        .redeem_points(redeem.clone())
        .await
        .expect("redeem")
        .into_inner();
    let retried = loyalty(&w)
        .redeem_points(redeem.clone())
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(first, retried);
    let reused = loyalty(&w)
        .redeem_points(pb::RedeemPointsRequest {
            points: 41,
            ..redeem
        })
        .await
        .expect_err("key reused for another request");
    assert_eq!(reused.code(), Code::InvalidArgument);
    let entry = first.entry.expect("entry");
    assert_eq!(entry.balance_after, 60);

    let too_much = loyalty(&w)
        .adjust_points(pb::AdjustPointsRequest {
            customer_id: ada.clone(),
            points: -61,
            reason: "correction".into(),
            ..Default::default()
        })
        .await
        .expect_err("below zero");
    assert_eq!(too_much.code(), Code::FailedPrecondition);
    let adjusted = loyalty(&w)
        .adjust_points(pb::AdjustPointsRequest {
            customer_id: ada.clone(),
            points: -10,
            reason: "goodwill reversed".into(),
            ..Default::default()
        })
        .await
        .expect("adjust")
        .into_inner()
        .entry
        .expect("entry");
    assert_eq!((adjusted.kind, adjusted.balance_after), (5, 50));

    for _ in 0..2 {
        let cancelled = loyalty(&w)
            .cancel_points_redemption(pb::CancelPointsRedemptionRequest {
                entry_id: entry.id.clone(),
                reason: "order cancelled".into(),
                ..Default::default()
            })
            .await
            .expect("cancel")
            .into_inner()
            .entry
            .expect("entry");
        assert_eq!(
            (cancelled.kind, cancelled.points, cancelled.balance_after),
            (4, 40, 90)
        );
    }
    let entries = loyalty(&w)
        .list_points_entries(pb::ListPointsEntriesRequest {
            customer_id: ada.clone(),
            page_size: 2,
            ..Default::default()
        })
        .await
        .expect("entries")
        .into_inner();
    let kinds: Vec<i32> = entries.entries.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, vec![4, 5]);
    let rest = loyalty(&w)
        .list_points_entries(pb::ListPointsEntriesRequest {
            customer_id: ada.clone(),
            page_size: 2,
            page_token: entries.next_page_token,
        })
        .await
        .expect("entries")
        .into_inner()
        .entries;
    let kinds: Vec<i32> = rest.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, vec![3, 1]);
}

#[tokio::test]
async fn coupons_issued_to_a_segment_reach_every_member_once_per_key_and_list_per_customer() {
    let w = World::start().await;
    let ada = w.register("+447700900711", "Ada").await;
    let bob = w.register("+447700900712", "Bob").await;
    let cy = w.register("+447700900713", "Cy").await;
    for id in [&ada, &bob] {
        w.orders
            .complete(&order(id, "web", ChannelKind::EShop, 5_000))
            .await;
    }
    for id in [&ada, &bob] {
        w.view_when(id, |v| v.order_count == 1).await;
    }
    w.view_when(&cy, |_| true).await;
    let buyers = segment(&w, "order_count >= 1").await;
    let coupons = CouponServiceClient::new(w.crm.admin());
    let template = coupons
        .clone()
        .create_coupon_template(pb::CreateCouponTemplateRequest {
            idempotency_key: "tpl-1".into(),
            template: Some(pb::CouponTemplate {
                name: "thanks".into(),
                discount: Some(pb::coupon_template::Discount::PercentOffBps(1_000)),
                min_spend: Some(Money {
                    minor_units: 2_000,
                    currency: "EUR".into(),
                }),
                ..Default::default()
            }),
        })
        .await
        .expect("template")
        .into_inner()
        .template
        .expect("template");
    let issue = pb::IssueCouponsRequest {
        idempotency_key: "thanks-1".into(),
        template_id: template.id.clone(),
        recipients: Some(pb::issue_coupons_request::Recipients::SegmentId(
            buyers.id.clone(),
        )),
        issuing_channel_id: "web".into(),
    };
    for _ in 0..2 {
        let issued = coupons
            .clone()
            .issue_coupons(issue.clone())
            .await
            .expect("issue")
            .into_inner();
        assert_eq!(issued.issued_count, 2);
    }
    for (id, want) in [(&ada, 1), (&bob, 1), (&cy, 0)] {
        let listed = coupons
            .clone()
            .list_customer_coupons(pb::ListCustomerCouponsRequest {
                customer_id: id.clone(),
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner()
            .coupons;
        assert_eq!(listed.len(), want, "coupons of {id}");
    }
    let templates = coupons
        .clone()
        .list_coupon_templates(pb::ListCouponTemplatesRequest::default())
        .await
        .expect("templates")
        .into_inner()
        .templates;
    assert_eq!(templates.len(), 1);
}

#[tokio::test]
async fn new_loyalty_rules_change_tiers_at_once_and_the_earn_rate_from_then_on() {
    let w = World::start().await;
    let ada = w.register("+447700900721", "Ada").await;
    w.orders
        .complete(&order(&ada, "web", ChannelKind::EShop, 60_000))
        .await;
    w.view_when(&ada, |v| v.tier == "silver" && v.points_balance == 600)
        .await;
    let tier = |code: &str, min: i64, bps: i32| pb::Tier {
        code: code.into(),
        name: code.to_uppercase(),
        min_rolling_spend: Some(Money {
            minor_units: min,
            currency: "EUR".into(),
        }),
        earn_multiplier_bps: bps,
    };
    let bad = loyalty(&w)
        .set_loyalty_rules(pb::SetLoyaltyRulesRequest {
            rules: Some(pb::LoyaltyRules {
                points_per_unit: 2,
                tiers: vec![tier("base", 0, 10_000), tier("vip", 0, 20_000)],
                ..Default::default()
            }),
        })
        .await
        .expect_err("flat ladder");
    assert_eq!(bad.code(), Code::InvalidArgument);
    let rules = loyalty(&w)
        .set_loyalty_rules(pb::SetLoyaltyRulesRequest {
            rules: Some(pb::LoyaltyRules {
                points_per_unit: 2,
                tiers: vec![tier("base", 0, 10_000), tier("vip", 50_000, 20_000)],
                ..Default::default()
            }),
        })
        .await
        .expect("rules")
        .into_inner()
        .rules
        .expect("rules");
    assert_eq!(rules.tier_window_days, 365);
    let got = loyalty(&w)
        .get_loyalty_rules(pb::GetLoyaltyRulesRequest {})
        .await
        .expect("get")
        .into_inner()
        .rules
        .expect("rules");
    assert_eq!(got, rules);

    // 600 EUR of spend is VIP now; the next 100 EUR earns 100 x 2 x 2 points.
    let account = loyalty(&w)
        .get_loyalty_account(pb::GetLoyaltyAccountRequest {
            customer_id: ada.clone(),
        })
        .await
        .expect("account")
        .into_inner()
        .account
        .expect("account");
    assert_eq!(account.tier, "vip");
    w.orders
        .complete(&order(&ada, "web", ChannelKind::EShop, 10_000))
        .await;
    w.view_when(&ada, |v| v.tier == "vip" && v.points_balance == 600 + 400)
        .await;
}

#[tokio::test]
async fn a_percentage_coupon_below_its_minimum_spend_is_not_redeemed() {
    let w = World::start().await;
    let ada = w.register("+447700900731", "Ada").await;
    w.view_when(&ada, |_| true).await;
    let coupons = CouponServiceClient::new(w.crm.admin());
    let template = coupons
        .clone()
        .create_coupon_template(pb::CreateCouponTemplateRequest {
            template: Some(pb::CouponTemplate {
                name: "10% from 50".into(),
                discount: Some(pb::coupon_template::Discount::PercentOffBps(1_000)),
                min_spend: Some(Money {
                    minor_units: 5_000,
                    currency: "EUR".into(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("template")
        .into_inner()
        .template
        .expect("template");
    let coupon = coupons
        .clone()
        .issue_coupons(pb::IssueCouponsRequest {
            template_id: template.id,
            recipients: Some(pb::issue_coupons_request::Recipients::CustomerId(
                ada.clone(),
            )),
            ..Default::default()
        })
        .await
        .expect("issue")
        .into_inner()
        .coupons
        .remove(0);
    let redeem = |discount: i64, order: &str| pb::RedeemCouponRequest {
        code: coupon.code.clone(),
        customer_id: ada.clone(),
        channel_id: "web".into(),
        order_id: order.into(),
        discount: Some(Money {
            minor_units: discount,
            currency: "EUR".into(),
        }),
        ..Default::default()
    };
    let refused = coupons
        .clone()
        .redeem_coupon(redeem(499, "o-small"))
        .await
        .expect_err("below minimum spend");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let still = coupons
        .clone()
        .get_coupon(pb::GetCouponRequest {
            code: coupon.code.clone(),
        })
        .await
        .expect("coupon")
        .into_inner()
        .coupon
        .expect("coupon");
    assert_eq!(still.status, 1);
    let redeemed = coupons
        .clone()
        .redeem_coupon(redeem(500, "o-big"))
        .await
        .expect("redeem")
        .into_inner()
        .coupon
        .expect("coupon");
    assert_eq!(redeemed.redeemed_order_id, "o-big");
}

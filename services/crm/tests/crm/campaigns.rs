//! Campaigns and triggered offers: one delivery per customer across channels, consent, the
//! weekly cap, deliveries on crm's stream, and offers that cross channels on purpose.

use omni_proto::common::{ChannelKind, Money};
use omni_proto::events::event::Payload;
use omni_proto::omni::crm::v1 as pb;
use omni_proto::omni::crm::v1::campaign_service_client::CampaignServiceClient;
use omni_proto::omni::crm::v1::coupon_service_client::CouponServiceClient;
use omni_proto::omni::crm::v1::engagement_service_client::EngagementServiceClient;
use omni_proto::omni::crm::v1::segment_service_client::SegmentServiceClient;
use omni_runtime::client::AuthChannel;
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::{World, order, order_at};

const NO_CONSENT: i32 = 1;
const FREQUENCY_CAP: i32 = 2;

fn campaigns(w: &World) -> CampaignServiceClient<AuthChannel> {
    CampaignServiceClient::new(w.crm.admin())
}

pub fn segments(w: &World) -> SegmentServiceClient<AuthChannel> {
    SegmentServiceClient::new(w.crm.admin())
}

pub async fn segment(w: &World, rule: &str) -> pb::Segment {
    segments(w)
        .create_segment(pb::CreateSegmentRequest {
            segment: Some(pb::Segment {
                name: format!("segment {rule}"),
                rule: rule.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("segment")
        .into_inner()
        .segment
        .expect("segment")
}

async fn campaign(w: &World, segment_id: &str, channels: &[&str]) -> pb::Campaign {
    campaigns(w)
        .create_campaign(pb::CreateCampaignRequest {
            campaign: Some(pb::Campaign {
                name: "spring".into(),
                segment_id: segment_id.into(),
                content: Some(pb::MessageContent {
                    title: "Spring is here".into(),
                    body: "New colours in every channel".into(),
                    ..Default::default()
                }),
                channel_ids: channels.iter().map(|c| (*c).to_owned()).collect(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("campaign")
        .into_inner()
        .campaign
        .expect("campaign")
}

async fn send(w: &World, campaign_id: &str, key: &str) -> pb::CampaignReport {
    campaigns(w)
        .send_campaign(pb::SendCampaignRequest {
            idempotency_key: key.into(),
            campaign_id: campaign_id.into(),
            dry_run: false,
        })
        .await
        .expect("send")
        .into_inner()
        .report
        .expect("report")
}

async fn set_cap(w: &World, max: i32) {
    campaigns(w)
        .set_contact_policy(pb::SetContactPolicyRequest {
            policy: Some(pb::ContactPolicy {
                max_deliveries_per_week: max,
                updated_at: None,
            }),
        })
        .await
        .expect("policy");
}

fn suppressed(report: &pb::CampaignReport, reason: i32) -> i64 {
    report
        .suppressions
        .iter()
        .find(|s| s.reason == reason)
        .map_or(0, |s| s.count)
}

fn has_kind(view: &pb::CustomerView, kind: ChannelKind) -> bool {
    view.profile
        .as_ref()
        .is_some_and(|p| p.marketing_opt_ins.contains(&(kind as i32)))
}

#[tokio::test]
async fn a_campaign_reaching_a_customer_through_three_channels_delivers_once_and_respects_opt_out_and_the_weekly_cap()
 {
    let w = World::start().await;
    let ada = w.register("+447700900301", "Ada").await;
    let bob = w.register("+447700900302", "Bob").await;
    let cy = w.register("+447700900303", "Cy").await;
    for o in [
        order(&ada, "web", ChannelKind::EShop, 4_000),
        order(&ada, "store-1", ChannelKind::Store, 4_000),
        order(&ada, "live", ChannelKind::Livestream, 4_000),
        order(&bob, "web", ChannelKind::EShop, 4_000),
        order(&cy, "web", ChannelKind::EShop, 4_000),
    ] {
        w.orders.complete(&o).await;
    }
    for kind in [
        ChannelKind::EShop,
        ChannelKind::Store,
        ChannelKind::Livestream,
    ] {
        w.consent(&ada, kind, true).await;
    }
    w.consent(&cy, ChannelKind::EShop, true).await;
    // Bob opts in, then out again.
    w.consent(&bob, ChannelKind::EShop, true).await;
    w.view_when(&bob, |v| has_kind(v, ChannelKind::EShop)).await;
    w.consent(&bob, ChannelKind::EShop, false).await;
    w.view_when(&bob, |v| {
        v.order_count == 1 && !has_kind(v, ChannelKind::EShop)
    })
    .await;
    w.view_when(&ada, |v| {
        v.order_count == 3
            && has_kind(v, ChannelKind::EShop)
            && has_kind(v, ChannelKind::Store)
            && has_kind(v, ChannelKind::Livestream)
    })
    .await;
    w.view_when(&cy, |v| {
        v.order_count == 1 && has_kind(v, ChannelKind::EShop)
    })
    .await;
    set_cap(&w, 1).await;

    let everyone = segment(&w, "bought(min_orders = 1)").await;
    assert_eq!(everyone.member_count, 3);
    let first = campaign(&w, &everyone.id, &["web", "store-1", "live"]).await;

    // A dry run reports and writes nothing.
    let dry = campaigns(&w)
        .send_campaign(pb::SendCampaignRequest {
            campaign_id: first.id.clone(),
            dry_run: true,
            ..Default::default()
        })
        .await
        .expect("dry run")
        .into_inner()
        .report
        .expect("report");
    assert_eq!(dry.deliveries, 2);

    let report = send(&w, &first.id, "send-first").await;
    assert_eq!(report.targeted, 3);
    assert_eq!(report.deliveries, 2, "{report:#?}");
    assert_eq!(report.suppressed, 1);
    assert_eq!(suppressed(&report, NO_CONSENT), 1);
    assert_eq!(report.per_channel.len(), 1);
    assert_eq!(report.per_channel[0].channel_id, "web");

    // Ada reachable through three channels got exactly one delivery; Bob none.
    let deliveries = campaigns(&w)
        .list_deliveries(pb::ListDeliveriesRequest {
            campaign_id: first.id.clone(),
            ..Default::default()
        })
        .await
        .expect("deliveries")
        .into_inner()
        .deliveries;
    assert_eq!(
        deliveries.iter().filter(|d| d.customer_id == ada).count(),
        1
    );
    assert_eq!(
        deliveries.iter().filter(|d| d.customer_id == bob).count(),
        0
    );
    let events = w
        .crm_events_when(|events| {
            events
                .iter()
                .filter(|e| matches!(e.payload, Some(Payload::CampaignDeliveryRequested(_))))
                .count()
                >= 2
        })
        .await;
    let to_ada: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.payload {
            Some(Payload::CampaignDeliveryRequested(d)) if d.customer_id == ada => Some(d),
            _ => None,
        })
        .collect();
    assert_eq!(to_ada.len(), 1);
    assert_eq!(to_ada[0].campaign_id, first.id);
    assert_eq!(to_ada[0].channel_kind, ChannelKind::EShop as i32);

    // A retry with the same key returns the first report; sending again is refused.
    assert_eq!(send(&w, &first.id, "send-first").await, report);
    let again = campaigns(&w)
        .send_campaign(pb::SendCampaignRequest {
            idempotency_key: "send-again".into(),
            campaign_id: first.id.clone(),
            dry_run: false,
        })
        .await
        .expect_err("sent twice");
    assert_eq!(again.code(), Code::FailedPrecondition);

    // The cap (one a week) holds across campaigns.
    let second = campaign(&w, &everyone.id, &["live", "web"]).await;
    let report = send(&w, &second.id, "send-second").await;
    assert_eq!(report.deliveries, 0, "{report:#?}");
    assert_eq!(suppressed(&report, FREQUENCY_CAP), 2);
    assert_eq!(suppressed(&report, NO_CONSENT), 1);

    // Without a cap, each customer is reached through the first allowed channel they consent on.
    set_cap(&w, 0).await;
    let third = campaign(&w, &everyone.id, &["live", "web"]).await;
    let report = send(&w, &third.id, "send-third").await;
    assert_eq!(report.deliveries, 2, "{report:#?}");
    let deliveries = campaigns(&w)
        .list_deliveries(pb::ListDeliveriesRequest {
            campaign_id: third.id.clone(),
            ..Default::default()
        })
        .await
        .expect("deliveries")
        .into_inner()
        .deliveries;
    let channel_of = |c: &str| {
        deliveries
            .iter()
            .find(|d| d.customer_id == c)
            .map(|d| d.channel_id.clone())
    };
    assert_eq!(channel_of(&ada).as_deref(), Some("live"));
    assert_eq!(channel_of(&cy).as_deref(), Some("web"));

    // An adapter reports a click; the report counts it.
    let ada_delivery = deliveries
        .iter()
        .find(|d| d.customer_id == ada)
        .expect("ada");
    campaigns(&w)
        .report_delivery_outcome(pb::ReportDeliveryOutcomeRequest {
            delivery_id: ada_delivery.id.clone(),
            status: 4,
            ..Default::default()
        })
        .await
        .expect("outcome");
    let report = campaigns(&w)
        .get_campaign_report(pb::GetCampaignReportRequest {
            campaign_id: third.id.clone(),
        })
        .await
        .expect("report")
        .into_inner()
        .report
        .expect("report");
    assert_eq!((report.delivered, report.clicked), (1, 1));
}

#[tokio::test]
async fn a_campaign_with_bad_input_is_refused_with_field_details_and_writes_nothing() {
    let w = World::start().await;
    let error = campaigns(&w)
        .create_campaign(pb::CreateCampaignRequest {
            campaign: Some(pb::Campaign {
                name: String::new(),
                segment_id: "nope".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("bad campaign");
    assert_eq!(error.code(), Code::InvalidArgument);
    let fields: Vec<String> = error
        .get_details_bad_request()
        .expect("bad request")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    for field in [
        "campaign.name",
        "campaign.segment_id",
        "campaign.content",
        "campaign.channel_ids",
    ] {
        assert!(fields.iter().any(|f| f == field), "{field} in {fields:?}");
    }
    let unknown_segment = campaigns(&w)
        .create_campaign(pb::CreateCampaignRequest {
            campaign: Some(pb::Campaign {
                name: "x".into(),
                segment_id: uuid::Uuid::now_v7().to_string(),
                content: Some(pb::MessageContent {
                    title: "t".into(),
                    ..Default::default()
                }),
                channel_ids: vec!["web".into()],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("unknown segment");
    assert_eq!(unknown_segment.code(), Code::NotFound);
    let listed = campaigns(&w)
        .list_campaigns(pb::ListCampaignsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(listed.campaigns.is_empty());
}

#[tokio::test]
async fn an_online_purchase_in_one_category_delivers_a_store_only_coupon_for_another_once() {
    let w = World::start().await;
    let ada = w.register("+447700900311", "Ada").await;
    // Ada is known in store and online, and consents to store messages only.
    w.orders
        .complete(&order(&ada, "store-1", ChannelKind::Store, 1_000))
        .await;
    w.consent(&ada, ChannelKind::Store, true).await;
    w.view_when(&ada, |v| {
        v.order_count == 1 && has_kind(v, ChannelKind::Store)
    })
    .await;
    let template = CouponServiceClient::new(w.crm.admin())
        .create_coupon_template(pb::CreateCouponTemplateRequest {
            template: Some(pb::CouponTemplate {
                name: "bags in store".into(),
                discount: Some(pb::coupon_template::Discount::AmountOff(Money {
                    minor_units: 1_000,
                    currency: "EUR".into(),
                })),
                channel_ids: vec!["store-1".into()],
                category_ids: vec!["bags".into()],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("template")
        .into_inner()
        .template
        .expect("template");
    let rule = campaigns(&w)
        .create_offer_rule(pb::CreateOfferRuleRequest {
            rule: Some(pb::OfferRule {
                name: "shoes online -> bags in store".into(),
                condition: Some(pb::OfferCondition {
                    trigger: 1,
                    channel_kinds: vec![ChannelKind::EShop as i32],
                    category_ids: vec!["shoes".into()],
                    ..Default::default()
                }),
                action: Some(pb::OfferAction {
                    coupon_template_id: template.id.clone(),
                    content: Some(pb::MessageContent {
                        title: "10 off a bag in store".into(),
                        ..Default::default()
                    }),
                    channel_ids: vec!["web".into(), "store-1".into()],
                    ..Default::default()
                }),
                cooldown_days: 0,
                enabled: true,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("rule")
        .into_inner()
        .rule
        .expect("rule");

    // A bag bought online does not fire; shoes bought online do, once.
    w.orders
        .complete(&order_at(
            &ada,
            "web",
            ChannelKind::EShop,
            5_000,
            0,
            &[("bag-1", "bags")],
        ))
        .await;
    for _ in 0..2 {
        w.orders
            .complete(&order_at(
                &ada,
                "web",
                ChannelKind::EShop,
                9_000,
                0,
                &[("shoe-1", "shoes")],
            ))
            .await;
    }
    w.view_when(&ada, |v| v.order_count == 4).await;
    let events = w
        .crm_events_when(|events| {
            events
                .iter()
                .any(|e| matches!(e.payload, Some(Payload::CampaignDeliveryRequested(_))))
        })
        .await;
    let offers: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.payload {
            Some(Payload::CampaignDeliveryRequested(d)) => Some(d),
            _ => None,
        })
        .collect();
    assert_eq!(offers.len(), 1, "{offers:#?}");
    assert_eq!(offers[0].offer_rule_id, rule.id);
    // Delivered through the store channel, the only one Ada consents on.
    assert_eq!(offers[0].channel_id, "store-1");
    let coupon = CouponServiceClient::new(w.crm.admin())
        .get_coupon(pb::GetCouponRequest {
            code: offers[0].coupon_code.clone(),
        })
        .await
        .expect("coupon")
        .into_inner()
        .coupon
        .expect("coupon");
    assert_eq!(coupon.customer_id, ada);
    assert_eq!(coupon.channel_ids, vec!["store-1".to_owned()]);
    assert_eq!(coupon.offer_rule_id, rule.id);
    assert_eq!(
        coupon.effect.expect("effect").category_ids,
        vec!["bags".to_owned()]
    );
}

#[tokio::test]
async fn a_livestream_like_invites_the_customer_to_her_store_unless_she_opted_out() {
    let w = World::start().await;
    let ada = w.register("+447700900321", "Ada").await;
    let bob = w.register("+447700900322", "Bob").await;
    w.orders
        .complete(&order(&ada, "store-1", ChannelKind::Store, 1_000))
        .await;
    w.orders
        .complete(&order(&bob, "store-1", ChannelKind::Store, 1_000))
        .await;
    w.consent(&ada, ChannelKind::Store, true).await;
    w.view_when(&ada, |v| has_kind(v, ChannelKind::Store)).await;
    w.view_when(&bob, |v| v.order_count == 1).await;
    campaigns(&w)
        .create_offer_rule(pb::CreateOfferRuleRequest {
            rule: Some(pb::OfferRule {
                name: "try it on".into(),
                condition: Some(pb::OfferCondition {
                    trigger: 3,
                    interaction_kind: 2,
                    sku_ids: vec!["dress-42".into()],
                    ..Default::default()
                }),
                action: Some(pb::OfferAction {
                    content: Some(pb::MessageContent {
                        title: "Try it on".into(),
                        body: "Your size is waiting at {store}".into(),
                        ..Default::default()
                    }),
                    channel_ids: vec!["store-1".into()],
                    invite_to_nearest_store: true,
                    ..Default::default()
                }),
                enabled: true,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("rule");
    let engagement = EngagementServiceClient::new(w.crm.admin());
    for customer in [&ada, &bob] {
        engagement
            .clone()
            .record_interaction(pb::RecordInteractionRequest {
                interaction: Some(pb::Interaction {
                    customer_id: customer.clone(),
                    kind: 2,
                    channel_id: "live".into(),
                    sku_id: "dress-42".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .expect("like");
    }
    let deliveries = campaigns(&w)
        .list_deliveries(pb::ListDeliveriesRequest::default())
        .await
        .expect("deliveries")
        .into_inner()
        .deliveries;
    assert_eq!(deliveries.len(), 1, "{deliveries:#?}");
    assert_eq!(deliveries[0].customer_id, ada);
    let body = deliveries[0].content.clone().expect("content").body;
    assert_eq!(body, "Your size is waiting at store-1");
}

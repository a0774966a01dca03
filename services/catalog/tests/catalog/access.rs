//! Who may do what: store associates cannot change prices, analysts only read, scopes limit
//! channel managers, and a call without a token is refused.

use omni_proto::omni::catalog::v1 as pb;
use omni_proto::omni::catalog::v1::channel_service_client::ChannelServiceClient;
use omni_proto::omni::catalog::v1::promotion_service_client::PromotionServiceClient;
use omni_proto::omni::catalog::v1::quote_service_client::QuoteServiceClient;
use omni_runtime::auth::{Role, Scope};
use tonic::Code;

use crate::support::{eur, minor, retailer, start};

#[tokio::test]
async fn store_associates_cannot_change_prices_and_analysts_only_read() {
    let c = start().await;
    let r = retailer(&c).await;
    let sku = r.sku("SHIRT-OX-M");
    let listing = pb::SetListingRequest {
        listing: Some(pb::Listing {
            sku_id: sku.id.clone(),
            channel_id: r.store_lyon.id.clone(),
            price: eur(2990),
            listed: true,
            ..Default::default()
        }),
    };
    let sku_update = pb::UpdateSkuRequest {
        sku: Some(pb::Sku {
            list_price: eur(100),
            ..sku.clone()
        }),
    };
    let promotion = pb::CreatePromotionRequest {
        idempotency_key: String::new(),
        promotion: Some(pb::Promotion {
            name: "Sneaky".into(),
            rule: Some(pb::promotion::Rule::PercentOff(pb::PercentOffRule {
                percent_bps: 9000,
            })),
            ..Default::default()
        }),
    };

    for role in [Role::StoreAssociate, Role::Analyst, Role::ChannelApp] {
        let err = c
            .pricing_as(&[role])
            .set_listing(listing.clone())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{role:?} set_listing");
        let err = c
            .products_as(&[role])
            .update_sku(sku_update.clone())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{role:?} update_sku");
        let err = PromotionServiceClient::new(c.svc.as_roles(&[role]))
            .create_promotion(promotion.clone())
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Code::PermissionDenied,
            "{role:?} create_promotion"
        );
        let err = c
            .pricing_as(&[role])
            .set_price_policy(pb::SetPricePolicyRequest {
                policy: Some(pb::PricePolicy {
                    max_deviation_bps: 10_000,
                    ..Default::default()
                }),
            })
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Code::PermissionDenied,
            "{role:?} set_price_policy"
        );
    }
    // A channel manager may change prices but not the policy or the channels.
    let err = c
        .pricing_as(&[Role::ChannelManager])
        .set_price_policy(pb::SetPricePolicyRequest {
            policy: Some(pb::PricePolicy::default()),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = ChannelServiceClient::new(c.svc.as_roles(&[Role::ChannelManager]))
        .create_channel(pb::CreateChannelRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    c.pricing_as(&[Role::ChannelManager])
        .set_listing(listing.clone())
        .await
        .expect("a channel manager sets prices");
    // Nothing the refused calls asked for was written.
    let list_price: i64 = sqlx::query_scalar("SELECT list_price FROM skus WHERE id = $1::uuid")
        .bind(&sku.id)
        .fetch_one(&c.db)
        .await
        .unwrap();
    assert_eq!(list_price, 2990);
    assert_eq!(c.count("SELECT count(*) FROM promotions").await, 0);

    // Analysts read, report and get suggestions.
    let analyst = &[Role::Analyst];
    c.products_as(analyst)
        .get_sku(pb::GetSkuRequest {
            key: Some(pb::get_sku_request::Key::SkuId(sku.id.clone())),
            channel_id: String::new(),
        })
        .await
        .expect("analyst reads SKUs");
    c.pricing_as(analyst)
        .list_consistency_issues(pb::ListConsistencyIssuesRequest::default())
        .await
        .expect("analyst reads the report");
    c.pricing_as(analyst)
        .suggest_price(pb::SuggestPriceRequest {
            sku_id: sku.id.clone(),
            channel_id: r.eshop.id.clone(),
            ..Default::default()
        })
        .await
        .expect("analyst asks for suggestions");
    let err = c
        .pricing_as(analyst)
        .record_competitor_price(pb::RecordCompetitorPriceRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // The report is for merchandisers, not for the shop floor.
    let err = c
        .pricing_as(&[Role::StoreAssociate])
        .list_consistency_issues(pb::ListConsistencyIssuesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // Anyone may quote; unit costs are for admin and service callers only.
    let req = pb::QuoteRequest {
        channel_id: r.eshop.id.clone(),
        lines: vec![pb::QuoteLineInput {
            sku_id: sku.id.clone(),
            quantity: 1,
            line_ref: "1".into(),
        }],
        ..Default::default()
    };
    let as_app = QuoteServiceClient::new(c.svc.as_roles(&[Role::ChannelApp]))
        .quote(req.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(as_app.lines[0].unit_cost.is_none());
    let as_service = QuoteServiceClient::new(c.svc.as_roles(&[Role::Service]))
        .quote(req.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(minor(&as_service.lines[0].unit_cost), 1200);

    // A channel manager scoped to the e-shop cannot price the Lyon store.
    let scoped = omni_testkit::token(
        &[Role::ChannelManager],
        Scope {
            channels: vec![r.eshop.id.clone()],
            stores: vec![],
        },
    );
    let err = omni_proto::omni::catalog::v1::pricing_service_client::PricingServiceClient::new(
        c.svc.with_token(&scoped),
    )
    .set_listing(listing)
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // No token, no answer.
    let err = QuoteServiceClient::new(c.svc.channel())
        .quote(req)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn promotions_stay_within_the_callers_channels() {
    let c = start().await;
    let r = retailer(&c).await;
    let as_scope = |channels: Vec<String>, stores: Vec<String>| {
        PromotionServiceClient::new(c.svc.with_token(&omni_testkit::token(
            &[Role::ChannelManager],
            Scope { channels, stores },
        )))
    };
    let promotion = |channel_ids: Vec<String>| pb::CreatePromotionRequest {
        idempotency_key: String::new(),
        promotion: Some(pb::Promotion {
            name: "Spring".into(),
            rule: Some(pb::promotion::Rule::PercentOff(pb::PercentOffRule {
                percent_bps: 1000,
            })),
            scope: Some(pb::PromotionScope {
                channel_ids,
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let eshop_manager = as_scope(vec![r.eshop.id.clone()], vec![]);
    eshop_manager
        .clone()
        .create_promotion(promotion(vec![r.eshop.id.clone()]))
        .await
        .expect("its own channel");
    for (who, mut client, channels) in [
        (
            "the e-shop's manager, the store's channel",
            eshop_manager.clone(),
            vec![r.store_lyon.id.clone()],
        ),
        ("the e-shop's manager, every channel", eshop_manager, vec![]),
        // A manager limited to a store has no channel of its own to promote in.
        (
            "a store's manager, every channel",
            as_scope(vec![], vec!["lyon".into()]),
            vec![],
        ),
    ] {
        let err = client
            .create_promotion(promotion(channels))
            .await
            .expect_err(who);
        assert_eq!(err.code(), Code::PermissionDenied, "{who}");
    }
}

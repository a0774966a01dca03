//! Promotions and Quote through the contract: every promotion type alone and stacked,
//! exclusivity, coupons, rounding as a property over many carts, bad input, and the cache
//! never serving a changed price.

use omni_proto::common::{CouponEffect, TimeRange, coupon_effect};
use omni_proto::omni::catalog::v1 as pb;
use omni_proto::omni::catalog::v1::promotion::Rule;
use proptest::prelude::*;
use tonic::Code;

use crate::support::{Catalog, Retailer, eur, fields, minor, preconditions, retailer, start};

fn line(sku: &pb::Sku, quantity: i32) -> pb::QuoteLineInput {
    pb::QuoteLineInput {
        sku_id: sku.id.clone(),
        quantity,
        line_ref: format!("ref-{}", sku.sku_code),
    }
}

async fn quote(
    c: &Catalog,
    channel: &str,
    tier: &str,
    lines: Vec<pb::QuoteLineInput>,
    coupons: Vec<CouponEffect>,
) -> pb::QuoteResponse {
    c.quotes()
        .quote(pb::QuoteRequest {
            channel_id: channel.into(),
            customer_tier: tier.into(),
            lines,
            coupons,
            ..Default::default()
        })
        .await
        .expect("quote")
        .into_inner()
}

fn promotion(name: &str, rule: Rule, scope: pb::PromotionScope) -> pb::Promotion {
    pb::Promotion {
        name: name.into(),
        description: name.into(),
        rule: Some(rule),
        scope: Some(scope),
        ..Default::default()
    }
}

fn skus(ids: &[&pb::Sku]) -> pb::PromotionScope {
    pb::PromotionScope {
        sku_ids: ids.iter().map(|s| s.id.clone()).collect(),
        ..Default::default()
    }
}

async fn create(c: &Catalog, p: pb::Promotion) -> Result<pb::Promotion, tonic::Status> {
    c.promotions()
        .create_promotion(pb::CreatePromotionRequest {
            idempotency_key: String::new(),
            promotion: Some(p),
        })
        .await
        .map(|r| r.into_inner().promotion.expect("promotion"))
}

async fn end(c: &Catalog, p: &pb::Promotion) {
    c.promotions()
        .end_promotion(pb::EndPromotionRequest {
            promotion_id: p.id.clone(),
        })
        .await
        .expect("end promotion");
}

fn check_sums(q: &pb::QuoteResponse) {
    let nets: i64 = q.lines.iter().map(|l| minor(&l.net_amount)).sum();
    assert_eq!(nets, minor(&q.total));
    assert_eq!(
        minor(&q.subtotal) - minor(&q.discount_total),
        minor(&q.total)
    );
    for l in &q.lines {
        assert!(minor(&l.net_amount) >= 0);
        let d: i64 = l.discounts.iter().map(|d| minor(&d.amount)).sum();
        assert_eq!(d, minor(&l.discount_amount));
        assert_eq!(minor(&l.gross_amount) - d, minor(&l.net_amount));
    }
}

async fn setup() -> (Catalog, Retailer) {
    let c = start().await;
    let r = retailer(&c).await;
    (c, r)
}

#[tokio::test]
async fn every_promotion_type_prices_through_quote() {
    let (c, r) = setup().await;
    let (ox, li, tr, cs, th) = (
        r.sku("SHIRT-OX-S"), // 29.90
        r.sku("SHIRT-LI-S"), // 39.90
        r.sku("SHOE-TR-S"),  // 89.90
        r.sku("SHOE-CS-S"),  // 69.90
        r.sku("HOME-TH-S"),  // 49.90
    );
    let e = r.eshop.id.clone();

    // No promotion: list prices, echoed references.
    let q = quote(&c, &e, "", vec![line(&ox, 2)], vec![]).await;
    assert_eq!(minor(&q.total), 5980);
    assert_eq!(q.lines[0].line_ref, "ref-SHIRT-OX-S");
    assert_eq!(q.lines[0].product_name, "Oxford shirt");
    assert_eq!(minor(&q.lines[0].unit_price), 2990);

    // Percent off: 15% of 59.80 = 8.97.
    let p = create(
        &c,
        promotion(
            "15% off Oxford",
            Rule::PercentOff(pb::PercentOffRule { percent_bps: 1500 }),
            skus(&[&ox]),
        ),
    )
    .await
    .unwrap();
    assert_eq!(p.status, pb::PromotionStatus::Active as i32);
    let q = quote(&c, &e, "", vec![line(&ox, 2), line(&li, 1)], vec![]).await;
    check_sums(&q);
    assert_eq!(minor(&q.lines[0].discount_amount), 897);
    assert_eq!(q.lines[0].discounts[0].promotion_id, p.id);
    assert_eq!(q.lines[0].discounts[0].label, "15% off Oxford");
    assert!(q.lines[1].discounts.is_empty());
    assert_eq!(minor(&q.total), 5980 - 897 + 3990);
    assert_eq!(q.adjustments.len(), 1);
    end(&c, &p).await;

    // Amount off per unit.
    let p = create(
        &c,
        promotion(
            "5 EUR off linen",
            Rule::AmountOff(pb::AmountOffRule {
                amount_per_unit: eur(500),
            }),
            skus(&[&li]),
        ),
    )
    .await
    .unwrap();
    let q = quote(&c, &e, "", vec![line(&li, 3)], vec![]).await;
    assert_eq!(minor(&q.total), 3 * 3990 - 1500);
    end(&c, &p).await;

    // Spend threshold, tiered, pro rata across the eligible lines.
    let p = create(
        &c,
        promotion(
            "Spend and save on shoes",
            Rule::SpendThreshold(pb::SpendThresholdRule {
                tiers: vec![
                    pb::SpendTier {
                        min_spend: eur(10_000),
                        discount: eur(1000),
                    },
                    pb::SpendTier {
                        min_spend: eur(20_000),
                        discount: eur(3000),
                    },
                ],
            }),
            pb::PromotionScope {
                category_ids: vec![r.shoes.id.clone()],
                ..Default::default()
            },
        ),
    )
    .await
    .unwrap();
    let q = quote(
        &c,
        &e,
        "",
        vec![line(&tr, 1), line(&cs, 1), line(&ox, 1)],
        vec![],
    )
    .await;
    check_sums(&q);
    // 89.90 + 69.90 = 159.80 reaches the first tier: 10.00 split 8990:6990.
    assert_eq!(minor(&q.lines[0].discount_amount), 563);
    assert_eq!(minor(&q.lines[1].discount_amount), 437);
    assert_eq!(minor(&q.lines[2].discount_amount), 0);
    let q = quote(&c, &e, "", vec![line(&tr, 2), line(&cs, 1)], vec![]).await;
    assert_eq!(minor(&q.discount_total), 3000);
    end(&c, &p).await;

    // Buy two, get one at half price: the cheapest unit is discounted.
    let p = create(
        &c,
        promotion(
            "3 for 2.5 shirts",
            Rule::BuyXGetY(pb::BuyXGetYRule {
                buy_quantity: 2,
                get_quantity: 1,
                get_discount_bps: 5000,
            }),
            pb::PromotionScope {
                category_ids: vec![r.shirts.id.clone()],
                ..Default::default()
            },
        ),
    )
    .await
    .unwrap();
    let q = quote(&c, &e, "", vec![line(&li, 2), line(&ox, 1)], vec![]).await;
    check_sums(&q);
    assert_eq!(minor(&q.lines[1].discount_amount), 1495);
    assert_eq!(minor(&q.lines[0].discount_amount), 0);
    end(&c, &p).await;

    // Bundle price: a trail runner and a throw for 120.00 instead of 139.80.
    let p = create(
        &c,
        promotion(
            "Weekend bundle",
            Rule::BundlePrice(pb::BundlePriceRule {
                items: vec![
                    pb::BundleItem {
                        sku_id: tr.id.clone(),
                        quantity: 1,
                    },
                    pb::BundleItem {
                        sku_id: th.id.clone(),
                        quantity: 1,
                    },
                ],
                bundle_price: eur(12_000),
            }),
            pb::PromotionScope::default(),
        ),
    )
    .await
    .unwrap();
    let q = quote(&c, &e, "", vec![line(&tr, 1), line(&th, 1)], vec![]).await;
    check_sums(&q);
    assert_eq!(minor(&q.total), 12_000);
    assert_eq!(minor(&q.discount_total), 1980);
    let q = quote(&c, &e, "", vec![line(&tr, 1)], vec![]).await;
    assert_eq!(minor(&q.discount_total), 0);
    end(&c, &p).await;

    let ended = c
        .promotions()
        .get_promotion(pb::GetPromotionRequest {
            promotion_id: p.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .promotion
        .unwrap();
    assert_eq!(ended.status, pb::PromotionStatus::Ended as i32);
    let q = quote(&c, &e, "", vec![line(&tr, 1), line(&th, 1)], vec![]).await;
    assert_eq!(minor(&q.discount_total), 0);
}

#[tokio::test]
async fn promotions_stack_by_priority_and_respect_scope_tier_window_and_exclusivity() {
    let (c, r) = setup().await;
    let (ox, li) = (r.sku("SHIRT-OX-M"), r.sku("SHIRT-LI-M"));
    let e = r.eshop.id.clone();
    let mut first = promotion(
        "10% shirts",
        Rule::PercentOff(pb::PercentOffRule { percent_bps: 1000 }),
        pb::PromotionScope {
            category_ids: vec![r.shirts.id.clone()],
            ..Default::default()
        },
    );
    first.priority = 10;
    let first = create(&c, first).await.unwrap();
    let second = create(
        &c,
        promotion(
            "1 EUR off everything",
            Rule::AmountOff(pb::AmountOffRule {
                amount_per_unit: eur(100),
            }),
            pb::PromotionScope::default(),
        ),
    )
    .await
    .unwrap();
    // Stacked: 29.90 - 2.99 = 26.91, then - 1.00.
    let q = quote(&c, &e, "", vec![line(&ox, 1)], vec![]).await;
    check_sums(&q);
    assert_eq!(minor(&q.total), 2591);
    let order: Vec<&str> = q.lines[0]
        .discounts
        .iter()
        .map(|d| d.promotion_id.as_str())
        .collect();
    assert_eq!(order, [first.id.as_str(), second.id.as_str()]);

    // Gold members only, on the e-shop only, next week only.
    let mut gold = promotion(
        "Gold 20%",
        Rule::PercentOff(pb::PercentOffRule { percent_bps: 2000 }),
        pb::PromotionScope {
            customer_tiers: vec!["gold".into()],
            channel_ids: vec![e.clone()],
            sku_ids: vec![li.id.clone()],
            ..Default::default()
        },
    );
    gold.priority = 20;
    let gold = create(&c, gold).await.unwrap();
    let now = chrono::Utc::now();
    let next_week = TimeRange {
        start: Some(prost_types::Timestamp {
            seconds: (now + chrono::Duration::days(7)).timestamp(),
            nanos: 0,
        }),
        end: Some(prost_types::Timestamp {
            seconds: (now + chrono::Duration::days(14)).timestamp(),
            nanos: 0,
        }),
    };
    let mut later = promotion(
        "Next week 50%",
        Rule::PercentOff(pb::PercentOffRule { percent_bps: 5000 }),
        skus(&[&li]),
    );
    later.window = Some(next_week);
    let later = create(&c, later).await.unwrap();
    assert_eq!(later.status, pb::PromotionStatus::Scheduled as i32);

    let silver = quote(&c, &e, "silver", vec![line(&li, 1)], vec![]).await;
    let gold_q = quote(&c, &e, "gold", vec![line(&li, 1)], vec![]).await;
    // 39.90 → silver: -3.99 -1.00 = 34.91; gold: -7.98 first, then 10% of 31.92 = 3.19, -1.00.
    assert_eq!(minor(&silver.total), 3491);
    assert_eq!(minor(&gold_q.total), 2773);
    assert_eq!(gold_q.lines[0].discounts[0].promotion_id, gold.id);
    list_on(&c, &li, &r.livestream.id).await;
    let elsewhere = quote(&c, &r.livestream.id, "gold", vec![line(&li, 1)], vec![]).await;
    assert_eq!(minor(&elsewhere.total), 3491);
    // Priced inside next week's window, the scheduled one applies too.
    let in_window = c
        .quotes()
        .quote(pb::QuoteRequest {
            channel_id: e.clone(),
            lines: vec![line(&li, 1)],
            priced_at: Some(prost_types::Timestamp {
                seconds: (now + chrono::Duration::days(8)).timestamp(),
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(in_window.lines[0].discounts.len(), 3);

    // An exclusive promotion takes its lines for itself.
    let mut exclusive = promotion(
        "Oxford flash 30%",
        Rule::PercentOff(pb::PercentOffRule { percent_bps: 3000 }),
        skus(&[&ox]),
    );
    exclusive.exclusive = true;
    exclusive.priority = 100;
    create(&c, exclusive).await.unwrap();
    let q = quote(&c, &e, "", vec![line(&ox, 1), line(&li, 1)], vec![]).await;
    check_sums(&q);
    assert_eq!(q.lines[0].discounts.len(), 1);
    assert_eq!(minor(&q.lines[0].net_amount), 2093);
    assert_eq!(q.lines[1].discounts.len(), 2);

    // Coupons apply after promotions; one below its minimum spend does not.
    let coupons = vec![
        CouponEffect {
            code: "WELCOME5".into(),
            coupon_id: "c1".into(),
            discount: Some(coupon_effect::Discount::AmountOff(eur(500).unwrap())),
            min_spend: eur(2000),
            ..Default::default()
        },
        CouponEffect {
            code: "BIGSPENDER".into(),
            coupon_id: "c2".into(),
            discount: Some(coupon_effect::Discount::PercentOffBps(1000)),
            min_spend: eur(100_000),
            ..Default::default()
        },
    ];
    let q = quote(&c, &e, "", vec![line(&ox, 1), line(&li, 1)], coupons).await;
    check_sums(&q);
    assert_eq!(q.unapplied_coupon_codes, ["BIGSPENDER"]);
    let coupon_total: i64 = q
        .adjustments
        .iter()
        .filter(|a| a.coupon_code == "WELCOME5")
        .map(|a| minor(&a.amount))
        .sum();
    assert_eq!(coupon_total, 500);
    assert_eq!(minor(&q.total), 2093 + 3491 - 500);
}

async fn list_on(c: &Catalog, sku: &pb::Sku, channel: &str) {
    crate::support::list(c, &sku.id, channel, minor(&sku.list_price)).await;
}

#[tokio::test]
async fn overlapping_exclusive_promotions_are_refused() {
    let (c, r) = setup().await;
    let ox = r.sku("SHIRT-OX-L");
    let exclusive = |name: &str, scope: pb::PromotionScope, window: Option<TimeRange>| {
        let mut p = promotion(
            name,
            Rule::PercentOff(pb::PercentOffRule { percent_bps: 2000 }),
            scope,
        );
        p.exclusive = true;
        p.window = window;
        p
    };
    let apparel = create(
        &c,
        exclusive(
            "Apparel week",
            pb::PromotionScope {
                category_ids: vec![r.apparel.id.clone()],
                ..Default::default()
            },
            None,
        ),
    )
    .await
    .unwrap();
    let before = c.count("SELECT count(*) FROM promotions").await;

    // A SKU in a sub-category of it: refused, naming the one it overlaps.
    let err = create(&c, exclusive("Oxford only", skus(&[&ox]), None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        preconditions(&err),
        [(
            "PROMOTION_OVERLAP".to_owned(),
            format!("promotion/{}", apparel.id)
        )]
    );
    assert!(err.message().contains("Apparel week"));
    // The whole catalog overlaps too.
    let err = create(
        &c,
        exclusive("Everything", pb::PromotionScope::default(), None),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(c.count("SELECT count(*) FROM promotions").await, before);

    // Disjoint scope, or a non-exclusive one, is fine.
    create(
        &c,
        exclusive(
            "Home week",
            pb::PromotionScope {
                category_ids: vec![r.home.id.clone()],
                ..Default::default()
            },
            None,
        ),
    )
    .await
    .unwrap();
    create(
        &c,
        promotion(
            "Oxford stacking",
            Rule::PercentOff(pb::PercentOffRule { percent_bps: 500 }),
            skus(&[&ox]),
        ),
    )
    .await
    .unwrap();
    // Once the apparel one has ended, the Oxford one may run.
    end(&c, &apparel).await;
    create(&c, exclusive("Oxford only", skus(&[&ox]), None))
        .await
        .unwrap();

    // Bad promotions: each problem named.
    let err = create(
        &c,
        promotion(
            "",
            Rule::BuyXGetY(pb::BuyXGetYRule {
                buy_quantity: 0,
                get_quantity: 1,
                get_discount_bps: 20_000,
            }),
            pb::PromotionScope::default(),
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        fields(&err),
        [
            "promotion.name",
            "promotion.buy_x_get_y.buy_quantity",
            "promotion.buy_x_get_y.get_discount_bps"
        ]
    );
    let err = create(
        &c,
        promotion(
            "Ghost",
            Rule::PercentOff(pb::PercentOffRule { percent_bps: 100 }),
            pb::PromotionScope {
                channel_ids: vec![uuid::Uuid::now_v7().to_string()],
                ..Default::default()
            },
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(fields(&err), ["promotion.scope.channel_ids"]);

    // Updates carry the version.
    let p = create(
        &c,
        promotion(
            "Shoes 5%",
            Rule::PercentOff(pb::PercentOffRule { percent_bps: 500 }),
            pb::PromotionScope {
                category_ids: vec![r.shoes.id.clone()],
                ..Default::default()
            },
        ),
    )
    .await
    .unwrap();
    let updated = c
        .promotions()
        .update_promotion(pb::UpdatePromotionRequest {
            promotion: Some(pb::Promotion {
                rule: Some(Rule::PercentOff(pb::PercentOffRule { percent_bps: 700 })),
                ..p.clone()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .promotion
        .unwrap();
    assert_eq!(updated.version, 2);
    let err = c
        .promotions()
        .update_promotion(pb::UpdatePromotionRequest {
            promotion: Some(p.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let listed = c
        .promotions()
        .list_promotions(pb::ListPromotionsRequest {
            channel_id: r.eshop.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .promotions;
    assert_eq!(listed.len(), 4);
}

#[tokio::test]
async fn quotes_refuse_what_cannot_be_sold() {
    let (c, r) = setup().await;
    let ox = r.sku("SHIRT-OX-S");
    let err = c
        .quotes()
        .quote(pb::QuoteRequest {
            channel_id: r.eshop.id.clone(),
            lines: vec![line(&ox, 0)],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(fields(&err), ["lines[0].quantity"]);
    let unknown = pb::Sku {
        id: uuid::Uuid::now_v7().to_string(),
        ..Default::default()
    };
    let err = c
        .quotes()
        .quote(pb::QuoteRequest {
            channel_id: r.eshop.id.clone(),
            lines: vec![line(&ox, 1), line(&unknown, 1)],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(fields(&err), ["lines[1].sku_id"]);
    assert!(err.message().contains(&unknown.id));
    let err = c
        .quotes()
        .quote(pb::QuoteRequest {
            channel_id: r.store_lyon.id.clone(),
            lines: vec![line(&ox, 1)],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(preconditions(&err)[0].0, "NOT_LISTED");
    let err = c
        .quotes()
        .quote(pb::QuoteRequest {
            channel_id: uuid::Uuid::now_v7().to_string(),
            lines: vec![line(&ox, 1)],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(fields(&err), ["channel_id"]);
    let err = c
        .quotes()
        .quote(pb::QuoteRequest {
            channel_id: r.eshop.id.clone(),
            lines: vec![line(&ox, 1)],
            coupons: vec![CouponEffect {
                code: "USD5".into(),
                discount: Some(coupon_effect::Discount::AmountOff(
                    omni_proto::common::Money {
                        minor_units: 500,
                        currency: "USD".into(),
                    },
                )),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(fields(&err), ["coupons[0]"]);
}

#[tokio::test]
async fn a_changed_price_is_visible_on_the_next_quote_and_read() {
    let (c, r) = setup().await;
    let sku = r.sku("SHOE-CS-M");
    let e = r.eshop.id.clone();
    let q = quote(&c, &e, "", vec![line(&sku, 1)], vec![]).await;
    assert_eq!(minor(&q.total), 6990);
    // The quote's inputs are now cached in Redis.
    let mut redis = omni_runtime::redis::Redis::new(&omni_testkit::redis_url(), "")
        .expect("a redis URL")
        .conn();
    let key = format!("{}cat:{{sku:{}}}", c.svc.redis_prefix(), sku.id);
    let fields_cached: Vec<String> = redis::cmd("HKEYS")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(fields_cached.contains(&"sku".to_owned()));
    assert!(fields_cached.contains(&format!("l:{e}")));

    // A new channel price.
    c.pricing()
        .set_listing(pb::SetListingRequest {
            listing: Some(pb::Listing {
                sku_id: sku.id.clone(),
                channel_id: e.clone(),
                price: eur(6490),
                listed: true,
                version: 1,
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let q = quote(&c, &e, "", vec![line(&sku, 1)], vec![]).await;
    assert_eq!(minor(&q.total), 6490);

    // A new list price and cost, visible on the next read.
    let got = c
        .products()
        .get_sku(pb::GetSkuRequest {
            key: Some(pb::get_sku_request::Key::SkuCode(sku.sku_code.clone())),
            channel_id: e.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let current = got.sku.unwrap();
    assert_eq!(got.listing.unwrap().deviation_bps, -715);
    c.products()
        .update_sku(pb::UpdateSkuRequest {
            sku: Some(pb::Sku {
                list_price: eur(6490),
                ..current
            }),
        })
        .await
        .unwrap();
    let got = c
        .products()
        .get_sku(pb::GetSkuRequest {
            key: Some(pb::get_sku_request::Key::SkuCode(sku.sku_code.clone())),
            channel_id: e.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(minor(&got.sku.unwrap().list_price), 6490);
    assert_eq!(got.listing.unwrap().deviation_bps, 0);
    assert_eq!(c.events("catalog.price_changed").await, 20 + 2);

    // Delisted: the next quote refuses it.
    c.pricing()
        .set_listing(pb::SetListingRequest {
            listing: Some(pb::Listing {
                sku_id: sku.id.clone(),
                channel_id: e.clone(),
                price: eur(6490),
                listed: false,
                version: 2,
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let err = c
        .quotes()
        .quote(pb::QuoteRequest {
            channel_id: e.clone(),
            lines: vec![line(&sku, 1)],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // A promotion created after the cached quote applies to the next one.
    let other = r.sku("SHOE-CS-L");
    assert_eq!(
        minor(&quote(&c, &e, "", vec![line(&other, 1)], vec![]).await.total),
        6990
    );
    create(
        &c,
        promotion(
            "Sneaker 10%",
            Rule::PercentOff(pb::PercentOffRule { percent_bps: 1000 }),
            skus(&[&other]),
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        minor(&quote(&c, &e, "", vec![line(&other, 1)], vec![]).await.total),
        6291
    );
}

/// A reader that read Postgres before a change committed cannot put the old value back into
/// the cache after the change invalidated it.
#[tokio::test]
async fn a_fill_that_raced_an_invalidation_is_dropped() {
    let redis = omni_runtime::redis::Redis::new(
        &omni_testkit::redis_url(),
        &omni_testkit::fresh_redis_prefix(),
    )
    .unwrap();
    let cache = catalog::cache::Cache::new(redis);
    let sku = uuid::Uuid::now_v7();
    let slot = cache.sku_slot(sku);
    let catalog::cache::Lookup::Miss(epoch) = cache.get::<String>(&slot).await else {
        panic!("an empty cache misses");
    };
    // The writer commits and invalidates while the reader is in Postgres.
    cache.invalidate(&[cache.sku_entry(sku)]).await;
    cache.fill(&slot, epoch, &"old".to_owned()).await;
    assert!(matches!(
        cache.get::<String>(&slot).await,
        catalog::cache::Lookup::Miss(_)
    ));
    // A reader that started after the invalidation fills.
    let catalog::cache::Lookup::Miss(epoch) = cache.get::<String>(&slot).await else {
        panic!("still empty");
    };
    cache.fill(&slot, epoch, &"new".to_owned()).await;
    assert!(matches!(
        cache.get::<String>(&slot).await,
        catalog::cache::Lookup::Hit(v) if v == "new"
    ));
}

/// Quote rounding as a property, through gRPC: whatever the cart and coupons, line amounts sum
/// exactly to the total and none is negative.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quote_line_amounts_always_sum_to_the_total() {
    let (c, r) = setup().await;
    // Promotions of every kind at once, so carts exercise stacking and allocation.
    let shirts = pb::PromotionScope {
        category_ids: vec![r.shirts.id.clone()],
        ..Default::default()
    };
    let rules = [
        Rule::PercentOff(pb::PercentOffRule { percent_bps: 333 }),
        Rule::AmountOff(pb::AmountOffRule {
            amount_per_unit: eur(77),
        }),
        Rule::SpendThreshold(pb::SpendThresholdRule {
            tiers: vec![pb::SpendTier {
                min_spend: eur(5000),
                discount: eur(1001),
            }],
        }),
        Rule::BuyXGetY(pb::BuyXGetYRule {
            buy_quantity: 2,
            get_quantity: 1,
            get_discount_bps: 3333,
        }),
    ];
    for (i, rule) in rules.into_iter().enumerate() {
        create(&c, promotion(&format!("p{i}"), rule, shirts.clone()))
            .await
            .unwrap();
    }
    let skus = r.skus();
    let handle = tokio::runtime::Handle::current();
    let config = ProptestConfig {
        cases: 24,
        ..ProptestConfig::default()
    };
    proptest!(config, |(
        picks in proptest::collection::vec((0usize..20, 1i32..5), 1..6),
        coupon_amount in 0i64..5000,
        coupon_percent in 1i32..5000,
    )| {
        let lines: Vec<pb::QuoteLineInput> = picks
            .iter()
            .map(|(i, q)| line(&skus[*i], *q))
            .collect();
        let coupons = vec![
            CouponEffect {
                code: "A".into(),
                discount: Some(coupon_effect::Discount::AmountOff(eur(coupon_amount).unwrap())),
                ..Default::default()
            },
            CouponEffect {
                code: "P".into(),
                discount: Some(coupon_effect::Discount::PercentOffBps(coupon_percent)),
                ..Default::default()
            },
        ];
        let q = tokio::task::block_in_place(|| {
            handle.block_on(quote(&c, &r.eshop.id, "", lines, coupons))
        });
        let nets: i64 = q.lines.iter().map(|l| minor(&l.net_amount)).sum();
        prop_assert_eq!(nets, minor(&q.total));
        prop_assert_eq!(minor(&q.subtotal) - minor(&q.discount_total), minor(&q.total));
        for l in &q.lines {
            prop_assert!(minor(&l.net_amount) >= 0);
            let d: i64 = l.discounts.iter().map(|d| minor(&d.amount)).sum();
            prop_assert_eq!(minor(&l.gross_amount) - d, minor(&l.net_amount));
        }
    });
}

fn instant(t: chrono::DateTime<chrono::Utc>) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    })
}

#[tokio::test]
async fn a_batch_prices_each_cart_exactly_as_quote_does() {
    let (c, r) = setup().await;
    let (ox, li) = (r.sku("SHIRT-OX-M"), r.sku("SHIRT-LI-M"));
    let e = r.eshop.id.clone();
    list_on(&c, &li, &r.livestream.id).await;
    let now = chrono::Utc::now();
    let shirts = promotion(
        "10% shirts",
        Rule::PercentOff(pb::PercentOffRule { percent_bps: 1000 }),
        pb::PromotionScope {
            category_ids: vec![r.shirts.id.clone()],
            ..Default::default()
        },
    );
    create(&c, shirts).await.unwrap();
    let mut gold = promotion(
        "Gold 20% on the e-shop",
        Rule::PercentOff(pb::PercentOffRule { percent_bps: 2000 }),
        pb::PromotionScope {
            customer_tiers: vec!["gold".into()],
            channel_ids: vec![e.clone()],
            ..Default::default()
        },
    );
    gold.priority = 20;
    create(&c, gold).await.unwrap();
    let mut later = promotion(
        "Next week 50%",
        Rule::PercentOff(pb::PercentOffRule { percent_bps: 5000 }),
        skus(&[&li]),
    );
    later.window = Some(TimeRange {
        start: instant(now + chrono::Duration::days(7)),
        end: instant(now + chrono::Duration::days(14)),
    });
    create(&c, later).await.unwrap();
    // Ended now: it still applied to any instant before.
    let gone = create(
        &c,
        promotion(
            "2 EUR off, ended",
            Rule::AmountOff(pb::AmountOffRule {
                amount_per_unit: eur(200),
            }),
            pb::PromotionScope::default(),
        ),
    )
    .await
    .unwrap();
    end(&c, &gone).await;

    let cart = |channel: &str, tier: &str, lines: Vec<pb::QuoteLineInput>, at| pb::QuoteRequest {
        channel_id: channel.into(),
        customer_tier: tier.into(),
        lines,
        priced_at: at,
        ..Default::default()
    };
    let mut with_coupon = cart(&e, "", vec![line(&ox, 1), line(&li, 2)], None);
    with_coupon.coupons = vec![CouponEffect {
        code: "WELCOME5".into(),
        coupon_id: "c1".into(),
        discount: Some(coupon_effect::Discount::AmountOff(eur(500).unwrap())),
        ..Default::default()
    }];
    let carts = vec![
        cart(&e, "", vec![line(&ox, 1)], None),
        cart(&e, "gold", vec![line(&li, 1), line(&ox, 3)], None),
        cart(
            &e,
            "gold",
            vec![line(&li, 2)],
            instant(now - chrono::Duration::days(30)),
        ),
        cart(
            &r.livestream.id,
            "gold",
            vec![line(&li, 1)],
            instant(now - chrono::Duration::days(3)),
        ),
        cart(
            &e,
            "",
            vec![line(&li, 1)],
            instant(now + chrono::Duration::days(8)),
        ),
        with_coupon,
        cart(
            &e,
            "",
            vec![line(&ox, 1)],
            instant(now - chrono::Duration::days(300)),
        ),
    ];
    let batch = c
        .quotes()
        .batch_quote(pb::BatchQuoteRequest {
            quotes: carts.clone(),
        })
        .await
        .expect("batch")
        .into_inner()
        .quotes;
    assert_eq!(batch.len(), carts.len());
    let labels = |q: &pb::QuoteResponse| -> Vec<String> {
        q.adjustments.iter().map(|a| a.label.clone()).collect()
    };
    // The ended promotion priced the past carts only; next week's only the cart of next week.
    assert!(!labels(&batch[0]).contains(&"2 EUR off, ended".to_owned()));
    assert!(labels(&batch[2]).contains(&"2 EUR off, ended".to_owned()));
    assert!(labels(&batch[3]).contains(&"2 EUR off, ended".to_owned()));
    assert!(labels(&batch[4]).contains(&"Next week 50%".to_owned()));
    assert!(!labels(&batch[2]).contains(&"Next week 50%".to_owned()));
    for (i, (asked, mut got)) in carts.into_iter().zip(batch).enumerate() {
        let priced_now = asked.priced_at.is_none();
        let mut alone = c.quotes().quote(asked).await.expect("quote").into_inner();
        if priced_now {
            // Each call prices as of its own arrival.
            alone.priced_at = None;
            got.priced_at = None;
        }
        check_sums(&got);
        assert_eq!(got, alone, "cart {i}");
    }
}

#[tokio::test]
async fn a_batch_is_refused_whole_naming_each_cart() {
    let (c, r) = setup().await;
    let (ox, small) = (r.sku("SHIRT-OX-M"), r.sku("SHIRT-OX-S"));
    let e = r.eshop.id.clone();
    let cart = |channel: &str, lines: Vec<pb::QuoteLineInput>| pb::QuoteRequest {
        channel_id: channel.into(),
        lines,
        ..Default::default()
    };
    let batch = async |quotes: Vec<pb::QuoteRequest>| {
        c.quotes()
            .batch_quote(pb::BatchQuoteRequest { quotes })
            .await
            .expect_err("refused")
    };

    let err = batch(vec![
        cart(&e, vec![line(&ox, 1)]),
        cart(&e, vec![line(&ox, 0)]),
        cart("not-an-id", vec![line(&ox, 1)]),
    ])
    .await;
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        fields(&err),
        ["quotes[1].lines[0].quantity", "quotes[2].channel_id"]
    );

    let unknown = pb::Sku {
        id: uuid::Uuid::now_v7().to_string(),
        ..Default::default()
    };
    let err = batch(vec![
        cart(&e, vec![line(&ox, 1)]),
        cart(&e, vec![line(&ox, 1), line(&unknown, 1)]),
    ])
    .await;
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(fields(&err), ["quotes[1].lines[1].sku_id"]);

    let err = batch(vec![
        cart(&e, vec![line(&ox, 1)]),
        cart(&r.store_lyon.id, vec![line(&small, 1)]),
    ])
    .await;
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        preconditions(&err),
        [(
            "NOT_LISTED".to_owned(),
            "quotes[1].lines[0]/sku/SHIRT-OX-S".to_owned()
        )]
    );

    let err = batch(vec![cart(
        &uuid::Uuid::now_v7().to_string(),
        vec![line(&ox, 1)],
    )])
    .await;
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(fields(&err), ["quotes[0].channel_id"]);

    assert_eq!(fields(&batch(Vec::new()).await), ["quotes"]);
    let many = vec![cart(&e, vec![line(&ox, 1)]); 501];
    assert_eq!(fields(&batch(many).await), ["quotes"]);
}

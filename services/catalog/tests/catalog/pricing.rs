//! Listings under the price policy, the consistency report, competitor prices and
//! suggestions, through the contract.

use omni_proto::common::{Date, DateRange};
use omni_proto::omni::catalog::v1 as pb;
use tonic::Code;

use crate::support::{Catalog, eur, fields, list, minor, preconditions, retailer, start};

fn listing(sku: &str, channel: &str, price: i64, version: i64) -> pb::Listing {
    pb::Listing {
        sku_id: sku.into(),
        channel_id: channel.into(),
        price: eur(price),
        listed: true,
        version,
        ..Default::default()
    }
}

async fn set(c: &Catalog, l: pb::Listing) -> Result<pb::Listing, tonic::Status> {
    c.pricing()
        .set_listing(pb::SetListingRequest { listing: Some(l) })
        .await
        .map(|r| r.into_inner().listing.expect("listing"))
}

fn reason(text: &str) -> Option<pb::PriceException> {
    Some(pb::PriceException {
        reason: text.into(),
        ..Default::default()
    })
}

#[tokio::test]
async fn channel_prices_follow_the_policy_unless_an_exception_is_recorded() {
    let c = start().await;
    let r = retailer(&c).await;
    let sku = r.sku("SHIRT-OX-M"); // list 29.90
    let policy = c
        .pricing()
        .get_price_policy(pb::GetPricePolicyRequest {})
        .await
        .unwrap()
        .into_inner()
        .policy
        .unwrap();
    assert_eq!(policy.max_deviation_bps, 1500);

    // 10% below list on the livestream: within policy.
    let l = set(&c, listing(&sku.id, &r.livestream.id, 2691, 0))
        .await
        .unwrap();
    assert_eq!((l.deviation_bps, l.version), (-1000, 1));

    // 20% below on the social shop: refused, nothing written.
    let events = c.count("SELECT count(*) FROM outbox").await;
    let err = set(&c, listing(&sku.id, &r.social.id, 2392, 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let violations = preconditions(&err);
    assert_eq!(violations[0].0, "PRICE_POLICY");
    assert!(err.get_error_details_detail_contains("below list 29.90 (max 15%)"));
    assert_eq!(c.count("SELECT count(*) FROM outbox").await, events);
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM listings WHERE channel_id = $1::uuid)")
            .bind(&r.social.id)
            .fetch_one(&c.db)
            .await
            .unwrap();
    assert!(!exists);

    // The same price with a recorded reason is allowed and remembers who approved it.
    let mut excepted = listing(&sku.id, &r.social.id, 2392, 0);
    excepted.price_exception = reason("influencer launch");
    let l = set(&c, excepted.clone()).await.unwrap();
    assert_eq!(l.deviation_bps, -2000);
    let exception = l.price_exception.unwrap();
    assert_eq!(exception.reason, "influencer launch");
    assert!(!exception.approved_by.is_empty());

    // Bad input, each with its own status.
    let mut no_reason = listing(&sku.id, &r.store_lyon.id, 2392, 0);
    no_reason.price_exception = reason("  ");
    let err = set(&c, no_reason).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(fields(&err), ["listing.price_exception.reason"]);
    let err = set(&c, listing(&sku.id, &r.store_lyon.id, -1, 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(fields(&err), ["listing.price.minor_units"]);
    let err = set(
        &c,
        listing(&sku.id, &uuid::Uuid::now_v7().to_string(), 2990, 0),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(fields(&err), ["listing.channel_id"]);
    let err = set(
        &c,
        listing(&uuid::Uuid::now_v7().to_string(), &r.eshop.id, 2990, 0),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(fields(&err), ["listing.sku_id"]);
    let mut dollars = listing(&sku.id, &r.store_lyon.id, 2990, 0);
    dollars.price.as_mut().unwrap().currency = "USD".into();
    let err = set(&c, dollars).await.unwrap_err();
    assert_eq!(fields(&err), ["listing.price.currency"]);

    // Versions: 0 means "must not exist yet"; a stale one is refused.
    let err = set(&c, listing(&sku.id, &r.livestream.id, 2800, 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(preconditions(&err)[0].0, "VERSION");
    let l = set(&c, listing(&sku.id, &r.livestream.id, 2800, 1))
        .await
        .unwrap();
    assert_eq!(l.version, 2);
    let err = set(&c, listing(&sku.id, &r.livestream.id, 2700, 1))
        .await
        .unwrap_err();
    assert_eq!(preconditions(&err)[0].0, "VERSION");
    let price: i64 = sqlx::query_scalar(
        "SELECT price FROM listings WHERE sku_id = $1::uuid AND channel_id = $2::uuid",
    )
    .bind(&sku.id)
    .bind(&r.livestream.id)
    .fetch_one(&c.db)
    .await
    .unwrap();
    assert_eq!(price, 2800);

    // Listings by SKU, paged.
    let page = c
        .pricing()
        .list_listings(pb::ListListingsRequest {
            sku_id: sku.id.clone(),
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.listings.len(), 2);
    let rest = c
        .pricing()
        .list_listings(pb::ListListingsRequest {
            sku_id: sku.id.clone(),
            page_size: 2,
            page_token: page.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.listings.len(), 1);
}

trait DetailContains {
    fn get_error_details_detail_contains(&self, text: &str) -> bool;
}

impl DetailContains for tonic::Status {
    fn get_error_details_detail_contains(&self, text: &str) -> bool {
        use tonic_types::StatusExt as _;
        self.get_error_details()
            .precondition_failure()
            .is_some_and(|p| p.violations.iter().any(|v| v.description.contains(text)))
    }
}

#[tokio::test]
async fn the_consistency_report_lists_what_diverges_beyond_policy() {
    let c = start().await;
    let r = retailer(&c).await;
    let ox = r.sku("SHIRT-OX-M"); // 29.90
    let li = r.sku("SHIRT-LI-M"); // 39.90
    let tr = r.sku("SHOE-TR-M"); // 89.90
    let th = r.sku("HOME-TH-M"); // 49.90

    // Nothing diverges yet: every e-shop price is the list price.
    let report = |channel: &str, include_exceptions: bool| {
        let mut client = c.pricing();
        let req = pb::ListConsistencyIssuesRequest {
            channel_id: channel.into(),
            include_exceptions,
            ..Default::default()
        };
        async move {
            client
                .list_consistency_issues(req)
                .await
                .unwrap()
                .into_inner()
                .issues
        }
    };
    assert!(report("", true).await.is_empty());

    // 12% below list: within today's policy, outside a tightened one.
    list(&c, &ox.id, &r.livestream.id, 2631).await;
    // 20% below with an exception.
    let mut excepted = listing(&li.id, &r.livestream.id, 3192, 0);
    excepted.price_exception = reason("clearance");
    set(&c, excepted).await.unwrap();
    // An exception that has expired since.
    let mut expiring = listing(&tr.id, &r.livestream.id, 6990, 0);
    expiring.price_exception = reason("launch week");
    set(&c, expiring).await.unwrap();
    sqlx::query(
        "UPDATE listings SET exception_expires_at = now() - interval '1 day' \
         WHERE sku_id = $1::uuid AND channel_id = $2::uuid",
    )
    .bind(&tr.id)
    .bind(&r.livestream.id)
    .execute(&c.db)
    .await
    .unwrap();
    // A channel-specific title.
    let mut retitled = listing(&th.id, &r.social.id, 4990, 0);
    retitled.title_override = "The cosiest throw".into();
    set(&c, retitled).await.unwrap();

    c.pricing()
        .set_price_policy(pb::SetPricePolicyRequest {
            policy: Some(pb::PricePolicy {
                max_deviation_bps: 1000,
                flag_text_overrides: true,
                default_target_margin_bps: 4000,
                updated_at: None,
            }),
        })
        .await
        .unwrap();

    let kinds = |issues: &[pb::ConsistencyIssue]| {
        let mut k: Vec<(String, i32)> = issues
            .iter()
            .map(|i| (i.sku_code.clone(), i.kind))
            .collect();
        k.sort();
        k
    };
    use pb::ConsistencyIssueKind as K;
    let without = report("", false).await;
    assert_eq!(
        kinds(&without),
        [
            ("HOME-TH-M".to_owned(), K::TextDiverges as i32),
            ("SHIRT-OX-M".to_owned(), K::PriceOutsidePolicy as i32),
            ("SHOE-TR-M".to_owned(), K::PriceExceptionExpired as i32),
        ]
    );
    let outside = without
        .iter()
        .find(|i| i.kind == K::PriceOutsidePolicy as i32)
        .unwrap();
    assert_eq!(outside.deviation_bps, -1201);
    assert_eq!(outside.allowed_deviation_bps, 1000);
    assert_eq!(minor(&outside.list_price), 2990);
    assert_eq!(minor(&outside.channel_price), 2631);
    assert_eq!(
        outside.detail,
        "price 26.31 is 12.01% below list 29.90 (max 10%)"
    );

    let with = report("", true).await;
    assert_eq!(with.len(), 4);
    assert!(
        with.iter()
            .any(|i| i.sku_code == "SHIRT-LI-M" && i.kind == K::PriceException as i32)
    );

    // Per channel.
    assert_eq!(report(&r.social.id, true).await.len(), 1);
    assert!(report(&r.eshop.id, true).await.is_empty());

    // Paged one by one, the same issues.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .pricing()
            .list_consistency_issues(pb::ListConsistencyIssuesRequest {
                include_exceptions: true,
                page_size: 1,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.issues);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(kinds(&seen), kinds(&with));

    // Without text flags, the retitled listing is fine.
    c.pricing()
        .set_price_policy(pb::SetPricePolicyRequest {
            policy: Some(pb::PricePolicy {
                max_deviation_bps: 1000,
                flag_text_overrides: false,
                default_target_margin_bps: 4000,
                updated_at: None,
            }),
        })
        .await
        .unwrap();
    assert!(report(&r.social.id, true).await.is_empty());
}

fn day(offset_days: i64) -> Option<Date> {
    use chrono::Datelike;
    let d = chrono::Utc::now().date_naive() + chrono::Duration::days(offset_days);
    Some(Date {
        year: d.year(),
        month: d.month() as i32,
        day: d.day() as i32,
    })
}

#[tokio::test]
async fn price_suggestions_use_cost_and_recorded_competitor_prices() {
    let c = start().await;
    let r = retailer(&c).await;
    let sku = r.sku("HOME-TH-L"); // list 49.90, cost 20.00
    for (competitor, price, days_ago) in [
        ("a.example", 4590, 1),
        ("b.example", 4790, 3),
        ("c.example", 5290, 10),
        ("d.example", 3000, 60),
    ] {
        c.pricing()
            .record_competitor_price(pb::RecordCompetitorPriceRequest {
                idempotency_key: String::new(),
                competitor_price: Some(pb::CompetitorPrice {
                    sku_id: sku.id.clone(),
                    competitor: competitor.into(),
                    price: eur(price),
                    source: format!("https://{competitor}/throw"),
                    observed_on: day(-days_ago),
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
    }
    let err = c
        .pricing()
        .record_competitor_price(pb::RecordCompetitorPriceRequest {
            idempotency_key: String::new(),
            competitor_price: Some(pb::CompetitorPrice {
                sku_id: sku.id.clone(),
                competitor: "e.example".into(),
                price: eur(-1),
                source: "feed".into(),
                observed_on: day(2),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        fields(&err),
        [
            "competitor_price.price.minor_units",
            "competitor_price.observed_on"
        ]
    );

    let listed = c
        .pricing()
        .list_competitor_prices(pb::ListCompetitorPricesRequest {
            sku_id: sku.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .competitor_prices;
    assert_eq!(
        listed
            .iter()
            .map(|p| p.competitor.as_str())
            .collect::<Vec<_>>(),
        ["a.example", "b.example", "c.example", "d.example"]
    );
    let recent = c
        .pricing()
        .list_competitor_prices(pb::ListCompetitorPricesRequest {
            sku_id: sku.id.clone(),
            observed: Some(DateRange {
                start: day(-5),
                end: day(0),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .competitor_prices;
    assert_eq!(recent.len(), 2);

    let suggest = |basis: pb::CompetitorBasis, margin: i32| {
        let mut client = c.pricing();
        let req = pb::SuggestPriceRequest {
            sku_id: sku.id.clone(),
            channel_id: r.eshop.id.clone(),
            target_margin_bps: margin,
            competitor_basis: basis as i32,
            competitor_window_days: 30,
        };
        async move { client.suggest_price(req).await.unwrap().into_inner() }
    };
    let median = suggest(pb::CompetitorBasis::Median, 0).await;
    assert_eq!(minor(&median.current_price), 4990);
    assert_eq!(minor(&median.unit_cost), 2000);
    assert_eq!(median.current_margin_bps, 5991);
    // Default margin 40%: 2000 / 0.6 = 3333.33 → 3333, 33% below list: outside policy.
    let cost_plus = median.cost_plus.unwrap();
    assert_eq!(minor(&cost_plus.price), 3333);
    assert_eq!(cost_plus.margin_bps, 3999);
    assert!(!cost_plus.within_policy);
    // The 60-day-old observation is outside the window: the median of 45.90, 47.90, 52.90.
    let competitor = median.competitor_based.unwrap();
    assert_eq!(minor(&competitor.price), 4790);
    assert!(competitor.within_policy);
    assert_eq!(median.competitor_prices.len(), 3);
    let lowest = suggest(pb::CompetitorBasis::Lowest, 5500).await;
    assert_eq!(minor(&lowest.competitor_based.unwrap().price), 4590);
    // 55% margin: 2000 / 0.45 = 4444.44 → 4444.
    assert_eq!(minor(&lowest.cost_plus.unwrap().price), 4444);
}

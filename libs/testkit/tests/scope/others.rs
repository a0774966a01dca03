//! The rows of identity (`omni.identity.v1`), catalog (`omni.catalog.v1`), crm (`omni.crm.v1`),
//! performance (`omni.performance.v1`) and the dead letters (`omni.events.v1`, admin only).
//!
//! crm hears of orders through events: its customer, who ordered in the e-shop for pickup in
//! Lyon, is placed through order-management in [`setup`], which waits until crm shows the order.

use chrono::{Datelike as _, Duration, NaiveDate, Utc};
use omni_proto::common::{ChannelKind, Date, DateRange, Money, TimeRange};
use omni_proto::omni::catalog::v1 as cat;
use omni_proto::omni::catalog::v1::promotion_service_client::PromotionServiceClient;
use omni_proto::omni::crm::v1 as crm;
use omni_proto::omni::crm::v1::campaign_service_client::CampaignServiceClient;
use omni_proto::omni::crm::v1::coupon_service_client::CouponServiceClient;
use omni_proto::omni::crm::v1::customer_view_service_client::CustomerViewServiceClient;
use omni_proto::omni::crm::v1::engagement_service_client::EngagementServiceClient;
use omni_proto::omni::crm::v1::loyalty_service_client::LoyaltyServiceClient;
use omni_proto::omni::crm::v1::segment_service_client::SegmentServiceClient;
use omni_proto::omni::identity::v1 as id;
use omni_proto::omni::identity::v1::identity_service_client::IdentityServiceClient;
use omni_proto::omni::orders::v1 as orders;
use omni_proto::omni::performance::v1 as perf;
use omni_proto::omni::performance::v1::input_service_client::InputServiceClient;
use omni_testkit::world::{TEE_PRICE, World, at_store, by_phone, eur, eventually, line};

use super::{Rule, key, req};

/// The phone of this file's own customer, so other files' orders do not crowd its view.
const PHONE: &str = "+33 6 98 76 54 32";

const CATALOG_READ: &str = "catalog reads are shared by every channel";
const PRODUCTS: &str = "products, SKUs and categories belong to no channel: one catalogue for all";
const ADMIN_ONLY: &str = "admin only: a setting of the whole retailer";
const PUBLIC: &str = "public: how a caller gets a token, before any scope";
const CUSTOMER: &str = "a customer is the same in every channel (customer-level record)";
const TICKETS: &str = "one service desk across channels: tickets are customer-level by design";
const POINTS: &str = "points and tiers are customer-level figures, whole for every scope";
const COUPONS: &str = "coupons work in every channel; reads are the customer's or the template's";
const CAMPAIGN_READ: &str = "campaign reads are shared, like promotions; changes are scoped";
const SEGMENTS: &str = "segments select customers by customer-level figures across channels";
const FOR_ASSOCIATES: &str =
    "an associate's own book of customers (others' are refused); managers read every book";
const SUGGESTIONS: &str = "suggestions come from customer-level purchase history";
const EXPERIMENTS: &str = "experiments are shared by design";
const SCORECARDS: &str = "scorecards compare channels: shared by design";
const ATTRIBUTION: &str = "attribution compares channels: shared by design";

/// The records the rows below are about, made before any row is tried.
pub struct Fixtures {
    today: NaiveDate,
    /// crm's customer: an e-shop order collected in Lyon, opted in to e-shop marketing.
    customer: String,
    order: String,
    /// A scheduled e-shop promotion, for updates.
    promotion: cat::Promotion,
    /// Another, for `EndPromotion`.
    promotion_to_end: String,
    /// Feedback and an interaction of the customer in the e-shop, at the Lyon store.
    feedback: String,
    interaction: String,
    /// An e-shop coupon template and two of its coupons (the second redeemed for the order).
    template: String,
    coupon: String,
    redeemed_coupon: String,
    /// A points redemption of the customer in the e-shop.
    redemption: String,
    segment: String,
    /// A draft e-shop campaign.
    campaign: crm::Campaign,
    /// The customer's delivery of a sent e-shop campaign.
    delivery: String,
    /// A disabled offer rule delivering in the e-shop.
    offer_rule: crm::OfferRule,
}

pub async fn setup(w: &World) -> Fixtures {
    let today = Utc::now().date_naive();
    let (customer, order) = crm_customer(w).await;

    let mut promotions = PromotionServiceClient::new(w.shop.catalog.admin());
    let mut scheduled = async || {
        promotions
            .create_promotion(cat::CreatePromotionRequest {
                idempotency_key: key(),
                promotion: Some(promotion(w)),
            })
            .await
            .expect("create promotion")
            .into_inner()
            .promotion
            .expect("promotion")
    };
    let promotion = scheduled().await;
    let promotion_to_end = scheduled().await.id;

    let mut engagement = EngagementServiceClient::new(w.shop.crm.admin());
    let feedback = engagement
        .record_feedback(crm::RecordFeedbackRequest {
            idempotency_key: key(),
            feedback: Some(feedback(w, &customer)),
        })
        .await
        .expect("record feedback")
        .into_inner()
        .feedback
        .expect("feedback")
        .id;
    let interaction = engagement
        .record_interaction(crm::RecordInteractionRequest {
            idempotency_key: key(),
            interaction: Some(interaction(w, &customer)),
        })
        .await
        .expect("record interaction")
        .into_inner()
        .interaction
        .expect("interaction")
        .id;

    let mut coupons = CouponServiceClient::new(w.shop.crm.admin());
    let template = coupons
        .create_coupon_template(crm::CreateCouponTemplateRequest {
            idempotency_key: key(),
            template: Some(coupon_template(w)),
        })
        .await
        .expect("create coupon template")
        .into_inner()
        .template
        .expect("template")
        .id;
    let mut codes = Vec::new();
    for _ in 0..2 {
        codes.push(
            coupons
                .issue_coupons(issue_coupon(&template, &customer))
                .await
                .expect("issue coupon")
                .into_inner()
                .coupons
                .into_iter()
                .next()
                .expect("a coupon")
                .code,
        );
    }
    let (coupon, redeemed_coupon) = (codes[0].clone(), codes[1].clone());
    coupons
        .redeem_coupon(redeem_coupon(w, &redeemed_coupon, &customer, &order))
        .await
        .expect("redeem coupon");

    let mut loyalty = LoyaltyServiceClient::new(w.shop.crm.admin());
    loyalty
        .adjust_points(crm::AdjustPointsRequest {
            idempotency_key: key(),
            customer_id: customer.clone(),
            points: 100,
            reason: "welcome gesture".into(),
        })
        .await
        .expect("adjust points");
    let redemption = loyalty
        .redeem_points(redeem_points(w, &customer, &order))
        .await
        .expect("redeem points")
        .into_inner()
        .entry
        .expect("points entry")
        .id;

    let segment = SegmentServiceClient::new(w.shop.crm.admin())
        .create_segment(crm::CreateSegmentRequest {
            idempotency_key: key(),
            segment: Some(crm::Segment {
                name: "E-shop buyers".into(),
                rule: format!("bought(channel = \"{}\")", w.eshop.id),
                ..Default::default()
            }),
            validate_only: false,
        })
        .await
        .expect("create segment")
        .into_inner()
        .segment
        .expect("segment")
        .id;
    let mut campaigns = CampaignServiceClient::new(w.shop.crm.admin());
    let mut draft = async || {
        campaigns
            .create_campaign(crm::CreateCampaignRequest {
                idempotency_key: key(),
                campaign: Some(campaign(w, &segment)),
            })
            .await
            .expect("create campaign")
            .into_inner()
            .campaign
            .expect("campaign")
    };
    let campaign = draft().await;
    let sent = draft().await.id;
    let delivery = deliver(&mut campaigns, &sent, &customer).await;
    let offer_rule = campaigns
        .create_offer_rule(crm::CreateOfferRuleRequest {
            idempotency_key: key(),
            rule: Some(offer_rule(w)),
        })
        .await
        .expect("create offer rule")
        .into_inner()
        .rule
        .expect("offer rule");

    let mut inputs = InputServiceClient::new(w.shop.performance.admin());
    // performance learns the e-shop channel from catalog's events.
    eventually(async || {
        inputs
            .record_traffic(perf::RecordTrafficRequest {
                traffic: Some(traffic(w, today)),
            })
            .await
            .is_ok()
    })
    .await;
    inputs
        .record_spend(perf::RecordSpendRequest {
            spend: Some(spend(w, today)),
        })
        .await
        .expect("record spend");

    Fixtures {
        today,
        customer,
        order,
        promotion,
        promotion_to_end,
        feedback,
        interaction,
        template,
        coupon,
        redeemed_coupon,
        redemption,
        segment,
        campaign,
        delivery,
        offer_rule,
    }
}

/// Places and pays an e-shop order collected in Lyon for [`PHONE`], opts the customer in to
/// e-shop marketing, and waits until crm shows both; returns (customer id, order id).
async fn crm_customer(w: &World) -> (String, String) {
    w.receive(&w.lyon, &w.tee_l, 3).await;
    let mut request = w.request(
        &w.eshop,
        vec![line(&w.tee_l, 1)],
        at_store(orders::DeliveryKind::Pickup, &w.lyon),
    );
    request.customer = by_phone(PHONE);
    let order = w
        .place(request)
        .await
        .expect("place an e-shop order collected in Lyon");
    let order = w.pay(&order).await;
    IdentityServiceClient::new(w.shop.identity.admin())
        .set_consent(id::SetConsentRequest {
            customer_id: order.customer_id.clone(),
            channel_kind: ChannelKind::EShop as i32,
            marketing_opt_in: true,
        })
        .await
        .expect("set consent");
    let mut views = CustomerViewServiceClient::new(w.shop.crm.admin());
    eventually(async || {
        views
            .get_customer_view(view_request(&order.customer_id))
            .await
            .ok()
            .and_then(|r| r.into_inner().view)
            .is_some_and(|v| {
                v.orders.iter().any(|o| o.order_id == order.id)
                    && v.profile
                        .is_some_and(|p| p.marketing_opt_ins.contains(&(ChannelKind::EShop as i32)))
            })
    })
    .await;
    (order.customer_id, order.id)
}

/// Sends the campaign `campaign_id` once crm can reach the customer through it (a dry run
/// says so), and returns the customer's delivery.
async fn deliver(
    campaigns: &mut CampaignServiceClient<omni_runtime::client::AuthChannel>,
    campaign_id: &str,
    customer: &str,
) -> String {
    let send = |dry_run: bool| crm::SendCampaignRequest {
        idempotency_key: if dry_run { String::new() } else { key() },
        campaign_id: campaign_id.into(),
        dry_run,
    };
    eventually(async || {
        campaigns
            .send_campaign(send(true))
            .await
            .ok()
            .and_then(|r| r.into_inner().report)
            .is_some_and(|r| r.deliveries > 0)
    })
    .await;
    campaigns
        .send_campaign(send(false))
        .await
        .expect("send campaign");
    campaigns
        .list_deliveries(crm::ListDeliveriesRequest {
            campaign_id: campaign_id.into(),
            customer_id: customer.into(),
            ..Default::default()
        })
        .await
        .expect("list deliveries")
        .into_inner()
        .deliveries
        .into_iter()
        .next()
        .expect("the customer's delivery")
        .id
}

/// The rule of `method` ("omni.crm.v1.CustomerViewService/GetCustomerView"), None for a method
/// this file does not cover.
pub fn rule(method: &str, w: &World, f: &Fixtures) -> Option<Rule> {
    use Rule::{Denied, Hidden, Shared};
    let eshop = || vec![w.eshop.id.clone()];
    Some(match method {
        // identity
        "omni.identity.v1.AuthService/Authenticate" => Shared(PUBLIC),
        "omni.identity.v1.AuthService/GetPublicKey" => Shared(PUBLIC),
        "omni.identity.v1.IdentityService/EraseCustomer" => Shared(CUSTOMER),
        "omni.identity.v1.IdentityService/GetCustomer" => Shared(CUSTOMER),
        "omni.identity.v1.IdentityService/MergeCustomers" => Shared(CUSTOMER),
        "omni.identity.v1.IdentityService/ResolveCustomer" => Shared(CUSTOMER),
        "omni.identity.v1.IdentityService/SetConsent" => {
            Shared("consent is the customer's, per channel kind, not per channel")
        }
        // A key's scope lies within its maker's.
        "omni.identity.v1.PrincipalService/CreateApiKey" => Denied(req(id::CreateApiKeyRequest {
            kind: id::PrincipalKind::ChannelApp as i32,
            name: format!("scope-{}", key()),
            roles: vec![id::Role::ChannelApp as i32],
            scope: Some(id::Scope {
                channel_ids: eshop(),
                store_ids: vec![w.lyon.clone()],
            }),
        })),
        // A new staff member's scope lies within the caller's.
        "omni.identity.v1.PrincipalService/CreateStaff" => Denied(req(id::CreateStaffRequest {
            login: format!("scope-{}", key()),
            password: "a long enough password".into(),
            display_name: "E-shop analyst".into(),
            roles: vec![id::Role::Analyst as i32],
            scope: Some(id::Scope {
                channel_ids: eshop(),
                store_ids: vec![w.lyon.clone()],
            }),
        })),
        "omni.identity.v1.PrincipalService/DisablePrincipal" => Shared(ADMIN_ONLY),

        // catalog
        "omni.catalog.v1.ChannelService/CreateChannel" => Shared(ADMIN_ONLY),
        "omni.catalog.v1.ChannelService/GetChannel" => Shared(CATALOG_READ),
        "omni.catalog.v1.ChannelService/ListChannels" => Shared(CATALOG_READ),
        "omni.catalog.v1.ChannelService/UpdateChannel" => Shared(ADMIN_ONLY),
        "omni.catalog.v1.PricingService/GetPricePolicy" => Shared(CATALOG_READ),
        "omni.catalog.v1.PricingService/ListCompetitorPrices" => Shared(CATALOG_READ),
        "omni.catalog.v1.PricingService/ListConsistencyIssues" => Shared(CATALOG_READ),
        "omni.catalog.v1.PricingService/ListListings" => Shared(CATALOG_READ),
        "omni.catalog.v1.PricingService/RecordCompetitorPrice" => {
            Shared("a competitor's price is of a SKU, in no channel of ours")
        }
        // The e-shop's own price, unchanged (a stale version 0 is refused after the check).
        "omni.catalog.v1.PricingService/SetListing" => Denied(req(cat::SetListingRequest {
            listing: Some(cat::Listing {
                sku_id: w.tee_s.clone(),
                channel_id: w.eshop.id.clone(),
                price: eur(TEE_PRICE),
                listed: true,
                ..Default::default()
            }),
        })),
        "omni.catalog.v1.PricingService/SetPricePolicy" => Shared(ADMIN_ONLY),
        "omni.catalog.v1.PricingService/SuggestPrice" => Shared(CATALOG_READ),
        "omni.catalog.v1.ProductService/BatchGetSkus" => Shared(CATALOG_READ),
        "omni.catalog.v1.ProductService/CreateCategory" => Shared(PRODUCTS),
        "omni.catalog.v1.ProductService/CreateProduct" => Shared(PRODUCTS),
        "omni.catalog.v1.ProductService/CreateSku" => Shared(PRODUCTS),
        "omni.catalog.v1.ProductService/GetProduct" => Shared(CATALOG_READ),
        "omni.catalog.v1.ProductService/GetSku" => Shared(CATALOG_READ),
        "omni.catalog.v1.ProductService/ListCategories" => Shared(CATALOG_READ),
        "omni.catalog.v1.ProductService/SearchProducts" => Shared(CATALOG_READ),
        "omni.catalog.v1.ProductService/UpdateProduct" => Shared(PRODUCTS),
        "omni.catalog.v1.ProductService/UpdateSku" => Shared(PRODUCTS),
        "omni.catalog.v1.PromotionService/CreatePromotion" => {
            Denied(req(cat::CreatePromotionRequest {
                idempotency_key: key(),
                promotion: Some(promotion(w)),
            }))
        }
        "omni.catalog.v1.PromotionService/EndPromotion" => Denied(req(cat::EndPromotionRequest {
            promotion_id: f.promotion_to_end.clone(),
        })),
        "omni.catalog.v1.PromotionService/GetPromotion" => Shared(CATALOG_READ),
        "omni.catalog.v1.PromotionService/ListPromotions" => Shared(CATALOG_READ),
        "omni.catalog.v1.PromotionService/UpdatePromotion" => {
            Denied(req(cat::UpdatePromotionRequest {
                promotion: Some(f.promotion.clone()),
            }))
        }
        "omni.catalog.v1.QuoteService/BatchQuote" => Shared(CATALOG_READ),
        "omni.catalog.v1.QuoteService/Quote" => Shared(CATALOG_READ),

        // crm: campaigns and triggered offers
        "omni.crm.v1.CampaignService/CreateCampaign" => Denied(req(crm::CreateCampaignRequest {
            idempotency_key: key(),
            campaign: Some(campaign(w, &f.segment)),
        })),
        "omni.crm.v1.CampaignService/CreateOfferRule" => Denied(req(crm::CreateOfferRuleRequest {
            idempotency_key: key(),
            rule: Some(offer_rule(w)),
        })),
        "omni.crm.v1.CampaignService/GetCampaign" => Shared(CAMPAIGN_READ),
        "omni.crm.v1.CampaignService/GetCampaignReport" => Shared(CAMPAIGN_READ),
        "omni.crm.v1.CampaignService/GetContactPolicy" => {
            Shared("one weekly cap across every campaign and offer")
        }
        "omni.crm.v1.CampaignService/ListCampaigns" => Shared(CAMPAIGN_READ),
        "omni.crm.v1.CampaignService/ListDeliveries" => Shared(CAMPAIGN_READ),
        "omni.crm.v1.CampaignService/ListOfferRules" => Shared(CAMPAIGN_READ),
        // An adapter reports the outcomes of its own channel's deliveries.
        "omni.crm.v1.CampaignService/ReportDeliveryOutcome" => {
            Denied(req(crm::ReportDeliveryOutcomeRequest {
                delivery_id: f.delivery.clone(),
                status: crm::DeliveryStatus::Delivered as i32,
                ..Default::default()
            }))
        }
        // A dry run: the draft stays a draft for the rows after it.
        "omni.crm.v1.CampaignService/SendCampaign" => Denied(req(crm::SendCampaignRequest {
            idempotency_key: String::new(),
            campaign_id: f.campaign.id.clone(),
            dry_run: true,
        })),
        "omni.crm.v1.CampaignService/SetContactPolicy" => Shared(ADMIN_ONLY),
        "omni.crm.v1.CampaignService/UpdateCampaign" => Denied(req(crm::UpdateCampaignRequest {
            campaign: Some(f.campaign.clone()),
        })),
        "omni.crm.v1.CampaignService/UpdateOfferRule" => Denied(req(crm::UpdateOfferRuleRequest {
            rule: Some(f.offer_rule.clone()),
        })),

        // crm: coupons
        "omni.crm.v1.CouponService/CheckCoupon" => Shared(COUPONS),
        "omni.crm.v1.CouponService/CreateCouponTemplate" => {
            Denied(req(crm::CreateCouponTemplateRequest {
                idempotency_key: key(),
                template: Some(coupon_template(w)),
            }))
        }
        "omni.crm.v1.CouponService/GetCoupon" => Shared(COUPONS),
        "omni.crm.v1.CouponService/GetCouponTemplate" => Shared(COUPONS),
        // No issuing channel given: the template's (the e-shop) is the one issuing.
        "omni.crm.v1.CouponService/IssueCoupons" => {
            Denied(req(issue_coupon(&f.template, &f.customer)))
        }
        "omni.crm.v1.CouponService/ListCouponTemplates" => Shared(COUPONS),
        "omni.crm.v1.CouponService/ListCustomerCoupons" => Shared(COUPONS),
        // Redeemed in the e-shop: the channel a redemption names is the caller's.
        "omni.crm.v1.CouponService/RedeemCoupon" => {
            Denied(req(redeem_coupon(w, &f.coupon, &f.customer, &f.order)))
        }
        // The e-shop redemption made in setup, named with another order: the caller in scope
        // is refused for that (FAILED_PRECONDITION), so the coupon stays redeemed in the
        // e-shop for every role's turn.
        "omni.crm.v1.CouponService/ReleaseCoupon" => Denied(req(crm::ReleaseCouponRequest {
            code: f.redeemed_coupon.clone(),
            order_id: key(),
            reason: "order cancelled".into(),
        })),

        // crm: the customer view and associates
        // The customer to an associate of the Lyon store.
        "omni.crm.v1.CustomerViewService/AssignAssociate" => {
            Denied(req(crm::AssignAssociateRequest {
                customer_id: f.customer.clone(),
                associate_id: "associate-lyon".into(),
                store_id: w.lyon.clone(),
            }))
        }
        "omni.crm.v1.CustomerViewService/GetCustomerView" => {
            Hidden(req(view_request(&f.customer)), f.order.clone())
        }
        "omni.crm.v1.CustomerViewService/ListAssociateCustomers" => Shared(FOR_ASSOCIATES),

        // crm: feedback and interactions
        "omni.crm.v1.EngagementService/ListFeedback" => Hidden(
            req(crm::ListFeedbackRequest {
                customer_id: f.customer.clone(),
                page_size: 500,
                ..Default::default()
            }),
            f.feedback.clone(),
        ),
        "omni.crm.v1.EngagementService/ListInteractions" => Hidden(
            req(crm::ListInteractionsRequest {
                customer_id: f.customer.clone(),
                page_size: 500,
                ..Default::default()
            }),
            f.interaction.clone(),
        ),
        "omni.crm.v1.EngagementService/RecordFeedback" => Denied(req(crm::RecordFeedbackRequest {
            idempotency_key: key(),
            feedback: Some(feedback(w, &f.customer)),
        })),
        "omni.crm.v1.EngagementService/RecordInteraction" => {
            Denied(req(crm::RecordInteractionRequest {
                idempotency_key: key(),
                interaction: Some(interaction(w, &f.customer)),
            }))
        }
        // The e-shop's summary row comes from the feedback at the Lyon store.
        "omni.crm.v1.EngagementService/SummarizeFeedback" => Hidden(
            req(crm::SummarizeFeedbackRequest {
                by_store: true,
                ..Default::default()
            }),
            w.eshop.id.clone(),
        ),

        // crm: loyalty
        "omni.crm.v1.LoyaltyService/AdjustPoints" => Shared(ADMIN_ONLY),
        // Gives back the e-shop redemption made in setup.
        "omni.crm.v1.LoyaltyService/CancelPointsRedemption" => {
            Denied(req(crm::CancelPointsRedemptionRequest {
                idempotency_key: key(),
                entry_id: f.redemption.clone(),
                reason: "order cancelled".into(),
            }))
        }
        "omni.crm.v1.LoyaltyService/GetLoyaltyAccount" => Shared(POINTS),
        "omni.crm.v1.LoyaltyService/GetLoyaltyRules" => Shared(POINTS),
        "omni.crm.v1.LoyaltyService/ListPointsEntries" => Shared(POINTS),
        // Redeemed in the e-shop: the channel a redemption names is the caller's.
        "omni.crm.v1.LoyaltyService/RedeemPoints" => {
            Denied(req(redeem_points(w, &f.customer, &f.order)))
        }
        "omni.crm.v1.LoyaltyService/SetLoyaltyRules" => Shared(ADMIN_ONLY),

        // crm: recommendations, segments, tickets
        "omni.crm.v1.RecommendationService/GetNextBestProducts" => Shared(SUGGESTIONS),
        "omni.crm.v1.RecommendationService/ListRepurchaseDue" => Shared(SUGGESTIONS),
        "omni.crm.v1.SegmentService/CreateSegment" => Shared(SEGMENTS),
        "omni.crm.v1.SegmentService/GetSegment" => Shared(SEGMENTS),
        "omni.crm.v1.SegmentService/ListSegmentMembers" => Shared(SEGMENTS),
        "omni.crm.v1.SegmentService/ListSegments" => Shared(SEGMENTS),
        "omni.crm.v1.SegmentService/UpdateSegment" => Shared(SEGMENTS),
        "omni.crm.v1.TicketService/AddTicketNote" => Shared(TICKETS),
        "omni.crm.v1.TicketService/AssignTicket" => Shared(TICKETS),
        "omni.crm.v1.TicketService/GetTicket" => Shared(TICKETS),
        "omni.crm.v1.TicketService/ListOverdueTickets" => Shared(TICKETS),
        "omni.crm.v1.TicketService/ListTicketServiceLevels" => Shared(TICKETS),
        "omni.crm.v1.TicketService/ListTickets" => Shared(TICKETS),
        "omni.crm.v1.TicketService/OpenTicket" => Shared(TICKETS),
        "omni.crm.v1.TicketService/SetTicketServiceLevel" => Shared(ADMIN_ONLY),
        "omni.crm.v1.TicketService/TransitionTicket" => Shared(TICKETS),

        // dead letters
        "omni.events.v1.DeadLetterService/ListDeadLetters" => Shared(ADMIN_ONLY),
        "omni.events.v1.DeadLetterService/ReplayDeadLetter" => Shared(ADMIN_ONLY),

        // performance
        "omni.performance.v1.AttributionService/GetAcquisitionMatrix" => Shared(ATTRIBUTION),
        "omni.performance.v1.AttributionService/GetAssociateCredit" => Shared(ATTRIBUTION),
        "omni.performance.v1.AttributionService/GetCouponCredit" => Shared(ATTRIBUTION),
        "omni.performance.v1.AttributionService/GetStoreCredit" => Shared(ATTRIBUTION),
        "omni.performance.v1.ExperimentService/AnalyzeExperiment" => Shared(EXPERIMENTS),
        "omni.performance.v1.ExperimentService/CreateExperiment" => Shared(EXPERIMENTS),
        "omni.performance.v1.ExperimentService/GetAssignment" => Shared(EXPERIMENTS),
        "omni.performance.v1.ExperimentService/GetExperiment" => Shared(EXPERIMENTS),
        "omni.performance.v1.ExperimentService/ListExperiments" => Shared(EXPERIMENTS),
        "omni.performance.v1.ExperimentService/RecordExposure" => Shared(EXPERIMENTS),
        "omni.performance.v1.ExperimentService/RecordOutcome" => Shared(EXPERIMENTS),
        "omni.performance.v1.ExperimentService/SetExperimentStatus" => Shared(EXPERIMENTS),
        // Every channel asked: the scope's channels only.
        "omni.performance.v1.InputService/ListSpend" => Hidden(
            req(perf::ListSpendRequest {
                days: last_month(f.today),
                page_size: 500,
                ..Default::default()
            }),
            w.eshop.id.clone(),
        ),
        "omni.performance.v1.InputService/ListTraffic" => Hidden(
            req(perf::ListTrafficRequest {
                days: last_month(f.today),
                page_size: 500,
                ..Default::default()
            }),
            w.eshop.id.clone(),
        ),
        "omni.performance.v1.InputService/RecordSpend" => Denied(req(perf::RecordSpendRequest {
            spend: Some(spend(w, f.today)),
        })),
        "omni.performance.v1.InputService/RecordTraffic" => {
            Denied(req(perf::RecordTrafficRequest {
                traffic: Some(traffic(w, f.today)),
            }))
        }
        "omni.performance.v1.KpiService/GetClvReport" => Denied(req(perf::GetClvReportRequest {
            acquired: last_month(f.today),
            channel_ids: eshop(),
            ..Default::default()
        })),
        "omni.performance.v1.KpiService/GetCohortRetention" => {
            Denied(req(perf::GetCohortRetentionRequest {
                acquired: last_month(f.today),
                channel_ids: eshop(),
                ..Default::default()
            }))
        }
        // The e-shop at the Lyon store: a channel-limited caller is held to the channel, a
        // store associate to its stores.
        "omni.performance.v1.KpiService/GetKpiReport" => Denied(req(perf::GetKpiReportRequest {
            range: last_month(f.today),
            dimension: perf::KpiDimension::Store as i32,
            channel_ids: eshop(),
            store_ids: vec![w.lyon.clone()],
            ..Default::default()
        })),
        "omni.performance.v1.KpiService/RebuildRollups" => Shared(ADMIN_ONLY),
        "omni.performance.v1.KpiService/WatchLiveSales" => {
            Denied(req(perf::WatchLiveSalesRequest {
                channel_ids: eshop(),
            }))
        }
        "omni.performance.v1.ScorecardService/CreateScorecard" => Shared(SCORECARDS),
        "omni.performance.v1.ScorecardService/EvaluateScorecard" => Shared(SCORECARDS),
        "omni.performance.v1.ScorecardService/GetScorecard" => Shared(SCORECARDS),
        "omni.performance.v1.ScorecardService/ListScorecards" => Shared(SCORECARDS),
        "omni.performance.v1.ScorecardService/UpdateScorecard" => Shared(SCORECARDS),

        _ => return None,
    })
}

// Request shapes.

fn view_request(customer: &str) -> crm::GetCustomerViewRequest {
    crm::GetCustomerViewRequest {
        customer_id: customer.into(),
        order_limit: 200,
        interaction_limit: 0,
    }
}

/// Ten percent off mugs in the e-shop, next month (so no order of the suite is priced with it).
fn promotion(w: &World) -> cat::Promotion {
    let start = Utc::now() + Duration::days(30);
    cat::Promotion {
        name: "Mugs next month".into(),
        rule: Some(cat::promotion::Rule::PercentOff(cat::PercentOffRule {
            percent_bps: 1_000,
        })),
        scope: Some(cat::PromotionScope {
            channel_ids: vec![w.eshop.id.clone()],
            sku_ids: vec![w.mug.clone()],
            ..Default::default()
        }),
        window: Some(TimeRange {
            start: Some(timestamp(start)),
            end: Some(timestamp(start + Duration::days(1))),
        }),
        ..Default::default()
    }
}

fn feedback(w: &World, customer: &str) -> crm::Feedback {
    crm::Feedback {
        customer_id: customer.into(),
        channel_id: w.eshop.id.clone(),
        store_id: w.lyon.clone(),
        scale: crm::FeedbackScale::Csat as i32,
        score: 5,
        comment: "Ready on time".into(),
        ..Default::default()
    }
}

fn interaction(w: &World, customer: &str) -> crm::Interaction {
    crm::Interaction {
        customer_id: customer.into(),
        kind: crm::InteractionKind::Message as i32,
        channel_id: w.eshop.id.clone(),
        store_id: w.lyon.clone(),
        note: "Asked when the order is ready".into(),
        ..Default::default()
    }
}

/// Five euros off in the e-shop, issued by the e-shop.
fn coupon_template(w: &World) -> crm::CouponTemplate {
    crm::CouponTemplate {
        name: "Five off online".into(),
        discount: Some(crm::coupon_template::Discount::AmountOff(Money {
            minor_units: 500,
            currency: "EUR".into(),
        })),
        channel_ids: vec![w.eshop.id.clone()],
        valid_days: 30,
        issuing_channel_id: w.eshop.id.clone(),
        active: true,
        ..Default::default()
    }
}

fn issue_coupon(template: &str, customer: &str) -> crm::IssueCouponsRequest {
    crm::IssueCouponsRequest {
        idempotency_key: key(),
        template_id: template.into(),
        recipients: Some(crm::issue_coupons_request::Recipients::CustomerId(
            customer.into(),
        )),
        issuing_channel_id: String::new(),
    }
}

fn redeem_coupon(w: &World, code: &str, customer: &str, order: &str) -> crm::RedeemCouponRequest {
    crm::RedeemCouponRequest {
        idempotency_key: key(),
        code: code.into(),
        customer_id: customer.into(),
        channel_id: w.eshop.id.clone(),
        order_id: order.into(),
        discount: eur(500),
    }
}

fn redeem_points(w: &World, customer: &str, order: &str) -> crm::RedeemPointsRequest {
    crm::RedeemPointsRequest {
        idempotency_key: key(),
        customer_id: customer.into(),
        points: 5,
        channel_id: w.eshop.id.clone(),
        order_id: order.into(),
    }
}

fn campaign(w: &World, segment: &str) -> crm::Campaign {
    crm::Campaign {
        name: "New tees online".into(),
        segment_id: segment.into(),
        content: Some(crm::MessageContent {
            title: "New tees".into(),
            body: "Three sizes, in the e-shop now.".into(),
            ..Default::default()
        }),
        channel_ids: vec![w.eshop.id.clone()],
        ..Default::default()
    }
}

/// Thanks a customer through the e-shop after an interaction; disabled, so it never fires.
fn offer_rule(w: &World) -> crm::OfferRule {
    crm::OfferRule {
        name: "Thanks for writing".into(),
        condition: Some(crm::OfferCondition {
            trigger: crm::OfferTrigger::Interaction as i32,
            ..Default::default()
        }),
        action: Some(crm::OfferAction {
            content: Some(crm::MessageContent {
                title: "Thank you".into(),
                ..Default::default()
            }),
            channel_ids: vec![w.eshop.id.clone()],
            ..Default::default()
        }),
        enabled: false,
        ..Default::default()
    }
}

fn traffic(w: &World, today: NaiveDate) -> perf::Traffic {
    perf::Traffic {
        channel_id: w.eshop.id.clone(),
        day: Some(day(today)),
        visits: 120,
        impressions: 4_000,
        interactions: 300,
        reach: 2_500,
        recorded_at: None,
    }
}

fn spend(w: &World, today: NaiveDate) -> perf::Spend {
    perf::Spend {
        channel_id: w.eshop.id.clone(),
        day: Some(day(today)),
        category: perf::SpendCategory::Marketing as i32,
        amount: eur(5_000),
        recorded_at: None,
    }
}

fn day(d: NaiveDate) -> Date {
    Date {
        year: d.year(),
        month: d.month() as i32,
        day: d.day() as i32,
    }
}

/// The last thirty days up to `today`.
fn last_month(today: NaiveDate) -> Option<DateRange> {
    Some(DateRange {
        start: Some(day(today - Duration::days(30))),
        end: Some(day(today)),
    })
}

fn timestamp(t: chrono::DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    }
}

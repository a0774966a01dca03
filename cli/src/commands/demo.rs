//! `omni demo`: the omnichannel story, end to end, against the running services, printing each
//! step as it happens. It sets up its own small retailer around Lyon (codes and names carry a
//! run tag, so it can run again and again on the same services), then:
//!
//! 1. a customer registered at a store till is recognised in the e-shop by her phone;
//! 2. she buys online and picks up in store, ready within the 30-minute promise;
//! 3. a livestream sells a hot SKU to a crowd without overselling, the stores' stock still
//!    visible and untouched;
//! 4. she returns her livestream purchase in another store;
//! 5. her points and one coupon work in every channel (the coupon only once);
//! 6. the channel KPI report and a scorecard linking the stores' payout to online KPIs show
//!    the effect.
//!
//! A step whose promise does not come true stops the demo with a non-zero exit code.

use std::io::Write;
use std::time::Duration;

use clap::Args;
use omni_proto::common::{ChannelKind, Date, DateRange};
use omni_proto::omni::catalog::v1 as cat;
use omni_proto::omni::catalog::v1::quote_service_client::QuoteServiceClient;
use omni_proto::omni::crm::v1 as crm;
use omni_proto::omni::crm::v1::coupon_service_client::CouponServiceClient;
use omni_proto::omni::crm::v1::customer_view_service_client::CustomerViewServiceClient;
use omni_proto::omni::crm::v1::loyalty_service_client::LoyaltyServiceClient;
use omni_proto::omni::inventory::v1 as inv;
use omni_proto::omni::inventory::v1::availability_service_client::AvailabilityServiceClient;
use omni_proto::omni::inventory::v1::stock_service_client::StockServiceClient;
use omni_proto::omni::orders::v1 as pb;
use omni_proto::omni::orders::v1::fulfilment_service_client::FulfilmentServiceClient;
use omni_proto::omni::orders::v1::order_service_client::OrderServiceClient;
use omni_proto::omni::orders::v1::return_service_client::ReturnServiceClient;
use omni_proto::omni::performance::v1 as perf;
use omni_proto::omni::performance::v1::input_service_client::InputServiceClient;
use omni_proto::omni::performance::v1::kpi_service_client::KpiServiceClient;
use omni_proto::omni::performance::v1::scorecard_service_client::ScorecardServiceClient;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use super::setup::{self, LocationSpec, SkuSpec, eur};
use crate::config::Service;
use crate::ctx::{Ctx, key};
use crate::render::{Answer as _, CliError, CliResult, Output, format_minor, money, required};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many livestream viewers try to buy the hot SKU at once.
    #[arg(long, default_value_t = 12)]
    crowd: usize,
    /// How long to wait for events to reach crm and performance, in seconds.
    #[arg(long, default_value_t = 30)]
    wait_secs: u64,
}

const SCARF: i64 = 4900;
const SHIRT: i64 = 3500;
const TOTE: i64 = 2500;
/// Units of the hot tote in the warehouse, the only location that ships.
const TOTE_WAREHOUSE: i64 = 8;
/// Units of the tote in each store (pickup only; they never ship).
const TOTE_PER_STORE: i64 = 3;

/// Prints the story as it goes and records its facts for `--json`.
struct Story<'a> {
    out: &'a mut dyn Write,
    step: usize,
    facts: serde_json::Map<String, Value>,
}

impl Story<'_> {
    fn step(&mut self, title: &str) -> CliResult<()> {
        self.step += 1;
        writeln!(self.out, "\n{}. {title}", self.step)?;
        Ok(())
    }

    fn say(&mut self, line: impl AsRef<str>) -> CliResult<()> {
        writeln!(self.out, "   {}", line.as_ref())?;
        self.out.flush()?;
        Ok(())
    }

    fn fact(&mut self, name: &str, value: Value) {
        self.facts.insert(name.to_owned(), value);
    }
}

/// The promise of a step did not come true.
fn broken(what: impl Into<String>) -> CliError {
    CliError::Other(anyhow::anyhow!("the story broke: {}", what.into()))
}

struct Retailer {
    tag: String,
    warehouse: inv::Location,
    lyon: inv::Location,
    villeurbanne: inv::Location,
    eshop: cat::Channel,
    livestream: cat::Channel,
    store_lyon: cat::Channel,
    store_villeurbanne: cat::Channel,
    scarf: String,
    shirt: String,
    tote: String,
}

pub async fn run(ctx: &Ctx, args: DemoArgs, out: &mut dyn Write) -> CliResult<Output> {
    let wait = Duration::from_secs(args.wait_secs);
    let mut story = Story {
        out,
        step: 0,
        facts: serde_json::Map::new(),
    };
    story.step("Setting the scene: a retailer around Lyon")?;
    let r = retailer(ctx, &mut story).await?;
    story.fact("tag", json!(r.tag));

    // 1. Recognised everywhere.
    story.step("A customer registered in a store is recognised in the e-shop")?;
    let suffix = &r
        .tag
        .chars()
        .filter(char::is_ascii_hexdigit)
        .collect::<String>();
    let digits: String = suffix
        .chars()
        .map(|c| {
            c.to_digit(16)
                .map_or('0', |d| char::from(b'0' + (d % 10) as u8))
        })
        .chain("0000".chars())
        .take(4)
        .collect();
    let phone = format!("+33 6 12 34 {} {}", &digits[..2], &digits[2..4]);
    let card = format!("card-{}", r.tag);
    let at_till = setup::resolve(ctx, &phone, "Mei Lin", Some((ChannelKind::Store, &card))).await?;
    let mei = required(at_till.customer, "customer")?;
    story.say(format!(
        "at the Lyon till: Mei Lin, {phone}, loyalty card {card} -> customer {} (member {}){}",
        mei.id,
        mei.member_number,
        if at_till.created { ", new" } else { "" }
    ))?;
    let web_phone = phone.replace(' ', "");
    let online = setup::resolve(
        ctx,
        &web_phone,
        "mei.lin",
        Some((ChannelKind::EShop, &format!("web-{}", r.tag))),
    )
    .await?;
    let online_customer = required(online.customer, "customer")?;
    if online_customer.id != mei.id {
        return Err(broken(format!(
            "the e-shop sign-up with {web_phone} made another customer ({})",
            online_customer.id
        )));
    }
    story.say(format!(
        "e-shop sign-up with {web_phone}: the same customer {}, e-shop account linked: {}",
        online_customer.id, online.linked
    ))?;
    story.fact("customerId", json!(mei.id));
    story.fact("recognisedOnline", json!(true));

    // 2. Click and collect.
    story.step("She buys online and picks up in store within 30 minutes")?;
    let mut fulfilment = FulfilmentServiceClient::new(ctx.authed(Service::Orders)?);
    let placed = place(
        ctx,
        &r.eshop,
        &mei.id,
        vec![line(&r.scarf, 1)],
        pickup_at(&r.lyon),
        Vec::new(),
        None,
    )
    .await?;
    story.say(format!(
        "order {} placed on the e-shop for pickup at {}: {}",
        placed.order_number,
        r.lyon.code,
        money(placed.total.as_ref())
    ))?;
    let paid = pay(ctx, &placed).await?;
    let pickup = required(paid.pickup.clone(), "pickup")?;
    let promise = pickup
        .promised_ready_at
        .as_ref()
        .zip(paid.confirmed_at.as_ref())
        .map(|(p, c)| (p.seconds - c.seconds) / 60);
    story.say(format!(
        "paid; the store promises it ready by {} ({} minutes after payment)",
        crate::render::time(pickup.promised_ready_at.as_ref()),
        promise.map_or_else(|| "?".to_owned(), |m| m.to_string())
    ))?;
    fulfilment
        .start_picking(pb::StartPickingRequest {
            order_id: paid.id.clone(),
            fulfilment_id: String::new(),
        })
        .await
        .answer("order-management")?;
    let ready = required(
        fulfilment
            .mark_ready_for_pickup(pb::MarkReadyForPickupRequest {
                order_id: paid.id.clone(),
            })
            .await
            .answer("order-management")?
            .order,
        "order",
    )?;
    let ready_pickup = required(ready.pickup.clone(), "pickup")?;
    if !ready_pickup.ready_within_promise {
        return Err(broken("the pickup was not ready within its promise"));
    }
    story.say(format!(
        "picked and ready at {} - within the promise",
        crate::render::time(ready_pickup.ready_at.as_ref())
    ))?;
    let collected = required(
        fulfilment
            .hand_over_pickup(pb::HandOverPickupRequest {
                order_id: paid.id.clone(),
                pickup_code: ready_pickup.pickup_code.clone(),
            })
            .await
            .answer("order-management")?
            .order,
        "order",
    )?;
    story.say(format!(
        "Mei shows pickup code {} and leaves with her scarf: order {}",
        ready_pickup.pickup_code,
        crate::render::label(collected.status().as_str_name(), "ORDER_STATUS_")
    ))?;
    story.fact(
        "pickup",
        json!({
            "orderNumber": collected.order_number,
            "promiseMinutes": promise,
            "readyWithinPromise": ready_pickup.ready_within_promise,
            "status": collected.status().as_str_name(),
        }),
    );

    // 3. The livestream's hot SKU.
    story.step("The livestream sells a hot SKU without overselling")?;
    StockServiceClient::new(ctx.authed(Service::Inventory)?)
        .set_hot_sku(inv::SetHotSkuRequest {
            sku_id: r.tote.clone(),
            hot: true,
            reason: "livestream drop".into(),
            until: None,
        })
        .await
        .answer("inventory")?;
    let before = availability(ctx, &r.tote).await?;
    story.say(format!(
        "TOTE-{} marked hot: {} in the warehouse (the only location that ships), {} in each store",
        r.tag,
        location_available(&before, &r.warehouse.id),
        location_available(&before, &r.lyon.id)
    ))?;
    let mei_tote = place(
        ctx,
        &r.livestream,
        &mei.id,
        vec![line(&r.tote, 1)],
        ship_to_lyon(),
        Vec::new(),
        None,
    )
    .await?;
    let mei_tote = pay(ctx, &mei_tote).await?;
    story.say(format!(
        "Mei buys one during the show: order {}",
        mei_tote.order_number
    ))?;
    let crowd = crowd_buys(ctx, &r, args.crowd).await?;
    let sold = 1 + crowd.sold;
    story.say(format!(
        "{} viewers hit \"buy\" at once: {} orders accepted, {} refused as out of stock{}",
        args.crowd,
        crowd.sold,
        crowd.refused,
        if crowd.other_errors.is_empty() {
            String::new()
        } else {
            format!(", {} other errors", crowd.other_errors.len())
        }
    ))?;
    if let Some(e) = crowd.other_errors.first() {
        return Err(broken(format!(
            "a livestream order failed unexpectedly: {e}"
        )));
    }
    let expected = TOTE_WAREHOUSE.min(1 + i64::try_from(args.crowd).unwrap_or(i64::MAX));
    if sold != expected {
        return Err(broken(format!(
            "the livestream sold {sold} totes with {TOTE_WAREHOUSE} in the warehouse"
        )));
    }
    let after = availability(ctx, &r.tote).await?;
    let warehouse_left = location_available(&after, &r.warehouse.id);
    let (lyon_left, villeurbanne_left) = (
        location_available(&after, &r.lyon.id),
        location_available(&after, &r.villeurbanne.id),
    );
    if warehouse_left < 0 || lyon_left != TOTE_PER_STORE || villeurbanne_left != TOTE_PER_STORE {
        return Err(broken(format!(
            "after the sale: warehouse {warehouse_left}, stores {lyon_left} and {villeurbanne_left}"
        )));
    }
    story.say(format!(
        "sold exactly {sold} = the warehouse's {TOTE_WAREHOUSE}; warehouse now {warehouse_left}, \
         stores still show {lyon_left} ({}) and {villeurbanne_left} ({}) for pickup",
        r.lyon.code, r.villeurbanne.code
    ))?;
    story.fact(
        "livestream",
        json!({
            "warehouseStock": TOTE_WAREHOUSE,
            "attempts": 1 + args.crowd,
            "sold": sold,
            "refused": crowd.refused,
            "warehouseAvailableAfter": warehouse_left,
            "storeAvailableAfter": [lyon_left, villeurbanne_left],
            "networkAvailableAfter": after.network_available,
        }),
    );

    // 4. Return anywhere.
    story.step("She returns her livestream purchase in a store")?;
    let delivered = ship_and_deliver(ctx, &mei_tote).await?;
    story.say(format!(
        "the tote ships from the warehouse and is delivered: order {}",
        crate::render::label(delivered.status().as_str_name(), "ORDER_STATUS_")
    ))?;
    let tote_line = delivered
        .lines
        .first()
        .ok_or_else(|| broken("the livestream order has no line"))?;
    let returned = required(
        ReturnServiceClient::new(ctx.authed(Service::Orders)?)
            .create_return(pb::CreateReturnRequest {
                idempotency_key: key(),
                order_id: delivered.id.clone(),
                lines: vec![pb::ReturnLineInput {
                    order_line_id: tote_line.id.clone(),
                    quantity: 1,
                    reason: pb::ReturnReason::NoLongerWanted as i32,
                    condition: pb::ItemCondition::Resellable as i32,
                }],
                channel_id: r.store_villeurbanne.id.clone(),
                location_id: r.villeurbanne.id.clone(),
                items_received: true,
                note: "bought on the livestream, returned at the counter".into(),
            })
            .await
            .answer("order-management")?
            .order_return,
        "return",
    )?;
    let refund = returned.refund_total.as_ref().map_or(0, |m| m.minor_units);
    if refund != TOTE {
        return Err(broken(format!("the return refunds {refund}, not {TOTE}")));
    }
    let restocked = location_available(&availability(ctx, &r.tote).await?, &r.villeurbanne.id);
    story.say(format!(
        "at the {} counter: refund {}, the tote back on the shelf there ({} available)",
        r.villeurbanne.code,
        money(returned.refund_total.as_ref()),
        restocked
    ))?;
    story.fact(
        "return",
        json!({"refund": refund, "store": r.villeurbanne.code, "storeAvailableAfter": restocked}),
    );

    // 5. Points and a coupon everywhere.
    story.step("Her points and coupon work in every channel")?;
    // Scarf 49 + tote 25 - tote returned 25: crm has seen it all once her net spend is the
    // scarf's (the return's refund and its points come in one event, after the orders').
    let view = eventually(
        wait,
        "crm to credit points for the fulfilled orders and take back the returned tote's",
        async || {
            let v = customer_view(ctx, &mei.id).await?;
            let spend = v.total_spend.as_ref().map_or(0, |m| m.minor_units);
            Ok(
                (v.order_count >= 2 && spend == SCARF && v.points_balance >= SCARF / 100)
                    .then_some(v),
            )
        },
    )
    .await?;
    story.say(format!(
        "crm sees {} orders across channels, net spend {}, {} points, tier {}",
        view.order_count,
        money(view.total_spend.as_ref()),
        view.points_balance,
        crate::render::or_dash(&view.tier)
    ))?;
    let code = super::crm::issue_coupon(
        ctx,
        &mei.id,
        &format!("Welcome back {}", r.tag),
        crm::coupon_template::Discount::AmountOff(omni_proto::common::Money {
            minor_units: 500,
            currency: "EUR".into(),
        }),
        30,
        &r.eshop.id,
    )
    .await?;
    story.say(format!("the e-shop sends her coupon {code} (5.00 EUR off)"))?;
    let mut coupons = CouponServiceClient::new(ctx.authed(Service::Crm)?);
    let mut usable_in = Vec::new();
    let mut effect = None;
    for channel in [&r.eshop, &r.livestream, &r.store_lyon] {
        let check = coupons
            .check_coupon(crm::CheckCouponRequest {
                code: code.clone(),
                customer_id: mei.id.clone(),
                channel_id: channel.id.clone(),
            })
            .await
            .answer("crm")?;
        if !check.usable {
            return Err(broken(format!(
                "the coupon is not usable on {}: {}",
                channel.name, check.reason
            )));
        }
        usable_in.push(channel.name.clone());
        effect = check.coupon.and_then(|c| c.effect);
    }
    story.say(format!("usable on {}", usable_in.join(", ")))?;
    // At the Lyon till: a shirt, the coupon, paid at once (the till knows the total).
    let total = quote_total(ctx, &r.store_lyon, &r.shirt, effect).await?;
    let till = place(
        ctx,
        &r.store_lyon,
        &mei.id,
        vec![line(&r.shirt, 1)],
        Some(pb::Delivery {
            kind: pb::DeliveryKind::CarryOut as i32,
            address: None,
            store_id: r.lyon.id.clone(),
        }),
        vec![code.clone()],
        Some(total),
    )
    .await?;
    story.say(format!(
        "at the Lyon till she buys a shirt with it: {} - {} off = {}, order {}",
        format_minor(SHIRT, "EUR"),
        money(till.discount_total.as_ref()),
        money(till.total.as_ref()),
        crate::render::label(till.status().as_str_name(), "ORDER_STATUS_")
    ))?;
    let again = coupons
        .check_coupon(crm::CheckCouponRequest {
            code: code.clone(),
            customer_id: mei.id.clone(),
            channel_id: r.eshop.id.clone(),
        })
        .await
        .answer("crm")?;
    if again.usable {
        return Err(broken("the coupon is still usable after it was redeemed"));
    }
    story.say(format!(
        "back on the e-shop the code is spent: {}",
        crate::render::or_dash(&again.reason)
    ))?;
    // The till order's points arrive through its event: read the balance once they have.
    let spent = SCARF + till.total.as_ref().map_or(0, |m| m.minor_units);
    let before = eventually(
        wait,
        "crm to credit points for the till order",
        async || {
            let v = customer_view(ctx, &mei.id).await?;
            let spend = v.total_spend.as_ref().map_or(0, |m| m.minor_units);
            Ok((spend == spent && v.points_balance > view.points_balance)
                .then_some(v.points_balance))
        },
    )
    .await?;
    let redeemed = LoyaltyServiceClient::new(ctx.authed(Service::Crm)?)
        .redeem_points(crm::RedeemPointsRequest {
            idempotency_key: key(),
            customer_id: mei.id.clone(),
            points: 20,
            channel_id: r.livestream.id.clone(),
            order_id: String::new(),
        })
        .await
        .answer("crm")?;
    let balance = redeemed.entry.as_ref().map_or(0, |e| e.balance_after);
    story.say(format!(
        "during the next livestream she redeems 20 of her {before} points{}; {balance} left",
        worth(redeemed.value.as_ref())
    ))?;
    story.fact(
        "loyalty",
        json!({
            "couponCode": code,
            "couponUsableIn": usable_in,
            "couponRedeemedOn": till.order_number,
            "couponDiscount": till.discount_total.as_ref().map_or(0, |m| m.minor_units),
            "couponUsableAfterRedemption": again.usable,
            "pointsBeforeRedemption": before,
            "pointsAfterRedemption": balance,
        }),
    );

    // 6. KPIs.
    story.step("The channel KPI report and a linked scorecard show the effect")?;
    record_inputs(ctx, &r).await?;
    story.say("traffic and marketing spend recorded for today (visits, impressions, reach)")?;
    let today = crate::commands::kpi::date(chrono::Utc::now().date_naive());
    let range = DateRange {
        start: Some(today),
        end: Some(today),
    };
    let channels = vec![
        r.eshop.id.clone(),
        r.livestream.id.clone(),
        r.store_lyon.id.clone(),
        r.store_villeurbanne.id.clone(),
    ];
    let report = eventually(wait, "performance to count the day's orders", async || {
        let report = KpiServiceClient::new(ctx.authed(Service::Performance)?)
            .get_kpi_report(perf::GetKpiReportRequest {
                range: Some(range),
                dimension: perf::KpiDimension::Channel as i32,
                channel_ids: channels.clone(),
                store_ids: Vec::new(),
                source: perf::KpiSource::Unspecified as i32,
            })
            .await
            .answer("performance")?;
        let orders_of = |channel: &str| {
            report
                .rows
                .iter()
                .find(|row| row.channel_id == channel)
                .and_then(|row| row.current.as_ref())
                .map_or(0, |c| c.orders)
        };
        let seen = orders_of(&r.eshop.id) >= 1
            && orders_of(&r.livestream.id) >= sold
            && orders_of(&r.store_lyon.id) >= 1;
        Ok(seen.then_some(report))
    })
    .await?;
    let names = [
        (r.eshop.id.clone(), r.eshop.name.clone()),
        (r.livestream.id.clone(), r.livestream.name.clone()),
        (r.store_lyon.id.clone(), r.store_lyon.name.clone()),
        (
            r.store_villeurbanne.id.clone(),
            r.store_villeurbanne.name.clone(),
        ),
    ]
    .into_iter()
    .collect();
    for line in crate::commands::kpi::describe_report(&report, &names, false).lines() {
        story.say(line)?;
    }
    let scorecard = required(
        ScorecardServiceClient::new(ctx.authed(Service::Performance)?)
            .create_scorecard(perf::CreateScorecardRequest {
                idempotency_key: key(),
                scorecard: Some(perf::Scorecard {
                    name: format!("Lyon stores, linked to online {}", r.tag),
                    channel_id: r.store_lyon.id.clone(),
                    conditions: vec![
                        perf::ScorecardCondition {
                            id: "online_pickups".into(),
                            kpi: perf::Kpi::PickupSlaHitRate as i32,
                            channel_ids: vec![r.eshop.id.clone()],
                            comparison: perf::Comparison::AtLeast as i32,
                            threshold: Some(perf::scorecard_condition::Threshold::Value(0.9)),
                            label: "e-shop pickups ready within 30 min >= 90%".into(),
                            ..Default::default()
                        },
                        perf::ScorecardCondition {
                            id: "livestream_sales".into(),
                            kpi: perf::Kpi::NetSales as i32,
                            channel_ids: vec![r.livestream.id.clone()],
                            comparison: perf::Comparison::AtLeast as i32,
                            threshold: Some(perf::scorecard_condition::Threshold::Amount(
                                omni_proto::common::Money {
                                    minor_units: 10_000,
                                    currency: "EUR".into(),
                                },
                            )),
                            label: "livestream net sales >= 100.00 EUR".into(),
                            ..Default::default()
                        },
                    ],
                    payout_rules: vec![
                        perf::PayoutRule {
                            condition_ids: vec!["online_pickups".into(), "livestream_sales".into()],
                            min_met: 0,
                            payout_bps: 10_000,
                        },
                        perf::PayoutRule {
                            condition_ids: vec!["online_pickups".into(), "livestream_sales".into()],
                            min_met: 1,
                            payout_bps: 5_000,
                        },
                    ],
                    ..Default::default()
                }),
            })
            .await
            .answer("performance")?
            .scorecard,
        "scorecard",
    )?;
    let evaluation = required(
        ScorecardServiceClient::new(ctx.authed(Service::Performance)?)
            .evaluate_scorecard(perf::EvaluateScorecardRequest {
                scorecard_id: scorecard.id.clone(),
                range: Some(range),
                baseline_range: None,
            })
            .await
            .answer("performance")?
            .evaluation,
        "evaluation",
    )?;
    story.say(format!(
        "scorecard \"{}\": the Lyon store team is paid on online KPIs",
        scorecard.name
    ))?;
    for line in crate::commands::kpi::describe_evaluation(&evaluation).lines() {
        story.say(line)?;
    }
    story.fact(
        "kpi",
        json!({
            "report": crate::protojson::to_json(&report, "omni.performance.v1.GetKpiReportResponse"),
            "scorecardId": scorecard.id,
            "evaluation": crate::protojson::to_json(&evaluation, "omni.performance.v1.ScorecardEvaluation"),
        }),
    );
    writeln!(
        story.out,
        "\nThe story held end to end (run tag {}). Try: omni crm view {}",
        r.tag, mei.id
    )?;
    Ok(Output::new(Value::Object(story.facts), String::new()))
}

async fn retailer(ctx: &Ctx, story: &mut Story<'_>) -> CliResult<Retailer> {
    use inv::LocationKind::{Store, Warehouse};
    let tag = setup::run_tag();
    let code = |base: &str| format!("{base}-{tag}");
    let warehouse = setup::create_location(
        ctx,
        LocationSpec {
            code: &code("WH"),
            name: "Warehouse Saint-Quentin-Fallavier",
            kind: Warehouse,
            city: "Saint-Quentin-Fallavier",
            point: (45.6400, 5.1100),
            pickup: false,
            ships: true,
            time_zone: "Europe/Paris",
        },
    )
    .await?;
    let lyon = setup::create_location(
        ctx,
        LocationSpec {
            code: &code("LYS"),
            name: "Lyon Part-Dieu",
            kind: Store,
            city: "Lyon",
            point: (45.7606, 4.8590),
            pickup: true,
            ships: false,
            time_zone: "Europe/Paris",
        },
    )
    .await?;
    let villeurbanne = setup::create_location(
        ctx,
        LocationSpec {
            code: &code("VIL"),
            name: "Villeurbanne Gratte-Ciel",
            kind: Store,
            city: "Villeurbanne",
            point: (45.7700, 4.8800),
            pickup: true,
            ships: false,
            time_zone: "Europe/Paris",
        },
    )
    .await?;
    story.say(format!(
        "warehouse {}, stores {} and {} (pickup; only the warehouse ships)",
        warehouse.code, lyon.code, villeurbanne.code
    ))?;
    let eshop =
        setup::create_channel(ctx, ChannelKind::EShop, &format!("E-shop {tag}"), None).await?;
    let livestream = setup::create_channel(
        ctx,
        ChannelKind::Livestream,
        &format!("Livestream {tag}"),
        None,
    )
    .await?;
    let store_lyon = setup::create_channel(
        ctx,
        ChannelKind::Store,
        &format!("Store Lyon {tag}"),
        Some(&lyon),
    )
    .await?;
    let store_villeurbanne = setup::create_channel(
        ctx,
        ChannelKind::Store,
        &format!("Store Villeurbanne {tag}"),
        Some(&villeurbanne),
    )
    .await?;
    story.say(format!(
        "channels: {}, {}, {}, {}",
        eshop.name, livestream.name, store_lyon.name, store_villeurbanne.name
    ))?;
    let category = setup::create_category(ctx, &format!("Accessories {tag}")).await?;
    let sku = async |name: &str, base: &str, price: i64, cost: i64| {
        let product = setup::create_product(
            ctx,
            &category.id,
            name,
            "Maison Lumière",
            &[SkuSpec {
                code: code(base),
                price,
                cost,
                variant: Vec::new(),
            }],
        )
        .await?;
        product
            .skus
            .first()
            .map(|s| s.id.clone())
            .ok_or_else(|| broken("the catalog created a product without its SKU"))
    };
    let scarf = sku("Silk scarf", "SCARF", SCARF, 1800).await?;
    let shirt = sku("Linen shirt", "SHIRT", SHIRT, 1200).await?;
    let tote = sku("Limited edition tote", "TOTE", TOTE, 700).await?;
    for channel in [&eshop, &livestream, &store_lyon, &store_villeurbanne] {
        for (sku, price) in [(&scarf, SCARF), (&shirt, SHIRT), (&tote, TOTE)] {
            setup::list(ctx, sku, &channel.id, price).await?;
        }
    }
    setup::receive(
        ctx,
        &warehouse.id,
        &[
            (scarf.clone(), 20),
            (shirt.clone(), 30),
            (tote.clone(), TOTE_WAREHOUSE),
        ],
    )
    .await?;
    for store in [&lyon, &villeurbanne] {
        setup::receive(
            ctx,
            &store.id,
            &[
                (scarf.clone(), 5),
                (shirt.clone(), 5),
                (tote.clone(), TOTE_PER_STORE),
            ],
        )
        .await?;
    }
    story.say(format!(
        "SCARF-{tag} {}, SHIRT-{tag} {}, TOTE-{tag} {} listed on every channel and in stock",
        format_minor(SCARF, "EUR"),
        format_minor(SHIRT, "EUR"),
        format_minor(TOTE, "EUR")
    ))?;
    Ok(Retailer {
        tag,
        warehouse,
        lyon,
        villeurbanne,
        eshop,
        livestream,
        store_lyon,
        store_villeurbanne,
        scarf,
        shirt,
        tote,
    })
}

/// ` worth 2.00 EUR`, or nothing when crm gives no value.
pub fn worth(value: Option<&omni_proto::common::Money>) -> String {
    value.map_or_else(String::new, |m| format!(" worth {}", money(Some(m))))
}

fn line(sku: &str, quantity: i32) -> pb::OrderLineInput {
    pb::OrderLineInput {
        sku_id: sku.to_owned(),
        quantity,
    }
}

fn pickup_at(store: &inv::Location) -> Option<pb::Delivery> {
    Some(pb::Delivery {
        kind: pb::DeliveryKind::Pickup as i32,
        address: None,
        store_id: store.id.clone(),
    })
}

fn ship_to_lyon() -> Option<pb::Delivery> {
    let mut address = setup::address("3 rue de Gerland", "Lyon", "69007", (45.7300, 4.8330));
    address.recipient_name = "Livestream viewer".into();
    Some(pb::Delivery {
        kind: pb::DeliveryKind::Ship as i32,
        address: Some(address),
        store_id: String::new(),
    })
}

async fn place(
    ctx: &Ctx,
    channel: &cat::Channel,
    customer_id: &str,
    lines: Vec<pb::OrderLineInput>,
    delivery: Option<pb::Delivery>,
    coupon_codes: Vec<String>,
    paid: Option<omni_proto::common::Money>,
) -> CliResult<pb::Order> {
    let store_id = if channel.kind() == ChannelKind::Store {
        channel.store_location_id.clone()
    } else {
        String::new()
    };
    let request = pb::PlaceOrderRequest {
        idempotency_key: key(),
        channel_id: channel.id.clone(),
        channel_order_ref: format!("demo-{}", key()),
        customer: Some(pb::CustomerRef {
            customer_id: customer_id.to_owned(),
            ..Default::default()
        }),
        lines,
        delivery,
        coupon_codes,
        store_id,
        associate_id: String::new(),
        payment: paid.map(payment),
    };
    required(
        OrderServiceClient::new(ctx.authed(Service::Orders)?)
            .place_order(request)
            .await
            .answer("order-management")?
            .order,
        "order",
    )
}

fn payment(amount: omni_proto::common::Money) -> pb::Payment {
    pb::Payment {
        amount: Some(amount),
        method: pb::PaymentMethod::Card as i32,
        provider_reference: format!("psp-{}", key()),
        paid_at: None,
    }
}

async fn pay(ctx: &Ctx, order: &pb::Order) -> CliResult<pb::Order> {
    required(
        OrderServiceClient::new(ctx.authed(Service::Orders)?)
            .record_payment(pb::RecordPaymentRequest {
                idempotency_key: key(),
                order_id: order.id.clone(),
                payment: Some(payment(required(order.total.clone(), "total")?)),
            })
            .await
            .answer("order-management")?
            .order,
        "order",
    )
}

async fn ship_and_deliver(ctx: &Ctx, order: &pb::Order) -> CliResult<pb::Order> {
    let mut f = FulfilmentServiceClient::new(ctx.authed(Service::Orders)?);
    let fulfilment_id = order
        .fulfilments
        .first()
        .map(|f| f.id.clone())
        .unwrap_or_default();
    f.start_picking(pb::StartPickingRequest {
        order_id: order.id.clone(),
        fulfilment_id: fulfilment_id.clone(),
    })
    .await
    .answer("order-management")?;
    f.ship_fulfilment(pb::ShipFulfilmentRequest {
        order_id: order.id.clone(),
        fulfilment_id: fulfilment_id.clone(),
        carrier: "Colissimo".into(),
        tracking_number: format!("6A{}", &key()[..8]),
    })
    .await
    .answer("order-management")?;
    required(
        f.confirm_delivery(pb::ConfirmDeliveryRequest {
            order_id: order.id.clone(),
            fulfilment_id,
            delivered_at: None,
        })
        .await
        .answer("order-management")?
        .order,
        "order",
    )
}

struct Crowd {
    sold: i64,
    refused: i64,
    other_errors: Vec<String>,
}

/// `viewers` customers order one hot tote each at the same moment on the livestream.
async fn crowd_buys(ctx: &Ctx, r: &Retailer, viewers: usize) -> CliResult<Crowd> {
    let orders = OrderServiceClient::new(ctx.authed(Service::Orders)?);
    let mut tasks = JoinSet::new();
    for viewer in 0..viewers {
        let mut orders = orders.clone();
        let request = pb::PlaceOrderRequest {
            idempotency_key: key(),
            channel_id: r.livestream.id.clone(),
            channel_order_ref: format!("live-{}-{viewer}", r.tag),
            customer: Some(pb::CustomerRef {
                channel_account: Some(omni_proto::omni::identity::v1::ChannelAccountRef {
                    channel_kind: ChannelKind::Livestream as i32,
                    external_id: format!("viewer-{}-{viewer}", r.tag),
                }),
                name: format!("Viewer {viewer}"),
                ..Default::default()
            }),
            lines: vec![line(&r.tote, 1)],
            delivery: ship_to_lyon(),
            ..Default::default()
        };
        tasks.spawn(async move {
            let placed = orders.place_order(request).await?.into_inner();
            let order = placed.order.unwrap_or_default();
            orders
                .record_payment(pb::RecordPaymentRequest {
                    idempotency_key: key(),
                    order_id: order.id.clone(),
                    payment: order.total.clone().map(payment),
                })
                .await?;
            Ok::<_, tonic::Status>(())
        });
    }
    let mut crowd = Crowd {
        sold: 0,
        refused: 0,
        other_errors: Vec::new(),
    };
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(())) => crowd.sold += 1,
            Ok(Err(status)) if status.code() == tonic::Code::FailedPrecondition => {
                crowd.refused += 1;
            }
            Ok(Err(status)) => crowd.other_errors.push(
                CliError::Status {
                    service: "order-management",
                    status,
                }
                .human(),
            ),
            Err(e) => crowd.other_errors.push(e.to_string()),
        }
    }
    Ok(crowd)
}

async fn availability(ctx: &Ctx, sku: &str) -> CliResult<inv::SkuAvailability> {
    let response = AvailabilityServiceClient::new(ctx.authed(Service::Inventory)?)
        .get_availability(inv::GetAvailabilityRequest {
            sku_ids: vec![sku.to_owned()],
            channel_id: String::new(),
            include_locations: true,
            location_ids: Vec::new(),
        })
        .await
        .answer("inventory")?;
    response
        .skus
        .into_iter()
        .next()
        .ok_or_else(|| broken("inventory did not answer for the SKU"))
}

fn location_available(a: &inv::SkuAvailability, location: &str) -> i64 {
    a.locations
        .iter()
        .find(|l| l.location_id == location)
        .map_or(0, |l| l.available)
}

async fn customer_view(ctx: &Ctx, customer: &str) -> CliResult<crm::CustomerView> {
    let response = CustomerViewServiceClient::new(ctx.authed(Service::Crm)?)
        .get_customer_view(crm::GetCustomerViewRequest {
            customer_id: customer.to_owned(),
            order_limit: 10,
            interaction_limit: 0,
        })
        .await;
    match response {
        // crm learns about the customer from identity's events: not there yet is not an error.
        Err(status) if status.code() == tonic::Code::NotFound => Ok(crm::CustomerView::default()),
        other => required(other.answer("crm")?.view, "view"),
    }
}

async fn quote_total(
    ctx: &Ctx,
    channel: &cat::Channel,
    sku: &str,
    coupon: Option<omni_proto::common::CouponEffect>,
) -> CliResult<omni_proto::common::Money> {
    let response = QuoteServiceClient::new(ctx.authed(Service::Catalog)?)
        .quote(cat::QuoteRequest {
            channel_id: channel.id.clone(),
            lines: vec![cat::QuoteLineInput {
                sku_id: sku.to_owned(),
                quantity: 1,
                line_ref: "1".into(),
            }],
            coupons: coupon.into_iter().collect(),
            ..Default::default()
        })
        .await
        .answer("catalog")?;
    required(response.total, "total")
}

async fn record_inputs(ctx: &Ctx, r: &Retailer) -> CliResult<()> {
    let mut inputs = InputServiceClient::new(ctx.authed(Service::Performance)?);
    let today: Date = crate::commands::kpi::date(chrono::Utc::now().date_naive());
    let traffic = [
        (&r.eshop, 400, 6_000, 300, 0),
        (&r.livestream, 900, 20_000, 4_500, 12_000),
        (&r.store_lyon, 150, 0, 0, 0),
        (&r.store_villeurbanne, 120, 0, 0, 0),
    ];
    for (channel, visits, impressions, interactions, reach) in traffic {
        inputs
            .record_traffic(perf::RecordTrafficRequest {
                traffic: Some(perf::Traffic {
                    channel_id: channel.id.clone(),
                    day: Some(today),
                    visits,
                    impressions,
                    interactions,
                    reach,
                    recorded_at: None,
                }),
            })
            .await
            .answer("performance")?;
    }
    for (channel, amount) in [(&r.eshop, 5_000), (&r.livestream, 8_000)] {
        inputs
            .record_spend(perf::RecordSpendRequest {
                spend: Some(perf::Spend {
                    channel_id: channel.id.clone(),
                    day: Some(today),
                    category: perf::SpendCategory::Marketing as i32,
                    amount: eur(amount),
                    recorded_at: None,
                }),
            })
            .await
            .answer("performance")?;
    }
    Ok(())
}

/// Polls `check` every 200 ms until it yields a value or `limit` passes: for effects that
/// travel through events (crm, performance).
async fn eventually<T>(
    limit: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> CliResult<Option<T>>,
) -> CliResult<T> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(broken(format!(
                "waited {} s for {what}; are the event consumers running?",
                limit.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

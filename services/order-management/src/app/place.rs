//! Placing an order: who buys, what it costs, where it leaves from, stock held, coupons
//! redeemed, and the order with its event committed, or nothing held at all.

use std::collections::HashMap;

use chrono::{Datelike, Duration as ChronoDuration, Utc};
use omni_proto::common::CouponEffect;
use omni_proto::events::OrderPlaced;
use omni_proto::events::event::Payload;
use omni_proto::omni::catalog::v1 as catalog;
use omni_proto::omni::crm::v1 as crm;
use omni_proto::omni::identity::v1 as identity;
use omni_proto::omni::inventory::v1 as inventory;
use omni_proto::omni::orders::v1::{
    AppliedCoupon, Delivery, DeliveryKind, Fulfilment, LineDiscount, Order, OrderLine, OrderStatus,
    Payment, Pickup, PlaceOrderRequest, PlaceOrderResponse, StatusChange,
};
use omni_runtime::idempotency;
use omni_runtime::{Error, Result};
use rand::Rng as _;
use std::time::Instant;
use uuid::Uuid;

use super::fulfil::confirmed;
use super::steps::refused;
use super::{App, Changes, facts, fulfilment_at, minor, money, ts};
use crate::domain::{self, Want};
use crate::store;
use crate::upstream::call;

/// Who is buying.
#[derive(Debug, Clone)]
pub enum CustomerInput {
    /// An anonymous POS sale.
    Anonymous,
    Id(String),
    Resolve(identity::ResolveCustomerRequest),
}

/// A validated PlaceOrder.
#[derive(Debug, Clone)]
pub struct PlaceInput {
    /// The request as sent: what a retry with the same key must repeat.
    pub request: PlaceOrderRequest,
    pub idempotency_key: String,
    pub channel_id: String,
    pub channel_order_ref: String,
    pub customer: CustomerInput,
    pub lines: Vec<Want>,
    pub delivery: Delivery,
    /// Upper-cased, each once.
    pub coupon_codes: Vec<String>,
    pub store_id: String,
    pub associate_id: String,
    pub payment: Option<Payment>,
    /// Set for an exchange's replacement: the original order and the refund credited.
    pub exchange_of: Option<(String, i64)>,
}

/// How long a tier kept from crm is used before crm is asked again.
const TIER_TRUSTED: ChronoDuration = ChronoDuration::days(1);

/// How long a try's hold on its key lasts unless renewed. A running try renews it every
/// third of that, so a retry takes over from a try whose process died (a replica killed
/// mid-call) within this time, and never from one that is still working.
const LEASE: std::time::Duration = std::time::Duration::from_secs(10);
const LEASE_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// How a try ended.
enum Placed {
    Committed(PlaceOrderResponse),
    /// A newer try with the same key committed first (this one outlived its lease).
    Overtaken(PlaceOrderResponse),
}

/// What was done toward other services, to undo on failure.
#[derive(Debug, Default)]
struct Held {
    reservation_id: Option<String>,
    /// A Reserve was sent and its answer lost: a hold may exist that this try cannot name.
    hold_unknown: bool,
    /// Codes redeemed, or asked to be.
    redeemed: Vec<String>,
}

impl App {
    /// Places an order, or returns the one an earlier call with the same key placed.
    #[tracing::instrument(name = "orders.place", skip_all, fields(channel_id = %input.channel_id, lines = input.lines.len()), err)]
    pub async fn place(&self, input: PlaceInput, actor: &str) -> Result<PlaceOrderResponse> {
        let scope = format!("PlaceOrder/{}", input.channel_id);
        // The key is the caller's: leases and replies are kept per principal.
        let caller_key = idempotency::caller_key(actor, &input.idempotency_key);
        let key = caller_key.as_str();
        // One try at a time per key: a concurrent retry waits for the first one's reply.
        let waiting_since = Instant::now();
        let lease = loop {
            if let Some(lease) = store::take_lease(
                &self.pool,
                &scope,
                key,
                Uuid::now_v7(),
                &input.coupon_codes,
                &input.channel_id,
                LEASE,
            )
            .await?
            {
                break lease;
            }
            // Busy or done: an earlier call's reply, once it committed.
            if let Some(reply) = self.replay(&scope, &input, actor).await? {
                return Ok(reply);
            }
            if waiting_since.elapsed() > LEASE {
                return Err(Error::Aborted(
                    "an earlier call with this idempotency key is still running".to_owned(),
                ));
            }
            tokio::time::sleep(LEASE_POLL).await;
        };
        let (order_id, generation) = (lease.order_id, lease.generation);
        let mut held = Held::default();
        let placed = {
            let placing = self.place_leased(&input, &scope, lease, actor, &mut held);
            let renewing = async {
                loop {
                    tokio::time::sleep(LEASE / 3).await;
                    if let Err(e) =
                        store::renew_lease(&self.pool, &scope, key, lease.attempt, LEASE).await
                    {
                        tracing::warn!(error = %e, %order_id, "placement lease not renewed");
                    }
                }
            };
            tokio::select! {
                placed = placing => placed,
                never = renewing => never,
            }
        };
        match placed {
            Ok(Placed::Committed(reply)) => {
                self.announce(&order_id.to_string()).await;
                Ok(reply)
            }
            Ok(Placed::Overtaken(reply)) => {
                // A try whose lease ran out lost to a newer one: only a hold of its own goes
                // back (tries of one generation share theirs); the coupons belong to the
                // committed order.
                held.redeemed.clear();
                if reply
                    .order
                    .as_ref()
                    .is_some_and(|o| Some(&o.reservation_id) == held.reservation_id.as_ref())
                {
                    held.reservation_id = None;
                }
                self.undo(order_id, &held).await;
                Ok(reply)
            }
            Err(e) => {
                // A hold given back is never replayed: the next try starts a new generation.
                // One whose reply was lost stays this generation's, for the retry to get back.
                if self.undo(order_id, &held).await && held.reservation_id.is_some() {
                    store::next_generation(&self.pool, &scope, key, generation).await?;
                }
                store::drop_lease(&self.pool, &scope, key).await?;
                Err(e)
            }
        }
    }

    /// The reply of an earlier call with this key that committed, if any (read only: the
    /// waiting retries never hold the key's row).
    async fn replay(
        &self,
        scope: &str,
        input: &PlaceInput,
        actor: &str,
    ) -> Result<Option<PlaceOrderResponse>> {
        let mut conn = self.pool.acquire().await?;
        let stored = idempotency::lookup::<_, PlaceOrderResponse>(
            &mut conn,
            scope,
            actor,
            "idempotency_key",
            &input.idempotency_key,
            &input.request,
        )
        .await?;
        Ok(stored.map(|mut reply| {
            reply.created = false;
            reply
        }))
    }

    /// Gives back what a failed placement held; true when no stock hold of this try is left
    /// (none was taken, or it was released). Failures here are logged: a hold left behind is
    /// the one a retry with the same key gets back, or it expires by itself; the sweeper gives
    /// coupons back.
    async fn undo(&self, order_id: Uuid, held: &Held) -> bool {
        let mut gone = !held.hold_unknown;
        if let Some(reservation_id) = &held.reservation_id {
            let released = call!(
                "inventory",
                self.upstreams.reservations.clone(),
                release,
                inventory::ReleaseRequest {
                    idempotency_key: format!("order/{order_id}/undo/{reservation_id}"),
                    reservation_id: reservation_id.clone(),
                    lines: Vec::new(),
                    reason: "order not placed".to_owned(),
                }
            );
            match released {
                Ok(_) | Err(Error::FailedPrecondition { .. }) => {}
                Err(e) => {
                    gone = false;
                    tracing::warn!(error = %e, %order_id, "hold of a failed order not released; it expires");
                }
            }
        }
        for code in &held.redeemed {
            self.release_coupon(order_id, code, "order not placed")
                .await;
        }
        gone
    }

    /// The customer's tier as crm announced it (kept in `customer_tiers` from crm's stream),
    /// asking crm only when none is kept or the one kept is a day old (a rolling-spend tier
    /// also lapses with time, which crm does not announce). A loyalty outage does not stop the
    /// shop selling: the order is priced without a tier, and records that it was (its
    /// `customer_tier` is empty).
    async fn customer_tier(&self, customer_id: &str) -> Result<String> {
        if let Some((tier, as_of)) = store::tier(&self.pool, customer_id).await?
            && Utc::now() - as_of < TIER_TRUSTED
        {
            return Ok(tier);
        }
        let asked_at = Utc::now();
        match self.upstreams.tier(customer_id).await {
            Ok(tier) => {
                let mut conn = self.pool.acquire().await?;
                store::put_tier(&mut conn, customer_id, &tier, asked_at).await?;
                Ok(tier)
            }
            Err(Error::Unavailable(reason)) => {
                tracing::warn!(%reason, customer_id, "crm unavailable; pricing without a tier");
                Ok(String::new())
            }
            Err(e) => Err(e),
        }
    }

    /// Renews a hold a retry got back for `hold_for` from now: `None` once it has ended. The
    /// hold dates from an earlier try, possibly one whose replica died and whose lease the
    /// retry waited out; kept as it was, it could end before the order's payment deadline,
    /// and a payment made in time would find its stock gone.
    async fn renew_hold(
        &self,
        reservation_id: &str,
        hold_for: std::time::Duration,
    ) -> Result<Option<inventory::Reservation>> {
        let renewed = call!(
            "inventory",
            self.upstreams.reservations.clone(),
            extend_reservation,
            inventory::ExtendReservationRequest {
                reservation_id: reservation_id.to_owned(),
                expiry: prost_types::Duration::try_from(hold_for)
                    .ok()
                    .map(inventory::extend_reservation_request::Expiry::Ttl),
            }
        );
        match renewed {
            Ok(reply) => {
                Ok(Some(reply.reservation.ok_or_else(|| {
                    Error::internal("inventory returned no reservation")
                })?))
            }
            Err(Error::FailedPrecondition { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(super) async fn release_coupon(&self, order_id: Uuid, code: &str, reason: &str) -> bool {
        match call!(
            "crm",
            self.upstreams.coupons.clone(),
            release_coupon,
            crm::ReleaseCouponRequest {
                code: code.to_owned(),
                order_id: order_id.to_string(),
                reason: reason.to_owned(),
            }
        ) {
            Ok(_) | Err(Error::NotFound(_) | Error::NotFoundAt { .. }) => true,
            // Not redeemed for this order (never was, or given back already).
            Err(Error::FailedPrecondition { .. }) => true,
            Err(e) => {
                tracing::warn!(error = %e, %order_id, code, "coupon not given back yet");
                false
            }
        }
    }

    async fn resolve(&self, customer: &CustomerInput) -> Result<Option<identity::Customer>> {
        match customer {
            CustomerInput::Anonymous => Ok(None),
            CustomerInput::Id(id) => self
                .upstreams
                .customer(
                    identity::customer_key::Key::Id(id.clone()),
                    "customer.customer_id",
                )
                .await
                .map(Some),
            CustomerInput::Resolve(request) => self
                .upstreams
                .resolve_customer(request.clone(), "customer")
                .await
                .map(Some),
        }
    }

    /// Checks each code with crm: its effect for the quote, and the issuing channel.
    async fn check_coupons(
        &self,
        codes: &[String],
        customer_id: &str,
        channel_id: &str,
    ) -> Result<Vec<(crm::Coupon, CouponEffect)>> {
        let mut checked = Vec::new();
        for (i, code) in codes.iter().enumerate() {
            let field = format!("coupon_codes[{i}]");
            let response = call!(
                "crm",
                self.upstreams.coupons.clone(),
                check_coupon,
                crm::CheckCouponRequest {
                    code: code.clone(),
                    customer_id: customer_id.to_owned(),
                    channel_id: channel_id.to_owned(),
                }
            )
            .map_err(|e| match e {
                Error::NotFound(_) | Error::NotFoundAt { .. } => {
                    Error::not_found_at(&field, format!("coupon {code}"))
                }
                other => other.within(&format!("{field}.")),
            })?;
            let Some(coupon) = response.coupon else {
                return Err(Error::not_found_at(&field, format!("coupon {code}")));
            };
            if !response.usable {
                return Err(Error::precondition(
                    "COUPON_NOT_USABLE",
                    field,
                    format!("coupon {code} cannot be used: {}", response.reason),
                ));
            }
            let mut effect = coupon.effect.clone().unwrap_or_default();
            effect.code = code.clone();
            effect.coupon_id = coupon.id.clone();
            checked.push((coupon, effect));
        }
        Ok(checked)
    }

    async fn place_leased(
        &self,
        input: &PlaceInput,
        scope: &str,
        lease: store::Lease,
        actor: &str,
        held: &mut Held,
    ) -> Result<Placed> {
        let store::Lease {
            order_id,
            attempt,
            generation,
            sequence,
        } = lease;
        let now = Utc::now();
        // Independent look-ups run side by side: the channel with the customer, then the tier
        // with the coupons, then the quote with the sourcing decision.
        let (channel, customer) = tokio::try_join!(
            self.upstreams.channel(&input.channel_id, "channel_id"),
            self.resolve(&input.customer),
        )?;
        let customer_id = customer.as_ref().map(|c| c.id.clone()).unwrap_or_default();
        if customer.as_ref().is_some_and(|c| c.erased) {
            return Err(Error::precondition(
                "CUSTOMER_ERASED",
                "customer",
                "the customer's data was erased; they cannot order under this record",
            ));
        }
        let (tier, coupons) = tokio::try_join!(
            async {
                match &customer {
                    Some(c) => self.customer_tier(&c.id).await,
                    None => Ok(String::new()),
                }
            },
            self.check_coupons(&input.coupon_codes, &customer_id, &input.channel_id),
        )?;
        let quoting = async {
            call!(
                "catalog",
                self.upstreams.quotes.clone(),
                quote,
                catalog::QuoteRequest {
                    channel_id: input.channel_id.clone(),
                    customer_tier: tier.clone(),
                    customer_id: customer_id.clone(),
                    lines: input
                        .lines
                        .iter()
                        .enumerate()
                        .map(|(i, l)| catalog::QuoteLineInput {
                            sku_id: l.sku_id.clone(),
                            quantity: i32::try_from(l.quantity).unwrap_or(i32::MAX),
                            line_ref: i.to_string(),
                        })
                        .collect(),
                    coupons: coupons.iter().map(|(_, e)| e.clone()).collect(),
                    priced_at: ts(now),
                }
            )
        };
        let subject = if customer_id.is_empty() {
            order_id.to_string()
        } else {
            customer_id.clone()
        };
        let sourcing = async {
            let (strategy, experiment) = {
                let mut conn = self.pool.acquire().await?;
                self.strategy_for(&mut conn, &input.channel_id, &subject)
                    .await?
            };
            self.source(
                &input.channel_id,
                &input.lines,
                &input.delivery,
                strategy,
                experiment,
                &HashMap::new(),
            )
            .await
        };
        // The quote's refusals (unknown or unlisted SKUs) come first: they explain a sourcing
        // failure too.
        let (quote, sourced) = tokio::join!(quoting, sourcing);
        let quote = quote?;
        let sourced = sourced?;
        if let Some(code) = quote.unapplied_coupon_codes.first() {
            let index = input
                .coupon_codes
                .iter()
                .position(|c| c == code)
                .unwrap_or_default();
            return Err(Error::precondition(
                "COUPON_NOT_APPLICABLE",
                format!("coupon_codes[{index}]"),
                format!(
                    "coupon {code} does not apply: minimum spend not reached or no eligible line"
                ),
            ));
        }
        let currency = channel.currency.clone();
        let credit = input.exchange_of.as_ref().map_or(0, |(_, c)| *c);
        let total = minor(quote.total.as_ref());
        let due = (total - credit).max(0);
        if let Some(payment) = &input.payment {
            check_payment(payment, due, &currency)?;
        }

        // Stock held for every line or none. The key is the order's and its hold generation:
        // a retry after a lost reply gets the same hold back, never a second one; once that
        // hold has ended (given back by a failed try, or expired) the key moves on.
        // A little longer than the payment window, so the sweeper cancels an unpaid order
        // before its hold ends; a hold whose order never committed expires by itself.
        let window = self.settings.payment_window;
        let hold_for = window + window.min(std::time::Duration::from_secs(300));
        let reserve = async |generation: i32| {
            call!(
                "inventory",
                self.upstreams.reservations.clone(),
                reserve,
                inventory::ReserveRequest {
                    idempotency_key: format!("order/{order_id}/hold/{generation}"),
                    lines: input
                        .lines
                        .iter()
                        .zip(&sourced.line_locations)
                        .map(|(l, location)| inventory::ReserveLine {
                            sku_id: l.sku_id.clone(),
                            quantity: l.quantity,
                            location_ids: vec![location.clone()],
                        })
                        .collect(),
                    channel_id: input.channel_id.clone(),
                    ttl: prost_types::Duration::try_from(hold_for).ok(),
                    reference: order_id.to_string(),
                }
            )
        };
        held.hold_unknown = true;
        let reserved = reserve(generation).await;
        held.hold_unknown = reserved.as_ref().is_err_and(|e| !refused(e));
        let mut reservation = reserved?
            .reservation
            .ok_or_else(|| Error::internal("inventory returned no reservation"))?;
        // A retry may get back a hold whose reply was lost; the reply replayed is as it was
        // then, so the hold is renewed for a full period, or replaced once it has ended
        // (retries only: the first try's hold is new).
        if attempt > 1 {
            match self.renew_hold(&reservation.id, hold_for).await? {
                Some(renewed) => reservation = renewed,
                None => {
                    let caller_key = idempotency::caller_key(actor, &input.idempotency_key);
                    let next =
                        store::next_generation(&self.pool, scope, &caller_key, generation).await?;
                    reservation = reserve(next)
                        .await?
                        .reservation
                        .ok_or_else(|| Error::internal("inventory returned no reservation"))?;
                }
            }
        }
        held.reservation_id = Some(reservation.id.clone());
        if reservation.status() != inventory::ReservationStatus::Active {
            return Err(Error::Aborted(
                "this key's stock hold has ended; place the order again".to_owned(),
            ));
        }

        // Build the order.
        let (lines, fulfilments) = order_lines(
            &quote.lines,
            &sourced.line_locations,
            OrderStatus::PendingPayment,
        );
        let mut decision = sourced.decision;
        for allocation in &mut decision.allocations {
            allocation.line_ids = lines
                .iter()
                .filter(|l| l.location_id == allocation.location_id)
                .map(|l| l.id.clone())
                .collect();
        }
        let applied: Vec<AppliedCoupon> = coupons
            .iter()
            .map(|(coupon, effect)| AppliedCoupon {
                code: effect.code.clone(),
                coupon_id: coupon.id.clone(),
                issuing_channel_id: coupon.issuing_channel_id.clone(),
                discount: Some(money(
                    lines
                        .iter()
                        .flat_map(|l| &l.discounts)
                        .filter(|d| d.coupon_code == effect.code)
                        .map(|d| minor(d.amount.as_ref()))
                        .sum(),
                    &currency,
                )),
            })
            .collect();

        // Coupons: at most once across every channel; crm refuses the loser of a race. Each is
        // counted as held before the call: a redemption whose reply is lost is given back too
        // (crm releases a code only for the order it was redeemed for).
        for (i, (_, effect)) in coupons.iter().enumerate() {
            let discount = applied[i].discount.clone();
            held.redeemed.push(effect.code.clone());
            call!(
                "crm",
                self.upstreams.coupons.clone(),
                redeem_coupon,
                crm::RedeemCouponRequest {
                    idempotency_key: format!("order/{order_id}/{attempt}/coupon/{}", effect.code),
                    code: effect.code.clone(),
                    customer_id: customer_id.clone(),
                    channel_id: input.channel_id.clone(),
                    order_id: order_id.to_string(),
                    discount,
                }
            )
            .map_err(|e| e.within(&format!("coupon_codes[{i}].")))?;
        }

        let kind = input.delivery.kind();
        let mut order = Order {
            id: order_id.to_string(),
            order_number: domain::order_number(now.year(), now.month(), sequence),
            channel_id: input.channel_id.clone(),
            channel_kind: channel.kind,
            channel_order_ref: input.channel_order_ref.clone(),
            customer_id: customer_id.clone(),
            store_id: input.store_id.clone(),
            associate_id: input.associate_id.clone(),
            status: OrderStatus::PendingPayment as i32,
            delivery: Some(input.delivery.clone()),
            lines,
            coupons: applied,
            subtotal: quote.subtotal.clone(),
            discount_total: quote.discount_total.clone(),
            total: quote.total.clone(),
            payment: None,
            refunded_total: Some(money(0, &currency)),
            sourcing: Some(decision),
            fulfilments,
            pickup: (kind == DeliveryKind::Pickup).then(|| Pickup {
                store_id: input.delivery.store_id.clone(),
                pickup_code: domain::pickup_code(rand::thread_rng().r#gen()),
                ..Default::default()
            }),
            reservation_id: reservation.id.clone(),
            customer_tier: tier,
            cancellation_reason: 0,
            history: vec![StatusChange {
                status: OrderStatus::PendingPayment as i32,
                changed_at: ts(now),
                actor_id: actor.to_owned(),
                fulfilment_id: String::new(),
                note: String::new(),
            }],
            exchange_of_order_id: input
                .exchange_of
                .as_ref()
                .map(|(id, _)| id.clone())
                .unwrap_or_default(),
            placed_at: ts(now),
            payment_due_at: ts(
                now + ChronoDuration::from_std(self.settings.payment_window).unwrap_or_default()
            ),
            confirmed_at: None,
            completed_at: None,
            cancelled_at: None,
            address_change_deadline: (kind == DeliveryKind::Ship).then(|| {
                omni_runtime::time::timestamp(
                    now + ChronoDuration::from_std(self.settings.address_change_window)
                        .unwrap_or_default(),
                )
            }),
            updated_at: ts(now),
            imported: false,
        };

        let locations = self.upstreams.locations(false).await?;
        let mut changes = Changes::default();
        changes.push(
            "orders.order_placed",
            Payload::OrderPlaced(OrderPlaced {
                order: Some(facts(&order, &locations)),
            }),
        );
        if let Some(payment) = &input.payment {
            self.pay_effects(&order).await?;
            confirmed(
                &mut order,
                payment.clone(),
                actor,
                &mut changes,
                &locations,
                &self.settings,
                now,
            );
        }
        // The reply is stored with the key first: a newer try that committed already wins.
        let mut tx = self.pool.begin().await?;
        let subject = order.id.clone();
        let reply = PlaceOrderResponse {
            order: Some(order),
            created: true,
        };
        if let Some(mut earlier) = idempotency::record_about(
            &mut tx,
            scope,
            actor,
            "idempotency_key",
            &input.idempotency_key,
            &input.request,
            &subject,
            &reply,
        )
        .await?
        {
            earlier.created = false;
            return Ok(Placed::Overtaken(earlier));
        }
        let order = reply
            .order
            .as_ref()
            .ok_or_else(|| Error::internal("no order"))?;
        store::insert_order(&mut tx, order, credit).await?;
        for (event_type, payload) in changes.events {
            self.outbox
                .add(&mut tx, event_type, &order.id, actor, payload)
                .await?;
        }
        store::settle_attempt(
            &mut tx,
            scope,
            &idempotency::caller_key(actor, &input.idempotency_key),
        )
        .await?;
        tx.commit().await?;
        Ok(Placed::Committed(reply))
    }
}

/// The order's lines as quoted, each leaving from its location, with one fulfilment (in
/// `status`) per location.
pub(super) fn order_lines(
    quoted: &[catalog::QuotedLine],
    locations: &[String],
    status: OrderStatus,
) -> (Vec<OrderLine>, Vec<Fulfilment>) {
    let mut fulfilments: Vec<Fulfilment> = Vec::new();
    let mut lines = Vec::new();
    for (quoted, location) in quoted.iter().zip(locations) {
        let fulfilment = fulfilment_at(&mut fulfilments, location, status);
        let line_id = Uuid::now_v7().to_string();
        fulfilment.line_ids.push(line_id.clone());
        lines.push(OrderLine {
            id: line_id,
            sku_id: quoted.sku_id.clone(),
            sku_code: quoted.sku_code.clone(),
            product_id: quoted.product_id.clone(),
            product_name: quoted.product_name.clone(),
            category_id: quoted.category_id.clone(),
            quantity: quoted.quantity,
            unit_price: quoted.unit_price.clone(),
            unit_cost: quoted.unit_cost.clone(),
            discount: quoted.discount_amount.clone(),
            discounts: quoted
                .discounts
                .iter()
                .map(|d| LineDiscount {
                    promotion_id: d.promotion_id.clone(),
                    coupon_code: d.coupon_code.clone(),
                    label: d.label.clone(),
                    amount: d.amount.clone(),
                })
                .collect(),
            net_amount: quoted.net_amount.clone(),
            location_id: location.clone(),
            fulfilment_id: fulfilment.id.clone(),
            returned_quantity: 0,
        });
    }
    (lines, fulfilments)
}

/// A payment must be the amount due, in the order's currency.
pub(super) fn check_payment(payment: &Payment, due: i64, currency: &str) -> Result<()> {
    let amount = payment.amount.clone().unwrap_or_default();
    if amount.currency != currency || amount.minor_units != due {
        return Err(Error::precondition(
            "PAYMENT_AMOUNT_MISMATCH",
            "payment.amount",
            format!(
                "the payment must be {due} {currency} (minor units), the amount due; got {} {}",
                amount.minor_units, amount.currency
            ),
        ));
    }
    Ok(())
}

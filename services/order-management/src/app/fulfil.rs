//! An order after placement: payment, picking, the pickup clock and hand-over, shipping and
//! delivery, cancellation, address changes, and the sweeper that expires what ran out of time.

use std::collections::HashMap;

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use omni_proto::events::event::Payload;
use omni_proto::events::{
    OrderCancelled, OrderFulfilled, OrderPaid, OrderReadyForPickup, OrderShipped,
};
use omni_proto::omni::inventory::v1 as inventory;
use omni_proto::omni::orders::v1::{
    CancellationReason, DeliveryKind, Fulfilment, Order, OrderStatus, Payment,
};
use omni_runtime::idempotency::{self, Claim};
use omni_runtime::{Error, Result};
use prost::Message;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::place::check_payment;
use super::steps::{self, Decision, Effect, Keyed, Outcome, Pending, refused};
use super::{App, Changes, currency, facts, fulfilment_at, minor, transition, ts};
use crate::domain::{self, Want};
use crate::store;
use crate::upstream::{Locations, call};

/// The fulfilment a request names, or the order's only one.
fn fulfilment_index(order: &Order, id: &str) -> Result<usize> {
    if id.is_empty() {
        let active: Vec<usize> = (0..order.fulfilments.len())
            .filter(|&i| order.fulfilments[i].status() != OrderStatus::Cancelled)
            .collect();
        return match active.as_slice() {
            [only] => Ok(*only),
            _ => Err(Error::invalid(
                "fulfilment_id",
                "is required: the order has several fulfilments",
            )),
        };
    }
    order
        .fulfilments
        .iter()
        .position(|f| f.id == id)
        .ok_or_else(|| {
            Error::not_found_at(
                "fulfilment_id",
                format!("fulfilment {id} of order {}", order.id),
            )
        })
}

fn illegal(order: &Order, f: &Fulfilment, to: OrderStatus) -> Error {
    Error::precondition(
        "ILLEGAL_TRANSITION",
        format!("orders/{}/fulfilments/{}", order.id, f.id),
        format!(
            "a fulfilment in {} cannot become {}",
            f.status().as_str_name(),
            to.as_str_name()
        ),
    )
}

/// The reservation parts a fulfilment's lines hold.
fn parts(order: &Order, f: &Fulfilment) -> Vec<inventory::ReservationLinePart> {
    order
        .lines
        .iter()
        .filter(|l| f.line_ids.contains(&l.id))
        .map(|l| inventory::ReservationLinePart {
            sku_id: l.sku_id.clone(),
            location_id: l.location_id.clone(),
            quantity: i64::from(l.quantity),
        })
        .collect()
}

/// What a fulfilment step needs besides the order.
#[derive(Debug, Clone)]
pub enum Step {
    Pick,
    Ready,
    HandOver {
        pickup_code: String,
    },
    Ship {
        carrier: String,
        tracking_number: String,
    },
    Deliver {
        at: Option<DateTime<Utc>>,
    },
}

fn carried_out(order: &Order) -> bool {
    order
        .delivery
        .as_ref()
        .is_some_and(|d| d.kind() == DeliveryKind::CarryOut)
}

/// Whether the order's address may change now.
fn check_address_change(order: &Order, now: DateTime<Utc>) -> Result<()> {
    let subject = format!("orders/{}", order.id);
    if order.delivery.as_ref().map(|d| d.kind()) != Some(DeliveryKind::Ship) {
        return Err(Error::precondition(
            "NOT_A_SHIP_ORDER",
            subject,
            "only orders delivered to an address have one to change",
        ));
    }
    if matches!(
        order.status(),
        OrderStatus::Cancelled | OrderStatus::Completed
    ) || order
        .fulfilments
        .iter()
        .any(|f| matches!(f.status(), OrderStatus::Shipped | OrderStatus::Completed))
    {
        return Err(Error::precondition(
            "ALREADY_SHIPPED",
            subject,
            "the order has shipped (or ended); its address can no longer change",
        ));
    }
    let deadline = order
        .address_change_deadline
        .as_ref()
        .and_then(omni_runtime::time::from_timestamp);
    if deadline.is_none_or(|d| now > d) {
        return Err(Error::precondition(
            "ADDRESS_CHANGE_WINDOW_CLOSED",
            subject,
            "the address can change only within 24 hours of placing the order",
        ));
    }
    Ok(())
}

/// Picking has started somewhere: the lines stay where they are.
fn picking(order: &Order) -> bool {
    order
        .fulfilments
        .iter()
        .any(|f| f.status() != OrderStatus::Allocated && f.status() != OrderStatus::PendingPayment)
}

fn line_locations(order: &Order) -> Vec<String> {
    order.lines.iter().map(|l| l.location_id.clone()).collect()
}

/// The step a store or warehouse asks for on a fulfilment: the fulfilment's index and the
/// status it moves to, or `None` when it is there already (a repeated call).
fn check_step(
    order: &Order,
    fulfilment_id: &str,
    step: &Step,
) -> Result<Option<(usize, OrderStatus)>> {
    let kind = order
        .delivery
        .as_ref()
        .map_or(DeliveryKind::Unspecified, |d| d.kind());
    let i = fulfilment_index(order, fulfilment_id)?;
    let f = &order.fulfilments[i];
    let (target, pickup_only, ship_only) = match step {
        Step::Pick => (OrderStatus::Picking, false, false),
        Step::Ready => (OrderStatus::ReadyForPickup, true, false),
        Step::HandOver { .. } => (OrderStatus::Completed, true, false),
        Step::Ship { .. } => (OrderStatus::Shipped, false, true),
        Step::Deliver { .. } => (OrderStatus::Completed, false, true),
    };
    if pickup_only && kind != DeliveryKind::Pickup {
        return Err(Error::precondition(
            "NOT_A_PICKUP_ORDER",
            format!("orders/{}", order.id),
            "only pickup orders are made ready for and handed over at a store",
        ));
    }
    if ship_only && kind != DeliveryKind::Ship {
        return Err(Error::precondition(
            "NOT_A_SHIP_ORDER",
            format!("orders/{}", order.id),
            "only orders delivered to an address are shipped",
        ));
    }
    // Repeating a step already made returns the order unchanged.
    let repeated = f.status() == target
        && match step {
            Step::Ship {
                tracking_number, ..
            } => f.tracking_number == *tracking_number,
            _ => true,
        };
    if repeated {
        return Ok(None);
    }
    let allowed = domain::fulfilment_transition_allowed(f.status(), target)
        && !(matches!(step, Step::HandOver { .. }) && f.status() != OrderStatus::ReadyForPickup)
        && !(matches!(step, Step::Deliver { .. }) && f.status() != OrderStatus::Shipped);
    if !allowed {
        return Err(illegal(order, f, target));
    }
    if let Step::HandOver { pickup_code } = step {
        let expected = order
            .pickup
            .as_ref()
            .map(|p| p.pickup_code.clone())
            .unwrap_or_default();
        if !domain::pickup_code_matches(&expected, pickup_code) {
            return Err(Error::invalid(
                "pickup_code",
                "does not match the order's pickup code",
            ));
        }
    }
    Ok(Some((i, target)))
}

/// The request that ends an order whose clock ran out, if it still has.
fn lapsed(order: &Order, now: DateTime<Utc>) -> Decision {
    let at = |t: Option<&prost_types::Timestamp>| t.and_then(omni_runtime::time::from_timestamp);
    let reason = match order.status() {
        OrderStatus::PendingPayment
            if at(order.payment_due_at.as_ref()).is_some_and(|d| d < now) =>
        {
            CancellationReason::PaymentExpired
        }
        OrderStatus::ReadyForPickup
            if at(order
                .pickup
                .as_ref()
                .and_then(|p| p.pickup_deadline.as_ref()))
            .is_some_and(|d| d < now) =>
        {
            CancellationReason::NotCollected
        }
        _ => return Decision::Unchanged,
    };
    Decision::Step(Effect::Cancel(steps::Cancel {
        reason: reason as i32,
        note: String::new(),
    }))
}

impl App {
    /// Runs `change` on the locked order in one transaction, with the idempotency key when one
    /// is given, and announces the change after commit. For changes that call no other
    /// service; those that do are steps ([`App::run_step`]).
    async fn change<Q, R, F>(
        &self,
        key: Option<(&str, &str, &Q)>,
        order_id: Uuid,
        actor: &str,
        change: F,
    ) -> Result<R>
    where
        Q: Message,
        R: Message + Default + Clone,
        F: FnOnce(&mut Order, &mut Changes, &Locations) -> Result<R>,
    {
        let locations = self.upstreams.known_locations().await?;
        let mut tx = self.pool.begin().await?;
        if let Some((scope, key, request)) = key
            && let Claim::Replay(reply) =
                idempotency::claim::<_, R>(&mut tx, scope, actor, "idempotency_key", key, request)
                    .await?
        {
            return Ok(reply);
        }
        let mut stored = Self::lock(&mut tx, order_id, "order_id").await?;
        let mut changes = Changes::default();
        let before = stored.order.encode_to_vec();
        let reply = change(&mut stored.order, &mut changes, &locations)?;
        let changed = stored.order.encode_to_vec() != before;
        if changed {
            self.save(&mut tx, &stored.order, actor, changes).await?;
        }
        if let Some((scope, key, _)) = key {
            let subject = order_id.to_string();
            idempotency::complete_about(&mut tx, scope, actor, key, &subject, &reply).await?;
        }
        tx.commit().await?;
        if changed {
            self.announce(&stored.order.id).await;
        }
        Ok(reply)
    }

    /// Commits what a step's calls did.
    pub(super) fn apply_effect(
        &self,
        order: &mut Order,
        pending: &Pending,
        outcome: &Outcome,
        locations: &Locations,
        changes: &mut Changes,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let actor = pending.actor.as_str();
        match &pending.effect {
            Some(Effect::Pay(payment)) => {
                confirmed(
                    order,
                    payment.clone(),
                    actor,
                    changes,
                    locations,
                    &self.settings,
                    now,
                );
            }
            Some(Effect::Cancel(step)) => {
                let reason = CancellationReason::try_from(step.reason)
                    .unwrap_or(CancellationReason::Unspecified);
                cancelled(order, reason, &step.note, actor, changes, locations, now);
            }
            Some(Effect::Move(step)) => {
                let reservation_id = outcome
                    .reservation_id
                    .clone()
                    .ok_or_else(|| Error::internal("a move without its new hold"))?;
                moved(order, step, reservation_id, actor, now);
            }
            Some(Effect::Fulfil(step)) => {
                fulfilled(order, step, actor, changes, locations, now)?;
            }
            None => return Err(Error::internal("an order step without an effect")),
        }
        Ok(())
    }

    /// A payment's effect: the hold no longer expires; carried out, the stock leaves at once.
    pub(super) async fn pay_effects(&self, order: &Order) -> Result<()> {
        if carried_out(order) {
            let order_id = order.id.clone();
            call!(
                "inventory",
                self.upstreams.reservations.clone(),
                fulfil,
                inventory::FulfilRequest {
                    idempotency_key: format!("order/{order_id}/carry-out"),
                    reservation_id: order.reservation_id.clone(),
                    lines: Vec::new(),
                    reference: order_id,
                }
            )?;
            return Ok(());
        }
        self.hold_until_handover(&order.reservation_id).await
    }

    /// The hold no longer expires: a paid order keeps its stock until it leaves.
    async fn hold_until_handover(&self, reservation_id: &str) -> Result<()> {
        call!(
            "inventory",
            self.upstreams.reservations.clone(),
            extend_reservation,
            inventory::ExtendReservationRequest {
                reservation_id: reservation_id.to_owned(),
                expiry: Some(inventory::extend_reservation_request::Expiry::NoExpiry(
                    true
                )),
            }
        )?;
        Ok(())
    }

    pub async fn record_payment(
        &self,
        request: &omni_proto::omni::orders::v1::RecordPaymentRequest,
        order_id: Uuid,
        payment: Payment,
        actor: &str,
    ) -> Result<Order> {
        let reply = self
            .run_step(
                Some(Keyed {
                    scope: "RecordPayment",
                    key: &request.idempotency_key,
                    request,
                }),
                order_id,
                actor,
                |stored| {
                    let order = &stored.order;
                    let same = order.payment.as_ref().is_some_and(|p| {
                        p.provider_reference == payment.provider_reference
                            && p.amount == payment.amount
                    });
                    if order.status() != OrderStatus::PendingPayment {
                        if same {
                            return Ok(Decision::Unchanged);
                        }
                        return Err(Error::precondition(
                            "ORDER_NOT_AWAITING_PAYMENT",
                            format!("orders/{}", order.id),
                            format!("the order is {}", order.status().as_str_name()),
                        ));
                    }
                    let due = (minor(order.total.as_ref()) - stored.credit_minor).max(0);
                    check_payment(&payment, due, &currency(order))?;
                    Ok(Decision::Step(Effect::Pay(payment.clone())))
                },
                |order| omni_proto::omni::orders::v1::RecordPaymentResponse { order: Some(order) },
            )
            .await?;
        reply.order.ok_or_else(|| Error::internal("no order"))
    }

    /// A store or warehouse step on one fulfilment.
    pub async fn step(
        &self,
        order_id: Uuid,
        fulfilment_id: &str,
        step: Step,
        actor: &str,
    ) -> Result<Order> {
        if let Step::HandOver { .. } | Step::Ship { .. } = step {
            // The units leave: inventory is told, outside the order's lock.
            return self
                .run_step(
                    None::<Keyed<'_, Order>>,
                    order_id,
                    actor,
                    |stored| {
                        let order = &stored.order;
                        let Some((i, _)) = check_step(order, fulfilment_id, &step)? else {
                            return Ok(Decision::Unchanged);
                        };
                        let (ship, carrier, tracking_number) = match &step {
                            Step::Ship {
                                carrier,
                                tracking_number,
                            } => (true, carrier.clone(), tracking_number.clone()),
                            _ => (false, String::new(), String::new()),
                        };
                        Ok(Decision::Step(Effect::Fulfil(steps::Fulfil {
                            fulfilment_id: order.fulfilments[i].id.clone(),
                            ship,
                            carrier,
                            tracking_number,
                        })))
                    },
                    |order| order,
                )
                .await;
        }
        let reply: omni_proto::omni::orders::v1::GetOrderResponse = self
            .change(
                None::<(&str, &str, &Order)>,
                order_id,
                actor,
                |order, changes, locations| {
                    if let Some(at) = check_step(order, fulfilment_id, &step)? {
                        self.local_step(order, at, &step, actor, changes, locations);
                    }
                    Ok(omni_proto::omni::orders::v1::GetOrderResponse {
                        order: Some(order.clone()),
                    })
                },
            )
            .await?;
        reply.order.ok_or_else(|| Error::internal("no order"))
    }

    /// The steps that stay within order-management: picking, ready, delivered.
    fn local_step(
        &self,
        order: &mut Order,
        (i, target): (usize, OrderStatus),
        step: &Step,
        actor: &str,
        changes: &mut Changes,
        locations: &Locations,
    ) {
        let now = Utc::now();
        match step {
            Step::Ready => {
                transition(order, changes, target, Some(i), actor, "", now);
                let hold = ChronoDuration::from_std(self.settings.pickup_hold).unwrap_or_default();
                let pickup = order.pickup.get_or_insert_default();
                pickup.ready_at = ts(now);
                pickup.pickup_deadline = ts(now + hold);
                let promised = pickup
                    .promised_ready_at
                    .as_ref()
                    .and_then(omni_runtime::time::from_timestamp);
                pickup.ready_within_promise = promised.is_some_and(|p| now <= p);
                let pickup = pickup.clone();
                changes.push(
                    "orders.order_ready_for_pickup",
                    Payload::OrderReadyForPickup(OrderReadyForPickup {
                        order_id: order.id.clone(),
                        order_number: order.order_number.clone(),
                        channel_id: order.channel_id.clone(),
                        customer_id: order.customer_id.clone(),
                        store_id: pickup.store_id.clone(),
                        pickup_code: pickup.pickup_code.clone(),
                        confirmed_at: order.confirmed_at,
                        promised_ready_at: pickup.promised_ready_at,
                        ready_at: pickup.ready_at,
                        ready_within_promise: pickup.ready_within_promise,
                        pickup_deadline: pickup.pickup_deadline,
                    }),
                );
            }
            Step::Deliver { at } => {
                let at = at.unwrap_or(now);
                transition(order, changes, target, Some(i), actor, "delivered", at);
                if order.status() == OrderStatus::Completed {
                    completed(order, changes, locations, at);
                }
            }
            _ => {
                transition(order, changes, target, Some(i), actor, "", now);
            }
        }
    }

    /// The units of a fulfilment leave its location: on hand and reserved both drop.
    pub(super) async fn fulfil_effects(&self, order: &Order, step: &steps::Fulfil) -> Result<()> {
        let f = order
            .fulfilments
            .iter()
            .find(|f| f.id == step.fulfilment_id)
            .ok_or_else(|| Error::internal("a fulfilment step for an unknown fulfilment"))?;
        call!(
            "inventory",
            self.upstreams.reservations.clone(),
            fulfil,
            inventory::FulfilRequest {
                idempotency_key: format!("fulfilment/{}", f.id),
                reservation_id: order.reservation_id.clone(),
                lines: parts(order, f),
                reference: order.id.clone(),
            }
        )?;
        Ok(())
    }

    pub async fn cancel(
        &self,
        request: &omni_proto::omni::orders::v1::CancelOrderRequest,
        order_id: Uuid,
        reason: CancellationReason,
        note: &str,
        actor: &str,
    ) -> Result<Order> {
        let reply = self
            .run_step(
                Some(Keyed {
                    scope: "CancelOrder",
                    key: &request.idempotency_key,
                    request,
                }),
                order_id,
                actor,
                |stored| {
                    let order = &stored.order;
                    if order.status() == OrderStatus::Cancelled {
                        return Ok(Decision::Unchanged);
                    }
                    if !domain::cancellable(order) {
                        return Err(Error::precondition(
                            "ORDER_HANDED_OVER",
                            format!("orders/{}", order.id),
                            format!(
                                "the order is {} and items have left; return them instead",
                                order.status().as_str_name()
                            ),
                        ));
                    }
                    Ok(Decision::Step(Effect::Cancel(steps::Cancel {
                        reason: reason as i32,
                        note: note.to_owned(),
                    })))
                },
                |order| omni_proto::omni::orders::v1::CancelOrderResponse { order: Some(order) },
            )
            .await?;
        reply.order.ok_or_else(|| Error::internal("no order"))
    }

    /// A cancellation's effect: the hold and the coupons given back.
    pub(super) async fn cancel_effects(&self, order: &Order) -> Result<()> {
        let released = call!(
            "inventory",
            self.upstreams.reservations.clone(),
            release,
            inventory::ReleaseRequest {
                idempotency_key: format!("order/{}/cancel", order.id),
                reservation_id: order.reservation_id.clone(),
                lines: Vec::new(),
                reason: "order cancelled".to_owned(),
            }
        );
        match released {
            // Already ended (expired) holds need no release.
            Ok(_) | Err(Error::FailedPrecondition { .. }) => {}
            Err(e) => return Err(e),
        }
        let id = Uuid::parse_str(&order.id).map_err(|_| Error::internal("order id"))?;
        for coupon in &order.coupons {
            if !self
                .release_coupon(id, &coupon.code, "order cancelled")
                .await
            {
                return Err(Error::Unavailable(
                    "crm could not give the order's coupons back".to_owned(),
                ));
            }
        }
        Ok(())
    }

    /// Changes a ship-to address within the window and before shipment; re-sources when the
    /// new address makes other locations better and nothing is being picked yet.
    pub async fn change_address(
        &self,
        request: &omni_proto::omni::orders::v1::ChangeDeliveryAddressRequest,
        order_id: Uuid,
        address: omni_proto::common::Address,
        actor: &str,
    ) -> Result<(Order, bool)> {
        use omni_proto::omni::orders::v1::ChangeDeliveryAddressResponse as Response;
        let done = {
            let mut conn = self.pool.acquire().await?;
            idempotency::lookup::<_, Response>(
                &mut conn,
                "ChangeDeliveryAddress",
                actor,
                "idempotency_key",
                &request.idempotency_key,
                request,
            )
            .await?
        };
        let reply = match done {
            Some(reply) => reply,
            None => {
                // Where the lines would leave from, worked out before any lock (reads only).
                let current = self.order(order_id, "order_id").await?.order;
                check_address_change(&current, Utc::now())?;
                match self.plan_move(&current, &address).await? {
                    Some(planned) => {
                        let basis = line_locations(&current);
                        self.run_step(
                            Some(Keyed {
                                scope: "ChangeDeliveryAddress",
                                key: &request.idempotency_key,
                                request,
                            }),
                            order_id,
                            actor,
                            |stored| {
                                check_address_change(&stored.order, Utc::now())?;
                                if picking(&stored.order) || line_locations(&stored.order) != basis
                                {
                                    return Err(Error::Aborted(
                                        "the order changed while its new route was worked out; retry"
                                            .to_owned(),
                                    ));
                                }
                                Ok(Decision::Step(Effect::Move(planned)))
                            },
                            |order| Response {
                                order: Some(order),
                                resourced: true,
                            },
                        )
                        .await?
                    }
                    None => {
                        self.change(
                            Some(("ChangeDeliveryAddress", &request.idempotency_key, request)),
                            order_id,
                            actor,
                            |order, _changes, _locations| {
                                check_address_change(order, Utc::now())?;
                                let delivery = order.delivery.get_or_insert_default();
                                delivery.address = Some(address);
                                order.updated_at = ts(Utc::now());
                                Ok(Response {
                                    order: Some(order.clone()),
                                    resourced: false,
                                })
                            },
                        )
                        .await?
                    }
                }
            }
        };
        Ok((
            reply.order.ok_or_else(|| Error::internal("no order"))?,
            reply.resourced,
        ))
    }

    /// The move a new address calls for: `None` when the lines stay where they are (picking
    /// has started, or the current locations are still the best).
    async fn plan_move(
        &self,
        order: &Order,
        address: &omni_proto::common::Address,
    ) -> Result<Option<steps::Move>> {
        if picking(order) {
            return Ok(None);
        }
        let new_delivery = omni_proto::omni::orders::v1::Delivery {
            address: Some(address.clone()),
            ..order.delivery.clone().unwrap_or_default()
        };
        let wants: Vec<Want> = order
            .lines
            .iter()
            .map(|l| Want {
                sku_id: l.sku_id.clone(),
                quantity: i64::from(l.quantity),
            })
            .collect();
        // What this order holds counts as available where it is.
        let mut held: HashMap<String, HashMap<String, i64>> = HashMap::new();
        for l in &order.lines {
            *held
                .entry(l.location_id.clone())
                .or_default()
                .entry(l.sku_id.clone())
                .or_default() += i64::from(l.quantity);
        }
        let sourcing = order.sourcing.clone().unwrap_or_default();
        let sourced = self
            .source(
                &order.channel_id,
                &wants,
                &new_delivery,
                sourcing.strategy(),
                sourcing.experiment.clone(),
                &held,
            )
            .await?;
        if sourced.line_locations == line_locations(order) {
            return Ok(None);
        }
        Ok(Some(steps::Move {
            address: Some(address.clone()),
            locations: sourced.line_locations,
            decision: Some(sourced.decision),
        }))
    }

    /// A move's effect: the lines held at their new locations, then the old hold given back.
    /// Returns the new hold.
    pub(super) async fn move_effects(
        &self,
        order: &Order,
        step_id: &str,
        step: &steps::Move,
    ) -> Result<String> {
        let due = order
            .payment_due_at
            .as_ref()
            .and_then(omni_runtime::time::from_timestamp);
        let ttl = due.map(|d| {
            (d - Utc::now()).to_std().unwrap_or_default() + std::time::Duration::from_secs(300)
        });
        let reservation = call!(
            "inventory",
            self.upstreams.reservations.clone(),
            reserve,
            inventory::ReserveRequest {
                idempotency_key: format!("order/{}/move/{step_id}", order.id),
                lines: order
                    .lines
                    .iter()
                    .zip(&step.locations)
                    .map(|(l, location)| inventory::ReserveLine {
                        sku_id: l.sku_id.clone(),
                        quantity: i64::from(l.quantity),
                        location_ids: vec![location.clone()],
                    })
                    .collect(),
                channel_id: order.channel_id.clone(),
                ttl: ttl.and_then(|t| prost_types::Duration::try_from(t).ok()),
                reference: order.id.clone(),
            }
        )?
        .reservation
        .ok_or_else(|| Error::internal("inventory returned no reservation"))?;
        if reservation.status() != inventory::ReservationStatus::Active {
            return Err(Error::precondition(
                "HOLD_ENDED",
                format!("orders/{}", order.id),
                "the stock held for the new address is no longer held; change the address again",
            ));
        }
        if order.payment.is_some()
            && let Err(e) = self.hold_until_handover(&reservation.id).await
        {
            if refused(&e) {
                self.release_stray(
                    Uuid::parse_str(&order.id).map_err(|_| Error::internal("order id"))?,
                    &reservation.id,
                )
                .await;
            }
            return Err(e);
        }
        let released = call!(
            "inventory",
            self.upstreams.reservations.clone(),
            release,
            inventory::ReleaseRequest {
                idempotency_key: format!("order/{}/move/{step_id}/release", order.id),
                reservation_id: order.reservation_id.clone(),
                lines: Vec::new(),
                reason: "order re-sourced after an address change".to_owned(),
            }
        );
        match released {
            Ok(_) | Err(Error::FailedPrecondition { .. }) => {}
            Err(e) => return Err(e),
        }
        Ok(reservation.id)
    }

    /// Cancels what ran out of time (unpaid orders, uncollected pickups), settles steps whose
    /// process went away, and gives back the coupons of placements that never became orders,
    /// every `interval` until `shutdown`.
    pub async fn sweep_loop(
        self: std::sync::Arc<Self>,
        interval: std::time::Duration,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            if let Err(e) = self.sweep_once().await {
                tracing::warn!(error = %e, "order sweep failed; retrying");
            }
        }
    }

    pub async fn sweep_once(&self) -> Result<usize> {
        let now = Utc::now();
        let horizon = ChronoDuration::from_std(self.settings.resume_after).unwrap_or_default();
        let mut done = self.resume_stale_steps(now - horizon).await?;
        for return_id in store::stale_restocks(&self.pool, now - horizon, 20).await? {
            self.restock(return_id).await;
        }
        // Each lapsed order is cancelled as a step of its own: no lock is held while inventory
        // and crm give its hold and coupons back, and a replica that got there first wins.
        for order_id in store::lapsed_orders(&self.pool, now, 20).await? {
            match self
                .run_step(
                    None::<Keyed<'_, Order>>,
                    order_id,
                    "",
                    |stored| Ok(lapsed(&stored.order, now)),
                    |order| order,
                )
                .await
            {
                Ok(order) if order.status() == OrderStatus::Cancelled => done += 1,
                Ok(_) | Err(Error::Aborted(_)) => {}
                Err(e) => {
                    tracing::warn!(error = %e, %order_id, "lapsed order not cancelled yet");
                }
            }
        }

        let mut tx = self.pool.begin().await?;
        let before = now - ChronoDuration::minutes(2);
        for attempt in store::abandoned_attempts(&mut tx, before, 50).await? {
            let mut all = true;
            for code in &attempt.coupon_codes {
                all &= self
                    .release_coupon(attempt.order_id, code, "order not placed")
                    .await;
            }
            if all {
                store::mark_released(&mut tx, &attempt.scope, &attempt.key).await?;
                done += 1;
            }
        }
        tx.commit().await?;
        Ok(done)
    }
}

/// Records the payment: confirmed, stock held until hand-over, allocated; a carry-out
/// completes at once.
pub(super) fn confirmed(
    order: &mut Order,
    mut payment: Payment,
    actor: &str,
    changes: &mut Changes,
    locations: &Locations,
    settings: &super::Settings,
    now: DateTime<Utc>,
) {
    if payment.paid_at.is_none() {
        payment.paid_at = ts(now);
    }
    order.payment = Some(payment.clone());
    order.confirmed_at = ts(now);
    order.payment_due_at = None;
    transition(
        order,
        changes,
        OrderStatus::Confirmed,
        None,
        actor,
        "payment recorded",
        now,
    );
    for f in &mut order.fulfilments {
        f.set_status(OrderStatus::Allocated);
    }
    transition(order, changes, OrderStatus::Allocated, None, actor, "", now);
    if let Some(pickup) = &mut order.pickup {
        pickup.promised_ready_at =
            ts(now + ChronoDuration::from_std(settings.pickup_promise).unwrap_or_default());
    }
    changes.push(
        "orders.order_paid",
        Payload::OrderPaid(OrderPaid {
            order: Some(facts(order, locations)),
            amount: payment.amount.clone(),
            method: payment.method,
            paid_at: payment.paid_at,
        }),
    );
    if carried_out(order) {
        for i in 0..order.fulfilments.len() {
            transition(
                order,
                changes,
                OrderStatus::Completed,
                Some(i),
                actor,
                "carried out",
                now,
            );
        }
        completed(order, changes, locations, now);
    }
}

fn completed(order: &mut Order, changes: &mut Changes, locations: &Locations, now: DateTime<Utc>) {
    order.completed_at = ts(now);
    if let Some(pickup) = &mut order.pickup
        && order
            .delivery
            .as_ref()
            .is_some_and(|d| d.kind() == DeliveryKind::Pickup)
    {
        pickup.handed_over_at = ts(now);
    }
    changes.push(
        "orders.order_fulfilled",
        Payload::OrderFulfilled(OrderFulfilled {
            order: Some(facts(order, locations)),
            fulfilled_at: ts(now),
        }),
    );
}

fn cancelled(
    order: &mut Order,
    reason: CancellationReason,
    note: &str,
    actor: &str,
    changes: &mut Changes,
    locations: &Locations,
    now: DateTime<Utc>,
) {
    let previous = order.status();
    for f in &mut order.fulfilments {
        f.set_status(OrderStatus::Cancelled);
    }
    order.cancellation_reason = reason as i32;
    order.cancelled_at = ts(now);
    order.payment_due_at = None;
    if let Some(payment) = &order.payment {
        order.refunded_total = payment.amount.clone();
    }
    transition(
        order,
        changes,
        OrderStatus::Cancelled,
        None,
        actor,
        note,
        now,
    );
    changes.push(
        "orders.order_cancelled",
        Payload::OrderCancelled(OrderCancelled {
            order: Some(facts(order, locations)),
            previous_status: previous as i32,
            reason: reason as i32,
            note: note.to_owned(),
            released_coupon_codes: order.coupons.iter().map(|c| c.code.clone()).collect(),
        }),
    );
}

/// The lines now leave from their new locations under the new hold.
fn moved(
    order: &mut Order,
    step: &steps::Move,
    reservation_id: String,
    actor: &str,
    now: DateTime<Utc>,
) {
    order.reservation_id = reservation_id;
    // New fulfilments, one per location, in line order.
    let status = order
        .fulfilments
        .first()
        .map_or(OrderStatus::Allocated, Fulfilment::status);
    let mut fulfilments: Vec<Fulfilment> = Vec::new();
    for (line, location) in order.lines.iter_mut().zip(&step.locations) {
        let fulfilment = fulfilment_at(&mut fulfilments, location, status);
        fulfilment.line_ids.push(line.id.clone());
        line.location_id = location.clone();
        line.fulfilment_id = fulfilment.id.clone();
    }
    order.fulfilments = fulfilments;
    let mut decision = step.decision.clone().unwrap_or_default();
    for allocation in &mut decision.allocations {
        allocation.line_ids = order
            .lines
            .iter()
            .filter(|l| l.location_id == allocation.location_id)
            .map(|l| l.id.clone())
            .collect();
    }
    order.sourcing = Some(decision);
    order.delivery.get_or_insert_default().address = step.address.clone();
    order.updated_at = ts(now);
    order
        .history
        .push(omni_proto::omni::orders::v1::StatusChange {
            status: order.status,
            changed_at: ts(now),
            actor_id: actor.to_owned(),
            fulfilment_id: String::new(),
            note: "address changed; re-sourced".to_owned(),
        });
}

/// A fulfilment handed over or shipped.
fn fulfilled(
    order: &mut Order,
    step: &steps::Fulfil,
    actor: &str,
    changes: &mut Changes,
    locations: &Locations,
    now: DateTime<Utc>,
) -> Result<()> {
    let i = fulfilment_index(order, &step.fulfilment_id)?;
    let f = order.fulfilments[i].clone();
    if !step.ship {
        transition(
            order,
            changes,
            OrderStatus::Completed,
            Some(i),
            actor,
            "handed over",
            now,
        );
        completed(order, changes, locations, now);
        return Ok(());
    }
    order.fulfilments[i].carrier = step.carrier.clone();
    order.fulfilments[i].tracking_number = step.tracking_number.clone();
    transition(
        order,
        changes,
        OrderStatus::Shipped,
        Some(i),
        actor,
        "",
        now,
    );
    let from_store = locations
        .by_id
        .get(&f.location_id)
        .is_some_and(|l| l.kind() == inventory::LocationKind::Store);
    changes.push(
        "orders.order_shipped",
        Payload::OrderShipped(OrderShipped {
            order_id: order.id.clone(),
            order_number: order.order_number.clone(),
            channel_id: order.channel_id.clone(),
            customer_id: order.customer_id.clone(),
            fulfilment_id: f.id.clone(),
            location_id: f.location_id.clone(),
            from_store,
            carrier: step.carrier.clone(),
            tracking_number: step.tracking_number.clone(),
            shipped_at: ts(now),
        }),
    );
    Ok(())
}

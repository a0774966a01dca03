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
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::place::check_payment;
use super::{App, Changes, currency, fulfilment_at, minor, transition, ts};
use crate::domain::{self, Want};
use crate::store;
use crate::upstream::call;

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

impl App {
    /// Runs `change` on the locked order in one transaction, with the idempotency key when one
    /// is given, and announces the change after commit.
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
        F: AsyncFnOnce(&mut PgConnection, &mut Order, &mut Changes) -> Result<R>,
    {
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
        let reply = change(&mut tx, &mut stored.order, &mut changes).await?;
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

    /// Records the payment: confirmed, stock held until hand-over, allocated; a carry-out
    /// completes at once.
    pub(super) async fn confirm(
        &self,
        order: &mut Order,
        payment: Payment,
        actor: &str,
        changes: &mut Changes,
    ) -> Result<()> {
        let now = Utc::now();
        let mut payment = payment;
        if payment.paid_at.is_none() {
            payment.paid_at = ts(now);
        }
        call!(
            "inventory",
            self.upstreams.reservations.clone(),
            extend_reservation,
            inventory::ExtendReservationRequest {
                reservation_id: order.reservation_id.clone(),
                expiry: Some(inventory::extend_reservation_request::Expiry::NoExpiry(
                    true
                )),
            }
        )?;
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
                ts(now
                    + ChronoDuration::from_std(self.settings.pickup_promise).unwrap_or_default());
        }
        changes.push(
            "orders.order_paid",
            Payload::OrderPaid(OrderPaid {
                order: Some(self.facts(order).await?),
                amount: payment.amount.clone(),
                method: payment.method,
                paid_at: payment.paid_at,
            }),
        );
        if order
            .delivery
            .as_ref()
            .is_some_and(|d| d.kind() == DeliveryKind::CarryOut)
        {
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
            self.completed(order, changes, now).await?;
        }
        Ok(())
    }

    async fn completed(
        &self,
        order: &mut Order,
        changes: &mut Changes,
        now: DateTime<Utc>,
    ) -> Result<()> {
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
                order: Some(self.facts(order).await?),
                fulfilled_at: ts(now),
            }),
        );
        Ok(())
    }

    pub async fn record_payment(
        &self,
        request: &omni_proto::omni::orders::v1::RecordPaymentRequest,
        order_id: Uuid,
        payment: Payment,
        actor: &str,
    ) -> Result<Order> {
        let credit = self.order(order_id, "order_id").await?.credit_minor;
        let reply: omni_proto::omni::orders::v1::RecordPaymentResponse = self
            .change(
                Some(("RecordPayment", &request.idempotency_key, request)),
                order_id,
                actor,
                async |_conn, order, changes| {
                    let same = order.payment.as_ref().is_some_and(|p| {
                        p.provider_reference == payment.provider_reference
                            && p.amount == payment.amount
                    });
                    if order.status() != OrderStatus::PendingPayment {
                        if same {
                            return Ok(omni_proto::omni::orders::v1::RecordPaymentResponse {
                                order: Some(order.clone()),
                            });
                        }
                        return Err(Error::precondition(
                            "ORDER_NOT_AWAITING_PAYMENT",
                            format!("orders/{}", order.id),
                            format!("the order is {}", order.status().as_str_name()),
                        ));
                    }
                    let due = (minor(order.total.as_ref()) - credit).max(0);
                    check_payment(&payment, due, &currency(order))?;
                    self.confirm(order, payment, actor, changes).await?;
                    Ok(omni_proto::omni::orders::v1::RecordPaymentResponse {
                        order: Some(order.clone()),
                    })
                },
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
        let reply: omni_proto::omni::orders::v1::GetOrderResponse = self
            .change(
                None::<(&str, &str, &Order)>,
                order_id,
                actor,
                async |_conn, order, changes| {
                    self.apply_step(order, fulfilment_id, &step, actor, changes)
                        .await?;
                    Ok(omni_proto::omni::orders::v1::GetOrderResponse {
                        order: Some(order.clone()),
                    })
                },
            )
            .await?;
        reply.order.ok_or_else(|| Error::internal("no order"))
    }

    async fn apply_step(
        &self,
        order: &mut Order,
        fulfilment_id: &str,
        step: &Step,
        actor: &str,
        changes: &mut Changes,
    ) -> Result<()> {
        let now = Utc::now();
        let kind = order
            .delivery
            .as_ref()
            .map_or(DeliveryKind::Unspecified, |d| d.kind());
        let i = fulfilment_index(order, fulfilment_id)?;
        let f = order.fulfilments[i].clone();
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
            return Ok(());
        }
        let allowed = domain::fulfilment_transition_allowed(f.status(), target)
            && !(matches!(step, Step::HandOver { .. })
                && f.status() != OrderStatus::ReadyForPickup)
            && !(matches!(step, Step::Deliver { .. }) && f.status() != OrderStatus::Shipped);
        if !allowed {
            return Err(illegal(order, &f, target));
        }
        match step {
            Step::Pick => {
                transition(order, changes, target, Some(i), actor, "", now);
            }
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
            Step::HandOver { pickup_code } => {
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
                self.fulfil_stock(order, &f).await?;
                transition(order, changes, target, Some(i), actor, "handed over", now);
                self.completed(order, changes, now).await?;
            }
            Step::Ship {
                carrier,
                tracking_number,
            } => {
                self.fulfil_stock(order, &f).await?;
                order.fulfilments[i].carrier = carrier.clone();
                order.fulfilments[i].tracking_number = tracking_number.clone();
                transition(order, changes, target, Some(i), actor, "", now);
                let location_is_store = self
                    .upstreams
                    .locations(false)
                    .await?
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
                        from_store: location_is_store,
                        carrier: carrier.clone(),
                        tracking_number: tracking_number.clone(),
                        shipped_at: ts(now),
                    }),
                );
            }
            Step::Deliver { at } => {
                let at = at.unwrap_or(now);
                transition(order, changes, target, Some(i), actor, "delivered", at);
                if order.status() == OrderStatus::Completed {
                    self.completed(order, changes, at).await?;
                }
            }
        }
        Ok(())
    }

    /// The fulfilment's units leave the location: on hand and reserved both drop.
    async fn fulfil_stock(&self, order: &Order, f: &Fulfilment) -> Result<()> {
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
        let reply: omni_proto::omni::orders::v1::CancelOrderResponse = self
            .change(
                Some(("CancelOrder", &request.idempotency_key, request)),
                order_id,
                actor,
                async |_conn, order, changes| {
                    if order.status() != OrderStatus::Cancelled {
                        self.apply_cancel(order, reason, note, actor, changes)
                            .await?;
                    }
                    Ok(omni_proto::omni::orders::v1::CancelOrderResponse {
                        order: Some(order.clone()),
                    })
                },
            )
            .await?;
        reply.order.ok_or_else(|| Error::internal("no order"))
    }

    async fn apply_cancel(
        &self,
        order: &mut Order,
        reason: CancellationReason,
        note: &str,
        actor: &str,
        changes: &mut Changes,
    ) -> Result<()> {
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
        let now = Utc::now();
        let previous = order.status();
        let released = call!(
            "inventory",
            self.upstreams.reservations.clone(),
            release,
            inventory::ReleaseRequest {
                idempotency_key: format!("order/{}/cancel", order.id),
                reservation_id: order.reservation_id.clone(),
                lines: Vec::new(),
                reason: format!("order cancelled: {}", reason.as_str_name()),
            }
        );
        match released {
            // Already ended (expired) holds need no release.
            Ok(_) | Err(Error::FailedPrecondition { .. }) => {}
            Err(e) => return Err(e),
        }
        let id = Uuid::parse_str(&order.id).map_err(|_| Error::internal("order id"))?;
        let mut released_codes = Vec::new();
        for coupon in &order.coupons {
            if !self
                .release_coupon(id, &coupon.code, "order cancelled")
                .await
            {
                return Err(Error::Unavailable(
                    "crm could not give the order's coupons back; try again".to_owned(),
                ));
            }
            released_codes.push(coupon.code.clone());
        }
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
                order: Some(self.facts(order).await?),
                previous_status: previous as i32,
                reason: reason as i32,
                note: note.to_owned(),
                released_coupon_codes: released_codes,
            }),
        );
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
        let reply: omni_proto::omni::orders::v1::ChangeDeliveryAddressResponse = self
            .change(
                Some(("ChangeDeliveryAddress", &request.idempotency_key, request)),
                order_id,
                actor,
                async |_conn, order, changes| {
                    let resourced = self.apply_address(order, address, actor, changes).await?;
                    Ok(
                        omni_proto::omni::orders::v1::ChangeDeliveryAddressResponse {
                            order: Some(order.clone()),
                            resourced,
                        },
                    )
                },
            )
            .await?;
        Ok((
            reply.order.ok_or_else(|| Error::internal("no order"))?,
            reply.resourced,
        ))
    }

    async fn apply_address(
        &self,
        order: &mut Order,
        address: omni_proto::common::Address,
        actor: &str,
        changes: &mut Changes,
    ) -> Result<bool> {
        let now = Utc::now();
        let subject = format!("orders/{}", order.id);
        let delivery = order.delivery.clone().unwrap_or_default();
        if delivery.kind() != DeliveryKind::Ship {
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
        let new_delivery = omni_proto::omni::orders::v1::Delivery {
            address: Some(address),
            ..delivery
        };
        let picking = order.fulfilments.iter().any(|f| {
            f.status() != OrderStatus::Allocated && f.status() != OrderStatus::PendingPayment
        });
        let mut resourced = false;
        if !picking {
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
            let current: Vec<String> = order.lines.iter().map(|l| l.location_id.clone()).collect();
            if sourced.line_locations != current {
                self.move_hold(order, &wants, &sourced.line_locations)
                    .await?;
                resourced = true;
                let mut decision = sourced.decision;
                for allocation in &mut decision.allocations {
                    allocation.line_ids = order
                        .lines
                        .iter()
                        .filter(|l| l.location_id == allocation.location_id)
                        .map(|l| l.id.clone())
                        .collect();
                }
                order.sourcing = Some(decision);
            }
        }
        order.delivery = Some(new_delivery);
        order.updated_at = ts(now);
        if resourced {
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
        let _ = changes;
        Ok(resourced)
    }

    /// Holds the lines at their new locations, then lets the old hold go.
    async fn move_hold(
        &self,
        order: &mut Order,
        wants: &[Want],
        locations: &[String],
    ) -> Result<()> {
        let paid = order.payment.is_some();
        let due = order
            .payment_due_at
            .as_ref()
            .and_then(omni_runtime::time::from_timestamp);
        let ttl = due.map(|d| {
            (d - Utc::now()).to_std().unwrap_or_default() + std::time::Duration::from_secs(300)
        });
        let attempt = order.history.len();
        let reservation = call!(
            "inventory",
            self.upstreams.reservations.clone(),
            reserve,
            inventory::ReserveRequest {
                idempotency_key: format!("order/{}/resource/{attempt}", order.id),
                lines: wants
                    .iter()
                    .zip(locations)
                    .map(|(w, l)| inventory::ReserveLine {
                        sku_id: w.sku_id.clone(),
                        quantity: w.quantity,
                        location_ids: vec![l.clone()],
                    })
                    .collect(),
                channel_id: order.channel_id.clone(),
                ttl: ttl.and_then(|t| prost_types::Duration::try_from(t).ok()),
                reference: order.id.clone(),
            }
        )?
        .reservation
        .ok_or_else(|| Error::internal("inventory returned no reservation"))?;
        if paid {
            call!(
                "inventory",
                self.upstreams.reservations.clone(),
                extend_reservation,
                inventory::ExtendReservationRequest {
                    reservation_id: reservation.id.clone(),
                    expiry: Some(inventory::extend_reservation_request::Expiry::NoExpiry(
                        true
                    )),
                }
            )?;
        }
        call!(
            "inventory",
            self.upstreams.reservations.clone(),
            release,
            inventory::ReleaseRequest {
                idempotency_key: format!("order/{}/resource/{attempt}/release", order.id),
                reservation_id: order.reservation_id.clone(),
                lines: Vec::new(),
                reason: "order re-sourced after an address change".to_owned(),
            }
        )?;
        order.reservation_id = reservation.id;
        // New fulfilments, one per location, in line order.
        let status = order
            .fulfilments
            .first()
            .map_or(OrderStatus::Allocated, Fulfilment::status);
        let mut fulfilments: Vec<Fulfilment> = Vec::new();
        for (line, location) in order.lines.iter_mut().zip(locations) {
            let fulfilment = fulfilment_at(&mut fulfilments, location, status);
            fulfilment.line_ids.push(line.id.clone());
            line.location_id = location.clone();
            line.fulfilment_id = fulfilment.id.clone();
        }
        order.fulfilments = fulfilments;
        Ok(())
    }

    /// Cancels what ran out of time (unpaid orders, uncollected pickups) and gives back the
    /// coupons of placements that never became orders, every `interval` until `shutdown`.
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
        let mut tx = self.pool.begin().await?;
        let lapsed = store::lapsed_orders(&mut tx, now, 20).await?;
        let mut done = 0;
        let mut announce = Vec::new();
        for mut stored in lapsed {
            let reason = if stored.order.status() == OrderStatus::PendingPayment {
                CancellationReason::PaymentExpired
            } else {
                CancellationReason::NotCollected
            };
            let mut changes = Changes::default();
            match self
                .apply_cancel(&mut stored.order, reason, "", "", &mut changes)
                .await
            {
                Ok(()) => {
                    self.save(&mut tx, &stored.order, "", changes).await?;
                    announce.push(stored.order.id.clone());
                    done += 1;
                }
                Err(e) => {
                    tracing::warn!(error = %e, order_id = %stored.order.id, "lapsed order not cancelled yet")
                }
            }
        }
        tx.commit().await?;
        for id in announce {
            self.announce(&id).await;
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

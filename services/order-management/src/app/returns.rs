//! Returns anywhere and exchanges: any order from any channel comes back at any store or
//! online; refunds are the lines' prorated net amounts, never more than was paid; received
//! items go back into stock where they arrive.

use chrono::Utc;
use omni_proto::events::event::Payload;
use omni_proto::events::{ReturnCompleted, ReturnLineFacts};
use omni_proto::omni::inventory::v1 as inventory;
use omni_proto::omni::orders::v1::{
    CreateExchangeResponse, CreateReturnRequest, CreateReturnResponse, Delivery, DeliveryKind,
    ItemCondition, Order, OrderStatus, Payment, PaymentMethod, PlaceOrderRequest,
    ReceiveReturnRequest, ReceiveReturnResponse, RecordRefundRequest, RecordRefundResponse,
    RefundStatus, Return, ReturnLine, ReturnReason, ReturnStatus,
};
use omni_runtime::idempotency::{self, Claim};
use omni_runtime::{Error, Result};
use sqlx::PgConnection;
use uuid::Uuid;

use super::place::{CustomerInput, PlaceInput};
use super::steps::refused;
use super::{App, currency, minor, money, ts};
use crate::domain::{self, Want};
use crate::store;
use crate::upstream::call;

#[derive(Debug, Clone)]
pub struct ReturnLineSpec {
    pub order_line_id: String,
    pub quantity: i32,
    pub reason: ReturnReason,
    /// Unspecified when the items are not in hand.
    pub condition: ItemCondition,
}

#[derive(Debug, Clone)]
pub struct ReturnInput {
    pub order_id: Uuid,
    pub lines: Vec<ReturnLineSpec>,
    pub channel_id: String,
    pub location_id: String,
    pub items_received: bool,
    pub note: String,
    /// The idempotency key of the restock when the items are in hand, derived from the call's
    /// own key so that a retry of the call never restocks twice (`None`: from the return id).
    pub restock_key: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ExchangeInput {
    pub idempotency_key: String,
    pub request: omni_proto::omni::orders::v1::CreateExchangeRequest,
    pub order_id: Uuid,
    pub returned: Vec<ReturnLineSpec>,
    pub replacements: Vec<Want>,
    pub delivery: Delivery,
    pub channel_id: String,
    pub location_id: String,
    pub associate_id: String,
}

/// The event of a completed return; `restocked`: resellable items went back into stock.
/// The return's units that go back into stock.
fn resellable(r: &Return) -> Vec<inventory::MovementLine> {
    r.lines
        .iter()
        .filter(|l| l.condition() == ItemCondition::Resellable)
        .map(|l| inventory::MovementLine {
            sku_id: l.sku_id.clone(),
            quantity: i64::from(l.quantity),
        })
        .collect()
}

pub(super) fn return_completed(order: &Order, r: &Return, restocked: bool) -> ReturnCompleted {
    ReturnCompleted {
        return_id: r.id.clone(),
        order_id: order.id.clone(),
        order_number: order.order_number.clone(),
        customer_id: order.customer_id.clone(),
        order_channel_id: order.channel_id.clone(),
        channel_id: r.channel_id.clone(),
        location_id: r.location_id.clone(),
        lines: r
            .lines
            .iter()
            .map(|l| {
                let line = order.lines.iter().find(|o| o.id == l.order_line_id);
                ReturnLineFacts {
                    order_line_id: l.order_line_id.clone(),
                    sku_id: l.sku_id.clone(),
                    product_id: line.map(|o| o.product_id.clone()).unwrap_or_default(),
                    category_id: line.map(|o| o.category_id.clone()).unwrap_or_default(),
                    quantity: l.quantity,
                    refund_amount: l.refund_amount.clone(),
                    unit_cost: l.unit_cost.clone(),
                    condition: l.condition,
                    restocked_quantity: if restocked && l.condition() == ItemCondition::Resellable {
                        l.quantity
                    } else {
                        0
                    },
                }
            })
            .collect(),
        refund_total: r.refund_total.clone(),
        exchange_order_id: r.exchange_order_id.clone(),
        order_placed_at: order.placed_at,
        completed_at: r.completed_at,
    }
}

/// The refund of each requested line, checked against what was bought and returned before.
pub(super) fn price_return(order: &Order, lines: &[ReturnLineSpec]) -> Result<Vec<ReturnLine>> {
    let mut priced = Vec::new();
    for (i, spec) in lines.iter().enumerate() {
        let Some(line) = order.lines.iter().find(|l| l.id == spec.order_line_id) else {
            return Err(Error::not_found_at(
                format!("lines[{i}].order_line_id"),
                format!(
                    "line {} of order {}",
                    spec.order_line_id, order.order_number
                ),
            ));
        };
        let delivered = order
            .fulfilments
            .iter()
            .any(|f| f.id == line.fulfilment_id && f.status() == OrderStatus::Completed);
        if !delivered {
            return Err(Error::precondition(
                "NOT_HANDED_OVER",
                format!("lines[{i}]"),
                "the line has not reached the customer yet; cancel the order instead",
            ));
        }
        let left = line.quantity - line.returned_quantity;
        if spec.quantity > left {
            return Err(Error::precondition(
                "RETURN_EXCEEDS_PURCHASE",
                format!("lines[{i}]"),
                format!(
                    "{} of {} returned; {} bought, {} returned before, {left} left",
                    spec.quantity, line.sku_code, line.quantity, line.returned_quantity
                ),
            ));
        }
        let refund = domain::line_refund(
            minor(line.net_amount.as_ref()),
            i64::from(line.quantity),
            i64::from(line.returned_quantity),
            i64::from(spec.quantity),
        );
        priced.push(ReturnLine {
            order_line_id: line.id.clone(),
            sku_id: line.sku_id.clone(),
            quantity: spec.quantity,
            reason: spec.reason as i32,
            condition: spec.condition as i32,
            refund_amount: Some(money(refund, &currency(order))),
            unit_cost: line.unit_cost.clone(),
        });
    }
    Ok(priced)
}

impl App {
    pub async fn create_return(
        &self,
        request: &CreateReturnRequest,
        input: ReturnInput,
        actor: &str,
    ) -> Result<Return> {
        self.upstreams
            .channel(&input.channel_id, "channel_id")
            .await?;
        self.upstreams
            .location(&input.location_id, "location_id")
            .await?;
        let mut tx = self.pool.begin().await?;
        if let Claim::Replay(reply) = idempotency::claim::<_, CreateReturnResponse>(
            &mut tx,
            "CreateReturn",
            actor,
            "idempotency_key",
            &request.idempotency_key,
            request,
        )
        .await?
        {
            return reply
                .order_return
                .ok_or_else(|| Error::internal("no return"));
        }
        let r = self
            .open_return(&mut tx, input, String::new(), None, actor)
            .await?;
        let reply = CreateReturnResponse {
            order_return: Some(r.clone()),
        };
        idempotency::complete_about(
            &mut tx,
            "CreateReturn",
            actor,
            &request.idempotency_key,
            &r.order_id,
            &reply,
        )
        .await?;
        tx.commit().await?;
        self.restock(Uuid::parse_str(&r.id).map_err(|_| Error::internal("return id"))?)
            .await;
        self.announce(&r.order_id).await;
        Ok(r)
    }

    /// Records a return on the locked order; completes it when the items are in hand.
    /// `credit_cap` limits the refund (an exchange credits part of it to the replacement).
    async fn open_return(
        &self,
        conn: &mut PgConnection,
        input: ReturnInput,
        exchange_order_id: String,
        credit_cap: Option<i64>,
        actor: &str,
    ) -> Result<Return> {
        let now = Utc::now();
        let mut stored = Self::lock(conn, input.order_id, "order_id").await?;
        let order = &mut stored.order;
        let mut lines = price_return(order, &input.lines)?;
        // Never more than was paid (with any exchange credit), less what went back before.
        let paid =
            minor(order.payment.as_ref().and_then(|p| p.amount.as_ref())) + stored.credit_minor;
        let room = (paid
            - minor(order.refunded_total.as_ref())
            - pending_refunds(conn, &order.id).await?)
            .max(0);
        let mut left = room;
        for line in &mut lines {
            let amount = minor(line.refund_amount.as_ref()).min(left);
            left -= amount;
            line.refund_amount = Some(money(amount, &currency(order)));
        }
        let refund: i64 = lines.iter().map(|l| minor(l.refund_amount.as_ref())).sum();
        for spec in &input.lines {
            if let Some(line) = order.lines.iter_mut().find(|l| l.id == spec.order_line_id) {
                line.returned_quantity += spec.quantity;
            }
        }
        let mut r = Return {
            id: Uuid::now_v7().to_string(),
            order_id: order.id.clone(),
            order_number: order.order_number.clone(),
            customer_id: order.customer_id.clone(),
            channel_id: input.channel_id.clone(),
            location_id: input.location_id.clone(),
            status: ReturnStatus::AwaitingItems as i32,
            lines,
            refund_total: Some(money(
                credit_cap.map_or(refund, |c| (refund - c).max(0)),
                &currency(order),
            )),
            refund_status: RefundStatus::Pending as i32,
            refund_reference: String::new(),
            note: input.note.clone(),
            exchange_order_id,
            created_at: ts(now),
            completed_at: None,
        };
        order.updated_at = ts(now);
        store::insert_return(conn, &r).await?;
        if input.items_received {
            let restock_key = input
                .restock_key
                .clone()
                .unwrap_or_else(|| format!("return/{}/restock", r.id));
            self.receive(conn, order, &mut r, &restock_key, actor)
                .await?;
            store::update_return(conn, &r).await?;
        }
        store::update_order(conn, order).await?;
        Ok(r)
    }

    /// Makes the restock a committed return owes: its resellable items back into stock where
    /// they came in, keyed so a repeat restocks nothing twice. Called after the commit, and by
    /// the sweeper for a restock still owed; a failure is logged and left for the sweeper.
    pub(super) async fn restock(&self, return_id: Uuid) {
        if let Err(e) = self.try_restock(return_id).await {
            tracing::warn!(error = %e, %return_id, "return not restocked yet; the sweeper repeats it");
        }
    }

    async fn try_restock(&self, return_id: Uuid) -> Result<()> {
        let Some((r, key)) = store::owed_restock(&self.pool, return_id).await? else {
            return Ok(());
        };
        let made = call!(
            "inventory",
            self.upstreams.stock.clone(),
            record_movement,
            inventory::RecordMovementRequest {
                idempotency_key: key.clone(),
                location_id: r.location_id.clone(),
                kind: inventory::MovementKind::Return as i32,
                lines: resellable(&r),
                reason: format!("return of order {}", r.order_number),
                reference: r.id.clone(),
            }
        );
        match made {
            Ok(_) => {}
            // A definite refusal would be repeated forever: given up, loudly.
            Err(e) if refused(&e) => {
                tracing::error!(error = %e, %return_id, "inventory refused a return's restock; given up");
            }
            Err(e) => return Err(e),
        }
        store::restocked(&self.pool, return_id, &key).await
    }

    /// The items arrived: resellable ones owed back to stock where they are, the refund
    /// settled.
    async fn receive(
        &self,
        conn: &mut PgConnection,
        order: &mut Order,
        r: &mut Return,
        restock_key: &str,
        actor: &str,
    ) -> Result<()> {
        let now = Utc::now();
        // The restock is owed here and made once this commits ([`App::restock`]): inventory is
        // not called under the order's lock.
        if !resellable(r).is_empty() {
            let id = Uuid::parse_str(&r.id).map_err(|_| Error::internal("return id"))?;
            store::owe_restock(conn, id, restock_key).await?;
        }
        r.set_status(ReturnStatus::Completed);
        r.completed_at = ts(now);
        let refunded = minor(order.refunded_total.as_ref())
            + r.lines
                .iter()
                .map(|l| minor(l.refund_amount.as_ref()))
                .sum::<i64>();
        order.refunded_total = Some(money(refunded, &currency(order)));
        let event = return_completed(order, r, true);
        self.outbox
            .add(
                conn,
                "orders.return_completed",
                &order.id,
                actor,
                Payload::ReturnCompleted(event),
            )
            .await?;
        Ok(())
    }

    pub async fn receive_return(
        &self,
        request: &ReceiveReturnRequest,
        return_id: Uuid,
        conditions: Vec<(String, ItemCondition)>,
        actor: &str,
    ) -> Result<Return> {
        let mut tx = self.pool.begin().await?;
        if let Claim::Replay(reply) = idempotency::claim::<_, ReceiveReturnResponse>(
            &mut tx,
            "ReceiveReturn",
            actor,
            "idempotency_key",
            &request.idempotency_key,
            request,
        )
        .await?
        {
            return reply
                .order_return
                .ok_or_else(|| Error::internal("no return"));
        }
        let mut r = store::lock_return(&mut tx, return_id)
            .await?
            .ok_or_else(|| Error::not_found_at("return_id", format!("return {return_id}")))?;
        if r.status() == ReturnStatus::Completed {
            return Err(Error::precondition(
                "RETURN_COMPLETED",
                format!("returns/{}", r.id),
                "the return's items were received already",
            ));
        }
        for (i, line) in r.lines.iter_mut().enumerate() {
            let Some((_, condition)) = conditions.iter().find(|(id, _)| *id == line.order_line_id)
            else {
                return Err(Error::invalid(
                    "lines",
                    format!(
                        "needs the condition of line {} (return line {i})",
                        line.order_line_id
                    ),
                ));
            };
            line.condition = *condition as i32;
        }
        let order_id = Uuid::parse_str(&r.order_id).map_err(|_| Error::internal("order id"))?;
        let mut stored = Self::lock(&mut tx, order_id, "return_id").await?;
        let restock_key = format!("return/{}/restock", r.id);
        self.receive(&mut tx, &mut stored.order, &mut r, &restock_key, actor)
            .await?;
        store::update_return(&mut tx, &r).await?;
        store::update_order(&mut tx, &stored.order).await?;
        let reply = ReceiveReturnResponse {
            order_return: Some(r.clone()),
        };
        idempotency::complete_about(
            &mut tx,
            "ReceiveReturn",
            actor,
            &request.idempotency_key,
            &r.order_id,
            &reply,
        )
        .await?;
        tx.commit().await?;
        self.restock(return_id).await;
        self.announce(&r.order_id).await;
        Ok(r)
    }

    pub async fn record_refund(
        &self,
        request: &RecordRefundRequest,
        return_id: Uuid,
        actor: &str,
    ) -> Result<Return> {
        let _ = actor;
        let mut tx = self.pool.begin().await?;
        if let Claim::Replay(reply) = idempotency::claim::<_, RecordRefundResponse>(
            &mut tx,
            "RecordRefund",
            actor,
            "idempotency_key",
            &request.idempotency_key,
            request,
        )
        .await?
        {
            return reply
                .order_return
                .ok_or_else(|| Error::internal("no return"));
        }
        let mut r = store::lock_return(&mut tx, return_id)
            .await?
            .ok_or_else(|| Error::not_found_at("return_id", format!("return {return_id}")))?;
        if r.refund_status() == RefundStatus::Paid {
            return Err(Error::precondition(
                "REFUND_PAID",
                format!("returns/{}", r.id),
                "the refund was recorded already",
            ));
        }
        let amount = request.amount.clone().unwrap_or_default();
        if Some(&amount) != r.refund_total.as_ref() {
            let due = r.refund_total.clone().unwrap_or_default();
            return Err(Error::precondition(
                "REFUND_AMOUNT_MISMATCH",
                "amount",
                format!(
                    "the refund is {} {} (minor units)",
                    due.minor_units, due.currency
                ),
            ));
        }
        r.set_refund_status(RefundStatus::Paid);
        r.refund_reference = request.provider_reference.clone();
        store::update_return(&mut tx, &r).await?;
        let reply = RecordRefundResponse {
            order_return: Some(r.clone()),
        };
        idempotency::complete_about(
            &mut tx,
            "RecordRefund",
            actor,
            &request.idempotency_key,
            &r.order_id,
            &reply,
        )
        .await?;
        tx.commit().await?;
        Ok(r)
    }

    pub async fn get_return(&self, id: Uuid) -> Result<Return> {
        store::get_return(&self.pool, id)
            .await?
            .ok_or_else(|| Error::not_found_at("return_id", format!("return {id}")))
    }

    /// Returns a line and hands over or ships its replacement in one step, priced as the
    /// difference: the replacement is placed first (holding its stock), then the return is
    /// recorded with its items in hand; if that fails, the replacement is cancelled.
    pub async fn exchange(
        &self,
        input: ExchangeInput,
        actor: &str,
    ) -> Result<CreateExchangeResponse> {
        self.upstreams
            .channel(&input.channel_id, "channel_id")
            .await?;
        self.upstreams
            .location(&input.location_id, "location_id")
            .await?;
        let original = self.order(input.order_id, "order_id").await?.order;
        let lines = price_return(&original, &input.returned).map_err(|e| e.within("returned."))?;
        let credit: i64 = lines.iter().map(|l| minor(l.refund_amount.as_ref())).sum();
        let customer = if original.customer_id.is_empty() {
            CustomerInput::Anonymous
        } else {
            CustomerInput::Id(original.customer_id.clone())
        };
        let replacement_key = format!("exchange/{}", input.idempotency_key);
        let mut request = PlaceOrderRequest {
            idempotency_key: replacement_key.clone(),
            channel_id: input.channel_id.clone(),
            lines: input.request.replacements.clone(),
            delivery: Some(input.delivery.clone()),
            store_id: input.location_id.clone(),
            associate_id: input.associate_id.clone(),
            ..Default::default()
        };
        request.channel_order_ref = format!("exchange of {}", original.order_number);
        let placed = self
            .place(
                PlaceInput {
                    request: request.clone(),
                    idempotency_key: replacement_key,
                    channel_id: input.channel_id.clone(),
                    channel_order_ref: request.channel_order_ref.clone(),
                    customer,
                    lines: input.replacements.clone(),
                    delivery: input.delivery.clone(),
                    coupon_codes: Vec::new(),
                    store_id: if input.delivery.kind() == DeliveryKind::Ship {
                        String::new()
                    } else {
                        input.delivery.store_id.clone()
                    },
                    associate_id: input.associate_id.clone(),
                    payment: None,
                    exchange_of: Some((original.id.clone(), credit)),
                },
                actor,
            )
            .await
            .map_err(|e| e.within("replacements."))?;
        let mut replacement = placed.order.ok_or_else(|| Error::internal("no order"))?;
        let replacement_id =
            Uuid::parse_str(&replacement.id).map_err(|_| Error::internal("order id"))?;
        let replacement_total = minor(replacement.total.as_ref());
        let difference = replacement_total - credit;

        let recorded = async {
            let mut tx = self.pool.begin().await?;
            if let Claim::Replay(reply) = idempotency::claim::<_, CreateExchangeResponse>(
                &mut tx,
                "CreateExchange",
                actor,
                "idempotency_key",
                &input.idempotency_key,
                &input.request,
            )
            .await?
            {
                return Ok(reply);
            }
            let mut r = self
                .open_return(
                    &mut tx,
                    ReturnInput {
                        order_id: input.order_id,
                        lines: input.returned.clone(),
                        channel_id: input.channel_id.clone(),
                        location_id: input.location_id.clone(),
                        items_received: true,
                        note: format!("exchanged for order {}", replacement.order_number),
                        restock_key: Some(idempotency::derived_key(
                            "exchange/restock",
                            actor,
                            &input.idempotency_key,
                        )),
                    },
                    replacement.id.clone(),
                    Some(replacement_total),
                    actor,
                )
                .await
                .map_err(|e| e.within("returned."))?;
            if r.refund_total.as_ref().is_some_and(|m| m.minor_units == 0) {
                r.set_refund_status(RefundStatus::Paid);
                r.refund_reference = format!("credited to order {}", replacement.order_number);
                store::update_return(&mut tx, &r).await?;
            }
            let reply = CreateExchangeResponse {
                order_return: Some(r),
                replacement: Some(replacement.clone()),
                difference: Some(money(difference, &currency(&replacement))),
            };
            idempotency::complete_about(
                &mut tx,
                "CreateExchange",
                actor,
                &input.idempotency_key,
                &replacement.id,
                &reply,
            )
            .await?;
            tx.commit().await?;
            if let Some(r) = &reply.order_return
                && let Ok(id) = Uuid::parse_str(&r.id)
            {
                self.restock(id).await;
            }
            Ok::<_, Error>(reply)
        }
        .await;
        let mut reply = match recorded {
            Ok(reply) => reply,
            Err(e) => {
                if placed.created {
                    let cancel = omni_proto::omni::orders::v1::CancelOrderRequest {
                        idempotency_key: format!("exchange/{}/undo", input.idempotency_key),
                        order_id: replacement.id.clone(),
                        ..Default::default()
                    };
                    if let Err(undo) = self
                        .cancel(
                            &cancel,
                            replacement_id,
                            omni_proto::omni::orders::v1::CancellationReason::Other,
                            "exchange not recorded",
                            actor,
                        )
                        .await
                    {
                        tracing::warn!(error = %undo, "replacement of a failed exchange not cancelled");
                    }
                }
                return Err(e);
            }
        };
        // Nothing more to pay: the credit covers the replacement, which proceeds at once.
        if difference <= 0 && replacement.status() == OrderStatus::PendingPayment {
            let payment = Payment {
                amount: Some(money(0, &currency(&replacement))),
                method: PaymentMethod::Other as i32,
                provider_reference: format!("exchange credit from order {}", original.order_number),
                paid_at: ts(Utc::now()),
            };
            let pay = omni_proto::omni::orders::v1::RecordPaymentRequest {
                idempotency_key: format!("exchange/{}/credit", input.idempotency_key),
                order_id: replacement.id.clone(),
                payment: Some(payment.clone()),
            };
            replacement = self
                .record_payment(&pay, replacement_id, payment, actor)
                .await?;
            reply.replacement = Some(replacement);
        }
        Ok(reply)
    }
}

/// Refunds determined on returns still awaiting their items (they count against what may
/// still be refunded).
async fn pending_refunds(conn: &mut PgConnection, order_id: &str) -> Result<i64> {
    let id = Uuid::parse_str(order_id).map_err(|_| Error::internal("order id"))?;
    let docs: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT doc FROM returns WHERE order_id = $1 AND status = $2")
            .bind(id)
            .bind(ReturnStatus::AwaitingItems as i16)
            .fetch_all(conn)
            .await?;
    let mut total = 0;
    for doc in docs {
        let r = <Return as prost::Message>::decode(doc.as_slice())
            .map_err(|e| Error::internal(format!("stored return does not decode: {e}")))?;
        total += minor(r.refund_total.as_ref());
    }
    Ok(total)
}

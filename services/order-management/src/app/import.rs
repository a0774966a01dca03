//! Importing closed orders: a previous system's history, or a demo dataset, brought in with
//! its own dates so that crm and performance see the months before the service existed.
//!
//! An imported order is priced the way the service would have priced it then (catalog Quote
//! as of its placement, no tier, no coupons), stored in its final state with its returns, and
//! published as the live flow would have ended: `OrderFulfilled` (or `OrderCancelled`) with
//! the order's own times, then one `ReturnCompleted` per return, all marked `imported`. Stock
//! is not touched, and no other service is asked to do anything: history only.
//!
//! A batch is all or nothing. Everything that needs another service (channels, locations,
//! customers, prices) is checked before the one transaction that writes the orders, their
//! returns, their `(channel, reference)` keys and their events.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Datelike as _, Duration as ChronoDuration, Utc};
use futures::{StreamExt as _, TryStreamExt as _};
use omni_proto::events::event::Payload;
use omni_proto::events::{OrderCancelled, OrderFulfilled};
use omni_proto::omni::catalog::v1 as catalog;
use omni_proto::omni::identity::v1 as identity;
use omni_proto::omni::inventory::v1 as inventory;
use omni_proto::omni::orders::v1::{
    CancellationReason, DeliveryKind, HistoricalOrder, ImportOrdersResponse, ImportedOrder, Order,
    OrderStatus, Payment, PaymentMethod, Pickup, RefundStatus, Return, ReturnStatus,
    SourcingDecision, StatusChange,
};
use omni_runtime::{Error, Result};
use uuid::Uuid;

use super::place::order_lines;
use super::returns::{ReturnLineSpec, price_return, return_completed};
use super::{App, Changes, facts, minor, money, ts};
use crate::domain;
use crate::store;
use crate::upstream::{Locations, call};

/// Orders per ImportOrders call.
pub const MAX_IMPORT: usize = 500;

/// Calls to catalog and identity in flight at once for one batch's lookups.
const LOOKUPS_IN_FLIGHT: usize = 16;

/// Order lines priced per BatchQuote call: an answer stays far below gRPC's 4 MiB message
/// limit however long the product names and promotion labels (a whole batch of 500 orders of
/// 100 lines would not fit in one answer).
const QUOTED_LINES_PER_CALL: usize = 1_000;

/// BatchQuote calls in flight at once for one batch.
const QUOTE_CALLS_IN_FLIGHT: usize = 4;

/// Note on the status history of an imported order.
const IMPORTED: &str = "imported";

fn time(t: Option<&prost_types::Timestamp>) -> Result<DateTime<Utc>> {
    t.and_then(omni_runtime::time::from_timestamp)
        .ok_or_else(|| Error::internal("an imported order lost a validated time"))
}

/// Where each line leaves from: its own location, or the store that hands the order over.
fn line_locations(order: &HistoricalOrder) -> Vec<String> {
    let store = order
        .delivery
        .as_ref()
        .map(|d| d.store_id.clone())
        .unwrap_or_default();
    order
        .lines
        .iter()
        .map(|l| {
            if l.location_id.is_empty() {
                store.clone()
            } else {
                l.location_id.clone()
            }
        })
        .collect()
}

impl App {
    /// Imports a validated batch (see the gRPC layer for the shape checks).
    #[tracing::instrument(name = "orders.import", skip_all, fields(orders = batch.len()), err)]
    pub async fn import(
        &self,
        batch: Vec<HistoricalOrder>,
        actor: &str,
    ) -> Result<ImportOrdersResponse> {
        let keys: Vec<(String, String)> = batch
            .iter()
            .map(|o| (o.channel_id.clone(), o.channel_order_ref.clone()))
            .collect();
        let known = store::imported_orders(&self.pool, &keys).await?;
        let fresh: Vec<usize> = (0..batch.len())
            .filter(|&i| !known.contains_key(&keys[i]))
            .collect();

        let channels = self.import_channels(&batch, &fresh).await?;
        let locations = self.upstreams.locations(true).await?;
        check_locations(&batch, &fresh, &locations)?;
        let customers = self.import_customers(&batch, &fresh).await?;
        let quotes = self.import_quotes(&batch, &fresh).await?;

        let sequences = store::next_order_sequences(&self.pool, fresh.len()).await?;
        let now = Utc::now();
        let mut built = Vec::with_capacity(fresh.len());
        for ((&i, quote), sequence) in fresh.iter().zip(quotes).zip(sequences) {
            let input = &batch[i];
            let channel = &channels[&input.channel_id];
            let customer_id = customers
                .get(&input.customer_id)
                .cloned()
                .unwrap_or_default();
            built.push(self.historical(
                i,
                input,
                channel,
                customer_id,
                &quote,
                sequence,
                &locations,
                actor,
                now,
            )?);
        }

        let mut tx = self.pool.begin().await?;
        let mut replies: HashMap<usize, ImportedOrder> = HashMap::new();
        for (i, (order, returns, events)) in fresh.iter().zip(built) {
            let id = Uuid::parse_str(&order.id).map_err(|_| Error::internal("order id"))?;
            store::insert_order(&mut tx, &order, 0).await?;
            if !store::claim_import(&mut tx, &order.channel_id, &order.channel_order_ref, id)
                .await?
            {
                return Err(Error::Aborted(format!(
                    "orders[{i}] was imported by a concurrent call; send the batch again"
                )));
            }
            for r in &returns {
                store::insert_return(&mut tx, r).await?;
            }
            for (event_type, payload) in events.events {
                self.outbox
                    .add(&mut tx, event_type, &order.id, actor, payload)
                    .await?;
            }
            replies.insert(
                *i,
                ImportedOrder {
                    channel_order_ref: order.channel_order_ref.clone(),
                    order_id: order.id.clone(),
                    order_number: order.order_number.clone(),
                    created: true,
                },
            );
        }
        tx.commit().await?;
        self.outbox.wake();

        let orders = (0..batch.len())
            .map(|i| {
                replies.remove(&i).unwrap_or_else(|| {
                    let (order_id, order_number) = known[&keys[i]].clone();
                    ImportedOrder {
                        channel_order_ref: keys[i].1.clone(),
                        order_id,
                        order_number,
                        created: false,
                    }
                })
            })
            .collect();
        Ok(ImportOrdersResponse { orders })
    }

    /// The batch's channels (and its returns' channels), each known to catalog.
    async fn import_channels(
        &self,
        batch: &[HistoricalOrder],
        fresh: &[usize],
    ) -> Result<HashMap<String, catalog::Channel>> {
        let mut wanted: Vec<(String, String)> = Vec::new();
        let mut seen = HashSet::new();
        for &i in fresh {
            let o = &batch[i];
            let refs = std::iter::once((o.channel_id.clone(), format!("orders[{i}].channel_id")))
                .chain(o.returns.iter().enumerate().map(|(j, r)| {
                    (
                        r.channel_id.clone(),
                        format!("orders[{i}].returns[{j}].channel_id"),
                    )
                }));
            for (id, field) in refs {
                if seen.insert(id.clone()) {
                    wanted.push((id, field));
                }
            }
        }
        futures::stream::iter(wanted)
            .map(|(id, field)| async move {
                let channel = self.upstreams.channel(&id, &field).await?;
                Ok::<_, Error>((id, channel))
            })
            .buffer_unordered(LOOKUPS_IN_FLIGHT)
            .try_collect()
            .await
    }

    /// Each customer id of the batch as identity knows it now (a merged-away id: the survivor).
    async fn import_customers(
        &self,
        batch: &[HistoricalOrder],
        fresh: &[usize],
    ) -> Result<HashMap<String, String>> {
        let mut wanted: Vec<(String, String)> = Vec::new();
        let mut seen = HashSet::new();
        for &i in fresh {
            let id = &batch[i].customer_id;
            if !id.is_empty() && seen.insert(id.clone()) {
                wanted.push((id.clone(), format!("orders[{i}].customer_id")));
            }
        }
        futures::stream::iter(wanted)
            .map(|(id, field)| async move {
                let customer = self
                    .upstreams
                    .customer(identity::customer_key::Key::Id(id.clone()), &field)
                    .await?;
                Ok::<_, Error>((id, customer.id))
            })
            .buffer_unordered(LOOKUPS_IN_FLIGHT)
            .try_collect()
            .await
    }

    /// Each fresh order priced by catalog as of its placement, in `fresh`'s order, by
    /// BatchQuote (catalog reads the SKUs, listings and promotions a call's orders share once):
    /// as many orders a call as fit in [`QUOTED_LINES_PER_CALL`], so that no answer comes near
    /// gRPC's message limit. Refusals are named by the batch's own fields
    /// (`orders[i].lines[j].sku_id`).
    async fn import_quotes(
        &self,
        batch: &[HistoricalOrder],
        fresh: &[usize],
    ) -> Result<Vec<catalog::QuoteResponse>> {
        let calls = quote_calls(fresh, |i| batch[i].lines.len(), QUOTED_LINES_PER_CALL);
        let priced: Vec<Vec<catalog::QuoteResponse>> = futures::stream::iter(calls)
            .map(|orders| async move { self.quote_orders(batch, &orders).await })
            .buffered(QUOTE_CALLS_IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(priced.into_iter().flatten().collect())
    }

    /// One BatchQuote for `orders` (indexes into `batch`), in their order.
    async fn quote_orders(
        &self,
        batch: &[HistoricalOrder],
        orders: &[usize],
    ) -> Result<Vec<catalog::QuoteResponse>> {
        let quotes = orders
            .iter()
            .map(|&i| {
                let o = &batch[i];
                catalog::QuoteRequest {
                    channel_id: o.channel_id.clone(),
                    customer_id: o.customer_id.clone(),
                    lines: o
                        .lines
                        .iter()
                        .enumerate()
                        .map(|(j, l)| catalog::QuoteLineInput {
                            sku_id: l.sku_id.clone(),
                            quantity: l.quantity,
                            line_ref: j.to_string(),
                        })
                        .collect(),
                    priced_at: o.placed_at,
                    ..Default::default()
                }
            })
            .collect();
        let priced = call!(
            "catalog",
            self.upstreams.quotes.clone(),
            batch_quote,
            catalog::BatchQuoteRequest { quotes }
        )
        .map_err(|e| e.renamed(|field| order_field(field, orders)))?;
        if priced.quotes.len() != orders.len() {
            return Err(Error::internal(format!(
                "catalog priced {} of {} orders",
                priced.quotes.len(),
                orders.len()
            )));
        }
        Ok(priced.quotes)
    }

    /// The imported order in its final state, its returns and its events.
    #[allow(clippy::too_many_arguments)]
    fn historical(
        &self,
        index: usize,
        input: &HistoricalOrder,
        channel: &catalog::Channel,
        customer_id: String,
        quote: &catalog::QuoteResponse,
        sequence: i64,
        locations: &Locations,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<(Order, Vec<Return>, Changes)> {
        let placed_at = time(input.placed_at.as_ref())?;
        let closed_at = time(input.closed_at.as_ref())?;
        let currency = quote
            .total
            .as_ref()
            .map_or_else(|| channel.currency.clone(), |m| m.currency.clone());
        let completed = input.status() == OrderStatus::Completed;
        let final_status = if completed {
            OrderStatus::Completed
        } else {
            OrderStatus::Cancelled
        };
        let (lines, mut fulfilments) =
            order_lines(&quote.lines, &line_locations(input), final_status);
        for f in &mut fulfilments {
            if completed {
                f.completed_at = ts(closed_at);
            }
        }
        let delivery = input.delivery.clone().unwrap_or_default();
        let kind = delivery.kind();
        let pickup = (kind == DeliveryKind::Pickup).then(|| {
            let promised = placed_at
                + ChronoDuration::from_std(self.settings.pickup_promise).unwrap_or_default();
            let ready = completed.then(|| {
                input
                    .ready_at
                    .as_ref()
                    .and_then(omni_runtime::time::from_timestamp)
                    .unwrap_or(closed_at)
            });
            Pickup {
                store_id: delivery.store_id.clone(),
                pickup_code: String::new(),
                promised_ready_at: ts(promised),
                ready_at: ready.and_then(ts),
                pickup_deadline: None,
                handed_over_at: completed.then(|| ts(closed_at)).flatten(),
                ready_within_promise: ready.is_some_and(|r| r <= promised),
            }
        });
        let mut history = vec![StatusChange {
            status: if completed {
                OrderStatus::Confirmed
            } else {
                OrderStatus::PendingPayment
            } as i32,
            changed_at: ts(placed_at),
            actor_id: actor.to_owned(),
            fulfilment_id: String::new(),
            note: IMPORTED.to_owned(),
        }];
        history.push(StatusChange {
            status: final_status as i32,
            changed_at: ts(closed_at),
            actor_id: actor.to_owned(),
            fulfilment_id: String::new(),
            note: IMPORTED.to_owned(),
        });
        let mut order = Order {
            id: Uuid::now_v7().to_string(),
            order_number: domain::order_number(placed_at.year(), placed_at.month(), sequence),
            channel_id: input.channel_id.clone(),
            channel_kind: channel.kind,
            channel_order_ref: input.channel_order_ref.clone(),
            customer_id,
            store_id: input.store_id.clone(),
            associate_id: input.associate_id.clone(),
            status: final_status as i32,
            delivery: Some(delivery),
            lines,
            coupons: Vec::new(),
            subtotal: quote.subtotal.clone(),
            discount_total: quote.discount_total.clone(),
            total: quote.total.clone(),
            payment: completed.then(|| Payment {
                amount: quote.total.clone(),
                method: match input.payment_method() {
                    PaymentMethod::Unspecified => PaymentMethod::Card,
                    method => method,
                } as i32,
                provider_reference: IMPORTED.to_owned(),
                paid_at: ts(placed_at),
            }),
            refunded_total: Some(money(0, &currency)),
            sourcing: Some(SourcingDecision::default()),
            fulfilments,
            pickup,
            reservation_id: String::new(),
            customer_tier: String::new(),
            cancellation_reason: if completed {
                CancellationReason::Unspecified
            } else {
                CancellationReason::Other
            } as i32,
            history,
            exchange_of_order_id: String::new(),
            placed_at: ts(placed_at),
            payment_due_at: None,
            confirmed_at: completed.then(|| ts(placed_at)).flatten(),
            completed_at: completed.then(|| ts(closed_at)).flatten(),
            cancelled_at: (!completed).then(|| ts(closed_at)).flatten(),
            address_change_deadline: None,
            updated_at: ts(now),
            imported: true,
        };

        let mut events = Changes::default();
        let order_facts = facts(&order, locations);
        if completed {
            events.push(
                "orders.order_fulfilled",
                Payload::OrderFulfilled(OrderFulfilled {
                    order: Some(order_facts),
                    fulfilled_at: ts(closed_at),
                }),
            );
        } else {
            events.push(
                "orders.order_cancelled",
                Payload::OrderCancelled(OrderCancelled {
                    order: Some(order_facts),
                    previous_status: OrderStatus::PendingPayment as i32,
                    reason: CancellationReason::Other as i32,
                    note: IMPORTED.to_owned(),
                    released_coupon_codes: Vec::new(),
                }),
            );
        }

        let mut returns = Vec::new();
        for (j, historical) in input.returns.iter().enumerate() {
            let specs: Vec<ReturnLineSpec> = historical
                .lines
                .iter()
                .map(|l| ReturnLineSpec {
                    order_line_id: order
                        .lines
                        .iter()
                        .find(|o| o.sku_id == l.sku_id)
                        .map(|o| o.id.clone())
                        .unwrap_or_default(),
                    quantity: l.quantity,
                    reason: l.reason(),
                    condition: l.condition(),
                })
                .collect();
            let lines = price_return(&order, &specs)
                .map_err(|e| at(e, &format!("orders[{index}].returns[{j}].")))?;
            let refund: i64 = lines.iter().map(|l| minor(l.refund_amount.as_ref())).sum();
            for spec in &specs {
                if let Some(line) = order.lines.iter_mut().find(|l| l.id == spec.order_line_id) {
                    line.returned_quantity += spec.quantity;
                }
            }
            let completed_at = ts(time(historical.completed_at.as_ref())?);
            let r = Return {
                id: Uuid::now_v7().to_string(),
                order_id: order.id.clone(),
                order_number: order.order_number.clone(),
                customer_id: order.customer_id.clone(),
                channel_id: historical.channel_id.clone(),
                location_id: historical.location_id.clone(),
                status: ReturnStatus::Completed as i32,
                lines,
                refund_total: Some(money(refund, &currency)),
                refund_status: RefundStatus::Paid as i32,
                refund_reference: IMPORTED.to_owned(),
                note: IMPORTED.to_owned(),
                exchange_order_id: String::new(),
                created_at: completed_at,
                completed_at,
            };
            let refunded = minor(order.refunded_total.as_ref()) + refund;
            order.refunded_total = Some(money(refunded, &currency));
            events.push(
                "orders.return_completed",
                Payload::ReturnCompleted(return_completed(&order, &r, false)),
            );
            returns.push(r);
        }
        Ok((order, returns, events))
    }
}

/// A refusal about part of the batch, its fields named from the batch (`orders[i].…`).
fn at(e: Error, prefix: &str) -> Error {
    match e {
        Error::NotFound(what) => Error::not_found_at(format!("{prefix}lines"), what),
        // Here a subject names a line of the batch (`lines[0]/sku/TEE-M`).
        e @ Error::FailedPrecondition { .. } => e.renamed(|subject| format!("{prefix}{subject}")),
        other => other.within(prefix),
    }
}

/// `orders` cut, in their order, into runs of at most `per_call` lines (an order longer than
/// that alone).
fn quote_calls(
    orders: &[usize],
    lines: impl Fn(usize) -> usize,
    per_call: usize,
) -> Vec<Vec<usize>> {
    let mut calls = Vec::new();
    let (mut start, mut count) = (0, 0);
    for (k, &i) in orders.iter().enumerate() {
        let n = lines(i);
        if k > start && count + n > per_call {
            calls.push(orders[start..k].to_vec());
            (start, count) = (k, 0);
        }
        count += n;
    }
    if start < orders.len() {
        calls.push(orders[start..].to_vec());
    }
    calls
}

/// A field of catalog's BatchQuote (`quotes[k].lines[0].sku_id`) named as the import's own
/// (`orders[i].lines[0].sku_id`, where `orders[k] == i`).
fn order_field(field: &str, orders: &[usize]) -> String {
    field
        .strip_prefix("quotes[")
        .and_then(|rest| rest.split_once(']'))
        .and_then(|(k, rest)| Some((orders.get(k.parse::<usize>().ok()?)?, rest)))
        .map_or_else(
            || field.to_owned(),
            |(i, rest)| format!("orders[{i}]{rest}"),
        )
}

/// Every location the batch names is one inventory knows; hand-over stores are stores.
fn check_locations(
    batch: &[HistoricalOrder],
    fresh: &[usize],
    locations: &Locations,
) -> Result<()> {
    let known = |id: &str| locations.by_id.get(id);
    for &i in fresh {
        let o = &batch[i];
        let delivery = o.delivery.clone().unwrap_or_default();
        if matches!(
            delivery.kind(),
            DeliveryKind::Pickup | DeliveryKind::CarryOut
        ) {
            match known(&delivery.store_id) {
                None => {
                    return Err(Error::not_found_at(
                        format!("orders[{i}].delivery.store_id"),
                        format!("location {}", delivery.store_id),
                    ));
                }
                Some(l) if l.kind() != inventory::LocationKind::Store => {
                    return Err(Error::invalid(
                        format!("orders[{i}].delivery.store_id"),
                        "must be a store: orders are handed over in stores",
                    ));
                }
                Some(_) => {}
            }
        }
        let named = std::iter::once((o.store_id.as_str(), format!("orders[{i}].store_id")))
            .chain(o.lines.iter().enumerate().map(|(j, l)| {
                (
                    l.location_id.as_str(),
                    format!("orders[{i}].lines[{j}].location_id"),
                )
            }))
            .chain(o.returns.iter().enumerate().map(|(j, r)| {
                (
                    r.location_id.as_str(),
                    format!("orders[{i}].returns[{j}].location_id"),
                )
            }));
        for (id, field) in named {
            if !id.is_empty() && known(id).is_none() {
                return Err(Error::not_found_at(field, format!("location {id}")));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_calls_keep_every_order_once_in_order_within_the_line_budget() {
        let lines = [3, 4, 2, 9, 1, 1, 5];
        let orders: Vec<usize> = (0..lines.len()).collect();
        let calls = quote_calls(&orders, |i| lines[i], 7);
        assert_eq!(
            calls,
            [vec![0, 1], vec![2], vec![3], vec![4, 5, 6]],
            "an order longer than the budget goes alone"
        );
        let fresh = [2, 5, 6];
        assert_eq!(quote_calls(&fresh, |i| lines[i], 100), [fresh.to_vec()]);
        assert!(quote_calls(&[], |i| lines[i], 7).is_empty());
    }

    #[test]
    fn batch_quote_fields_are_named_as_the_import_s_orders() {
        let orders = [4, 9];
        assert_eq!(
            order_field("quotes[1].lines[0].sku_id", &orders),
            "orders[9].lines[0].sku_id"
        );
        assert_eq!(
            order_field("quotes[0].lines[2]/sku/TEE-M", &orders),
            "orders[4].lines[2]/sku/TEE-M"
        );
        assert_eq!(
            order_field("quotes[7].channel_id", &orders),
            "quotes[7].channel_id"
        );
        assert_eq!(order_field("quotes", &orders), "quotes");
    }
}

//! The event handler: order, return, catalog, crm and inventory events become facts, customer
//! merges move facts to the surviving customer, and the rollups move with them in the
//! consumer's transaction (applied once per event id by the runtime's consumer). Erasures need
//! nothing here: facts hold customer ids only, no personal data.

use chrono::{DateTime, NaiveDate, Utc};
use omni_proto::events::{Event, OrderFacts, event::Payload};
use omni_runtime::Result;
use omni_runtime::consumer::Handler;
use sqlx::PgConnection;
use tokio::sync::broadcast;

use crate::attribution::{self, Links};
use crate::order_facts::{self, OrderChange};
use crate::store::{self, OrderRow, ReturnRow};

/// The streams this service reads.
pub const SOURCES: &[&str] = &["orders", "identity", "catalog", "crm", "inventory"];

/// Applies events; tells live watchers that today's sales may have changed.
#[derive(Debug, Clone)]
pub struct Facts {
    pub sales_changed: broadcast::Sender<()>,
}

fn time(t: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    let t = t?;
    DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?)
}

fn money(m: Option<&omni_proto::common::Money>) -> i64 {
    m.map_or(0, |m| m.minor_units)
}

/// The fact row of an order, as an order event describes it.
pub fn order_row(o: &OrderFacts, occurred_at: DateTime<Utc>, cancelled: bool) -> OrderRow {
    let placed_at = time(o.placed_at.as_ref()).unwrap_or(occurred_at);
    let sales = if o.lines.is_empty() {
        money(o.total.as_ref())
    } else {
        o.lines.iter().map(|l| money(l.net_amount.as_ref())).sum()
    };
    OrderRow {
        order_id: o.order_id.clone(),
        channel_id: o.channel_id.clone(),
        store_id: o.store_id.clone(),
        associate_id: o.associate_id.clone(),
        customer_id: o.customer_id.clone(),
        placed_at,
        day: placed_at.date_naive(),
        sales,
        cost: o
            .lines
            .iter()
            .map(|l| money(l.unit_cost.as_ref()) * i64::from(l.quantity))
            .sum(),
        units: o.lines.iter().map(|l| i64::from(l.quantity)).sum(),
        cancelled: cancelled
            || o.status == omni_proto::omni::orders::v1::OrderStatus::Cancelled as i32,
        promised_ready_at: time(o.promised_ready_at.as_ref()),
        ready_at: time(o.ready_at.as_ref()),
    }
}

/// Stores that fulfilled the order: the pickup store, and stores lines shipped from.
fn store_credits(o: &OrderFacts) -> Vec<(String, &'static str)> {
    use omni_proto::omni::orders::v1::DeliveryKind;
    let mut credits = Vec::new();
    if o.delivery_kind == DeliveryKind::Pickup as i32 && !o.handover_store_id.is_empty() {
        credits.push((o.handover_store_id.clone(), "pickup"));
    }
    for f in o
        .fulfilments
        .iter()
        .filter(|f| f.from_store && !f.location_id.is_empty())
    {
        if f.location_id != o.handover_store_id || o.delivery_kind != DeliveryKind::Pickup as i32 {
            credits.push((f.location_id.clone(), "ship_from_store"));
        }
    }
    credits
}

fn coupons(o: &OrderFacts) -> Vec<(String, String, i64)> {
    o.coupons
        .iter()
        .filter(|c| !c.code.is_empty())
        .map(|c| {
            (
                c.code.clone(),
                c.issuing_channel_id.clone(),
                money(c.discount.as_ref()),
            )
        })
        .collect()
}

fn date(d: Option<&omni_proto::common::Date>) -> Option<NaiveDate> {
    let d = d?;
    NaiveDate::from_ymd_opt(
        d.year,
        u32::try_from(d.month).ok()?,
        u32::try_from(d.day).ok()?,
    )
}

/// An order event's facts: the order as it now stands, when, and whether it cancels it.
fn order_change(event: &Event) -> Option<(Option<&OrderFacts>, DateTime<Utc>, bool)> {
    let at = time(event.occurred_at.as_ref()).unwrap_or_else(Utc::now);
    match event.payload.as_ref()? {
        Payload::OrderPlaced(e) => Some((e.order.as_ref(), at, false)),
        Payload::OrderPaid(e) => Some((e.order.as_ref(), at, false)),
        Payload::OrderFulfilled(e) => Some((e.order.as_ref(), at, false)),
        Payload::OrderCancelled(e) => Some((e.order.as_ref(), at, true)),
        _ => None,
    }
}

/// One order's events of a batch folded into one change. Applying the fold gives what
/// applying each event in turn gives: an order's facts are replaced by its latest event's,
/// except that cancellation sticks and ready times, once known, are kept (the same rules
/// [`OrderRow::over`] applies against the stored facts, and they compose), so the
/// intermediate contributions would only cancel out in the rollups.
struct Folded<'a> {
    /// The merged fact row.
    row: OrderRow,
    /// The latest event's facts, time and cancel flag (attribution, experiments, channel).
    facts: &'a OrderFacts,
    occurred_at: DateTime<Utc>,
    cancelled: bool,
}

impl<'a> Folded<'a> {
    fn new(facts: &'a OrderFacts, occurred_at: DateTime<Utc>, cancelled: bool) -> Self {
        Folded {
            row: order_row(facts, occurred_at, cancelled),
            facts,
            occurred_at,
            cancelled,
        }
    }

    fn then(&mut self, next: Folded<'a>) {
        let row = next.row.over(&self.row);
        *self = Folded { row, ..next };
    }
}

/// The row of a completed return, as its event describes it.
fn return_row(e: &omni_proto::events::ReturnCompleted, occurred_at: DateTime<Utc>) -> ReturnRow {
    let completed = time(e.completed_at.as_ref()).unwrap_or(occurred_at);
    let refund = if e.refund_total.is_some() {
        money(e.refund_total.as_ref())
    } else {
        e.lines
            .iter()
            .map(|l| money(l.refund_amount.as_ref()))
            .sum()
    };
    ReturnRow {
        return_id: e.return_id.clone(),
        order_id: e.order_id.clone(),
        order_channel_id: e.order_channel_id.clone(),
        customer_id: e.customer_id.clone(),
        day: completed.date_naive(),
        refund,
        cost: e
            .lines
            .iter()
            .map(|l| money(l.unit_cost.as_ref()) * i64::from(l.quantity))
            .sum(),
    }
}

/// What a batch holds back to apply together: order changes, folded per order, and returns.
#[derive(Default)]
struct Pending<'a> {
    orders: Vec<Folded<'a>>,
    returns: Vec<ReturnRow>,
}

impl Pending<'_> {
    /// Whether `event` must wait for what is held back to be applied first: when it reads or
    /// changes what that changes, or the other way round. A return is stored with its order's
    /// dimensions and whether it was its customer's first order, so it waits for changes to
    /// that order or customer, and they wait for it; a merge moves orders between customers;
    /// a channel's announced kind must land after the kinds orders carried before it. Feedback
    /// and inventory values touch other tables, and a ready time for an order held back is
    /// folded in with it.
    fn blocks(&self, event: &Event) -> bool {
        // A return that does not name its customer may concern any of them.
        let related = |r_order: &str, r_customer: &str, order: &str, customer: &str| {
            r_customer.is_empty() || r_order == order || r_customer == customer
        };
        match &event.payload {
            Some(Payload::ReturnCompleted(e)) => self.orders.iter().any(|f| {
                related(
                    &e.order_id,
                    &e.customer_id,
                    &f.row.order_id,
                    &f.row.customer_id,
                )
            }),
            Some(Payload::CustomerMerged(_) | Payload::ChannelChanged(_)) => {
                !self.orders.is_empty() || !self.returns.is_empty()
            }
            _ => match order_change(event) {
                Some((Some(o), _, _)) => self
                    .returns
                    .iter()
                    .any(|r| related(&r.order_id, &r.customer_id, &o.order_id, &o.customer_id)),
                _ => false,
            },
        }
    }

    /// Applies what is held back: the order changes together ([`order_facts::apply`]), then
    /// the returns ([`order_facts::apply_returns`]), a fixed number of statements for the
    /// batch, not per order.
    async fn flush(&mut self, conn: &mut PgConnection) -> Result<()> {
        if !self.orders.is_empty() {
            let changes: Vec<OrderChange> = self
                .orders
                .iter()
                .map(|f| OrderChange {
                    row: f.row.clone(),
                    channel_kind: f.facts.channel_kind,
                })
                .collect();
            order_facts::apply(conn, &changes).await?;
            let links: Vec<Links> = self
                .orders
                .iter()
                .map(|f| Links {
                    order_id: f.row.order_id.clone(),
                    credits: store_credits(f.facts),
                    coupons: coupons(f.facts),
                })
                .collect();
            attribution::replace_links(conn, &links).await?;
            for f in self.orders.drain(..) {
                if !f.facts.experiment_id.is_empty() {
                    record_fulfilment(conn, f.facts, f.occurred_at, f.cancelled).await?;
                }
            }
        }
        order_facts::apply_returns(conn, &self.returns).await?;
        self.returns.clear();
        Ok(())
    }
}

impl Handler for Facts {
    async fn handle(&self, conn: &mut PgConnection, event: &Event) -> Result<()> {
        self.handle_batch(conn, std::slice::from_ref(event)).await
    }

    /// Folds each order's events (placed, paid, fulfilled, cancelled, ready) into one change
    /// and applies the batch's changes together: a batch's order usually arrives three times,
    /// and each application would move its contribution out of and back into the same rollup
    /// rows. Returns are held back with them. An event that reads or moves what is held back
    /// (see [`Pending::blocks`]) has it applied first.
    async fn handle_batch(&self, conn: &mut PgConnection, events: &[Event]) -> Result<()> {
        let mut pending = Pending::default();
        let mut sales = false;
        for event in events {
            if pending.blocks(event) {
                pending.flush(conn).await?;
            }
            if let Some((facts, at, cancelled)) = order_change(event) {
                sales = true;
                let Some(facts) =
                    facts.filter(|o| !o.order_id.is_empty() && !o.channel_id.is_empty())
                else {
                    tracing::warn!(event = %event.id, "order event without order or channel id; ignored");
                    continue;
                };
                let next = Folded::new(facts, at, cancelled);
                match pending
                    .orders
                    .iter_mut()
                    .find(|f| f.row.order_id == facts.order_id)
                {
                    Some(f) => f.then(next),
                    None => pending.orders.push(next),
                }
                continue;
            }
            match &event.payload {
                Some(Payload::ReturnCompleted(e)) => {
                    let at = time(event.occurred_at.as_ref()).unwrap_or_else(Utc::now);
                    pending.returns.push(return_row(e, at));
                    sales = true;
                }
                Some(Payload::OrderReadyForPickup(e))
                    if let Some(f) = pending
                        .orders
                        .iter_mut()
                        .find(|f| f.row.order_id == e.order_id) =>
                {
                    let row = &mut f.row;
                    row.promised_ready_at =
                        time(e.promised_ready_at.as_ref()).or(row.promised_ready_at);
                    row.ready_at = time(e.ready_at.as_ref()).or(row.ready_at);
                    sales = true;
                }
                _ => sales |= self.apply_other(conn, event).await?,
            }
        }
        pending.flush(conn).await?;
        if sales {
            // Watchers re-read after the commit; a lagging watcher only misses a wake-up.
            let _ = self.sales_changed.send(());
        }
        Ok(())
    }
}

impl Facts {
    /// Applies an event other than an order change; whether it may move today's sales.
    async fn apply_other(&self, conn: &mut PgConnection, event: &Event) -> Result<bool> {
        let occurred_at = time(event.occurred_at.as_ref()).unwrap_or_else(Utc::now);
        let Some(payload) = &event.payload else {
            return Ok(false);
        };
        let mut sales = true;
        match payload {
            Payload::OrderReadyForPickup(e) => {
                store::apply_ready(
                    conn,
                    &e.order_id,
                    time(e.promised_ready_at.as_ref()),
                    time(e.ready_at.as_ref()),
                )
                .await?;
            }
            Payload::ReturnCompleted(e) => {
                order_facts::apply_returns(conn, &[return_row(e, occurred_at)]).await?;
            }
            Payload::CustomerMerged(e) => {
                store::merge_customer(conn, &e.merged_id, &e.survivor_id).await?;
            }
            Payload::ChannelChanged(e) => {
                sales = false;
                store::register_channel(conn, &e.channel_id, e.kind, &e.name, &e.store_location_id)
                    .await?;
            }
            Payload::FeedbackRecorded(e) => {
                sales = false;
                let day = time(e.recorded_at.as_ref())
                    .unwrap_or(occurred_at)
                    .date_naive();
                let nps = e.scale == omni_proto::omni::crm::v1::FeedbackScale::Nps as i32;
                let valid = if nps {
                    (0..=10).contains(&e.score)
                } else {
                    (1..=5).contains(&e.score)
                };
                if valid && !e.channel_id.is_empty() {
                    store::apply_feedback(conn, day, &e.channel_id, &e.store_id, nps, e.score)
                        .await?;
                } else {
                    tracing::warn!(feedback = %e.feedback_id, "feedback without channel or score in range; ignored");
                }
            }
            Payload::InventoryValued(e) => {
                sales = false;
                if let Some(day) = date(e.day.as_ref()) {
                    store::apply_inventory_value(
                        conn,
                        &e.location_id,
                        day,
                        money(e.value.as_ref()),
                    )
                    .await?;
                }
            }
            _ => sales = false,
        }
        Ok(sales)
    }
}

/// How an order of a sourcing experiment was fulfilled: split, time to completion, and how
/// many of its units left from stores.
async fn record_fulfilment(
    conn: &mut PgConnection,
    order: &OrderFacts,
    occurred_at: DateTime<Utc>,
    cancelled: bool,
) -> Result<()> {
    let row = order_row(order, occurred_at, cancelled);
    let stores: Vec<&str> = order
        .fulfilments
        .iter()
        .filter(|f| f.from_store)
        .map(|f| f.location_id.as_str())
        .collect();
    let store_units = order
        .lines
        .iter()
        .filter(|l| stores.contains(&l.location_id.as_str()))
        .map(|l| i64::from(l.quantity))
        .sum();
    crate::experiment_store::record_fulfilment(
        conn,
        &crate::experiment_store::FulfilmentRow {
            order_id: order.order_id.clone(),
            experiment_id: order.experiment_id.clone(),
            variant: order.variant.clone(),
            split: order.split,
            placed_at: row.placed_at,
            completed_at: time(order.completed_at.as_ref()),
            units: row.units,
            store_units,
            cancelled: row.cancelled,
        },
    )
    .await
}

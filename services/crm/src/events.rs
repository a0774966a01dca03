//! Applies identity and order events to crm's tables, inside the consumer's transaction, so
//! each event is applied exactly once; a batch of events refreshes each customer it touched
//! once.
//!
//! Round trips to Postgres, more than the work itself, bound how fast events apply: applied
//! one at a time, an order event costs some twenty-five statements. So a batch's consecutive
//! order events (placed, paid, fulfilled, cancelled) and returns are gathered into a run and
//! applied together, with a fixed number of statements whatever the run's length
//! ([`orders`]). Any other event (a registration, merge, erasure, consent or channel) first
//! applies the pending run, as it may read or move what the run files, then applies on its
//! own. Either way a batch leaves what applying its events one at a time, in stream order,
//! leaves.

mod orders;

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use omni_proto::events::event::Payload;
use omni_proto::events::{Event, OrderFacts};
use omni_runtime::consumer::Handler;
use sqlx::PgConnection;

use crate::grpc::Grpc;
use crate::offers::{self, Happening};
use crate::{segments, store, tiers};

/// crm's handler for the "identity", "orders" and "catalog" streams. It holds the gRPC layer
/// for the triggered offers an order may fire (coupons and deliveries go through its outbox).
#[derive(Debug, Clone)]
pub struct Events {
    pub grpc: Grpc,
}

impl Handler for Events {
    async fn handle(&self, conn: &mut PgConnection, event: &Event) -> omni_runtime::Result<()> {
        self.handle_batch(conn, std::slice::from_ref(event)).await
    }

    /// Applies a batch's events in order (runs of order events together), then refreshes the
    /// segments of each customer they touched once, then fires the offers they may trigger.
    async fn handle_batch(
        &self,
        conn: &mut PgConnection,
        events: &[Event],
    ) -> omni_runtime::Result<()> {
        let mut batch = Batch::default();
        let mut run: Vec<Pending<'_>> = Vec::new();
        for event in events {
            match classify(event) {
                Applies::InRun(pending) => run.push(pending),
                Applies::Alone => {
                    flush(conn, &mut run, &mut batch).await?;
                    if let Some(customer) = apply(conn, event).await? {
                        batch.touched.insert(customer);
                    }
                    tracing::debug!(event_id = %event.id, event_type = %event.r#type, "event applied");
                }
                Applies::Nothing => {}
            }
        }
        flush(conn, &mut run, &mut batch).await?;
        if batch.touched.is_empty() {
            return Ok(());
        }
        // A merge later in the batch may have moved a customer touched earlier.
        let touched: Vec<String> = batch.touched.into_iter().collect();
        let survivors = store::resolve_all(conn, &touched).await?;
        let mut customers: Vec<String> = survivors.values().cloned().collect();
        customers.sort();
        customers.dedup();
        // Segments first, offers second: the same lock order as a campaign send (segment
        // members, then the customer row), so the two cannot deadlock.
        segments::refresh_customers(conn, &customers).await?;
        // Outbox rows for tier changes and fired offers.
        let mut announced = tiers::announce_changes(conn, &self.grpc.outbox, &customers).await?;
        // Each trigger's rules are loaded once for the batch; most triggers have none.
        let mut offer_rules = HashMap::new();
        for (customer, happening) in &batch.happenings {
            let rules = match offer_rules.entry(happening.trigger) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => e.insert(offers::armed_rules(conn, happening.trigger).await?),
            };
            if rules.is_empty() {
                continue;
            }
            let customer = survivors.get(customer).unwrap_or(customer);
            announced += self.grpc.fire(conn, customer, happening, rules).await?;
        }
        if announced > 0 {
            self.grpc.outbox.wake();
        }
        Ok(())
    }
}

/// What a batch gathers as its events apply.
#[derive(Default)]
struct Batch {
    /// Customers whose segments may have changed, as the events named them.
    touched: BTreeSet<String>,
    /// What may fire an offer, in stream order, with the customer it concerns.
    happenings: Vec<(String, Happening)>,
}

/// An event waiting in the run, with what it may fire.
struct Pending<'a> {
    event: orders::RunEvent<'a>,
    happening: Option<Happening>,
}

/// How an event applies.
enum Applies<'a> {
    /// An order event or a return about a customer: joins the run.
    InRun(Pending<'a>),
    /// An identity or channel event: applies on its own, after the run.
    Alone,
    /// Nothing to apply: an order event without facts, an order event or a return without
    /// customer (anonymous orders have nobody to attach to), or an event type that does not
    /// concern crm (it leaves the run going).
    Nothing,
}

fn classify(event: &Event) -> Applies<'_> {
    let Some(payload) = &event.payload else {
        return Applies::Nothing;
    };
    let (facts, fulfilled, trigger) = match payload {
        Payload::OrderPlaced(p) => (p.order.as_ref(), false, Some(offers::ORDER_PLACED)),
        Payload::OrderPaid(p) => (p.order.as_ref(), false, None),
        Payload::OrderFulfilled(p) => (p.order.as_ref(), true, Some(offers::ORDER_FULFILLED)),
        Payload::OrderCancelled(p) => (p.order.as_ref(), false, None),
        Payload::ReturnCompleted(r) if r.customer_id.is_empty() => return Applies::Nothing,
        Payload::ReturnCompleted(r) => {
            return Applies::InRun(Pending {
                event: orders::RunEvent::Return(r),
                happening: None,
            });
        }
        Payload::CustomerRegistered(_)
        | Payload::CustomerMerged(_)
        | Payload::CustomerErased(_)
        | Payload::CustomerConsentChanged(_)
        | Payload::ChannelChanged(_) => return Applies::Alone,
        // Other event types on these streams do not concern crm.
        _ => return Applies::Nothing,
    };
    let Some(facts) = facts.filter(|f| !f.customer_id.is_empty()) else {
        return Applies::Nothing;
    };
    let at = event
        .occurred_at
        .as_ref()
        .and_then(|t| DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .unwrap_or_else(Utc::now);
    Applies::InRun(Pending {
        event: orders::RunEvent::Order {
            facts,
            at,
            fulfilled,
        },
        // Imported history earns its points but is not news: it fires no offers.
        happening: trigger
            .filter(|_| !facts.imported)
            .map(|t| offer_trigger(t, facts)),
    })
}

/// Applies the pending run, and records the customers it touched and what it may fire.
async fn flush(
    conn: &mut PgConnection,
    run: &mut Vec<Pending<'_>>,
    batch: &mut Batch,
) -> omni_runtime::Result<()> {
    if run.is_empty() {
        return Ok(());
    }
    let rules = if run.iter().any(|p| p.event.moves_points()) {
        Some(tiers::load(conn).await?)
    } else {
        None
    };
    let events: Vec<orders::RunEvent<'_>> = run.iter().map(|p| p.event).collect();
    let customers = orders::apply(conn, &events, rules.as_ref()).await?;
    tracing::debug!(events = events.len(), "order events applied");
    for (pending, customer) in run.drain(..).zip(customers) {
        if let Some(happening) = pending.happening {
            batch.happenings.push((customer.clone(), happening));
        }
        batch.touched.insert(customer);
    }
    Ok(())
}

/// Applies an identity or channel event; returns the customer whose segments may have
/// changed.
async fn apply(conn: &mut PgConnection, event: &Event) -> omni_runtime::Result<Option<String>> {
    let Some(payload) = &event.payload else {
        return Ok(None);
    };
    Ok(match payload {
        Payload::CustomerRegistered(r) => {
            store::register(conn, r).await?;
            Some(r.customer_id.clone())
        }
        Payload::CustomerMerged(m) => {
            store::merge(conn, &m.survivor_id, &m.merged_id).await?;
            Some(m.survivor_id.clone())
        }
        Payload::CustomerErased(e) => {
            store::erase(conn, &e.customer_id, &e.merged_ids).await?;
            None
        }
        Payload::CustomerConsentChanged(c) => {
            let customer = store::resolve(conn, &c.customer_id).await?;
            store::set_consent(conn, &customer, c.channel_kind, c.marketing_opt_in).await?;
            None
        }
        Payload::ChannelChanged(c) => {
            store::upsert_channel(conn, &c.channel_id, c.kind).await?;
            None
        }
        // Not applied alone (see `classify`).
        _ => None,
    })
}

/// What an order event may fire, as offer conditions see it.
fn offer_trigger(trigger: i32, facts: &OrderFacts) -> Happening {
    Happening {
        trigger,
        interaction_kind: 0,
        channel_kind: facts.channel_kind,
        store_id: facts.store_id.clone(),
        category_ids: facts.lines.iter().map(|l| l.category_id.clone()).collect(),
        sku_ids: facts.lines.iter().map(|l| l.sku_id.clone()).collect(),
    }
}

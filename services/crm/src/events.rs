//! Applies identity and order events to crm's tables, inside the consumer's transaction, so
//! each event is applied exactly once; a batch of events refreshes each customer it touched
//! once.

use chrono::{DateTime, Utc};
use omni_proto::events::Event;
use omni_proto::events::event::Payload;
use omni_proto::events::{OrderFacts, ReturnCompleted};
use omni_runtime::consumer::Handler;
use sqlx::PgConnection;

use crate::grpc::Grpc;
use crate::offers::{self, Happening};
use crate::{facts, segments, store, tiers};

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

    /// Applies a batch's events in order, then refreshes the segments of each customer they
    /// touched once, then fires the offers they may trigger.
    async fn handle_batch(
        &self,
        conn: &mut PgConnection,
        events: &[Event],
    ) -> omni_runtime::Result<()> {
        let mut touched: Vec<String> = Vec::new();
        let mut happenings: Vec<(String, Happening)> = Vec::new();
        for event in events {
            let Some(customer) = apply(conn, event, &mut happenings).await? else {
                continue;
            };
            if !touched.contains(&customer) {
                touched.push(customer);
            }
            tracing::debug!(event_id = %event.id, event_type = %event.r#type, "event applied");
        }
        if touched.is_empty() {
            return Ok(());
        }
        // A merge later in the batch may have moved a customer touched earlier.
        let mut customers = Vec::with_capacity(touched.len());
        for customer in &touched {
            let survivor = store::resolve(conn, customer).await?;
            if !customers.contains(&survivor) {
                customers.push(survivor);
            }
        }
        customers.sort();
        // Segments first, offers second: the same lock order as a campaign send (segment
        // members, then the customer row), so the two cannot deadlock.
        segments::refresh_customers(conn, &customers).await?;
        // Outbox rows for tier changes and fired offers.
        let mut announced =
            tiers::announce_changes(conn, &self.grpc.outbox, &customers, facts::CANCELLED).await?;
        for (customer, happening) in &happenings {
            let customer = store::resolve(conn, customer).await?;
            announced += self.grpc.fire_offers(conn, &customer, happening).await?;
        }
        if announced > 0 {
            self.grpc.outbox.wake();
        }
        Ok(())
    }
}

/// Applies one event's data; returns the customer whose segments may have changed and records
/// what may fire an offer.
async fn apply(
    conn: &mut PgConnection,
    event: &Event,
    happenings: &mut Vec<(String, Happening)>,
) -> omni_runtime::Result<Option<String>> {
    let Some(payload) = &event.payload else {
        return Ok(None);
    };
    let at = event
        .occurred_at
        .as_ref()
        .and_then(|t| DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .unwrap_or_else(Utc::now);
    let mut happening = None;
    let touched = match payload {
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
        Payload::OrderPlaced(p) => {
            let customer = order(conn, p.order.as_ref(), at, false).await?;
            happening = p
                .order
                .as_ref()
                .filter(|o| !o.imported)
                .map(|o| offer_trigger(offers::ORDER_PLACED, o));
            customer
        }
        Payload::OrderPaid(p) => order(conn, p.order.as_ref(), at, false).await?,
        Payload::OrderFulfilled(p) => {
            let customer = order(conn, p.order.as_ref(), at, true).await?;
            // Imported history earns its points but is not news: it fires no offers.
            happening = p
                .order
                .as_ref()
                .filter(|o| !o.imported)
                .map(|o| offer_trigger(offers::ORDER_FULFILLED, o));
            customer
        }
        Payload::OrderCancelled(p) => order(conn, p.order.as_ref(), at, false).await?,
        Payload::ReturnCompleted(r) => returned(conn, r).await?,
        // Other event types on these streams do not concern crm.
        _ => None,
    };
    if let (Some(customer), Some(happening)) = (&touched, happening) {
        happenings.push((customer.clone(), happening));
    }
    Ok(touched)
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

/// Files an order (and credits its points when `fulfilled`); returns the customer it
/// concerns, none for an anonymous order.
async fn order(
    conn: &mut PgConnection,
    facts: Option<&OrderFacts>,
    at: DateTime<Utc>,
    fulfilled: bool,
) -> omni_runtime::Result<Option<String>> {
    let Some(facts) = facts else {
        return Ok(None);
    };
    if facts.customer_id.is_empty() {
        // Anonymous orders have nobody to attach to.
        return Ok(None);
    }
    let customer = store::resolve_locked(conn, &facts.customer_id).await?;
    store::upsert_order(conn, &customer, facts, at).await?;
    if fulfilled {
        earn(conn, &customer, facts).await?;
    }
    Ok(Some(customer))
}

async fn earn(
    conn: &mut PgConnection,
    customer: &str,
    facts: &OrderFacts,
) -> omni_runtime::Result<()> {
    let total = facts.total.as_ref().map_or(0, |m| m.minor_units);
    let points = points_at_current_tier(conn, customer, total).await?;
    store::earn(conn, customer, &facts.order_id, &facts.channel_id, points).await?;
    Ok(())
}

async fn returned(
    conn: &mut PgConnection,
    r: &ReturnCompleted,
) -> omni_runtime::Result<Option<String>> {
    if r.customer_id.is_empty() {
        return Ok(None);
    }
    let customer = store::resolve_locked(conn, &r.customer_id).await?;
    let refund = r.refund_total.as_ref().map_or(0, |m| m.minor_units);
    store::record_refund(conn, &r.order_id, refund).await?;
    let points = points_at_current_tier(conn, &customer, refund).await?;
    store::reverse(
        conn,
        &customer,
        &r.order_id,
        &r.return_id,
        &r.channel_id,
        points,
    )
    .await?;
    Ok(Some(customer))
}

/// Points for `net_minor` of spend at the loyalty rules' rate and the customer's tier now.
async fn points_at_current_tier(
    conn: &mut PgConnection,
    customer: &str,
    net_minor: i64,
) -> omni_runtime::Result<i64> {
    let rules = tiers::load(conn).await?;
    let orders = store::orders(conn, customer).await?;
    let spend = rules.rolling_spend(&orders, chrono::Utc::now(), facts::CANCELLED);
    let tier = rules.tier_for(spend).0.to_owned();
    Ok(rules.points_for(net_minor, &tier))
}

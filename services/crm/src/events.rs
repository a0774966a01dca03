//! Applies identity and order events to crm's tables, inside the consumer's transaction, so
//! each event is applied exactly once.

use omni_proto::events::Event;
use omni_proto::events::event::Payload;
use omni_proto::events::{OrderFacts, ReturnCompleted};
use omni_runtime::consumer::Handler;
use sqlx::PgConnection;

use crate::store;

/// Points earned per whole currency unit of a fulfilled order's total.
pub const MINOR_UNITS_PER_POINT: i64 = 100;

/// crm's handler for the "identity" and "orders" streams.
#[derive(Debug, Clone, Copy)]
pub struct Events;

impl Handler for Events {
    async fn handle(&self, conn: &mut PgConnection, event: &Event) -> omni_runtime::Result<()> {
        let Some(payload) = &event.payload else {
            return Ok(());
        };
        match payload {
            Payload::CustomerRegistered(r) => {
                store::register(conn, r).await?;
            }
            Payload::CustomerMerged(m) => {
                store::merge(conn, &m.survivor_id, &m.merged_id).await?;
            }
            Payload::CustomerErased(e) => {
                store::erase(conn, &e.customer_id).await?;
            }
            Payload::OrderPlaced(p) => order(conn, p.order.as_ref(), false).await?,
            Payload::OrderPaid(p) => order(conn, p.order.as_ref(), false).await?,
            Payload::OrderFulfilled(p) => order(conn, p.order.as_ref(), true).await?,
            Payload::OrderCancelled(p) => order(conn, p.order.as_ref(), false).await?,
            Payload::ReturnCompleted(r) => returned(conn, r).await?,
            // Other event types on these streams do not concern crm.
            _ => {}
        }
        tracing::debug!(event_id = %event.id, event_type = %event.r#type, "event applied");
        Ok(())
    }
}

async fn order(
    conn: &mut PgConnection,
    facts: Option<&OrderFacts>,
    fulfilled: bool,
) -> omni_runtime::Result<()> {
    let Some(facts) = facts else {
        return Ok(());
    };
    if facts.customer_id.is_empty() {
        // Anonymous orders have nobody to attach to.
        return Ok(());
    }
    let customer = store::resolve(conn, &facts.customer_id).await?;
    store::upsert_order(conn, &customer, facts).await?;
    if fulfilled {
        let total = facts.total.as_ref().map_or(0, |m| m.minor_units);
        store::earn(
            conn,
            &customer,
            &facts.order_id,
            &facts.channel_id,
            total / MINOR_UNITS_PER_POINT,
        )
        .await?;
    }
    Ok(())
}

async fn returned(conn: &mut PgConnection, r: &ReturnCompleted) -> omni_runtime::Result<()> {
    if r.customer_id.is_empty() {
        return Ok(());
    }
    let customer = store::resolve(conn, &r.customer_id).await?;
    let refund = r.refund_total.as_ref().map_or(0, |m| m.minor_units);
    store::record_refund(conn, &r.order_id, refund).await?;
    store::reverse(
        conn,
        &customer,
        &r.order_id,
        &r.return_id,
        &r.channel_id,
        refund / MINOR_UNITS_PER_POINT,
    )
    .await?;
    Ok(())
}

//! What order-management learns from other services' streams, as consumer group
//! `order-management`: identity's erasures ([`crate::erasure`]) and crm's tier changes (kept in
//! `customer_tiers`, so PlaceOrder prices by tier without asking crm per order).

use chrono::{DateTime, Utc};
use omni_proto::events::{Event, event::Payload};
use omni_runtime::Result;
use omni_runtime::consumer::Handler;
use sqlx::PgConnection;

use crate::{erasure, store};

/// The streams order-management reads.
pub const SOURCES: &[&str] = &["identity", "crm"];

#[derive(Debug, Clone, Default)]
pub struct Events;

impl Handler for Events {
    async fn handle(&self, conn: &mut PgConnection, event: &Event) -> Result<()> {
        match &event.payload {
            Some(Payload::CustomerErased(e)) => {
                let customers: Vec<String> = std::iter::once(e.customer_id.clone())
                    .chain(e.merged_ids.iter().cloned())
                    .collect();
                erasure::erase(conn, &customers).await?;
                store::forget_tiers(conn, &customers).await?;
            }
            Some(Payload::CustomerTierChanged(t)) => {
                let at = event
                    .occurred_at
                    .as_ref()
                    .and_then(|t| DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
                    .unwrap_or_else(Utc::now);
                store::put_tier(conn, &t.customer_id, &t.tier, at).await?;
            }
            _ => {}
        }
        Ok(())
    }
}

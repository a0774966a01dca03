//! order-management's use cases.
//!
//! Every change to an order commits in one Postgres transaction that holds the order's row
//! lock: the new state, its status history and its outbox events commit together. No lock and
//! no pooled connection is held while another service answers:
//! - a change that calls inventory or crm (payment, cancellation, an address change that moves
//!   the hold, hand-over, shipment, the sweeper's expiries) is a step ([`steps`]): recorded on
//!   the order, then the calls, each keyed by the order and step so a timeout is retried and
//!   never doubled, then the outcome committed; a step whose process went away is resumed by
//!   the sweeper;
//! - placing an order calls out before its single insert, under a lease on its idempotency key
//!   ([`place`]); a failed try gives back what it held, and a retry after a lost reply gets the
//!   same stock hold back.

mod fulfil;
mod import;
mod place;
mod returns;
mod sourcing;
pub(crate) mod steps;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use omni_proto::common::Money;
use omni_proto::events::event::Payload;
use omni_proto::events::{FulfilmentFacts, OrderFacts, OrderLineFacts, OrderStatusChanged};
use omni_proto::omni::inventory::v1 as inventory;
use omni_proto::omni::orders::v1::{DeliveryKind, Fulfilment, Order, OrderStatus, StatusChange};
use omni_runtime::outbox::Outbox;
use omni_runtime::redis::Redis;
use omni_runtime::time::timestamp;
use omni_runtime::{Error, Result};
use sqlx::{PgConnection, PgPool};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use self::fulfil::Step;
pub use self::import::MAX_IMPORT;
pub use self::place::{CustomerInput, PlaceInput};
pub use self::returns::{ExchangeInput, ReturnInput, ReturnLineSpec};
pub use self::sourcing::PreviewInput;
use crate::store;
use crate::upstream::{Locations, Upstreams};

/// The stream the events go to (`omni:events:{orders}`), as crm and performance expect.
pub const EVENT_SOURCE: &str = "orders";

/// The order clocks.
#[derive(Debug, Clone)]
pub struct Settings {
    pub payment_window: Duration,
    pub pickup_promise: Duration,
    pub pickup_hold: Duration,
    pub address_change_window: Duration,
    /// How long a step may stay pending before the sweeper resumes it: longer than its own
    /// calls can take, so it never races a live process.
    pub resume_after: Duration,
}

pub struct App {
    pub pool: PgPool,
    pub redis: Redis,
    pub outbox: Outbox,
    pub upstreams: Upstreams,
    pub settings: Settings,
    /// Ids of orders that changed, for this process's watchers.
    pub changes: broadcast::Sender<String>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("settings", &self.settings)
            .finish()
    }
}

/// An order change ready to commit: the events it emits.
#[derive(Debug, Default)]
struct Changes {
    events: Vec<(&'static str, Payload)>,
}

impl Changes {
    fn push(&mut self, event_type: &'static str, payload: Payload) {
        self.events.push((event_type, payload));
    }
}

pub fn parse_uuid(field: &str, value: &str) -> Result<Uuid> {
    Uuid::parse_str(value).map_err(|_| Error::invalid(field, "must be a UUID"))
}

fn money(minor_units: i64, currency: &str) -> Money {
    Money {
        minor_units,
        currency: currency.to_owned(),
    }
}

fn minor(m: Option<&Money>) -> i64 {
    m.map_or(0, |m| m.minor_units)
}

fn currency(order: &Order) -> String {
    order
        .total
        .as_ref()
        .map(|m| m.currency.clone())
        .unwrap_or_default()
}

fn ts(t: DateTime<Utc>) -> Option<prost_types::Timestamp> {
    Some(timestamp(t))
}

impl App {
    pub fn new(pool: PgPool, redis: Redis, upstreams: Upstreams, settings: Settings) -> Arc<Self> {
        let (changes, _) = broadcast::channel(1024);
        Arc::new(Self {
            pool,
            redis,
            outbox: Outbox::new(EVENT_SOURCE),
            upstreams,
            settings,
            changes,
        })
    }

    fn changes_channel(&self) -> String {
        self.redis.key("orders:changed")
    }

    /// Tells every replica's watchers that `order_id` changed (falling back to this process's
    /// own watchers when Redis is unreachable).
    async fn announce(&self, order_id: &str) {
        self.outbox.wake();
        let published: redis::RedisResult<i64> = redis::cmd("PUBLISH")
            .arg(self.changes_channel())
            .arg(order_id)
            .query_async(&mut self.redis.conn())
            .await;
        if let Err(e) = published {
            tracing::warn!(error = %e, "order change not published; telling local watchers only");
            let _ = self.changes.send(order_id.to_owned());
        }
    }

    /// Relays the Redis channel of changed orders to this process's watchers until
    /// `shutdown`, resubscribing after connection loss.
    pub async fn forward_changes(self: Arc<Self>, shutdown: CancellationToken) {
        use tokio_stream::StreamExt as _;
        let channel = self.changes_channel();
        loop {
            let subscribed = async {
                let mut pubsub = self.redis.pubsub().await?;
                pubsub.subscribe(&channel).await?;
                let mut messages = pubsub.on_message();
                while let Some(message) = messages.next().await {
                    if let Ok(id) = message.get_payload::<String>() {
                        let _ = self.changes.send(id);
                    }
                }
                anyhow::Ok(())
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                result = subscribed => if let Err(e) = result {
                    tracing::warn!(error = %e, "order change notifications lost; resubscribing");
                },
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// Writes `order` and its events in `conn`'s transaction.
    async fn save(
        &self,
        conn: &mut PgConnection,
        order: &Order,
        actor: &str,
        changes: Changes,
    ) -> Result<()> {
        store::update_order(conn, order).await?;
        for (event_type, payload) in changes.events {
            self.outbox
                .add(conn, event_type, &order.id, actor, payload)
                .await?;
        }
        Ok(())
    }

    /// The order by id, or NOT_FOUND on `field`.
    pub async fn order(&self, id: Uuid, field: &str) -> Result<store::StoredOrder> {
        store::get_order(&self.pool, id)
            .await?
            .ok_or_else(|| Error::not_found_at(field, format!("order {id}")))
    }

    pub async fn order_by_number(&self, number: &str, field: &str) -> Result<store::StoredOrder> {
        let id = store::order_id_by_number(&self.pool, number)
            .await?
            .ok_or_else(|| Error::not_found_at(field, format!("order {number}")))?;
        self.order(id, field).await
    }

    /// The order, locked for a change; ABORTED while a step is in progress on it.
    async fn lock(conn: &mut PgConnection, id: Uuid, field: &str) -> Result<store::StoredOrder> {
        let stored = store::lock_order(conn, id)
            .await?
            .ok_or_else(|| Error::not_found_at(field, format!("order {id}")))?;
        if let Some(pending) = &stored.pending {
            return Err(steps::busy(&stored.order.id, pending));
        }
        Ok(stored)
    }
}

/// The fulfilment leaving from `location`, added (in `status`) when there is none yet: orders
/// have one fulfilment per location, in line order.
fn fulfilment_at<'a>(
    fulfilments: &'a mut Vec<Fulfilment>,
    location: &str,
    status: OrderStatus,
) -> &'a mut Fulfilment {
    let index = match fulfilments.iter().position(|f| f.location_id == location) {
        Some(i) => i,
        None => {
            fulfilments.push(Fulfilment {
                id: Uuid::now_v7().to_string(),
                location_id: location.to_owned(),
                status: status as i32,
                ..Default::default()
            });
            fulfilments.len() - 1
        }
    };
    &mut fulfilments[index]
}

/// Records a status change on the order (and on one fulfilment) and the event for it.
fn transition(
    order: &mut Order,
    changes: &mut Changes,
    status: OrderStatus,
    fulfilment: Option<usize>,
    actor: &str,
    note: &str,
    now: DateTime<Utc>,
) {
    let previous = order.status();
    let (fulfilment_id, location_id, fulfilment_status) = match fulfilment {
        Some(i) => {
            let f = &mut order.fulfilments[i];
            f.set_status(status);
            match status {
                OrderStatus::Picking => f.picking_started_at = ts(now),
                OrderStatus::ReadyForPickup => f.ready_at = ts(now),
                OrderStatus::Shipped => f.shipped_at = ts(now),
                OrderStatus::Completed => f.completed_at = ts(now),
                _ => {}
            }
            (f.id.clone(), f.location_id.clone(), status)
        }
        None => (String::new(), String::new(), OrderStatus::Unspecified),
    };
    let order_status = if fulfilment.is_some() {
        crate::domain::status_from_fulfilments(&order.fulfilments)
    } else {
        status
    };
    order.set_status(order_status);
    order.updated_at = ts(now);
    order.history.push(StatusChange {
        status: status as i32,
        changed_at: ts(now),
        actor_id: actor.to_owned(),
        fulfilment_id: fulfilment_id.clone(),
        note: note.to_owned(),
    });
    changes.push(
        "orders.order_status_changed",
        Payload::OrderStatusChanged(OrderStatusChanged {
            order_id: order.id.clone(),
            order_number: order.order_number.clone(),
            channel_id: order.channel_id.clone(),
            customer_id: order.customer_id.clone(),
            previous_status: previous as i32,
            status: order_status as i32,
            fulfilment_id,
            fulfilment_status: fulfilment_status as i32,
            location_id,
            changed_at: ts(now),
        }),
    );
}

/// The order as its events carry it.
pub fn facts(order: &Order, locations: &Locations) -> OrderFacts {
    let is_store = |id: &str| {
        locations
            .by_id
            .get(id)
            .is_some_and(|l| l.kind() == inventory::LocationKind::Store)
    };
    let delivery = order.delivery.clone().unwrap_or_default();
    let sourcing = order.sourcing.clone().unwrap_or_default();
    let experiment = sourcing.experiment.clone().unwrap_or_default();
    let pickup = order.pickup.clone().unwrap_or_default();
    OrderFacts {
        order_id: order.id.clone(),
        order_number: order.order_number.clone(),
        channel_id: order.channel_id.clone(),
        channel_kind: order.channel_kind,
        customer_id: order.customer_id.clone(),
        store_id: order.store_id.clone(),
        associate_id: order.associate_id.clone(),
        status: order.status,
        delivery_kind: delivery.kind,
        handover_store_id: match delivery.kind() {
            DeliveryKind::Pickup | DeliveryKind::CarryOut => delivery.store_id.clone(),
            _ => String::new(),
        },
        lines: order
            .lines
            .iter()
            .map(|l| OrderLineFacts {
                line_id: l.id.clone(),
                sku_id: l.sku_id.clone(),
                sku_code: l.sku_code.clone(),
                product_id: l.product_id.clone(),
                category_id: l.category_id.clone(),
                quantity: l.quantity,
                unit_price: l.unit_price.clone(),
                discount: l.discount.clone(),
                net_amount: l.net_amount.clone(),
                unit_cost: l.unit_cost.clone(),
                location_id: l.location_id.clone(),
                returned_quantity: l.returned_quantity,
            })
            .collect(),
        coupons: order
            .coupons
            .iter()
            .map(|c| omni_proto::events::CouponUse {
                code: c.code.clone(),
                coupon_id: c.coupon_id.clone(),
                issuing_channel_id: c.issuing_channel_id.clone(),
                discount: c.discount.clone(),
            })
            .collect(),
        subtotal: order.subtotal.clone(),
        discount_total: order.discount_total.clone(),
        total: order.total.clone(),
        fulfilments: order
            .fulfilments
            .iter()
            .map(|f| FulfilmentFacts {
                fulfilment_id: f.id.clone(),
                location_id: f.location_id.clone(),
                from_store: is_store(&f.location_id),
                status: f.status,
                line_ids: f.line_ids.clone(),
                shipped_at: f.shipped_at,
                completed_at: f.completed_at,
            })
            .collect(),
        sourcing_strategy: sourcing.strategy,
        split: sourcing.split,
        experiment_id: experiment.experiment_id,
        variant: experiment.variant,
        customer_tier: order.customer_tier.clone(),
        exchange_of_order_id: order.exchange_of_order_id.clone(),
        placed_at: order.placed_at,
        confirmed_at: order.confirmed_at,
        completed_at: order.completed_at,
        cancelled_at: order.cancelled_at,
        promised_ready_at: pickup.promised_ready_at,
        ready_at: pickup.ready_at,
        imported: order.imported,
    }
}

/// The order's line in its store's pickup queue; `None` once it is handed over or cancelled.
pub fn pickup_entry(
    order: &Order,
    now: DateTime<Utc>,
) -> Option<omni_proto::omni::orders::v1::PickupQueueEntry> {
    use omni_proto::omni::orders::v1::{PickupQueueEntry, PickupQueueState};
    let pickup = order.pickup.as_ref()?;
    let at = |t: Option<&prost_types::Timestamp>| t.and_then(omni_runtime::time::from_timestamp);
    let promised = at(pickup.promised_ready_at.as_ref())?;
    let state = match order.status() {
        OrderStatus::Confirmed | OrderStatus::Allocated | OrderStatus::Picking => {
            if now > promised {
                PickupQueueState::Overdue
            } else {
                PickupQueueState::Due
            }
        }
        OrderStatus::ReadyForPickup => {
            if at(pickup.pickup_deadline.as_ref()).is_some_and(|d| now > d) {
                PickupQueueState::Uncollected
            } else {
                PickupQueueState::AwaitingCustomer
            }
        }
        _ => return None,
    };
    let late_until = at(pickup.ready_at.as_ref()).unwrap_or(now);
    let minutes_late = (late_until - promised).num_minutes();
    Some(PickupQueueEntry {
        order_id: order.id.clone(),
        order_number: order.order_number.clone(),
        customer_id: order.customer_id.clone(),
        customer_name: order
            .delivery
            .as_ref()
            .and_then(|d| d.address.as_ref())
            .map(|a| a.recipient_name.clone())
            .unwrap_or_default(),
        status: order.status,
        state: state as i32,
        item_count: order.lines.iter().map(|l| l.quantity).sum(),
        confirmed_at: order.confirmed_at,
        promised_ready_at: pickup.promised_ready_at,
        ready_at: pickup.ready_at,
        pickup_deadline: pickup.pickup_deadline,
        minutes_late: i32::try_from(minutes_late).unwrap_or(i32::MAX),
    })
}

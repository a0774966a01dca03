//! Changes to an order that call other services, made without holding the order's row lock or
//! a pooled connection while inventory or crm answer.
//!
//! A step runs in three parts:
//! 1. **begin**: in a short transaction under the row lock, the change is checked against the
//!    order and recorded on it as pending (`orders.pending`);
//! 2. **effects**: the other services are called, each call keyed by the order and the step,
//!    so repeating a call never repeats its effect;
//! 3. **finish**: a second short transaction applies the outcome to the order, adds its events
//!    to the outbox, stores the idempotent reply and clears the step.
//!
//! A refusal in part 2 (a definite answer: precondition, not found, invalid) gives the step up
//! and leaves the order as it was. A lost answer (timeout, unavailable) or a failure in part 3
//! leaves the step pending: the caller's retry with the same key resumes it, and the sweeper
//! resumes any step pending for longer than the resume horizon (its process died, or its
//! client went away and the call was dropped). While a step is pending, other changes to the
//! order are refused ABORTED, which clients retry: the order row serialises steps, not the
//! remote calls.

use chrono::{DateTime, Utc};
use omni_proto::common::Address;
use omni_proto::omni::orders::v1::{Order, Payment, SourcingDecision};
use omni_runtime::idempotency::{self, Claim};
use omni_runtime::{Error, Result};
use prost::Message;
use uuid::Uuid;

use super::{App, Changes};
use crate::store::{self, StoredOrder};
use crate::upstream::call;

/// A step recorded on an order while its calls to other services run.
#[derive(Clone, PartialEq, Message)]
pub struct Pending {
    /// Fresh per step; keys of the step's calls derive from it where the order's own id is
    /// not enough.
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub actor: String,
    /// The idempotent call that asked for it (scope and caller's key), so its retry joins it.
    #[prost(string, tag = "3")]
    pub scope: String,
    #[prost(string, tag = "4")]
    pub key: String,
    /// That call's request, encoded: a key reused with another request is refused.
    #[prost(bytes = "vec", tag = "5")]
    pub request: Vec<u8>,
    #[prost(oneof = "Effect", tags = "6, 7, 8, 9")]
    pub effect: Option<Effect>,
}

/// What a step does beyond the order.
// Short-lived values, one per call: their size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Effect {
    /// The payment: the hold made permanent (or, carried out, the stock fulfilled).
    #[prost(message, tag = "6")]
    Pay(Payment),
    /// The hold and coupons given back.
    #[prost(message, tag = "7")]
    Cancel(Cancel),
    /// A new address: the lines held at new locations, the old hold given back.
    #[prost(message, tag = "8")]
    Move(Move),
    /// One fulfilment's units leave their location (handed over or shipped).
    #[prost(message, tag = "9")]
    Fulfil(Fulfil),
}

#[derive(Clone, PartialEq, Message)]
pub struct Cancel {
    #[prost(int32, tag = "1")]
    pub reason: i32,
    #[prost(string, tag = "2")]
    pub note: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Move {
    #[prost(message, optional, tag = "1")]
    pub address: Option<Address>,
    /// Each line's new location, in line order.
    #[prost(string, repeated, tag = "2")]
    pub locations: Vec<String>,
    #[prost(message, optional, tag = "3")]
    pub decision: Option<SourcingDecision>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Fulfil {
    #[prost(string, tag = "1")]
    pub fulfilment_id: String,
    /// Shipped with this carrier and tracking number; otherwise handed over at the store.
    #[prost(bool, tag = "2")]
    pub ship: bool,
    #[prost(string, tag = "3")]
    pub carrier: String,
    #[prost(string, tag = "4")]
    pub tracking_number: String,
}

impl Pending {
    pub fn decode_stored(bytes: &[u8]) -> Result<Self> {
        Self::decode(bytes)
            .map_err(|e| Error::internal(format!("stored order step does not decode: {e}")))
    }

    fn what(&self) -> &'static str {
        match self.effect {
            Some(Effect::Pay(_)) => "payment",
            Some(Effect::Cancel(_)) => "cancellation",
            Some(Effect::Move(_)) => "address change",
            Some(Effect::Fulfil(_)) => "fulfilment",
            None => "change",
        }
    }
}

/// The idempotent request that asks for a step.
pub struct Keyed<'a, Q> {
    pub scope: &'static str,
    pub key: &'a str,
    pub request: &'a Q,
}

/// What a request asks of the order as it stands.
#[allow(clippy::large_enum_variant)]
pub enum Decision {
    /// Nothing to do: the order already is what was asked (a repeated call).
    Unchanged,
    Step(Effect),
}

/// What the step's calls produced, for the commit.
#[derive(Debug, Default)]
pub struct Outcome {
    /// A [`Effect::Move`]'s new hold.
    pub reservation_id: Option<String>,
}

#[allow(clippy::large_enum_variant)]
enum Begun<R> {
    Reply(R),
    Step(Pending),
}

/// A definite answer: repeating the call would get it again, so the step is given up.
pub(super) fn refused(e: &Error) -> bool {
    matches!(
        e,
        Error::InvalidArgument(_)
            | Error::NotFound(_)
            | Error::NotFoundAt { .. }
            | Error::AlreadyExists(_)
            | Error::FailedPrecondition { .. }
    )
}

/// Another step holds the order.
pub fn busy(order_id: &str, pending: &[u8]) -> Error {
    let what = Pending::decode_stored(pending).map_or("change", |p| p.what());
    Error::Aborted(format!(
        "order {order_id} has a {what} in progress; retry in a moment"
    ))
}

impl App {
    /// Runs a step for a request: begins it (or joins the one its retry left pending), calls
    /// out, and commits the outcome. `reply` renders the order for the caller.
    pub(super) async fn run_step<Q, R>(
        &self,
        keyed: Option<Keyed<'_, Q>>,
        order_id: Uuid,
        actor: &str,
        decide: impl FnOnce(&StoredOrder) -> Result<Decision>,
        reply: impl Fn(Order) -> R,
    ) -> Result<R>
    where
        Q: Message,
        R: Message + Default + Clone,
    {
        let pending = match self
            .begin(keyed.as_ref(), order_id, actor, decide, &reply)
            .await?
        {
            Begun::Reply(r) => return Ok(r),
            Begun::Step(pending) => pending,
        };
        self.complete(keyed.as_ref(), order_id, pending, reply)
            .await
    }

    async fn begin<Q, R>(
        &self,
        keyed: Option<&Keyed<'_, Q>>,
        order_id: Uuid,
        actor: &str,
        decide: impl FnOnce(&StoredOrder) -> Result<Decision>,
        reply: &impl Fn(Order) -> R,
    ) -> Result<Begun<R>>
    where
        Q: Message,
        R: Message + Default + Clone,
    {
        let mut tx = self.pool.begin().await?;
        if let Some(k) = keyed
            && let Some(r) = idempotency::lookup::<_, R>(
                &mut tx,
                k.scope,
                actor,
                "idempotency_key",
                k.key,
                k.request,
            )
            .await?
        {
            return Ok(Begun::Reply(r));
        }
        let stored = store::lock_order(&mut tx, order_id)
            .await?
            .ok_or_else(|| Error::not_found_at("order_id", format!("order {order_id}")))?;
        let request = keyed.map(|k| k.request.encode_to_vec()).unwrap_or_default();
        let key = keyed
            .map(|k| idempotency::caller_key(actor, k.key))
            .unwrap_or_default();
        if let Some(bytes) = &stored.pending {
            let pending = Pending::decode_stored(bytes)?;
            // The retry of the call that began it resumes it.
            if let Some(k) = keyed
                && pending.scope == k.scope
                && pending.key == key
            {
                if pending.request != request {
                    return Err(Error::invalid(
                        "idempotency_key",
                        "was already used with a different request",
                    ));
                }
                return Ok(Begun::Step(pending));
            }
            // So does a call without a key asking for the very same thing.
            if keyed.is_none()
                && let Ok(Decision::Step(effect)) = decide(&stored)
                && pending.effect.as_ref() == Some(&effect)
            {
                return Ok(Begun::Step(pending));
            }
            return Err(busy(&stored.order.id, bytes));
        }
        match decide(&stored)? {
            Decision::Unchanged => {
                let r = reply(stored.order);
                if let Some(k) = keyed {
                    if let Claim::Replay(r) = idempotency::claim::<_, R>(
                        &mut tx,
                        k.scope,
                        actor,
                        "idempotency_key",
                        k.key,
                        k.request,
                    )
                    .await?
                    {
                        return Ok(Begun::Reply(r));
                    }
                    let subject = order_id.to_string();
                    idempotency::complete_about(&mut tx, k.scope, actor, k.key, &subject, &r)
                        .await?;
                    tx.commit().await?;
                }
                Ok(Begun::Reply(r))
            }
            Decision::Step(effect) => {
                let pending = Pending {
                    id: Uuid::now_v7().to_string(),
                    actor: actor.to_owned(),
                    scope: keyed.map(|k| k.scope.to_owned()).unwrap_or_default(),
                    key,
                    request,
                    effect: Some(effect),
                };
                store::begin_step(&mut tx, order_id, &pending.encode_to_vec()).await?;
                tx.commit().await?;
                Ok(Begun::Step(pending))
            }
        }
    }

    /// Parts 2 and 3, for the call that began the step, its retry, or the sweeper.
    pub(super) async fn complete<Q, R>(
        &self,
        keyed: Option<&Keyed<'_, Q>>,
        order_id: Uuid,
        pending: Pending,
        reply: impl Fn(Order) -> R,
    ) -> Result<R>
    where
        Q: Message,
        R: Message + Default + Clone,
    {
        let current = self.order(order_id, "order_id").await?.order;
        let outcome = match self.effects(&current, &pending).await {
            Ok(outcome) => outcome,
            Err(e) if refused(&e) => {
                self.abandon(order_id, &pending).await?;
                return Err(e);
            }
            Err(e) => {
                tracing::warn!(error = %e, %order_id, step = pending.what(), "order step left pending; it is resumed");
                return Err(Error::Unavailable(format!(
                    "{e}; the order's {} is recorded and completes when retried with the same request, or by itself shortly",
                    pending.what()
                )));
            }
        };
        self.finish(keyed, order_id, &pending, outcome, reply).await
    }

    /// The calls of the step, each repeatable.
    async fn effects(&self, order: &Order, pending: &Pending) -> Result<Outcome> {
        match &pending.effect {
            Some(Effect::Pay(_)) => self.pay_effects(order).await?,
            Some(Effect::Cancel(_)) => self.cancel_effects(order).await?,
            Some(Effect::Move(step)) => {
                let reservation_id = self.move_effects(order, &pending.id, step).await?;
                return Ok(Outcome {
                    reservation_id: Some(reservation_id),
                });
            }
            Some(Effect::Fulfil(step)) => self.fulfil_effects(order, step).await?,
            None => return Err(Error::internal("an order step without an effect")),
        }
        Ok(Outcome::default())
    }

    async fn finish<Q, R>(
        &self,
        keyed: Option<&Keyed<'_, Q>>,
        order_id: Uuid,
        pending: &Pending,
        outcome: Outcome,
        reply: impl Fn(Order) -> R,
    ) -> Result<R>
    where
        Q: Message,
        R: Message + Default + Clone,
    {
        let locations = self.upstreams.locations(false).await?;
        let mut tx = self.pool.begin().await?;
        if let Some(k) = keyed
            && let Claim::Replay(r) = idempotency::claim::<_, R>(
                &mut tx,
                k.scope,
                &pending.actor,
                "idempotency_key",
                k.key,
                k.request,
            )
            .await?
        {
            return Ok(r);
        }
        let mut stored = store::lock_order(&mut tx, order_id)
            .await?
            .ok_or_else(|| Error::not_found_at("order_id", format!("order {order_id}")))?;
        let ours = match &stored.pending {
            Some(bytes) => Pending::decode_stored(bytes)?.id == pending.id,
            None => false,
        };
        if ours {
            let mut changes = Changes::default();
            self.apply_effect(
                &mut stored.order,
                pending,
                &outcome,
                &locations,
                &mut changes,
                Utc::now(),
            )?;
            self.save(&mut tx, &stored.order, &pending.actor, changes)
                .await?;
            store::clear_step(&mut tx, order_id).await?;
        }
        let r = reply(stored.order.clone());
        // Settled by another process: its reply stands for the order as it is, unrecorded.
        if ours && let Some(k) = keyed {
            let subject = order_id.to_string();
            idempotency::complete_about(&mut tx, k.scope, &pending.actor, k.key, &subject, &r)
                .await?;
        }
        tx.commit().await?;
        if ours {
            self.announce(&stored.order.id).await;
        } else if let Some(stray) = outcome.reservation_id
            && stray != stored.order.reservation_id
        {
            // Another process settled the step first without this hold: give it back.
            self.release_stray(order_id, &stray).await;
        }
        Ok(r)
    }

    /// Gives a refused step up: the order stays as it was.
    async fn abandon(&self, order_id: Uuid, pending: &Pending) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let stored = store::lock_order(&mut tx, order_id).await?;
        if let Some(bytes) = stored.and_then(|s| s.pending)
            && Pending::decode_stored(&bytes)?.id == pending.id
        {
            store::clear_step(&mut tx, order_id).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn release_stray(&self, order_id: Uuid, reservation_id: &str) {
        let released = call!(
            "inventory",
            self.upstreams.reservations.clone(),
            release,
            omni_proto::omni::inventory::v1::ReleaseRequest {
                idempotency_key: format!("order/{order_id}/stray/{reservation_id}"),
                reservation_id: reservation_id.to_owned(),
                lines: Vec::new(),
                reason: "order step settled elsewhere".to_owned(),
            }
        );
        if let Err(e) = released {
            tracing::warn!(error = %e, %order_id, reservation_id, "stray hold not released; it expires");
        }
    }

    /// Resumes the steps pending since before `before`; returns how many it settled.
    pub(super) async fn resume_stale_steps(&self, before: DateTime<Utc>) -> Result<usize> {
        let mut done = 0;
        for (order_id, bytes) in store::stale_steps(&self.pool, before, 20).await? {
            let pending = Pending::decode_stored(&bytes)?;
            let what = pending.what();
            match self
                .complete(None::<&Keyed<'_, Order>>, order_id, pending, |o| o)
                .await
            {
                Ok(_) => done += 1,
                Err(e) => {
                    tracing::warn!(error = %e, %order_id, step = what, "stale order step not settled yet");
                }
            }
        }
        Ok(done)
    }
}

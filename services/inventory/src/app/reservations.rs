//! Reservations: stock held for an order, all lines or none, never more than exists.
//!
//! Postgres decides: a hold is a conditional `UPDATE … SET reserved = reserved + q WHERE
//! on_hand - reserved - safety_stock >= q`, and the row's CHECK constraints make negative or
//! double-promised stock impossible whatever the caller does. For hot SKUs the Redis gate
//! ([`crate::cache::admit`]) answers first: when it says the SKU is sold out, the request is
//! refused without touching Postgres; admitted requests still go to Postgres, and admissions
//! Postgres refuses are refunded to the gate.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use chrono::Utc;
use omni_proto::events::event::Payload;
use omni_proto::events::{ReservationExpired, ReservedStock};
use omni_proto::omni::inventory::v1 as pb;
use omni_runtime::auth::{Principal, Role};
use omni_runtime::error::PreconditionViolation;
use omni_runtime::idempotency::{self, Claim};
use omni_runtime::{Error, Result};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{App, Touch};
use crate::cache::{self, Gate};
use crate::convert;
use crate::domain::{self, MovementKind};
use crate::store::{self, ReservationLineRow, ReservationRow};

/// A validated reservation line.
#[derive(Debug, Clone)]
pub struct ReserveLineInput {
    pub sku: String,
    pub quantity: i64,
    /// Preference order; empty: every location that ships orders.
    pub locations: Vec<Uuid>,
}

/// Which part of a reservation a release or fulfilment touches.
#[derive(Debug, Clone)]
pub struct PartInput {
    pub sku: String,
    pub location: Uuid,
    pub quantity: i64,
}

fn shortage(i: usize, detail: String) -> PreconditionViolation {
    PreconditionViolation::new("STOCK_SHORTAGE", format!("lines[{i}]"), detail)
}

pub(super) fn shortage_error(violations: Vec<PreconditionViolation>) -> Error {
    Error::FailedPrecondition {
        message: "not enough stock for every line; nothing was reserved".into(),
        violations,
    }
}

/// A reservation is its owner's: only the principal that placed it, or an admin or service
/// (order-management settles the holds it placed for orders), may read, release, fulfil or
/// extend it. Another channel app holding a reservation id cannot free or sell the stock.
fn require_owner(row: &ReservationRow, actor: &Principal) -> Result<()> {
    let owns = !row.owner_id.is_empty() && row.owner_id == actor.id;
    if owns || actor.has_any(&[Role::Admin, Role::Service]) {
        Ok(())
    } else {
        Err(Error::permission_denied(format!(
            "reservation {} belongs to another caller",
            row.id
        )))
    }
}

impl App {
    pub async fn reserve(
        self: &std::sync::Arc<Self>,
        request: &pb::ReserveRequest,
        lines: Vec<ReserveLineInput>,
        ttl: Duration,
        actor: &Principal,
    ) -> Result<pb::ReserveResponse> {
        // Every named location must exist and hold stock for sale.
        let locations = self.locations().await?;
        for (i, line) in lines.iter().enumerate() {
            for (j, id) in line.locations.iter().enumerate() {
                match locations.get(id) {
                    None => {
                        return Err(Error::NotFound(format!(
                            "location {id} (lines[{i}].location_ids[{j}])"
                        )));
                    }
                    Some(l) if l.kind == "in_transit" => {
                        return Err(Error::invalid(
                            format!("lines[{i}].location_ids[{j}]"),
                            "stock in transit cannot be reserved",
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        let skus: HashSet<String> = lines.iter().map(|l| l.sku.clone()).collect();
        let _inflight = self.enter(&skus);
        self.mark_detected(&_inflight.detected).await;

        // The gate, for hot SKUs: refuse a sold-out flood in Redis.
        let mut admitted: Vec<(String, i64)> = Vec::new();
        let mut hot = vec![false; lines.len()];
        for (i, line) in lines.iter().enumerate() {
            match cache::admit(
                &self.redis,
                &line.sku,
                line.quantity,
                &idempotency::caller_key(&actor.id, &request.idempotency_key),
            )
            .await
            {
                Ok(Gate::Admitted) => {
                    self.settings.gate_decisions.inc(&["admitted"]);
                    hot[i] = true;
                    admitted.push((line.sku.clone(), line.quantity));
                }
                Ok(Gate::Refused(left)) => {
                    self.settings.gate_decisions.inc(&["refused"]);
                    self.refund(&admitted).await;
                    return Err(shortage_error(vec![shortage(
                        i,
                        format!("requested {}, available {}", line.quantity, left.max(0)),
                    )]));
                }
                Ok(Gate::Retry) => {
                    self.settings.gate_decisions.inc(&["retry"]);
                    hot[i] = true;
                }
                Ok(Gate::Unknown) => {}
                Err(e) => {
                    self.settings.gate_decisions.inc(&["unreachable"]);
                    tracing::warn!(error = %e, "hot gate unreachable; postgres decides alone")
                }
            }
        }

        // One line of a hot SKU: decided with the other requests waiting for it, in one
        // transaction (its batcher writes the snapshot through).
        let batched = if lines.len() == 1 && hot[0] {
            self.reserve_batched(request, &lines[0], ttl, &actor.id)
                .await
        } else {
            None
        };
        let was_batched = batched.is_some();
        let decided = match batched {
            Some(decision) => decision,
            None => self.reserve_in_postgres(request, &lines, ttl, actor).await,
        };
        if decided.is_err() {
            self.refund(&admitted).await;
        }
        let (reply, fresh) = decided?;
        if fresh && !was_batched {
            self.outbox.wake();
            self.refresh(skus.iter()).await;
        }
        Ok(reply)
    }

    async fn refund(&self, admitted: &[(String, i64)]) {
        for (sku, quantity) in admitted {
            if let Err(e) = cache::refund(&self.redis, sku, *quantity).await {
                tracing::warn!(error = %e, "cannot refund the hot gate");
            }
        }
    }

    async fn mark_detected(&self, skus: &[String]) {
        for sku in skus {
            let until = Utc::now()
                + chrono::Duration::from_std(self.settings.hot_detect_for).unwrap_or_default();
            let mut conn = match self.pool.acquire().await {
                Ok(c) => c,
                Err(_) => return,
            };
            if store::is_hot(&mut conn, sku).await.unwrap_or(true) {
                continue;
            }
            drop(conn);
            match self
                .set_hot(
                    sku,
                    true,
                    "detected",
                    "many concurrent reservations",
                    Some(until),
                )
                .await
            {
                Ok(_) => tracing::info!(sku = %sku, "contention detected: SKU marked hot"),
                Err(e) => tracing::warn!(error = %e, "cannot mark a contended SKU hot"),
            }
        }
    }

    /// Returns the reply and whether this call made it (false: a replay).
    async fn reserve_in_postgres(
        &self,
        request: &pb::ReserveRequest,
        lines: &[ReserveLineInput],
        ttl: Duration,
        actor: &Principal,
    ) -> Result<(pb::ReserveResponse, bool)> {
        let scope = "inventory.reserve";
        // Read before the transaction: never wait for a second connection while holding one.
        let default_locations = self.shipping_locations().await?;
        let mut tx = self.pool.begin().await?;
        if let Claim::Replay(reply) = idempotency::claim(
            &mut tx,
            scope,
            &actor.id,
            "idempotency_key",
            &request.idempotency_key,
            request,
        )
        .await?
        {
            return Ok((reply, false));
        }
        let skus: BTreeSet<String> = lines.iter().map(|l| l.sku.clone()).collect();
        // One read for every line: which SKUs inventory knows, what each location has, and
        // the network figure the stock signals compare against.
        let levels = store::reserve_levels(
            &mut tx,
            &skus.iter().cloned().collect::<Vec<_>>(),
            &request.channel_id,
        )
        .await?;
        for (i, line) in lines.iter().enumerate() {
            if !levels.iter().any(|l| l.sku_id == line.sku) {
                return Err(Error::NotFound(format!(
                    "SKU {} (lines[{i}].sku_id) has no stock records",
                    line.sku
                )));
            }
        }
        let mut network_before: HashMap<String, i64> =
            skus.iter().map(|sku| (sku.clone(), 0)).collect();
        for level in &levels {
            if level.counts
                && let Some(total) = network_before.get_mut(&level.sku_id)
            {
                *total += level.available;
            }
        }
        // The reservation row first: from the first hold on, the stock rows stay locked until
        // commit, so as little as possible happens after it.
        let now = Utc::now();
        let row = ReservationRow {
            id: Uuid::now_v7(),
            status: "active".into(),
            channel_id: request.channel_id.clone(),
            reference: request.reference.clone(),
            owner_id: actor.id.clone(),
            expires_at: Some(now + chrono::Duration::from_std(ttl).map_err(anyhow::Error::from)?),
            created_at: now,
            updated_at: now,
        };
        store::insert_reservation(&mut tx, &row).await?;

        let mut order: Vec<usize> = (0..lines.len()).collect();
        order.sort_by(|a, b| lines[*a].sku.cmp(&lines[*b].sku));
        let mut held: Vec<Option<ReservationLineRow>> = vec![None; lines.len()];
        let mut violations = Vec::new();
        let mut touches = Vec::new();
        for i in order {
            let line = &lines[i];
            let candidates = if line.locations.is_empty() {
                &default_locations
            } else {
                &line.locations
            };
            let holdable: Vec<domain::Holdable> = candidates
                .iter()
                .map(|c| domain::Holdable {
                    location: *c,
                    available: levels
                        .iter()
                        .find(|k| {
                            k.sku_id == line.sku
                                && k.location_id == *c
                                && k.location_id != store::IN_TRANSIT
                        })
                        .map_or(0, |k| k.available),
                })
                .collect();
            let mut chosen = None;
            // Best first by the figures read; the conditional update re-checks under the lock.
            for h in holdable.iter().filter(|h| h.available >= line.quantity) {
                if let Some(after) =
                    store::try_hold(&mut tx, &line.sku, h.location, line.quantity).await?
                {
                    let before = store::LevelRow {
                        reserved: after.reserved - line.quantity,
                        ..after
                    };
                    touches.push(Touch {
                        sku: line.sku.clone(),
                        location: h.location,
                        before,
                        after,
                    });
                    chosen = Some(h.location);
                    break;
                }
            }
            let Some(location) = chosen else {
                let best = holdable.iter().map(|h| h.available).max().unwrap_or(0);
                violations.push(shortage(
                    i,
                    format!("requested {}, available {best}", line.quantity),
                ));
                continue;
            };
            let quota = levels.iter().any(|l| l.sku_id == line.sku && l.quota);
            if quota
                && !store::use_quota(&mut tx, &line.sku, &request.channel_id, line.quantity).await?
            {
                violations.push(PreconditionViolation::new(
                    "CHANNEL_QUOTA",
                    format!("lines[{i}]"),
                    format!(
                        "the channel's quota on this SKU has less than {} units left",
                        line.quantity
                    ),
                ));
                continue;
            }
            held[i] = Some(ReservationLineRow {
                line_no: i32::try_from(i).unwrap_or(i32::MAX),
                sku_id: line.sku.clone(),
                location_id: location,
                quantity: line.quantity,
                fulfilled: 0,
                released: 0,
            });
        }
        if !violations.is_empty() {
            violations.sort_by(|a, b| a.subject.cmp(&b.subject));
            return Err(shortage_error(violations));
        }
        let held: Vec<ReservationLineRow> = held.into_iter().flatten().collect();
        store::insert_reservation_lines(&mut tx, row.id, &held).await?;
        self.signal(&mut tx, &actor.id, &touches, &network_before)
            .await?;
        let reply = pb::ReserveResponse {
            reservation: Some(convert::reservation(&row, &held)),
        };
        idempotency::complete(&mut tx, scope, &actor.id, &request.idempotency_key, &reply).await?;
        tx.commit().await?;
        tracing::debug!(reservation_id = %row.id, lines = held.len(), "reserved");
        Ok((reply, true))
    }

    pub async fn get_reservation(&self, id: Uuid, actor: &Principal) -> Result<pb::Reservation> {
        let mut conn = self.pool.acquire().await?;
        let (row, lines) = store::reservation(&mut conn, id, false)
            .await?
            .ok_or_else(|| Error::not_found(format!("reservation {id}")))?;
        require_owner(&row, actor)?;
        Ok(convert::reservation(&row, &lines))
    }

    /// Releases (or, with `fulfil`, fulfils) parts of an active reservation.
    #[allow(clippy::too_many_arguments)]
    pub async fn settle(
        &self,
        scope: &'static str,
        idempotency_key: &str,
        request: &impl prost::Message,
        id: Uuid,
        parts: &[PartInput],
        fulfil: bool,
        reference: &str,
        actor: &Principal,
    ) -> Result<(pb::Reservation, Vec<pb::Movement>)> {
        #[derive(Clone, PartialEq, prost::Message)]
        struct Reply {
            #[prost(message, optional, tag = "1")]
            reservation: Option<pb::Reservation>,
            #[prost(message, repeated, tag = "2")]
            movements: Vec<pb::Movement>,
        }
        let mut tx = self.pool.begin().await?;
        if let Claim::Replay(reply) = idempotency::claim::<_, Reply>(
            &mut tx,
            scope,
            &actor.id,
            "idempotency_key",
            idempotency_key,
            request,
        )
        .await?
        {
            return Ok((reply.reservation.unwrap_or_default(), reply.movements));
        }
        let (row, lines) = store::reservation(&mut tx, id, true)
            .await?
            .ok_or_else(|| Error::not_found(format!("reservation {id}")))?;
        require_owner(&row, actor)?;
        if row.status != "active" {
            return Err(Error::precondition(
                "RESERVATION_STATE",
                format!("reservation/{id}"),
                format!(
                    "the reservation is {}; only an active one can change",
                    row.status
                ),
            ));
        }
        // What to take from each line.
        let mut take: Vec<i64> = vec![0; lines.len()];
        if parts.is_empty() {
            for (i, l) in lines.iter().enumerate() {
                take[i] = l.held();
            }
        } else {
            for (p, part) in parts.iter().enumerate() {
                let mut left = part.quantity;
                for (i, l) in lines.iter().enumerate() {
                    if l.sku_id == part.sku && l.location_id == part.location {
                        let n = left.min(l.held() - take[i]);
                        take[i] += n;
                        left -= n;
                    }
                }
                if left > 0 {
                    return Err(Error::precondition(
                        "RESERVATION_LINE",
                        format!("lines[{p}]"),
                        format!(
                            "the reservation holds {} fewer units of this SKU at this location",
                            left
                        ),
                    ));
                }
            }
        }
        let skus: BTreeSet<String> = lines.iter().map(|l| l.sku_id.clone()).collect();
        let network_before = Self::network_before(&mut tx, &skus).await?;
        let mut touches = Vec::new();
        let mut movements = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            let n = take[i];
            if n == 0 {
                continue;
            }
            let before = store::lock_level(&mut tx, &l.sku_id, l.location_id).await?;
            let on_hand_delta = if fulfil { -n } else { 0 };
            let after =
                store::change_level(&mut tx, &l.sku_id, l.location_id, on_hand_delta, -n).await?;
            if fulfil {
                let m = store::insert_movement(
                    &mut tx,
                    &store::NewMovement {
                        sku: &l.sku_id,
                        location: l.location_id,
                        kind: MovementKind::Sale,
                        delta: -n,
                        reason: "",
                        reference: if reference.is_empty() {
                            &row.reference
                        } else {
                            reference
                        },
                        actor: &actor.id,
                    },
                )
                .await?;
                movements.push(convert::movement(&m));
            } else {
                store::return_quota(&mut tx, &l.sku_id, &row.channel_id, n).await?;
            }
            store::progress_line(
                &mut tx,
                id,
                l.line_no,
                if fulfil { n } else { 0 },
                if fulfil { 0 } else { n },
            )
            .await?;
            touches.push(Touch {
                sku: l.sku_id.clone(),
                location: l.location_id,
                before,
                after,
            });
        }
        let (row, lines) = self.close_if_done(&mut tx, id, None).await?;
        self.signal(&mut tx, &actor.id, &touches, &network_before)
            .await?;
        let reservation = convert::reservation(&row, &lines);
        let reply = Reply {
            reservation: Some(reservation.clone()),
            movements: movements.clone(),
        };
        idempotency::complete(&mut tx, scope, &actor.id, idempotency_key, &reply).await?;
        tx.commit().await?;
        self.outbox.wake();
        self.refresh(skus.iter()).await;
        Ok((reservation, movements))
    }

    /// Marks a reservation fulfilled, released (or `ended_as`) once nothing is held.
    async fn close_if_done(
        &self,
        conn: &mut PgConnection,
        id: Uuid,
        ended_as: Option<&str>,
    ) -> Result<(ReservationRow, Vec<ReservationLineRow>)> {
        let (row, lines) = store::reservation(conn, id, false)
            .await?
            .ok_or_else(|| Error::internal("reservation vanished inside its transaction"))?;
        if lines.iter().all(|l| l.held() == 0) {
            let status = ended_as.unwrap_or(if lines.iter().any(|l| l.fulfilled > 0) {
                "fulfilled"
            } else {
                "released"
            });
            store::set_reservation_state(conn, id, status, None).await?;
            return store::reservation(conn, id, false)
                .await?
                .ok_or_else(|| Error::internal("reservation vanished inside its transaction"));
        }
        Ok((row, lines))
    }

    pub async fn extend(
        &self,
        id: Uuid,
        ttl: Option<Duration>,
        actor: &Principal,
    ) -> Result<pb::Reservation> {
        let mut tx = self.pool.begin().await?;
        let (row, _) = store::reservation(&mut tx, id, true)
            .await?
            .ok_or_else(|| Error::not_found(format!("reservation {id}")))?;
        require_owner(&row, actor)?;
        if row.status != "active" {
            return Err(Error::precondition(
                "RESERVATION_STATE",
                format!("reservation/{id}"),
                format!(
                    "the reservation is {}; only an active one can be extended",
                    row.status
                ),
            ));
        }
        let expires_at = match ttl {
            Some(ttl) => {
                Some(Utc::now() + chrono::Duration::from_std(ttl).map_err(anyhow::Error::from)?)
            }
            None => None,
        };
        store::set_reservation_state(&mut tx, id, "active", expires_at).await?;
        let (row, lines) = store::reservation(&mut tx, id, false)
            .await?
            .ok_or_else(|| Error::internal("reservation vanished inside its transaction"))?;
        tx.commit().await?;
        Ok(convert::reservation(&row, &lines))
    }

    /// Releases every reservation whose time ran out; returns how many.
    pub async fn expire_due(&self) -> Result<usize> {
        let mut tx = self.pool.begin().await?;
        let due = store::due_reservations(&mut tx, 100).await?;
        if due.is_empty() {
            return Ok(0);
        }
        let mut skus = BTreeSet::new();
        for id in &due {
            let Some((row, lines)) = store::reservation(&mut tx, *id, false).await? else {
                continue;
            };
            let mut released = Vec::new();
            for l in lines.iter().filter(|l| l.held() > 0) {
                let n = l.held();
                store::lock_level(&mut tx, &l.sku_id, l.location_id).await?;
                store::change_level(&mut tx, &l.sku_id, l.location_id, 0, -n).await?;
                store::return_quota(&mut tx, &l.sku_id, &row.channel_id, n).await?;
                store::progress_line(&mut tx, *id, l.line_no, 0, n).await?;
                skus.insert(l.sku_id.clone());
                released.push(ReservedStock {
                    sku_id: l.sku_id.clone(),
                    location_id: l.location_id.to_string(),
                    quantity: n,
                });
            }
            store::set_reservation_state(&mut tx, *id, "expired", row.expires_at).await?;
            self.outbox
                .add(
                    &mut tx,
                    "inventory.reservation_expired",
                    &id.to_string(),
                    "inventory",
                    Payload::ReservationExpired(ReservationExpired {
                        reservation_id: id.to_string(),
                        reference: row.reference.clone(),
                        channel_id: row.channel_id.clone(),
                        released,
                        expired_at: convert::timestamp(Utc::now()),
                    }),
                )
                .await?;
        }
        tx.commit().await?;
        self.outbox.wake();
        self.refresh(skus.iter()).await;
        tracing::info!(count = due.len(), "expired reservations released");
        Ok(due.len())
    }

    /// Sweeps expired reservations every `interval` until `shutdown`.
    pub async fn expire_loop(
        self: std::sync::Arc<Self>,
        interval: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        loop {
            match self.expire_due().await {
                Ok(100) => continue,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "expiry sweep failed"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }
}

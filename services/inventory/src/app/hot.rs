//! Deciding many reservations of one hot SKU in one transaction.
//!
//! A single Postgres row takes roughly one committed update per transaction; during a flash sale
//! every buyer wants the same row. Requests the gate admitted for a hot SKU therefore queue for
//! that SKU's batcher, which takes everything waiting (up to [`MAX_BATCH`]), locks the SKU's
//! levels once, allocates the requests in arrival order in memory, writes the levels, quotas,
//! reservations, idempotency records and events with set-based statements, and commits once.
//! Postgres stays the authority (the same CHECK constraints apply); the batch only amortises
//! the commit.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use omni_proto::omni::inventory::v1 as pb;
use omni_runtime::error::PreconditionViolation;
use omni_runtime::{Error, Result};
use prost::Message as _;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument as _;
use uuid::Uuid;

use super::App;
use super::reservations::ReserveLineInput;
use crate::convert;
use crate::domain;
use crate::store::{LevelRow, ReservationLineRow, ReservationRow};

const MAX_BATCH: usize = 512;
const SCOPE: &str = "inventory.reserve";
/// A batcher with nothing to do for this long stops; the next request starts another.
const IDLE: Duration = Duration::from_secs(60);

pub(super) type Decision = Result<(pb::ReserveResponse, bool)>;

pub(super) struct Pending {
    pub request: pb::ReserveRequest,
    pub line: ReserveLineInput,
    pub ttl: Duration,
    pub actor: String,
    pub reply: oneshot::Sender<Decision>,
}

/// One queue per hot SKU.
#[derive(Default)]
pub(super) struct Batchers {
    queues: std::sync::Mutex<HashMap<String, mpsc::Sender<Pending>>>,
}

impl App {
    /// Queues a single-line reservation of a hot SKU for its batcher; `None` if the batcher
    /// could not take it (the caller decides it alone instead).
    pub(super) async fn reserve_batched(
        self: &Arc<Self>,
        request: &pb::ReserveRequest,
        line: &ReserveLineInput,
        ttl: Duration,
        actor: &str,
    ) -> Option<Decision> {
        let sender = {
            let mut queues = self.batchers.queues.lock().ok()?;
            match queues.get(&line.sku) {
                Some(s) if !s.is_closed() => s.clone(),
                _ => {
                    let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
                    queues.insert(line.sku.clone(), tx.clone());
                    tokio::spawn(self.clone().batcher(line.sku.clone(), rx));
                    tx
                }
            }
        };
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            request: request.clone(),
            line: line.clone(),
            ttl,
            actor: actor.to_owned(),
            reply,
        };
        sender.send(pending).await.ok()?;
        answer.await.ok()
    }

    async fn batcher(self: Arc<Self>, sku: String, mut rx: mpsc::Receiver<Pending>) {
        loop {
            let first = match tokio::time::timeout(IDLE, rx.recv()).await {
                Ok(Some(p)) => p,
                Ok(None) | Err(_) => break,
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            self.decide(&sku, batch).await;
        }
        if let Ok(mut queues) = self.batchers.queues.lock() {
            queues.remove(&sku);
        }
        // Anything that slipped in after the timeout is decided before leaving.
        rx.close();
        let mut rest = Vec::new();
        while let Ok(p) = rx.try_recv() {
            rest.push(p);
        }
        if !rest.is_empty() {
            self.decide(&sku, rest).await;
        }
    }

    async fn decide(self: &Arc<Self>, sku: &str, batch: Vec<Pending>) {
        let size = batch.len();
        let span = tracing::info_span!("inventory.reserve_batch", sku = %sku, size);
        match self.decide_in_postgres(sku, &batch).instrument(span).await {
            Ok(decisions) => {
                let any_fresh = decisions.iter().any(|d| matches!(d, Ok((_, true))));
                for (pending, decision) in batch.into_iter().zip(decisions) {
                    let _ = pending.reply.send(decision);
                }
                if any_fresh {
                    self.outbox.wake();
                    // In the background: the next batch need not wait for the write-through.
                    self.refresh_soon(sku);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, size, "reservation batch failed");
                for pending in batch {
                    let _ = pending.reply.send(Err(clone_error(&e)));
                }
            }
        }
    }

    /// One decision per pending request, in order.
    async fn decide_in_postgres(&self, sku: &str, batch: &[Pending]) -> Result<Vec<Decision>> {
        // Read before the transaction: never wait for a second connection while holding one.
        let locations = self.locations().await?;
        let default_locations = self.shipping_locations().await?;
        let mut tx = self.pool.begin().await?;
        let mut decisions: Vec<Option<Decision>> = (0..batch.len()).map(|_| None).collect();

        // Idempotency: claim every key at once; the first request of a key in the batch owns it.
        // Keys are their callers' (stored as the runtime's idempotency module stores them).
        let caller_keys: Vec<String> = batch
            .iter()
            .map(|p| omni_runtime::idempotency::caller_key(&p.actor, &p.request.idempotency_key))
            .collect();
        let keys: Vec<&str> = caller_keys.iter().map(String::as_str).collect();
        let encoded: Vec<Vec<u8>> = batch.iter().map(|p| p.request.encode_to_vec()).collect();
        let claimed: Vec<String> = sqlx::query_scalar(
            "INSERT INTO idempotency_keys (scope, key, request) \
             SELECT $1, k, r FROM unnest($2::text[], $3::bytea[]) AS t(k, r) ON CONFLICT DO NOTHING RETURNING key",
        )
        .bind(SCOPE)
        .bind(&keys)
        .bind(&encoded)
        .fetch_all(&mut *tx)
        .await?;
        let mut owner: HashMap<&str, usize> = HashMap::new();
        let mut fresh = vec![false; batch.len()];
        for (i, key) in keys.iter().enumerate() {
            if claimed.iter().any(|c| c == key) && !owner.contains_key(key) {
                owner.insert(key, i);
                fresh[i] = true;
            }
        }
        // Keys used before this batch: replay or refuse.
        let earlier: Vec<&str> = keys
            .iter()
            .copied()
            .filter(|k| !owner.contains_key(k))
            .collect();
        if !earlier.is_empty() {
            let stored: Vec<(String, Vec<u8>, Vec<u8>)> = sqlx::query_as(
                "SELECT key, request, response FROM idempotency_keys WHERE scope = $1 AND key = ANY($2)",
            )
            .bind(SCOPE)
            .bind(&earlier)
            .fetch_all(&mut *tx)
            .await?;
            for (i, key) in keys.iter().enumerate() {
                if owner.contains_key(key) {
                    continue;
                }
                if let Some((_, request, response)) = stored.iter().find(|s| s.0 == *key) {
                    decisions[i] = Some(if *request != encoded[i] {
                        Err(Error::invalid(
                            "idempotency_key",
                            "was already used with a different request",
                        ))
                    } else {
                        pb::ReserveResponse::decode(response.as_slice())
                            .map(|r| (r, false))
                            .map_err(|e| {
                                Error::Internal(anyhow::anyhow!(
                                    "stored reply does not decode: {e}"
                                ))
                            })
                    });
                }
            }
        }

        // The SKU's levels and the batch's quotas, locked once.
        let levels: Vec<(Uuid, LevelRow)> = sqlx::query_as::<_, (Uuid, i64, i64, i64, i64)>(
            "SELECT location_id, on_hand, reserved, safety_stock, low_stock_threshold FROM stock_levels \
             WHERE sku_id = $1 ORDER BY location_id FOR UPDATE",
        )
        .bind(sku)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|(l, on_hand, reserved, safety_stock, low_stock_threshold)| {
            (l, LevelRow { on_hand, reserved, safety_stock, low_stock_threshold })
        })
        .collect();
        let channels: Vec<&str> = batch
            .iter()
            .map(|p| p.request.channel_id.as_str())
            .filter(|c| !c.is_empty())
            .collect();
        let mut quotas: HashMap<String, (i64, i64)> = sqlx::query_as::<_, (String, Option<i64>, i64)>(
            "SELECT channel_id, quota, used FROM channel_quotas WHERE sku_id = $1 AND channel_id = ANY($2) \
             ORDER BY channel_id FOR UPDATE",
        )
        .bind(sku)
        .bind(&channels)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .filter_map(|(c, q, u)| q.map(|q| (c, (q, u))))
        .collect();

        let mut current: HashMap<Uuid, LevelRow> = levels.iter().copied().collect();
        let network = |levels: &HashMap<Uuid, LevelRow>| -> i64 {
            levels
                .iter()
                .filter(|(l, _)| {
                    locations
                        .get(l)
                        .is_some_and(|loc| loc.active && loc.kind != "in_transit")
                })
                .map(|(_, r)| r.available())
                .sum()
        };
        let network_before = network(&current);
        let now = Utc::now();
        let mut reservations: Vec<(usize, ReservationRow, ReservationLineRow)> = Vec::new();
        let mut failed_keys: Vec<&str> = Vec::new();
        for (i, p) in batch.iter().enumerate() {
            if !fresh[i] {
                continue;
            }
            if levels.is_empty() {
                decisions[i] = Some(Err(Error::NotFound(format!(
                    "SKU {sku} (lines[0].sku_id) has no stock records"
                ))));
                failed_keys.push(keys[i]);
                continue;
            }
            let candidates = if p.line.locations.is_empty() {
                &default_locations
            } else {
                &p.line.locations
            };
            let holdable: Vec<domain::Holdable> = candidates
                .iter()
                .map(|c| domain::Holdable {
                    location: *c,
                    available: current.get(c).map_or(0, LevelRow::available),
                })
                .collect();
            let Some(location) = domain::choose_location(&holdable, p.line.quantity) else {
                let best = holdable.iter().map(|h| h.available).max().unwrap_or(0);
                decisions[i] = Some(Err(super::reservations::shortage_error(vec![
                    PreconditionViolation::new(
                        "STOCK_SHORTAGE",
                        "lines[0]",
                        format!("requested {}, available {best}", p.line.quantity),
                    ),
                ])));
                failed_keys.push(keys[i]);
                continue;
            };
            if let Some((quota, used)) = quotas.get_mut(&p.request.channel_id) {
                if *quota - *used < p.line.quantity {
                    decisions[i] = Some(Err(Error::FailedPrecondition {
                        message: "not enough stock for every line; nothing was reserved".into(),
                        violations: vec![PreconditionViolation::new(
                            "CHANNEL_QUOTA",
                            "lines[0]",
                            format!(
                                "the channel's quota on this SKU has less than {} units left",
                                p.line.quantity
                            ),
                        )],
                    }));
                    failed_keys.push(keys[i]);
                    continue;
                }
                *used += p.line.quantity;
            }
            if let Some(level) = current.get_mut(&location) {
                level.reserved += p.line.quantity;
            }
            let row = ReservationRow {
                id: Uuid::now_v7(),
                status: "active".into(),
                channel_id: p.request.channel_id.clone(),
                reference: p.request.reference.clone(),
                owner_id: p.actor.clone(),
                expires_at: Some(
                    now + chrono::Duration::from_std(p.ttl).map_err(anyhow::Error::from)?,
                ),
                created_at: now,
                updated_at: now,
            };
            let line = ReservationLineRow {
                line_no: 0,
                sku_id: sku.to_owned(),
                location_id: location,
                quantity: p.line.quantity,
                fulfilled: 0,
                released: 0,
            };
            reservations.push((i, row, line));
        }

        if !reservations.is_empty() {
            let mut by_location: HashMap<Uuid, i64> = HashMap::new();
            for (_, _, line) in &reservations {
                *by_location.entry(line.location_id).or_default() += line.quantity;
            }
            let (locs, deltas): (Vec<Uuid>, Vec<i64>) = by_location.into_iter().unzip();
            sqlx::query(
                "UPDATE stock_levels SET reserved = reserved + d.delta, version = version + 1, updated_at = now() \
                 FROM unnest($2::uuid[], $3::bigint[]) AS d(loc, delta) WHERE sku_id = $1 AND location_id = d.loc",
            )
            .bind(sku)
            .bind(&locs)
            .bind(&deltas)
            .execute(&mut *tx)
            .await?;
            let mut by_channel: HashMap<&str, i64> = HashMap::new();
            for (_, row, line) in &reservations {
                if quotas.contains_key(&row.channel_id) {
                    *by_channel.entry(row.channel_id.as_str()).or_default() += line.quantity;
                }
            }
            if !by_channel.is_empty() {
                let (chans, amounts): (Vec<&str>, Vec<i64>) = by_channel.into_iter().unzip();
                sqlx::query(
                    "UPDATE channel_quotas SET used = used + d.n, version = version + 1, updated_at = now() \
                     FROM unnest($2::text[], $3::bigint[]) AS d(c, n) WHERE sku_id = $1 AND channel_id = d.c",
                )
                .bind(sku)
                .bind(&chans)
                .bind(&amounts)
                .execute(&mut *tx)
                .await?;
            }
            let ids: Vec<Uuid> = reservations.iter().map(|r| r.1.id).collect();
            let channel_ids: Vec<&str> = reservations
                .iter()
                .map(|r| r.1.channel_id.as_str())
                .collect();
            let references: Vec<&str> = reservations
                .iter()
                .map(|r| r.1.reference.as_str())
                .collect();
            let owners: Vec<&str> = reservations.iter().map(|r| r.1.owner_id.as_str()).collect();
            let expiries: Vec<Option<chrono::DateTime<Utc>>> =
                reservations.iter().map(|r| r.1.expires_at).collect();
            sqlx::query(
                "INSERT INTO reservations (id, status, channel_id, reference, owner_id, expires_at) \
                 SELECT id, 'active', c, r, o, e \
                 FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::timestamptz[]) AS t(id, c, r, o, e)",
            )
            .bind(&ids)
            .bind(&channel_ids)
            .bind(&references)
            .bind(&owners)
            .bind(&expiries)
            .execute(&mut *tx)
            .await?;
            let line_locations: Vec<Uuid> = reservations.iter().map(|r| r.2.location_id).collect();
            let quantities: Vec<i64> = reservations.iter().map(|r| r.2.quantity).collect();
            sqlx::query(
                "INSERT INTO reservation_lines (reservation_id, line_no, sku_id, location_id, quantity) \
                 SELECT id, 0, $1, l, q FROM unnest($2::uuid[], $3::uuid[], $4::bigint[]) AS t(id, l, q)",
            )
            .bind(sku)
            .bind(&ids)
            .bind(&line_locations)
            .bind(&quantities)
            .execute(&mut *tx)
            .await?;
            let mut reply_keys = Vec::with_capacity(reservations.len());
            let mut replies = Vec::with_capacity(reservations.len());
            for (i, row, line) in &reservations {
                let reply = pb::ReserveResponse {
                    reservation: Some(convert::reservation(row, std::slice::from_ref(line))),
                };
                reply_keys.push(keys[*i]);
                replies.push(reply.encode_to_vec());
                decisions[*i] = Some(Ok((reply, true)));
            }
            sqlx::query(
                "UPDATE idempotency_keys SET response = d.r FROM unnest($2::text[], $3::bytea[]) AS d(k, r) \
                 WHERE scope = $1 AND key = d.k",
            )
            .bind(SCOPE)
            .bind(&reply_keys)
            .bind(&replies)
            .execute(&mut *tx)
            .await?;

            // Signals, per location and network-wide, from the figures in memory.
            let actor = batch[0].actor.as_str();
            for (location, before) in &levels {
                if let Some(after) = current.get(location)
                    && let Some(s) = domain::signal(
                        before.available(),
                        after.available(),
                        after.low_stock_threshold,
                    )
                {
                    self.stock_event(
                        &mut tx,
                        actor,
                        sku,
                        Some(*location),
                        s,
                        before.available(),
                        after.available(),
                        after.low_stock_threshold,
                    )
                    .await?;
                }
            }
            let network_after = network(&current);
            if let Some(s) = domain::signal(network_before, network_after, 0) {
                self.stock_event(
                    &mut tx,
                    actor,
                    sku,
                    None,
                    s,
                    network_before,
                    network_after,
                    0,
                )
                .await?;
            }
        }
        // A refused call is not remembered.
        if !failed_keys.is_empty() {
            sqlx::query("DELETE FROM idempotency_keys WHERE scope = $1 AND key = ANY($2)")
                .bind(SCOPE)
                .bind(&failed_keys)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        tracing::debug!(
            size = batch.len(),
            reserved = reservations.len(),
            "reservation batch decided"
        );

        // Later requests of a key the batch owned replay the owner's decision.
        let owned: BTreeSet<usize> = owner.values().copied().collect();
        let mut out = Vec::with_capacity(batch.len());
        for i in 0..batch.len() {
            let decision = match decisions[i].take() {
                Some(d) => d,
                None => {
                    let first = owner
                        .get(keys[i])
                        .copied()
                        .filter(|o| owned.contains(o) && *o != i);
                    match first.and_then(|o| out.get(o).map(|d: &Decision| replay_of(d))) {
                        Some(d) if encoded[i] == encoded[first.unwrap_or(i)] => d,
                        Some(_) => Err(Error::invalid(
                            "idempotency_key",
                            "was already used with a different request",
                        )),
                        None => Err(Error::internal("a batched reservation was left undecided")),
                    }
                }
            };
            out.push(decision);
        }
        Ok(out)
    }
}

fn replay_of(decision: &Decision) -> Decision {
    match decision {
        Ok((reply, _)) => Ok((reply.clone(), false)),
        Err(e) => Err(clone_error(e)),
    }
}

/// Errors are not `Clone` (they may wrap I/O errors); the caller-facing part is copied.
fn clone_error(e: &Error) -> Error {
    match e {
        Error::InvalidArgument(v) => Error::InvalidArgument(v.clone()),
        Error::NotFound(m) => Error::NotFound(m.clone()),
        Error::NotFoundAt { field, what } => Error::not_found_at(field, what),
        Error::AlreadyExists(v) => Error::AlreadyExists(v.clone()),
        Error::FailedPrecondition {
            message,
            violations,
        } => Error::FailedPrecondition {
            message: message.clone(),
            violations: violations.clone(),
        },
        Error::Aborted(m) => Error::Aborted(m.clone()),
        Error::Unauthenticated(m) => Error::Unauthenticated(m.clone()),
        Error::PermissionDenied(m) => Error::PermissionDenied(m.clone()),
        Error::Unavailable(m) => Error::Unavailable(m.clone()),
        Error::ResourceExhausted {
            message,
            retry_after,
        } => Error::ResourceExhausted {
            message: message.clone(),
            retry_after: *retry_after,
        },
        Error::Internal(e) => Error::Internal(anyhow::anyhow!("{e:#}")),
    }
}

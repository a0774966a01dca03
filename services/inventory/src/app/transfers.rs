//! Transfers between locations (through the in-transit location, so levels always equal the
//! ledger) and rebalancing suggestions from sales velocity.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use omni_proto::omni::inventory::v1 as pb;
use omni_runtime::auth::Principal;
use omni_runtime::error::PreconditionViolation;
use omni_runtime::idempotency::{self, Claim};
use omni_runtime::{Error, Result};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{App, Touch};
use crate::convert;
use crate::domain::{self, MovementKind};
use crate::store::{self, IN_TRANSIT, TransferRow};

#[derive(Debug, Clone)]
pub struct TransferInput {
    pub from: Uuid,
    pub to: Uuid,
    pub lines: Vec<(String, i64)>,
    pub expected_at: Option<DateTime<Utc>>,
    pub reason: String,
}

impl App {
    pub async fn create_transfer(
        &self,
        request: &pb::CreateTransferRequest,
        input: TransferInput,
        actor: &Principal,
    ) -> Result<pb::CreateTransferResponse> {
        for (field, id) in [
            ("from_location_id", input.from),
            ("to_location_id", input.to),
        ] {
            let l = self.location(id, field).await?;
            if l.kind == "in_transit" {
                return Err(Error::invalid(field, "must be a warehouse or a store"));
            }
        }
        let scope = "inventory.create_transfer";
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
            return Ok(reply);
        }
        let (transfer, skus) = self.transfer_in_tx(&mut tx, &input, false, actor).await?;
        let reply = pb::CreateTransferResponse {
            transfer: Some(transfer),
        };
        idempotency::complete(&mut tx, scope, &actor.id, &request.idempotency_key, &reply).await?;
        tx.commit().await?;
        self.outbox.wake();
        self.refresh(skus.iter()).await;
        Ok(reply)
    }

    /// Sends the lines from `input.from` into transit toward `input.to`.
    async fn transfer_in_tx(
        &self,
        tx: &mut PgConnection,
        input: &TransferInput,
        automatic: bool,
        actor: &Principal,
    ) -> Result<(pb::Transfer, BTreeSet<String>)> {
        let skus: BTreeSet<String> = input.lines.iter().map(|(s, _)| s.clone()).collect();
        let network_before = Self::network_before(tx, &skus).await?;
        let now = Utc::now();
        let row = TransferRow {
            id: Uuid::now_v7(),
            from_location_id: input.from,
            to_location_id: input.to,
            status: "in_transit".into(),
            expected_at: input.expected_at,
            reason: input.reason.clone(),
            automatic,
            created_at: now,
            updated_at: now,
        };
        store::insert_transfer(tx, &row).await?;
        let reference = row.id.to_string();
        let mut violations = Vec::new();
        let mut touches = Vec::new();
        let mut order: Vec<usize> = (0..input.lines.len()).collect();
        order.sort_by(|a, b| input.lines[*a].0.cmp(&input.lines[*b].0));
        for i in order {
            let (sku, quantity) = &input.lines[i];
            let before = store::lock_level(tx, sku, input.from).await?;
            if before.available() < *quantity {
                violations.push(PreconditionViolation::new(
                    "STOCK_SHORTAGE",
                    format!("lines[{i}]"),
                    format!("requested {quantity}, available {}", before.available()),
                ));
                continue;
            }
            let after = store::change_level(tx, sku, input.from, -quantity, 0).await?;
            store::lock_level(tx, sku, IN_TRANSIT).await?;
            store::change_level(tx, sku, IN_TRANSIT, *quantity, 0).await?;
            for (location, kind, delta) in [
                (input.from, MovementKind::TransferOut, -quantity),
                (IN_TRANSIT, MovementKind::TransferIn, *quantity),
            ] {
                store::insert_movement(
                    tx,
                    &store::NewMovement {
                        sku,
                        location,
                        kind,
                        delta,
                        reason: &input.reason,
                        reference: &reference,
                        actor: &actor.id,
                    },
                )
                .await?;
            }
            store::insert_transfer_line(tx, row.id, sku, *quantity).await?;
            touches.push(Touch {
                sku: sku.clone(),
                location: input.from,
                before,
                after,
            });
        }
        if !violations.is_empty() {
            return Err(Error::FailedPrecondition {
                message: "not enough available stock to send; nothing was moved".into(),
                violations,
            });
        }
        self.signal(tx, &actor.id, &touches, &network_before)
            .await?;
        let (row, lines) = store::transfer(tx, row.id, false)
            .await?
            .ok_or_else(|| Error::internal("transfer vanished inside its transaction"))?;
        tracing::info!(transfer_id = %row.id, automatic, "transfer created");
        Ok((convert::transfer(&row, &lines), skus))
    }

    pub async fn receive_transfer(
        &self,
        request: &pb::ReceiveTransferRequest,
        id: Uuid,
        lines: &[(String, i64)],
        actor: &Principal,
    ) -> Result<pb::ReceiveTransferResponse> {
        let scope = "inventory.receive_transfer";
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
            return Ok(reply);
        }
        let (row, current) = store::transfer(&mut tx, id, true)
            .await?
            .ok_or_else(|| Error::not_found(format!("transfer {id}")))?;
        let mut violations = Vec::new();
        for (i, (sku, quantity)) in lines.iter().enumerate() {
            match current.iter().find(|l| &l.sku_id == sku) {
                None => violations.push(PreconditionViolation::new(
                    "TRANSFER_LINE",
                    format!("lines[{i}]"),
                    "this SKU is not part of the transfer",
                )),
                Some(l) if l.quantity - l.received < *quantity => {
                    violations.push(PreconditionViolation::new(
                        "OVER_RECEIPT",
                        format!("lines[{i}]"),
                        format!(
                            "receiving {quantity} but only {} of {} sent are still in transit",
                            l.quantity - l.received,
                            l.quantity
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
        if !violations.is_empty() {
            return Err(Error::FailedPrecondition {
                message: "the receipt does not match what is in transit; nothing was received"
                    .into(),
                violations,
            });
        }
        let skus: BTreeSet<String> = lines.iter().map(|(s, _)| s.clone()).collect();
        let network_before = Self::network_before(&mut tx, &skus).await?;
        let reference = id.to_string();
        let mut touches = Vec::new();
        let mut sorted: Vec<&(String, i64)> = lines.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        for (sku, quantity) in sorted {
            store::lock_level(&mut tx, sku, IN_TRANSIT).await?;
            store::change_level(&mut tx, sku, IN_TRANSIT, -quantity, 0).await?;
            let before = store::lock_level(&mut tx, sku, row.to_location_id).await?;
            let after = store::change_level(&mut tx, sku, row.to_location_id, *quantity, 0).await?;
            for (location, kind, delta) in [
                (IN_TRANSIT, MovementKind::TransferOut, -quantity),
                (row.to_location_id, MovementKind::TransferIn, *quantity),
            ] {
                store::insert_movement(
                    &mut tx,
                    &store::NewMovement {
                        sku,
                        location,
                        kind,
                        delta,
                        reason: &row.reason,
                        reference: &reference,
                        actor: &actor.id,
                    },
                )
                .await?;
            }
            store::receive_transfer_line(&mut tx, id, sku, *quantity).await?;
            touches.push(Touch {
                sku: sku.clone(),
                location: row.to_location_id,
                before,
                after,
            });
        }
        let (_, updated) = store::transfer(&mut tx, id, false)
            .await?
            .ok_or_else(|| Error::internal("transfer vanished inside its transaction"))?;
        let status = if updated.iter().all(|l| l.received == l.quantity) {
            "received"
        } else {
            "partially_received"
        };
        store::set_transfer_status(&mut tx, id, status).await?;
        self.signal(&mut tx, &actor.id, &touches, &network_before)
            .await?;
        let (row, updated) = store::transfer(&mut tx, id, false)
            .await?
            .ok_or_else(|| Error::internal("transfer vanished inside its transaction"))?;
        let reply = pb::ReceiveTransferResponse {
            transfer: Some(convert::transfer(&row, &updated)),
        };
        idempotency::complete(&mut tx, scope, &actor.id, &request.idempotency_key, &reply).await?;
        tx.commit().await?;
        self.outbox.wake();
        self.refresh(skus.iter()).await;
        Ok(reply)
    }

    pub async fn get_transfer(&self, id: Uuid) -> Result<pb::Transfer> {
        let mut conn = self.pool.acquire().await?;
        let (row, lines) = store::transfer(&mut conn, id, false)
            .await?
            .ok_or_else(|| Error::not_found(format!("transfer {id}")))?;
        Ok(convert::transfer(&row, &lines))
    }

    pub async fn list_transfers(
        &self,
        location: Option<Uuid>,
        status: Option<&str>,
        before: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<pb::Transfer>> {
        let mut conn = self.pool.acquire().await?;
        let ids = store::transfers(&mut conn, location, status, before, limit).await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some((row, lines)) = store::transfer(&mut conn, id, false).await? {
                out.push(convert::transfer(&row, &lines));
            }
        }
        Ok(out)
    }

    /// Moves that even out days of cover for each SKU, and SKUs whose sales surge; in auto
    /// mode the moves become transfers (one per route).
    pub async fn suggest_rebalance(
        &self,
        request: &pb::SuggestRebalanceRequest,
        velocity_days: i64,
        surge_bps: i64,
        only_locations: &[Uuid],
        actor: &Principal,
    ) -> Result<pb::SuggestRebalanceResponse> {
        let now = Utc::now();
        let skus_filter = request.sku_ids.clone();
        let mut conn = self.pool.acquire().await?;
        let sold = store::sales(
            &mut conn,
            now - chrono::Duration::days(velocity_days),
            now,
            &skus_filter,
        )
        .await?;
        let last7 = store::sales(
            &mut conn,
            now - chrono::Duration::days(7),
            now,
            &skus_filter,
        )
        .await?;
        let prev7 = store::sales(
            &mut conn,
            now - chrono::Duration::days(14),
            now - chrono::Duration::days(7),
            &skus_filter,
        )
        .await?;
        let mut skus: BTreeSet<String> = sold.iter().map(|s| s.0.clone()).collect();
        skus.extend(skus_filter.iter().cloned());
        let skus: Vec<String> = skus.into_iter().collect();
        let available = store::available_by_location(&mut conn, &skus).await?;
        drop(conn);
        let locations = self.locations().await?;
        let eligible = |id: &Uuid| {
            locations
                .get(id)
                .is_some_and(|l| l.active && l.kind != "in_transit")
                && (only_locations.is_empty() || only_locations.contains(id))
        };

        let mut moves = Vec::new();
        for sku in &skus {
            let mut positions: BTreeMap<Uuid, domain::Position> = BTreeMap::new();
            for (s, loc, avail) in &available {
                if s == sku && eligible(loc) {
                    positions
                        .entry(*loc)
                        .or_insert(domain::Position {
                            location: *loc,
                            available: 0,
                            sold: 0,
                        })
                        .available = *avail;
                }
            }
            for (s, loc, units) in &sold {
                if s == sku && eligible(loc) {
                    positions
                        .entry(*loc)
                        .or_insert(domain::Position {
                            location: *loc,
                            available: 0,
                            sold: 0,
                        })
                        .sold = *units;
                }
            }
            let positions: Vec<_> = positions.into_values().collect();
            for m in domain::rebalance(&positions, velocity_days, 1) {
                moves.push(pb::RebalanceMove {
                    sku_id: sku.clone(),
                    from_location_id: m.from.to_string(),
                    to_location_id: m.to.to_string(),
                    quantity: m.quantity,
                    from_cover_days: finite(m.from_cover_days),
                    to_cover_days: finite(m.to_cover_days),
                    transfer_id: String::new(),
                    reason: format!(
                        "{velocity_days}-day sales velocity: move stock to where it sells"
                    ),
                });
            }
        }

        let mut surging = Vec::new();
        let total = |rows: &[(String, Uuid, i64)], sku: &str| {
            rows.iter().filter(|r| r.0 == sku).map(|r| r.2).sum::<i64>()
        };
        for sku in &skus {
            let (last, previous) = (total(&last7, sku), total(&prev7, sku));
            if let Some(growth) = domain::growth_bps(last, previous)
                && growth >= surge_bps
            {
                surging.push(pb::SurgingSku {
                    sku_id: sku.clone(),
                    location_id: String::new(),
                    last_7_days_units: last,
                    previous_7_days_units: previous,
                    growth_bps: i32::try_from(growth).unwrap_or(i32::MAX),
                });
            }
        }

        if !request.auto_create {
            return Ok(pb::SuggestRebalanceResponse { moves, surging });
        }
        let scope = "inventory.suggest_rebalance";
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
            return Ok(reply);
        }
        let mut routes: HashMap<(String, String), Vec<usize>> = HashMap::new();
        for (i, m) in moves.iter().enumerate() {
            routes
                .entry((m.from_location_id.clone(), m.to_location_id.clone()))
                .or_default()
                .push(i);
        }
        let mut touched = BTreeSet::new();
        let mut routes: Vec<_> = routes.into_iter().collect();
        routes.sort();
        for ((from, to), indexes) in routes {
            let input = TransferInput {
                from: from.parse().map_err(anyhow::Error::from)?,
                to: to.parse().map_err(anyhow::Error::from)?,
                lines: indexes
                    .iter()
                    .map(|i| (moves[*i].sku_id.clone(), moves[*i].quantity))
                    .collect(),
                expected_at: None,
                reason: "rebalance".into(),
            };
            let (transfer, skus) = self.transfer_in_tx(&mut tx, &input, true, actor).await?;
            for i in indexes {
                moves[i].transfer_id = transfer.id.clone();
            }
            touched.extend(skus);
        }
        let reply = pb::SuggestRebalanceResponse { moves, surging };
        idempotency::complete(&mut tx, scope, &actor.id, &request.idempotency_key, &reply).await?;
        tx.commit().await?;
        self.outbox.wake();
        self.refresh(touched.iter()).await;
        Ok(reply)
    }
}

fn finite(x: f64) -> f64 {
    if x.is_finite() { x } else { -1.0 }
}

//! Stock levels and the ledger, settings, channel quotas and hot SKUs.

use std::collections::BTreeSet;

use omni_proto::omni::inventory::v1 as pb;
use omni_runtime::auth::Principal;
use omni_runtime::error::PreconditionViolation;
use omni_runtime::idempotency::{self, Claim};
use omni_runtime::{Error, Result};
use uuid::Uuid;

use super::{App, Touch};
use crate::convert;
use crate::domain::{self, MovementKind};
use crate::store::{self, HotRow, LevelListRow, QuotaRow};

/// A validated manual movement.
#[derive(Debug, Clone)]
pub struct MovementInput {
    pub location: Uuid,
    pub kind: MovementKind,
    /// (SKU, quantity as the kind reads it).
    pub lines: Vec<(String, i64)>,
    pub reason: String,
    pub reference: String,
}

impl App {
    /// Records a receipt, return, adjustment, count or write-off: all lines or none.
    pub async fn record_movement(
        &self,
        request: &pb::RecordMovementRequest,
        input: MovementInput,
        actor: &Principal,
    ) -> Result<pb::RecordMovementResponse> {
        let location = self.location(input.location, "location_id").await?;
        if location.kind == "in_transit" {
            return Err(Error::invalid(
                "location_id",
                "stock in transit moves only through transfers",
            ));
        }
        let scope = "inventory.record_movement";
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
        let skus: BTreeSet<String> = input.lines.iter().map(|(s, _)| s.clone()).collect();
        if input.kind != MovementKind::Receipt {
            for (i, (sku, _)) in input.lines.iter().enumerate() {
                if !store::sku_known(&mut tx, sku).await? {
                    return Err(Error::NotFound(format!(
                        "stock records for SKU {sku} (lines[{i}].sku_id); receive it first"
                    )));
                }
            }
        }
        let network_before = Self::network_before(&mut tx, &skus).await?;
        // Lock in SKU order so concurrent multi-line movements cannot deadlock.
        let mut order: Vec<usize> = (0..input.lines.len()).collect();
        order.sort_by(|a, b| input.lines[*a].0.cmp(&input.lines[*b].0));
        let mut touches = Vec::new();
        let mut movements = vec![None; input.lines.len()];
        let mut violations = Vec::new();
        for i in order {
            let (sku, quantity) = &input.lines[i];
            let before = store::lock_level(&mut tx, sku, input.location).await?;
            let delta = domain::delta(input.kind, *quantity, before.on_hand);
            let Some(on_hand) = before
                .on_hand
                .checked_add(delta)
                .filter(|n| *n <= domain::MAX_ON_HAND)
            else {
                violations.push(PreconditionViolation::new(
                    "ON_HAND_LIMIT",
                    format!("lines[{i}]"),
                    format!(
                        "on hand would exceed {} units at one location",
                        domain::MAX_ON_HAND
                    ),
                ));
                continue;
            };
            if on_hand < before.reserved {
                violations.push(PreconditionViolation::new(
                    "RESERVED_STOCK",
                    format!("lines[{i}]"),
                    format!(
                        "on hand would be {on_hand} but {} units are reserved; release them first",
                        before.reserved
                    ),
                ));
                continue;
            }
            let after = store::change_level(&mut tx, sku, input.location, delta, 0).await?;
            let row = store::insert_movement(
                &mut tx,
                &store::NewMovement {
                    sku,
                    location: input.location,
                    kind: input.kind,
                    delta,
                    reason: &input.reason,
                    reference: &input.reference,
                    actor: &actor.id,
                },
            )
            .await?;
            movements[i] = Some(row);
            touches.push(Touch {
                sku: sku.clone(),
                location: input.location,
                before,
                after,
            });
        }
        if !violations.is_empty() {
            return Err(Error::FailedPrecondition {
                message: "the movement would take reserved stock".into(),
                violations,
            });
        }
        self.signal(&mut tx, &actor.id, &touches, &network_before)
            .await?;
        let levels = store::levels(
            &mut tx,
            &skus.iter().cloned().collect::<Vec<_>>(),
            Some(input.location),
            false,
            None,
            1000,
        )
        .await?;
        let reply = pb::RecordMovementResponse {
            movements: movements.iter().flatten().map(convert::movement).collect(),
            levels: levels.iter().map(|l| convert::level(l, None)).collect(),
        };
        idempotency::complete(&mut tx, scope, &actor.id, &request.idempotency_key, &reply).await?;
        tx.commit().await?;
        self.outbox.wake();
        self.refresh(skus.iter()).await;
        tracing::info!(location_id = %input.location, kind = input.kind.as_str(), lines = input.lines.len(), "movement recorded");
        Ok(reply)
    }

    pub async fn list_levels(
        &self,
        skus: &[String],
        location: Option<Uuid>,
        low_only: bool,
        after: Option<(String, Uuid)>,
        limit: i64,
    ) -> Result<Vec<LevelListRow>> {
        let mut conn = self.pool.acquire().await?;
        Ok(store::levels(&mut conn, skus, location, low_only, after, limit).await?)
    }

    pub async fn list_movements(
        &self,
        filter: &store::MovementFilter,
    ) -> Result<Vec<store::MovementRow>> {
        let mut conn = self.pool.acquire().await?;
        Ok(store::movements(&mut conn, filter).await?)
    }

    pub async fn set_settings(
        &self,
        sku: &str,
        location: Uuid,
        safety: i64,
        low: i64,
        actor: &Principal,
    ) -> Result<LevelListRow> {
        let place = self.location(location, "location_id").await?;
        if place.kind == "in_transit" {
            return Err(Error::invalid(
                "location_id",
                "the in-transit location has no settings",
            ));
        }
        let skus = BTreeSet::from([sku.to_owned()]);
        let mut tx = self.pool.begin().await?;
        let network_before = Self::network_before(&mut tx, &skus).await?;
        let before = store::lock_level(&mut tx, sku, location).await?;
        let after = store::set_settings(&mut tx, sku, location, safety, low).await?;
        self.signal(
            &mut tx,
            &actor.id,
            &[Touch {
                sku: sku.to_owned(),
                location,
                before,
                after,
            }],
            &network_before,
        )
        .await?;
        let row = store::levels(&mut tx, &[sku.to_owned()], Some(location), false, None, 1)
            .await?
            .pop()
            .ok_or_else(|| Error::internal("level vanished inside its transaction"))?;
        tx.commit().await?;
        self.outbox.wake();
        self.refresh(skus.iter()).await;
        Ok(row)
    }

    pub async fn set_quota(
        &self,
        sku: &str,
        channel: &str,
        limit: Option<i64>,
        reset_used: bool,
    ) -> Result<QuotaRow> {
        let mut conn = self.pool.acquire().await?;
        let row = store::set_quota(&mut conn, sku, channel, limit, reset_used).await?;
        drop(conn);
        self.refresh([&sku.to_owned()]).await;
        Ok(row)
    }

    pub async fn list_quotas(
        &self,
        sku: Option<&str>,
        channels: Option<&[String]>,
        after: Option<(String, String)>,
        limit: i64,
    ) -> Result<Vec<QuotaRow>> {
        let mut conn = self.pool.acquire().await?;
        Ok(store::quotas(&mut conn, sku, channels, after, limit).await?)
    }

    pub async fn set_hot(
        &self,
        sku: &str,
        hot: bool,
        source: &str,
        reason: &str,
        until: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<HotRow> {
        let mut conn = self.pool.acquire().await?;
        let row = store::set_hot(&mut conn, sku, hot, source, reason, until).await?;
        drop(conn);
        self.refresh([&sku.to_owned()]).await;
        tracing::info!(sku = %sku, hot, source, "hot mark changed");
        Ok(row)
    }

    pub async fn list_hot(&self, after: Option<String>, limit: i64) -> Result<Vec<HotRow>> {
        let mut conn = self.pool.acquire().await?;
        Ok(store::hot_skus(&mut conn, after, limit).await?)
    }
}

//! Locations: warehouses and stores (the in-transit location is created by the migration).

use omni_proto::omni::inventory::v1 as pb;
use omni_runtime::auth::Principal;
use omni_runtime::idempotency::{self, Claim};
use omni_runtime::{Error, Result};
use uuid::Uuid;

use super::App;
use crate::convert;
use crate::store::{self, LocationRow};

impl App {
    pub async fn create_location(
        &self,
        request: &pb::CreateLocationRequest,
        mut row: LocationRow,
        actor: &Principal,
    ) -> Result<pb::CreateLocationResponse> {
        let mut tx = self.pool.begin().await?;
        if let Claim::Replay(reply) = idempotency::claim(
            &mut tx,
            "inventory.create_location",
            &actor.id,
            "idempotency_key",
            &request.idempotency_key,
            request,
        )
        .await?
        {
            return Ok(reply);
        }
        row.id = Uuid::now_v7();
        let created = store::insert_location(&mut tx, &row).await?;
        let reply = pb::CreateLocationResponse {
            location: Some(convert::location(&created)),
        };
        idempotency::complete(
            &mut tx,
            "inventory.create_location",
            &actor.id,
            &request.idempotency_key,
            &reply,
        )
        .await?;
        tx.commit().await?;
        self.locations.invalidate();
        tracing::info!(location_id = %created.id, code = %created.code, "location created");
        Ok(reply)
    }

    /// Applies a change if `version` is the current one; kind never changes.
    pub async fn update_location(&self, row: LocationRow, version: i64) -> Result<LocationRow> {
        let mut tx = self.pool.begin().await?;
        let current = store::location(&mut tx, row.id)
            .await?
            .ok_or_else(|| Error::not_found(format!("location {}", row.id)))?;
        if current.kind == "in_transit" {
            return Err(Error::precondition(
                "IN_TRANSIT",
                "location.id",
                "the in-transit location is managed by the service",
            ));
        }
        if current.kind != row.kind {
            return Err(Error::invalid(
                "location.kind",
                "a location's kind cannot change",
            ));
        }
        let updated = store::update_location(&mut tx, &row, version)
            .await?
            .ok_or_else(|| {
                Error::Aborted(format!(
                    "location {} changed meanwhile: version {version} is stale, current is {}",
                    row.id, current.version
                ))
            })?;
        tx.commit().await?;
        self.locations.invalidate();
        // Activity and kind feed availability: every SKU stocked here gets a new snapshot.
        let skus: Vec<String> =
            sqlx::query_scalar("SELECT sku_id FROM stock_levels WHERE location_id = $1")
                .bind(row.id)
                .fetch_all(&self.pool)
                .await?;
        self.refresh(skus.iter()).await;
        Ok(updated)
    }

    pub async fn get_location(&self, id: Uuid) -> Result<LocationRow> {
        self.location(id, "location_id").await
    }
}

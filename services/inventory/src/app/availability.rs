//! Availability reads, served from the Redis snapshots (rebuilt from Postgres on a miss, read
//! from Postgres directly while Redis is unreachable).

use std::collections::HashMap;

use omni_proto::omni::inventory::v1 as pb;
use omni_runtime::Result;
use uuid::Uuid;

use super::App;
use crate::cache::{self, Snapshot};
use crate::convert;
use crate::domain;
use crate::store::{self, LocationRow};

/// Network availability: active warehouses and stores, in-transit excluded.
pub fn network_available(snapshot: &Snapshot, locations: &HashMap<Uuid, LocationRow>) -> i64 {
    snapshot
        .levels
        .iter()
        .filter(|l| {
            locations
                .get(&l.location)
                .is_some_and(|loc| loc.active && loc.kind != "in_transit")
        })
        .map(|l| domain::available(l.on_hand, l.reserved, l.safety))
        .sum()
}

/// What a channel may promise of a SKU.
#[derive(Debug, Clone)]
pub struct SkuView {
    pub sku: String,
    pub snapshot: Snapshot,
    pub network: i64,
    pub channel: i64,
}

impl App {
    /// Snapshots of the SKUs, in order.
    pub async fn snapshots(&self, skus: &[String]) -> Result<Vec<Snapshot>> {
        let cached = match cache::read(&self.redis, skus).await {
            Ok(cached) => cached,
            Err(e) => {
                tracing::warn!(error = %e, "redis unreachable; reading availability from postgres");
                vec![None; skus.len()]
            }
        };
        let mut out = Vec::with_capacity(skus.len());
        for (sku, hit) in skus.iter().zip(cached) {
            match hit {
                Some(snapshot) => out.push(snapshot),
                None => {
                    let mut conn = self.pool.acquire().await?;
                    let snapshot = store::snapshot(&mut conn, sku).await?;
                    drop(conn);
                    let locations = self.locations().await?;
                    let network = network_available(&snapshot, &locations);
                    if let Err(e) = cache::store(&self.redis, sku, &snapshot, network).await {
                        tracing::debug!(error = %e, "cannot rebuild the snapshot in redis");
                    }
                    out.push(snapshot);
                }
            }
        }
        Ok(out)
    }

    pub async fn views(&self, skus: &[String], channel: &str) -> Result<Vec<SkuView>> {
        let snapshots = self.snapshots(skus).await?;
        let locations = self.locations().await?;
        Ok(skus
            .iter()
            .zip(snapshots)
            .map(|(sku, snapshot)| {
                let network = network_available(&snapshot, &locations);
                let channel = match snapshot.quota(channel) {
                    Some(q) => network.min((q.quota - q.used).max(0)),
                    None => network,
                };
                SkuView {
                    sku: sku.clone(),
                    snapshot,
                    network,
                    channel,
                }
            })
            .collect())
    }

    /// The contract's figures for a SKU.
    pub async fn availability(
        &self,
        skus: &[String],
        channel: &str,
        include_locations: bool,
        only: &[Uuid],
    ) -> Result<Vec<pb::SkuAvailability>> {
        let views = self.views(skus, channel).await?;
        let locations = self.locations().await?;
        let now = convert::timestamp(chrono::Utc::now());
        Ok(views
            .into_iter()
            .map(|v| {
                let inbound_quantity = v.snapshot.inbound.iter().map(|i| i.quantity).sum();
                let per_location = if include_locations {
                    // Every location with stock or with stock on its way.
                    let mut ids: Vec<Uuid> = v.snapshot.levels.iter().map(|l| l.location).collect();
                    for i in &v.snapshot.inbound {
                        if !ids.contains(&i.location) {
                            ids.push(i.location);
                        }
                    }
                    ids.into_iter()
                        .filter(|id| only.is_empty() || only.contains(id))
                        .filter_map(|id| {
                            let loc = locations.get(&id)?;
                            if loc.kind == "in_transit" {
                                return None;
                            }
                            let level = v.snapshot.levels.iter().find(|l| l.location == id);
                            let inbound: Vec<_> = v
                                .snapshot
                                .inbound
                                .iter()
                                .filter(|i| i.location == id)
                                .collect();
                            let next = inbound
                                .iter()
                                .map(|i| i.expected_at)
                                .filter(|e| *e > 0)
                                .min();
                            Some(pb::LocationAvailability {
                                location_id: id.to_string(),
                                kind: convert::location_kind(&loc.kind) as i32,
                                available: match level {
                                    Some(l) if loc.active => {
                                        domain::available(l.on_hand, l.reserved, l.safety)
                                    }
                                    _ => 0,
                                },
                                on_hand: level.map_or(0, |l| l.on_hand),
                                pickup_enabled: loc.pickup_enabled,
                                inbound_quantity: inbound.iter().map(|i| i.quantity).sum(),
                                next_inbound_at: next
                                    .map(|seconds| prost_types::Timestamp { seconds, nanos: 0 }),
                            })
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                pb::SkuAvailability {
                    quota: v
                        .snapshot
                        .quota(channel)
                        .map(|q| convert::quota_snap(&v.sku, q)),
                    sku_id: v.sku,
                    network_available: v.network,
                    channel_available: v.channel,
                    locations: per_location,
                    inbound_quantity,
                    hot: v.snapshot.hot,
                    as_of: now,
                }
            })
            .collect())
    }

    /// Stores within `radius` that can hand every item over in full, nearest first.
    pub async fn find_nearby(
        &self,
        items: &[(String, i64)],
        latitude: f64,
        longitude: f64,
        radius: f64,
        limit: usize,
        channel: &str,
    ) -> Result<Vec<pb::NearbyStore>> {
        let skus: Vec<String> = items.iter().map(|(s, _)| s.clone()).collect();
        let views = self.views(&skus, channel).await?;
        // The channel's quota caps what any store may promise for it.
        if views.iter().zip(items).any(|(v, (_, q))| v.channel < *q) {
            return Ok(Vec::new());
        }
        let locations = self.locations().await?;
        let now = chrono::Utc::now();
        let mut stores: Vec<(f64, pb::NearbyStore)> = locations
            .values()
            .filter(|l| l.kind == "store" && l.active && l.pickup_enabled)
            .filter_map(|l| {
                let distance =
                    domain::distance_meters(latitude, longitude, l.latitude?, l.longitude?);
                if distance > radius {
                    return None;
                }
                // A store whose day is over (or past its cut-off) cannot hand over today.
                let time_zone = l.time_zone.parse().unwrap_or(chrono_tz::UTC);
                let ready_by = convert::timestamp(domain::pickup_ready_by(
                    now,
                    time_zone,
                    l.pickup_cutoff_minute,
                )?);
                let mut available = Vec::with_capacity(items.len());
                for (view, (sku, quantity)) in views.iter().zip(items) {
                    let here = view
                        .snapshot
                        .levels
                        .iter()
                        .find(|lv| lv.location == l.id)
                        .map_or(0, |lv| {
                            domain::available(lv.on_hand, lv.reserved, lv.safety)
                        });
                    if here < *quantity {
                        return None;
                    }
                    available.push(pb::SkuQuantity {
                        sku_id: sku.clone(),
                        quantity: here,
                    });
                }
                Some((
                    distance,
                    pb::NearbyStore {
                        location: Some(convert::location(l)),
                        distance_meters: distance,
                        available,
                        ready_by,
                    },
                ))
            })
            .collect();
        stores.sort_by(|a, b| a.0.total_cmp(&b.0));
        Ok(stores.into_iter().take(limit).map(|(_, s)| s).collect())
    }
}

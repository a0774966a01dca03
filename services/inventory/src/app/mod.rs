//! inventory's use cases. Each mutation runs in one Postgres transaction (levels, ledger rows,
//! outbox events and the idempotency record commit together), then writes the touched SKUs'
//! snapshots through to Redis.

mod availability;
mod hot;
mod locations;
mod reservations;
mod stock;
mod transfers;

/// Validated inputs of the use cases.
pub mod stock_input {
    pub use super::stock::MovementInput;
}
pub mod transfer_input {
    pub use super::transfers::TransferInput;
}
pub mod reservation_input {
    pub use super::reservations::PartInput;
}

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use omni_proto::events::event::Payload;
use omni_proto::events::{StockChanged, StockSignal};
use omni_runtime::outbox::Outbox;
use omni_runtime::redis::Redis;
use omni_runtime::{Error, Result};
use sqlx::{PgConnection, PgPool};
use tokio::sync::broadcast;
use uuid::Uuid;

pub use self::availability::SkuView;
pub use self::reservations::ReserveLineInput;
use crate::cache;
use crate::domain;
use crate::store::{self, LevelRow, LocationRow};

/// Settings of the use cases.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Hold time of a reservation that names none.
    pub default_ttl: Duration,
    /// Concurrent reservations on one SKU (in this process) that mark it hot by themselves.
    pub hot_detect_concurrency: usize,
    /// How long a detected hot mark lasts.
    pub hot_detect_for: Duration,
    /// The hot gate's decisions (`omni_inventory_hot_gate_total{decision}`).
    pub gate_decisions: omni_runtime::metrics::Counter,
}

pub struct App {
    pub pool: PgPool,
    pub redis: Redis,
    pub outbox: Outbox,
    pub settings: Settings,
    locations: LocationCache,
    /// SKUs whose write-through failed (Redis unreachable), retried in the background.
    dirty: Mutex<BTreeSet<String>>,
    /// Reservations in flight per SKU, for contention detection.
    inflight: Mutex<HashMap<String, usize>>,
    /// SKU ids whose availability changed (from Redis pub/sub), for watchers.
    pub changes: broadcast::Sender<String>,
    /// Per hot SKU, the queue of admitted reservations decided together.
    batchers: hot::Batchers,
    /// SKUs with a background write-through scheduled (at most one each at a time).
    refreshing: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").finish_non_exhaustive()
    }
}

/// A level before and after a change, for stock signals.
struct Touch {
    sku: String,
    location: Uuid,
    before: LevelRow,
    after: LevelRow,
}

impl App {
    pub fn new(pool: PgPool, redis: Redis, outbox: Outbox, settings: Settings) -> Arc<Self> {
        let (changes, _) = broadcast::channel(4096);
        Arc::new(Self {
            pool,
            redis,
            outbox,
            settings,
            locations: LocationCache::default(),
            dirty: Mutex::new(BTreeSet::new()),
            inflight: Mutex::new(HashMap::new()),
            changes,
            batchers: hot::Batchers::default(),
            refreshing: Mutex::new(HashSet::new()),
        })
    }

    /// Every location, from a cache refreshed at most every two seconds (and at once after a
    /// change made here).
    pub async fn locations(&self) -> Result<Arc<HashMap<Uuid, LocationRow>>> {
        let (current, stale) = self.locations.current();
        if let Some(map) = &current {
            // One caller reloads a stale map; the others keep reading it meanwhile.
            if !stale || !self.locations.start_reload() {
                return Ok(map.clone());
            }
        }
        let loaded = async {
            let mut conn = self.pool.acquire().await?;
            Ok::<_, Error>(store::all_locations(&mut conn).await?)
        }
        .await;
        self.locations.end_reload();
        match loaded {
            Ok(rows) => Ok(self.locations.replace(rows)),
            // A stale map beats no answer while Postgres is away.
            Err(e) => current.ok_or(e),
        }
    }

    /// Where an order may ship from when the caller names no location: active warehouses
    /// first, then stores, each by code.
    async fn shipping_locations(&self) -> Result<Vec<Uuid>> {
        let locations = self.locations().await?;
        let mut shipping: Vec<_> = locations
            .values()
            .filter(|l| l.active && l.ships_orders && l.kind != "in_transit")
            .collect();
        shipping.sort_by(|a, b| {
            (a.kind != "warehouse", &a.code).cmp(&(b.kind != "warehouse", &b.code))
        });
        Ok(shipping.into_iter().map(|l| l.id).collect())
    }

    async fn location(&self, id: Uuid, field: &str) -> Result<LocationRow> {
        let all = self.locations().await?;
        match all.get(&id) {
            Some(l) => Ok(l.clone()),
            None => {
                // Created on another replica a moment ago?
                let mut conn = self.pool.acquire().await?;
                store::location(&mut conn, id)
                    .await?
                    .ok_or_else(|| Error::NotFound(format!("location {id} ({field})")))
            }
        }
    }

    /// Writes the SKUs' snapshots through to Redis after a commit. A failure (Redis down)
    /// only delays it: the SKU is retried in the background and reads fall back to Postgres.
    pub async fn refresh<'a>(&self, skus: impl IntoIterator<Item = &'a String>) {
        for sku in skus {
            if let Err(e) = self.refresh_one(sku).await {
                tracing::warn!(sku = %sku, error = %e, "write-through to redis failed; will retry");
                if let Ok(mut dirty) = self.dirty.lock() {
                    dirty.insert(sku.clone());
                }
            }
        }
    }

    /// Schedules a write-through of `sku` unless one is already waiting to start; changes
    /// committed before it starts are included.
    pub fn refresh_soon(self: &Arc<Self>, sku: &str) {
        let scheduled = match self.refreshing.lock() {
            Ok(mut refreshing) => refreshing.insert(sku.to_owned()),
            Err(_) => false,
        };
        if !scheduled {
            return;
        }
        let (app, sku) = (self.clone(), sku.to_owned());
        tokio::spawn(async move {
            if let Ok(mut refreshing) = app.refreshing.lock() {
                refreshing.remove(&sku);
            }
            app.refresh([&sku]).await;
        });
    }

    async fn refresh_one(&self, sku: &str) -> anyhow::Result<cache::Snapshot> {
        let mut conn = self.pool.acquire().await?;
        let snapshot = store::snapshot(&mut conn, sku).await?;
        drop(conn);
        let locations = self.locations().await?;
        let network = availability::network_available(&snapshot, &locations);
        cache::store(&self.redis, sku, &snapshot, network).await?;
        Ok(snapshot)
    }

    /// Retries failed write-throughs until `shutdown`.
    pub async fn retry_dirty(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            let pending: Vec<String> = match self.dirty.lock() {
                Ok(mut dirty) => std::mem::take(&mut *dirty).into_iter().collect(),
                Err(_) => continue,
            };
            if !pending.is_empty() {
                self.refresh(pending.iter()).await;
            }
        }
    }

    /// Network availability per SKU, read inside a transaction (for signals).
    async fn network_before(
        conn: &mut PgConnection,
        skus: &BTreeSet<String>,
    ) -> Result<HashMap<String, i64>> {
        let skus: Vec<String> = skus.iter().cloned().collect();
        Ok(store::network_available_many(conn, &skus).await?)
    }

    /// Records StockChanged events for the thresholds the changes crossed, per location and
    /// network-wide.
    async fn signal(
        &self,
        conn: &mut PgConnection,
        actor: &str,
        touches: &[Touch],
        network_before: &HashMap<String, i64>,
    ) -> Result<()> {
        for t in touches {
            if let Some(s) = domain::signal(
                t.before.available(),
                t.after.available(),
                t.after.low_stock_threshold,
            ) {
                self.stock_event(
                    conn,
                    actor,
                    &t.sku,
                    Some(t.location),
                    s,
                    t.before.available(),
                    t.after.available(),
                    t.after.low_stock_threshold,
                )
                .await?;
            }
        }
        let skus: Vec<String> = network_before.keys().cloned().collect();
        let network_after = store::network_available_many(conn, &skus).await?;
        for (sku, before) in network_before {
            let after = network_after.get(sku).copied().unwrap_or_default();
            if let Some(s) = domain::signal(*before, after, 0) {
                self.stock_event(conn, actor, sku, None, s, *before, after, 0)
                    .await?;
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn stock_event(
        &self,
        conn: &mut PgConnection,
        actor: &str,
        sku: &str,
        location: Option<Uuid>,
        signal: domain::StockSignal,
        previous: i64,
        available: i64,
        low: i64,
    ) -> Result<()> {
        let signal = match signal {
            domain::StockSignal::OutOfStock => StockSignal::OutOfStock,
            domain::StockSignal::Low => StockSignal::Low,
            domain::StockSignal::BackInStock => StockSignal::BackInStock,
        };
        self.outbox
            .add(
                conn,
                "inventory.stock_changed",
                sku,
                actor,
                Payload::StockChanged(StockChanged {
                    sku_id: sku.to_owned(),
                    location_id: location.map(|l| l.to_string()).unwrap_or_default(),
                    signal: signal as i32,
                    available,
                    previous_available: previous,
                    low_stock_threshold: low,
                }),
            )
            .await?;
        Ok(())
    }

    /// Counts a reservation in flight on each SKU; marks a SKU hot when too many are.
    fn enter(&self, skus: &HashSet<String>) -> InflightGuard<'_> {
        let mut detected = Vec::new();
        if let Ok(mut inflight) = self.inflight.lock() {
            for sku in skus {
                let n = inflight.entry(sku.clone()).or_default();
                *n += 1;
                if *n == self.settings.hot_detect_concurrency {
                    detected.push(sku.clone());
                }
            }
        }
        InflightGuard {
            app: self,
            skus: skus.iter().cloned().collect(),
            detected,
        }
    }
}

struct InflightGuard<'a> {
    app: &'a App,
    skus: Vec<String>,
    detected: Vec<String>,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut inflight) = self.app.inflight.lock() {
            for sku in &self.skus {
                if let Some(n) = inflight.get_mut(sku) {
                    *n -= 1;
                    if *n == 0 {
                        inflight.remove(sku);
                    }
                }
            }
        }
    }
}

type Locations = Arc<HashMap<Uuid, LocationRow>>;

#[derive(Default)]
struct LocationCache {
    /// When the map was read, and the map.
    inner: RwLock<Option<(Instant, Locations)>>,
    reloading: std::sync::atomic::AtomicBool,
}

impl LocationCache {
    const FRESH_FOR: Duration = Duration::from_secs(2);

    /// The map, if any, and whether it is due for a reload.
    fn current(&self) -> (Option<Locations>, bool) {
        match self.inner.read().ok().as_deref() {
            Some(Some((at, map))) => (Some(map.clone()), at.elapsed() >= Self::FRESH_FOR),
            _ => (None, true),
        }
    }

    /// Whether this caller won the right to reload.
    fn start_reload(&self) -> bool {
        !self
            .reloading
            .swap(true, std::sync::atomic::Ordering::AcqRel)
    }

    fn end_reload(&self) {
        self.reloading
            .store(false, std::sync::atomic::Ordering::Release);
    }

    fn replace(&self, rows: Vec<LocationRow>) -> Locations {
        let map: Locations = Arc::new(rows.into_iter().map(|l| (l.id, l)).collect());
        if let Ok(mut guard) = self.inner.write() {
            *guard = Some((Instant::now(), map.clone()));
        }
        map
    }

    fn invalidate(&self) {
        if let Ok(mut guard) = self.inner.write() {
            *guard = None;
        }
    }
}

/// A SKU id as inventory accepts it: catalog's UUIDs.
pub fn parse_sku(raw: &str) -> std::result::Result<String, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err("is required".into());
    }
    Uuid::parse_str(raw)
        .map(|u| u.to_string())
        .map_err(|_| "must be a catalog SKU id (a UUID)".into())
}

pub fn parse_id(raw: &str) -> std::result::Result<Uuid, String> {
    if raw.trim().is_empty() {
        return Err("is required".into());
    }
    Uuid::parse_str(raw.trim()).map_err(|_| "must be a UUID".into())
}

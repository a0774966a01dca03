//! Hot stock in Redis: every key inventory uses, and the scripts that touch them.
//!
//! Per SKU, two keys share the hash tag `{<sku>}` (so one Redis Cluster slot holds both and a
//! script may touch both):
//!
//! - `inv:{<sku>}:snap`, a hash `{v: version, d: snapshot}`: the SKU's levels at every location,
//!   channel quotas, inbound transfers and hot flag, as JSON. Availability reads are served from
//!   it. It is written through after every committed change and rebuilt from Postgres on a miss.
//!   The version is the sum of the row versions behind it (rows are never deleted and every
//!   change bumps one), so a snapshot read later never loses to one read earlier: the store
//!   script keeps the higher version.
//! - `inv:{<sku>}:gate`, an integer, for hot SKUs only: how many units the admission gate may
//!   still let through to Postgres. Reset to the network availability whenever a snapshot is
//!   stored, decremented atomically by admissions, refunded when Postgres refuses an admitted
//!   request. Its presence is what makes a reservation take the hot path, so a reservation
//!   costs one script call whether the SKU is hot or not.
//! - `inv:{<sku>}:idem:<key>`: marks an idempotency key the gate let through, so a retry of an
//!   admitted request goes on to Postgres (which replays the first reply) even once the gate is
//!   empty. After Redis loses its data, a retry arriving when the gate says sold out is refused;
//!   the reservation it retried stands (and expires if nobody pays).
//!
//! And `inv:changes`, a pub/sub channel carrying the id of every SKU whose snapshot changed,
//! which feeds `WatchAvailability` on every replica.
//!
//! Postgres stays the authority: a missing or stale key costs a rebuild or a wasted admission,
//! never an oversell.

use std::collections::HashMap;
use std::sync::LazyLock;

use omni_runtime::redis::Redis;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Snapshots and gates expire after a day without changes, so abandoned SKUs leave Redis.
const TTL_SECONDS: u64 = 24 * 3600;

static STORE_SNAPSHOT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("lua/store_snapshot.lua")));
static GATE_ADMIT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("lua/gate_admit.lua")));
static GATE_REFUND: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("lua/gate_refund.lua")));

pub fn snapshot_key(redis: &Redis, sku: &str) -> String {
    redis.key(&format!("inv:{{{sku}}}:snap"))
}

pub fn gate_key(redis: &Redis, sku: &str) -> String {
    redis.key(&format!("inv:{{{sku}}}:gate"))
}

pub fn idempotency_marker(redis: &Redis, sku: &str, key: &str) -> String {
    redis.key(&format!("inv:{{{sku}}}:idem:{key}"))
}

pub fn changes_channel(redis: &Redis) -> String {
    redis.key("inv:changes")
}

/// One location's figures in a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LevelSnap {
    #[serde(rename = "l")]
    pub location: Uuid,
    #[serde(rename = "h")]
    pub on_hand: i64,
    #[serde(rename = "r")]
    pub reserved: i64,
    #[serde(rename = "s")]
    pub safety: i64,
    #[serde(rename = "t")]
    pub low: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct QuotaSnap {
    #[serde(rename = "c")]
    pub channel: String,
    #[serde(rename = "q")]
    pub quota: i64,
    #[serde(rename = "u")]
    pub used: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InboundSnap {
    #[serde(rename = "l")]
    pub location: Uuid,
    #[serde(rename = "x")]
    pub transfer: Uuid,
    #[serde(rename = "f")]
    pub from: Uuid,
    #[serde(rename = "q")]
    pub quantity: i64,
    /// Unix seconds; 0 when unknown.
    #[serde(rename = "e")]
    pub expected_at: i64,
}

/// Everything availability reads need about one SKU.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Snapshot {
    #[serde(rename = "v")]
    pub version: i64,
    #[serde(rename = "lv", default)]
    pub levels: Vec<LevelSnap>,
    #[serde(rename = "qt", default)]
    pub quotas: Vec<QuotaSnap>,
    #[serde(rename = "in", default)]
    pub inbound: Vec<InboundSnap>,
    #[serde(rename = "hot", default)]
    pub hot: bool,
}

impl Snapshot {
    pub fn quota(&self, channel: &str) -> Option<&QuotaSnap> {
        if channel.is_empty() {
            return None;
        }
        self.quotas.iter().find(|q| q.channel == channel)
    }
}

/// Reads many snapshots in one round trip; `None` for each miss (or undecodable entry).
pub async fn read(redis: &Redis, skus: &[String]) -> redis::RedisResult<Vec<Option<Snapshot>>> {
    let mut pipe = redis::pipe();
    for sku in skus {
        pipe.hget(snapshot_key(redis, sku), "d");
    }
    let raw: Vec<Option<String>> = pipe.query_async(&mut redis.conn()).await?;
    Ok(raw
        .into_iter()
        .map(|r| r.and_then(|json| serde_json::from_str(&json).ok()))
        .collect())
}

/// Stores a snapshot unless Redis has a newer one, resets the gate, and tells watchers.
pub async fn store(
    redis: &Redis,
    sku: &str,
    snapshot: &Snapshot,
    network_available: i64,
) -> anyhow::Result<()> {
    let payload = serde_json::to_string(snapshot)?;
    let mut conn = redis.conn();
    let _: i64 = STORE_SNAPSHOT
        .key(snapshot_key(redis, sku))
        .key(gate_key(redis, sku))
        .arg(snapshot.version)
        .arg(payload)
        .arg(TTL_SECONDS)
        .arg(network_available)
        .arg(if snapshot.hot { "1" } else { "0" })
        .invoke_async(&mut conn)
        .await?;
    let _: i64 = redis::cmd("PUBLISH")
        .arg(changes_channel(redis))
        .arg(sku)
        .query_async(&mut conn)
        .await?;
    Ok(())
}

/// What the gate said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Admitted,
    /// Refused; the units the gate had left.
    Refused(i64),
    /// No gate (not hot, or Redis lost it): Postgres decides alone.
    Unknown,
    /// A retry of a request the gate admitted before: Postgres replays it.
    Retry,
}

/// Asks the gate for `quantity` units of `sku` for the request with `idempotency_key`.
pub async fn admit(
    redis: &Redis,
    sku: &str,
    quantity: i64,
    idempotency_key: &str,
) -> redis::RedisResult<Gate> {
    let (verdict, left): (i64, i64) = GATE_ADMIT
        .key(gate_key(redis, sku))
        .key(idempotency_marker(redis, sku, idempotency_key))
        .arg(quantity)
        .arg(TTL_SECONDS)
        .invoke_async(&mut redis.conn())
        .await?;
    Ok(match verdict {
        1 => Gate::Admitted,
        0 => Gate::Refused(left),
        2 => Gate::Retry,
        _ => Gate::Unknown,
    })
}

pub async fn refund(redis: &Redis, sku: &str, quantity: i64) -> redis::RedisResult<()> {
    let _: i64 = GATE_REFUND
        .key(gate_key(redis, sku))
        .arg(quantity)
        .invoke_async(&mut redis.conn())
        .await?;
    Ok(())
}

/// Groups snapshot levels by location for quick lookups.
pub fn by_location(snapshot: &Snapshot) -> HashMap<Uuid, &LevelSnap> {
    snapshot.levels.iter().map(|l| (l.location, l)).collect()
}

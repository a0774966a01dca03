//! The catalog's hot reads in Redis: every key the catalog uses is named here.
//!
//! An entry is a hash holding JSON values, with an epoch counter beside it; both share a hash
//! tag so one Redis Cluster slot holds them and a script may touch both:
//!
//! - `cat:{sku:<id>}`: field `sku` (the SKU with its product's name and category path) and one
//!   field `l:<channel id>` per channel asked about (its listing, or `null` when it has none).
//!   Serves `GetSku`, `BatchGetSkus` and the lines of `Quote`.
//! - `cat:{ch:<id>}`: field `c`, the channel (currency and active flag, for `Quote`).
//! - `cat:{promos}`: field `live`, every promotion not yet ended (for `Quote`).
//! - `cat:code:<sku code>` and `cat:barcode:<barcode>`: the SKU id they name. A hint only: the
//!   entry it points to is checked to still carry that code, else Postgres is asked.
//! - `<entry>:epoch`: bumped by every invalidation.
//!
//! Why the epoch: a reader that misses reads Postgres and stores what it read. If a writer
//! committed and invalidated in between, the reader would put the old row back and serve it
//! until it expired. So the reader notes the epoch before reading Postgres, and
//! `lua/fill.lua` stores only if the epoch is unchanged; writers invalidate (bump and delete,
//! `lua/invalidate.lua`) after their commit. A changed price is therefore never served after
//! the change has committed and its invalidation returned.
//!
//! Redis is a cache here, never the authority: when it is unreachable, reads go to Postgres.

use std::sync::LazyLock;

use omni_runtime::redis::Redis;
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

/// Entries expire after an hour without use, so deleted or cold data leaves Redis.
const TTL_SECONDS: u64 = 3600;

static FILL: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("lua/fill.lua")));
static INVALIDATE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("lua/invalidate.lua")));

/// One cached value: a field of an entry hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub hash: String,
    pub epoch: String,
    pub field: String,
}

/// An entry hash and its epoch, for invalidation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryKey {
    pub hash: String,
    pub epoch: String,
}

#[derive(Clone, Debug)]
pub struct Cache {
    redis: Redis,
}

fn entry(redis: &Redis, tag: &str) -> EntryKey {
    let hash = redis.key(&format!("cat:{{{tag}}}"));
    EntryKey {
        epoch: format!("{hash}:epoch"),
        hash,
    }
}

/// A value read from the cache: `Hit`, or a `Miss` with the epoch to fill under.
#[derive(Debug)]
pub enum Lookup<T> {
    Hit(T),
    Miss(Option<String>),
}

impl Cache {
    pub fn new(redis: Redis) -> Self {
        Self { redis }
    }

    pub fn sku_entry(&self, sku: Uuid) -> EntryKey {
        entry(&self.redis, &format!("sku:{sku}"))
    }

    pub fn sku_slot(&self, sku: Uuid) -> Slot {
        let e = self.sku_entry(sku);
        Slot {
            hash: e.hash,
            epoch: e.epoch,
            field: "sku".into(),
        }
    }

    pub fn listing_slot(&self, sku: Uuid, channel: Uuid) -> Slot {
        let e = self.sku_entry(sku);
        Slot {
            hash: e.hash,
            epoch: e.epoch,
            field: format!("l:{channel}"),
        }
    }

    pub fn channel_entry(&self, channel: Uuid) -> EntryKey {
        entry(&self.redis, &format!("ch:{channel}"))
    }

    pub fn channel_slot(&self, channel: Uuid) -> Slot {
        let e = self.channel_entry(channel);
        Slot {
            hash: e.hash,
            epoch: e.epoch,
            field: "c".into(),
        }
    }

    pub fn promotions_entry(&self) -> EntryKey {
        entry(&self.redis, "promos")
    }

    pub fn promotions_slot(&self) -> Slot {
        let e = self.promotions_entry();
        Slot {
            hash: e.hash,
            epoch: e.epoch,
            field: "live".into(),
        }
    }

    pub fn code_hint_key(&self, code: &str) -> String {
        self.redis.key(&format!("cat:code:{code}"))
    }

    pub fn barcode_hint_key(&self, barcode: &str) -> String {
        self.redis.key(&format!("cat:barcode:{barcode}"))
    }

    /// Reads many slots in one round trip. On a Redis failure every slot is a miss that will
    /// not be filled.
    pub async fn get_many<T: DeserializeOwned>(&self, slots: &[Slot]) -> Vec<Lookup<T>> {
        if slots.is_empty() {
            return Vec::new();
        }
        let mut pipe = redis::pipe();
        for slot in slots {
            pipe.cmd("HGET").arg(&slot.hash).arg(&slot.field);
            pipe.cmd("GET").arg(&slot.epoch);
        }
        let replies: Vec<Option<String>> = match pipe.query_async(&mut self.redis.conn()).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cache read failed; reading postgres");
                return slots.iter().map(|_| Lookup::Miss(None)).collect();
            }
        };
        replies
            .chunks(2)
            .map(|pair| {
                let value = pair.first().cloned().flatten();
                let epoch = pair.get(1).cloned().flatten().unwrap_or_else(|| "0".into());
                match value.and_then(|v| serde_json::from_str::<T>(&v).ok()) {
                    Some(v) => Lookup::Hit(v),
                    None => Lookup::Miss(Some(epoch)),
                }
            })
            .collect()
    }

    pub async fn get<T: DeserializeOwned>(&self, slot: &Slot) -> Lookup<T> {
        self.get_many(std::slice::from_ref(slot))
            .await
            .pop()
            .unwrap_or(Lookup::Miss(None))
    }

    /// Stores what was read from Postgres, unless the entry was invalidated since `epoch` was
    /// read. Failures only cost a later miss.
    pub async fn fill<T: Serialize>(&self, slot: &Slot, epoch: Option<String>, value: &T) {
        let Some(epoch) = epoch else { return };
        let Ok(json) = serde_json::to_string(value) else {
            return;
        };
        let stored: redis::RedisResult<i64> = FILL
            .key(&slot.hash)
            .key(&slot.epoch)
            .arg(epoch)
            .arg(&slot.field)
            .arg(json)
            .arg(TTL_SECONDS)
            .invoke_async(&mut self.redis.conn())
            .await;
        if let Err(e) = stored {
            tracing::warn!(error = %e, "cache fill failed");
        }
    }

    /// Drops entries after the change behind them committed.
    pub async fn invalidate(&self, entries: &[EntryKey]) {
        for e in entries {
            // A blip must not leave a stale price behind: try a few times before giving up.
            let mut attempts = 0;
            loop {
                attempts += 1;
                let dropped: redis::RedisResult<i64> = INVALIDATE
                    .key(&e.hash)
                    .key(&e.epoch)
                    .invoke_async(&mut self.redis.conn())
                    .await;
                match dropped {
                    Ok(_) => break,
                    Err(err) if attempts >= 3 => {
                        // The entry still expires within the TTL.
                        tracing::error!(error = %err, key = %e.hash, "cache invalidation failed");
                        break;
                    }
                    Err(_) => continue,
                }
            }
        }
    }

    /// The SKU id a code or barcode hint names, if Redis knows it.
    pub async fn hint(&self, key: &str) -> Option<Uuid> {
        let mut conn = self.redis.conn();
        let raw: Option<String> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut conn)
            .await
            .ok()
            .flatten();
        raw.and_then(|r| Uuid::parse_str(&r).ok())
    }

    pub async fn set_hint(&self, key: &str, sku: Uuid) {
        let mut conn = self.redis.conn();
        let set: redis::RedisResult<()> = redis::cmd("SET")
            .arg(key)
            .arg(sku.to_string())
            .arg("EX")
            .arg(TTL_SECONDS)
            .query_async(&mut conn)
            .await;
        if let Err(e) = set {
            tracing::warn!(error = %e, "cache hint write failed");
        }
    }
}

//! The catalog's use cases: each mutation runs in one transaction, decides with
//! [`crate::domain`], writes with [`crate::store`], records its events in the outbox in the same
//! transaction, and invalidates the cache entries it changed once it has committed. Hot reads
//! (SKUs, listings, channels, live promotions) go through [`crate::cache`].

mod listings;
mod products;
mod promotions;
mod quote;

use std::collections::HashMap;
use std::future::Future;

use omni_runtime::idempotency::{self, Claim};
use omni_runtime::outbox::Outbox;
use omni_runtime::{Error, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

pub use self::listings::{
    Issue, IssueKind, ListingInput, ListingOut, SuggestInput, Suggested, Suggestion,
};
pub use self::products::{ChannelInput, Product, ProductInput, SkuInput, SkuKey};
pub use self::promotions::PromotionInput;
pub use self::quote::{QuoteInput, QuoteLineInput, Quoted};
use crate::cache::{Cache, Lookup, Slot};
use crate::store::{self, ChannelRow, ListingRow, SkuView};

#[derive(Debug, Clone)]
pub struct App {
    pub pool: PgPool,
    pub outbox: Outbox,
    pub cache: Cache,
}

/// A mutation's idempotency key with the encoded request it came with.
#[derive(Debug, Clone)]
pub struct Idem {
    /// The principal whose key it is.
    pub caller: String,
    pub scope: &'static str,
    pub key: String,
    pub request: Vec<u8>,
}

/// Claims the key in the mutation's transaction: `Some(id)` when an earlier call with the same
/// key and request committed and created `id`.
async fn claim(conn: &mut PgConnection, idem: Option<&Idem>) -> Result<Option<Uuid>> {
    let Some(idem) = idem else { return Ok(None) };
    match idempotency::claim::<Vec<u8>, String>(
        conn,
        idem.scope,
        &idem.caller,
        "idempotency_key",
        &idem.key,
        &idem.request,
    )
    .await?
    {
        Claim::Fresh => Ok(None),
        Claim::Replay(id) => Uuid::parse_str(&id)
            .map(Some)
            .map_err(|_| Error::internal("a stored idempotent reply is not an id")),
    }
}

async fn complete(conn: &mut PgConnection, idem: Option<&Idem>, id: Uuid) -> Result<()> {
    if let Some(idem) = idem {
        idempotency::complete(conn, idem.scope, &idem.caller, &idem.key, &id.to_string()).await?;
    }
    Ok(())
}

/// A thing a request names that does not exist, with the request fields that named it. It
/// travels inside [`Error::Internal`] to the gRPC layer, which answers NOT_FOUND with the fields
/// as `BadRequest` violations (the runtime's `NotFound` carries a message only).
#[derive(Debug, thiserror::Error)]
#[error("{what} not found")]
pub struct Missing {
    pub what: String,
    pub fields: Vec<(String, String)>,
}

/// NOT_FOUND for `what`, named by the request's `field`.
pub fn missing(field: impl Into<String>, what: impl Into<String>) -> Error {
    let what = what.into();
    let description = format!("{what} does not exist");
    Error::Internal(anyhow::Error::new(Missing {
        what,
        fields: vec![(field.into(), description)],
    }))
}

/// NOT_FOUND for several things at once, each with its field and description.
pub fn missing_many(what: impl Into<String>, fields: Vec<(String, String)>) -> Error {
    Error::Internal(anyhow::Error::new(Missing {
        what: what.into(),
        fields,
    }))
}

fn stale(kind: &str, id: impl std::fmt::Display, message: String) -> Error {
    Error::precondition("VERSION", format!("{kind}/{id}"), message)
}

impl App {
    /// Reads `ids` through the cache: hits from Redis, misses from `load` (one Postgres read),
    /// then stored for the next reader. Absent values are cached too, as `null`.
    async fn cached<T, F, Fut>(
        &self,
        slots: Vec<Slot>,
        ids: &[Uuid],
        load: F,
    ) -> Result<Vec<Option<T>>>
    where
        T: Serialize + DeserializeOwned + Clone,
        F: FnOnce(Vec<Uuid>) -> Fut,
        Fut: Future<Output = Result<HashMap<Uuid, T>>>,
    {
        let lookups = self.cache.get_many::<Option<T>>(&slots).await;
        let mut out: Vec<Option<T>> = Vec::with_capacity(ids.len());
        let mut missing: Vec<(usize, Option<String>)> = Vec::new();
        for (i, lookup) in lookups.into_iter().enumerate() {
            match lookup {
                Lookup::Hit(v) => out.push(v),
                Lookup::Miss(epoch) => {
                    out.push(None);
                    missing.push((i, epoch));
                }
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let mut miss_ids: Vec<Uuid> = missing.iter().map(|(i, _)| ids[*i]).collect();
        miss_ids.dedup();
        let loaded = load(miss_ids).await?;
        for (i, epoch) in missing {
            let value = loaded.get(&ids[i]).cloned();
            self.cache.fill(&slots[i], epoch, &value).await;
            out[i] = value;
        }
        Ok(out)
    }

    /// SKUs with their product's name and category path, cached.
    pub async fn sku_views(&self, ids: &[Uuid]) -> Result<Vec<Option<SkuView>>> {
        let slots = ids.iter().map(|id| self.cache.sku_slot(*id)).collect();
        let pool = self.pool.clone();
        self.cached(slots, ids, |miss| async move {
            let mut conn = pool.acquire().await?;
            let rows = store::sku_views(&mut conn, &miss).await?;
            Ok(rows.into_iter().map(|v| (v.sku.id, v)).collect())
        })
        .await
    }

    /// Each SKU's listing on `channel`, cached.
    pub async fn listings_on(
        &self,
        ids: &[Uuid],
        channel: Uuid,
    ) -> Result<Vec<Option<ListingRow>>> {
        let slots = ids
            .iter()
            .map(|id| self.cache.listing_slot(*id, channel))
            .collect();
        let pool = self.pool.clone();
        self.cached(slots, ids, |miss| async move {
            let mut conn = pool.acquire().await?;
            let rows = store::listings_on_channel(&mut conn, &miss, channel).await?;
            Ok(rows.into_iter().map(|l| (l.sku_id, l)).collect())
        })
        .await
    }

    /// A channel, cached.
    pub async fn channel_cached(&self, id: Uuid) -> Result<Option<ChannelRow>> {
        Ok(self.channels_cached(&[id]).await?.pop().flatten())
    }

    /// Channels, cached, in the order of `ids`.
    pub async fn channels_cached(&self, ids: &[Uuid]) -> Result<Vec<Option<ChannelRow>>> {
        let slots = ids.iter().map(|id| self.cache.channel_slot(*id)).collect();
        let pool = self.pool.clone();
        self.cached(slots, ids, |miss| async move {
            let mut conn = pool.acquire().await?;
            let mut out = HashMap::new();
            for id in miss {
                if let Some(c) = store::channel(&mut conn, id, false).await? {
                    out.insert(id, c);
                }
            }
            Ok(out)
        })
        .await
    }
}

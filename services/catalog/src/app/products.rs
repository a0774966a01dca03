//! Channels, categories, products and SKUs.

use std::collections::BTreeMap;

use omni_proto::common::Money;
use omni_proto::events::event::Payload;
use omni_proto::events::{ChannelChanged, PriceChanged, ProductChanged, SkuSnapshot};
use omni_runtime::auth::Principal;
use omni_runtime::{Error, Result};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{App, Idem, claim, complete, missing, missing_many, stale};
use crate::domain;
use crate::store::{
    self, CategoryRow, ChannelRow, ProductRow, ProductSearch, SkuKeyColumn, SkuRow, SkuView,
};

#[derive(Debug, Clone)]
pub struct ChannelInput {
    pub kind: i16,
    pub name: String,
    pub store_location_id: String,
    pub currency: String,
    pub active: bool,
}

#[derive(Debug, Clone)]
pub struct ProductInput {
    pub name: String,
    pub brand: String,
    pub category_id: Uuid,
    pub description: String,
    pub media_urls: Vec<String>,
    pub attributes: BTreeMap<String, String>,
    pub status: i16,
}

#[derive(Debug, Clone)]
pub struct SkuInput {
    pub sku_code: String,
    pub barcode: String,
    pub variant_attributes: BTreeMap<String, String>,
    pub list_price: i64,
    pub currency: String,
    pub unit_cost: i64,
    pub cost_currency: String,
    pub status: i16,
}

/// How a caller names a SKU.
#[derive(Debug, Clone)]
pub enum SkuKey {
    Id(Uuid),
    Code(String),
    Barcode(String),
}

/// A product with its SKUs and its category path.
#[derive(Debug, Clone)]
pub struct Product {
    pub row: ProductRow,
    pub skus: Vec<SkuRow>,
    pub category_path: Vec<Uuid>,
}

fn json_map(map: &BTreeMap<String, String>) -> String {
    serde_json::to_string(map).unwrap_or_else(|_| "{}".into())
}

fn money(minor_units: i64, currency: &str) -> Option<Money> {
    Some(Money {
        minor_units,
        currency: currency.to_owned(),
    })
}

fn sku_row(id: Uuid, product_id: Uuid, input: &SkuInput) -> SkuRow {
    let now = chrono::Utc::now();
    SkuRow {
        id,
        product_id,
        sku_code: input.sku_code.clone(),
        barcode: input.barcode.clone(),
        variant_attributes: json_map(&input.variant_attributes),
        list_price: input.list_price,
        currency: input.currency.clone(),
        unit_cost: input.unit_cost,
        cost_currency: input.cost_currency.clone(),
        status: input.status,
        version: 1,
        created_at: now,
        updated_at: now,
    }
}

impl App {
    // ------------------------------------------------------------------------------------------
    // Channels

    #[tracing::instrument(name = "catalog.create_channel", skip_all, err)]
    pub async fn create_channel(
        &self,
        input: ChannelInput,
        idem: Option<&Idem>,
        actor: &Principal,
    ) -> Result<ChannelRow> {
        let mut tx = self.pool.begin().await?;
        if let Some(id) = claim(&mut tx, idem).await? {
            return store::channel(&mut tx, id, false)
                .await?
                .ok_or_else(|| Error::not_found(format!("channel {id}")));
        }
        let id = Uuid::now_v7();
        let now = chrono::Utc::now();
        let row = ChannelRow {
            id,
            kind: input.kind,
            name: input.name,
            store_location_id: input.store_location_id,
            currency: input.currency,
            active: input.active,
            version: 1,
            created_at: now,
            updated_at: now,
        };
        store::insert_channel(&mut tx, &row).await?;
        let row = store::channel(&mut tx, id, false)
            .await?
            .ok_or_else(|| Error::internal("channel vanished inside its transaction"))?;
        self.channel_event(&mut tx, &row, true, actor).await?;
        complete(&mut tx, idem, id).await?;
        tx.commit().await?;
        self.outbox.wake();
        tracing::info!(channel_id = %id, "channel created");
        Ok(row)
    }

    #[tracing::instrument(name = "catalog.update_channel", skip_all, fields(channel_id = %id), err)]
    pub async fn update_channel(
        &self,
        id: Uuid,
        version: i64,
        input: ChannelInput,
        actor: &Principal,
    ) -> Result<ChannelRow> {
        let mut tx = self.pool.begin().await?;
        let current = store::channel(&mut tx, id, true)
            .await?
            .ok_or_else(|| missing("channel.id", format!("channel {id}")))?;
        domain::check_version(version, current.version).map_err(|m| stale("channel", id, m))?;
        if input.kind != current.kind {
            return Err(Error::invalid("channel.kind", "cannot change"));
        }
        if input.currency != current.currency && store::channel_has_listings(&mut tx, id).await? {
            return Err(Error::precondition(
                "CURRENCY",
                format!("channel/{id}"),
                "the channel has listings priced in its currency; reprice them on a new channel",
            ));
        }
        let next = ChannelRow {
            name: input.name,
            store_location_id: input.store_location_id,
            currency: input.currency,
            active: input.active,
            ..current
        };
        store::update_channel(&mut tx, &next).await?;
        let row = store::channel(&mut tx, id, false)
            .await?
            .ok_or_else(|| Error::internal("channel vanished inside its transaction"))?;
        self.channel_event(&mut tx, &row, false, actor).await?;
        tx.commit().await?;
        self.outbox.wake();
        self.cache.invalidate(&[self.cache.channel_entry(id)]).await;
        Ok(row)
    }

    async fn channel_event(
        &self,
        conn: &mut PgConnection,
        row: &ChannelRow,
        created: bool,
        actor: &Principal,
    ) -> Result<()> {
        self.outbox
            .add(
                conn,
                "catalog.channel_changed",
                &row.id.to_string(),
                &actor.id,
                Payload::ChannelChanged(ChannelChanged {
                    channel_id: row.id.to_string(),
                    kind: i32::from(row.kind),
                    name: row.name.clone(),
                    store_location_id: row.store_location_id.clone(),
                    currency: row.currency.clone(),
                    active: row.active,
                    created,
                    version: row.version,
                }),
            )
            .await?;
        Ok(())
    }

    pub async fn get_channel(&self, id: Uuid) -> Result<ChannelRow> {
        self.channel_cached(id)
            .await?
            .ok_or_else(|| missing("channel_id", format!("channel {id}")))
    }

    pub async fn list_channels(
        &self,
        kind: Option<i16>,
        include_inactive: bool,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<ChannelRow>> {
        let mut conn = self.pool.acquire().await?;
        Ok(store::list_channels(&mut conn, kind, include_inactive, after, limit).await?)
    }

    // ------------------------------------------------------------------------------------------
    // Categories

    #[tracing::instrument(name = "catalog.create_category", skip_all, err)]
    pub async fn create_category(
        &self,
        parent_id: Option<Uuid>,
        name: String,
        idem: Option<&Idem>,
    ) -> Result<CategoryRow> {
        let mut tx = self.pool.begin().await?;
        if let Some(id) = claim(&mut tx, idem).await? {
            return store::category(&mut tx, id)
                .await?
                .ok_or_else(|| Error::not_found(format!("category {id}")));
        }
        let mut path = match parent_id {
            Some(parent) => {
                store::category(&mut tx, parent)
                    .await?
                    .ok_or_else(|| missing("parent_id", format!("category {parent}")))?
                    .path
            }
            None => Vec::new(),
        };
        let id = Uuid::now_v7();
        path.push(id);
        store::insert_category(&mut tx, id, parent_id, &name, &path).await?;
        let row = store::category(&mut tx, id)
            .await?
            .ok_or_else(|| Error::internal("category vanished inside its transaction"))?;
        complete(&mut tx, idem, id).await?;
        tx.commit().await?;
        Ok(row)
    }

    pub async fn list_categories(
        &self,
        parent_id: Option<Uuid>,
        recursive: bool,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<CategoryRow>> {
        let mut conn = self.pool.acquire().await?;
        if let Some(parent) = parent_id
            && store::category(&mut conn, parent).await?.is_none()
        {
            return Err(missing("parent_id", format!("category {parent}")));
        }
        Ok(store::list_categories(&mut conn, parent_id, recursive, after, limit).await?)
    }

    // ------------------------------------------------------------------------------------------
    // Products and SKUs

    async fn load_product(&self, conn: &mut PgConnection, id: Uuid) -> Result<Product> {
        let row = store::product(conn, id, false)
            .await?
            .ok_or_else(|| missing("product_id", format!("product {id}")))?;
        let skus = store::skus_of_products(conn, &[id]).await?;
        let category_path = store::category(conn, row.category_id)
            .await?
            .map(|c| c.path)
            .unwrap_or_default();
        Ok(Product {
            row,
            skus,
            category_path,
        })
    }

    async fn require_category(&self, conn: &mut PgConnection, field: &str, id: Uuid) -> Result<()> {
        if store::category(conn, id).await?.is_none() {
            return Err(missing(field, format!("category {id}")));
        }
        Ok(())
    }

    async fn product_event(
        &self,
        conn: &mut PgConnection,
        product: &Product,
        created: bool,
        changed_skus: &[Uuid],
        actor: &Principal,
    ) -> Result<()> {
        let row = &product.row;
        self.outbox
            .add(
                conn,
                "catalog.product_changed",
                &row.id.to_string(),
                &actor.id,
                Payload::ProductChanged(ProductChanged {
                    product_id: row.id.to_string(),
                    version: row.version,
                    created,
                    name: row.name.clone(),
                    brand: row.brand.clone(),
                    category_id: row.category_id.to_string(),
                    category_path: product.category_path.iter().map(Uuid::to_string).collect(),
                    status: i32::from(row.status),
                    skus: product
                        .skus
                        .iter()
                        .map(|s| SkuSnapshot {
                            sku_id: s.id.to_string(),
                            sku_code: s.sku_code.clone(),
                            barcode: s.barcode.clone(),
                            status: i32::from(s.status),
                            list_price: money(s.list_price, &s.currency),
                            unit_cost: money(s.unit_cost, &s.cost_currency),
                            version: s.version,
                        })
                        .collect(),
                    changed_sku_ids: changed_skus.iter().map(Uuid::to_string).collect(),
                }),
            )
            .await?;
        Ok(())
    }

    #[tracing::instrument(name = "catalog.create_product", skip_all, err)]
    pub async fn create_product(
        &self,
        input: ProductInput,
        skus: Vec<SkuInput>,
        idem: Option<&Idem>,
        actor: &Principal,
    ) -> Result<Product> {
        let mut tx = self.pool.begin().await?;
        if let Some(id) = claim(&mut tx, idem).await? {
            return self.load_product(&mut tx, id).await;
        }
        self.require_category(&mut tx, "product.category_id", input.category_id)
            .await?;
        let id = Uuid::now_v7();
        let now = chrono::Utc::now();
        let row = ProductRow {
            id,
            name: input.name,
            brand: input.brand,
            category_id: input.category_id,
            description: input.description,
            media_urls: input.media_urls,
            attributes: json_map(&input.attributes),
            status: input.status,
            version: 1,
            created_at: now,
            updated_at: now,
        };
        store::insert_product(&mut tx, &row).await?;
        let mut sku_ids = Vec::with_capacity(skus.len());
        for sku in &skus {
            let sku_id = Uuid::now_v7();
            store::insert_sku(&mut tx, &sku_row(sku_id, id, sku)).await?;
            sku_ids.push(sku_id);
        }
        let product = self.load_product(&mut tx, id).await?;
        self.product_event(&mut tx, &product, true, &sku_ids, actor)
            .await?;
        complete(&mut tx, idem, id).await?;
        tx.commit().await?;
        self.outbox.wake();
        self.invalidate_skus(&sku_ids).await;
        tracing::info!(product_id = %id, skus = sku_ids.len(), "product created");
        Ok(product)
    }

    #[tracing::instrument(name = "catalog.update_product", skip_all, fields(product_id = %id), err)]
    pub async fn update_product(
        &self,
        id: Uuid,
        version: i64,
        input: ProductInput,
        actor: &Principal,
    ) -> Result<Product> {
        let mut tx = self.pool.begin().await?;
        let current = store::product(&mut tx, id, true)
            .await?
            .ok_or_else(|| missing("product.id", format!("product {id}")))?;
        domain::check_version(version, current.version).map_err(|m| stale("product", id, m))?;
        self.require_category(&mut tx, "product.category_id", input.category_id)
            .await?;
        let next = ProductRow {
            name: input.name,
            brand: input.brand,
            category_id: input.category_id,
            description: input.description,
            media_urls: input.media_urls,
            attributes: json_map(&input.attributes),
            status: input.status,
            ..current
        };
        store::update_product(&mut tx, &next).await?;
        let product = self.load_product(&mut tx, id).await?;
        self.product_event(&mut tx, &product, false, &[], actor)
            .await?;
        tx.commit().await?;
        self.outbox.wake();
        let sku_ids: Vec<Uuid> = product.skus.iter().map(|s| s.id).collect();
        self.invalidate_skus(&sku_ids).await;
        Ok(product)
    }

    pub async fn get_product(&self, id: Uuid) -> Result<Product> {
        let mut conn = self.pool.acquire().await?;
        self.load_product(&mut conn, id).await
    }

    pub async fn search_products(
        &self,
        search: ProductSearch,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<(Vec<Product>, i64)> {
        let mut conn = self.pool.acquire().await?;
        if let Some(c) = search.category_id {
            self.require_category(&mut conn, "category_id", c).await?;
        }
        if let Some(c) = search.channel_id
            && store::channel(&mut conn, c, false).await?.is_none()
        {
            return Err(missing("channel_id", format!("channel {c}")));
        }
        let (rows, total) = store::search_products(&mut conn, &search, after, limit).await?;
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        let mut skus = store::skus_of_products(&mut conn, &ids).await?;
        let products = rows
            .into_iter()
            .map(|row| {
                let (mine, rest): (Vec<SkuRow>, Vec<SkuRow>) =
                    skus.drain(..).partition(|s| s.product_id == row.id);
                skus = rest;
                Product {
                    row,
                    skus: mine,
                    category_path: Vec::new(),
                }
            })
            .collect();
        Ok((products, total))
    }

    #[tracing::instrument(name = "catalog.create_sku", skip_all, fields(product_id = %product_id), err)]
    pub async fn create_sku(
        &self,
        product_id: Uuid,
        input: SkuInput,
        idem: Option<&Idem>,
        actor: &Principal,
    ) -> Result<SkuView> {
        let mut tx = self.pool.begin().await?;
        let id = match claim(&mut tx, idem).await? {
            Some(id) => id,
            None => {
                // Locks the product so its version and event order follow the SKU changes.
                store::product(&mut tx, product_id, true)
                    .await?
                    .ok_or_else(|| missing("sku.product_id", format!("product {product_id}")))?;
                let id = Uuid::now_v7();
                store::insert_sku(&mut tx, &sku_row(id, product_id, &input)).await?;
                let product = self.load_product(&mut tx, product_id).await?;
                self.product_event(&mut tx, &product, false, &[id], actor)
                    .await?;
                complete(&mut tx, idem, id).await?;
                id
            }
        };
        let view = store::sku_views(&mut tx, &[id])
            .await?
            .pop()
            .ok_or_else(|| Error::not_found(format!("sku {id}")))?;
        tx.commit().await?;
        self.outbox.wake();
        self.invalidate_skus(&[id]).await;
        Ok(view)
    }

    #[tracing::instrument(name = "catalog.update_sku", skip_all, fields(sku_id = %id), err)]
    pub async fn update_sku(
        &self,
        id: Uuid,
        version: i64,
        product_id: Option<Uuid>,
        input: SkuInput,
        actor: &Principal,
    ) -> Result<SkuView> {
        let mut tx = self.pool.begin().await?;
        let current = store::sku(&mut tx, id, true)
            .await?
            .ok_or_else(|| missing("sku.id", format!("sku {id}")))?;
        if product_id.is_some_and(|p| p != current.product_id) {
            return Err(Error::invalid(
                "sku.product_id",
                "cannot change; create the SKU under the other product",
            ));
        }
        domain::check_version(version, current.version).map_err(|m| stale("sku", id, m))?;
        let next = SkuRow {
            version: current.version,
            created_at: current.created_at,
            ..sku_row(id, current.product_id, &input)
        };
        store::update_sku(&mut tx, &next).await?;
        let product = self.load_product(&mut tx, current.product_id).await?;
        self.product_event(&mut tx, &product, false, &[id], actor)
            .await?;
        let view = store::sku_views(&mut tx, &[id])
            .await?
            .pop()
            .ok_or_else(|| Error::internal("sku vanished inside its transaction"))?;
        if current.list_price != next.list_price || current.currency != next.currency {
            self.outbox
                .add(
                    &mut tx,
                    "catalog.price_changed",
                    &id.to_string(),
                    &actor.id,
                    Payload::PriceChanged(PriceChanged {
                        sku_id: id.to_string(),
                        sku_code: next.sku_code.clone(),
                        channel_id: String::new(),
                        old_price: money(current.list_price, &current.currency),
                        new_price: money(next.list_price, &next.currency),
                        list_price: money(next.list_price, &next.currency),
                        deviation_bps: 0,
                        under_exception: false,
                        effective_at: Some(std::time::SystemTime::now().into()),
                    }),
                )
                .await?;
        }
        tx.commit().await?;
        self.outbox.wake();
        self.invalidate_skus(&[id]).await;
        Ok(view)
    }

    pub(super) async fn invalidate_skus(&self, ids: &[Uuid]) {
        let entries: Vec<_> = ids.iter().map(|id| self.cache.sku_entry(*id)).collect();
        self.cache.invalidate(&entries).await;
    }

    /// Resolves a code or barcode to a SKU id: the cached hint when the cached SKU still
    /// carries that code, else Postgres.
    async fn resolve_sku(&self, key: &SkuKey) -> Result<Option<Uuid>> {
        let (hint_key, column, value) = match key {
            SkuKey::Id(id) => return Ok(Some(*id)),
            SkuKey::Code(code) => (self.cache.code_hint_key(code), SkuKeyColumn::Code, code),
            SkuKey::Barcode(b) => (self.cache.barcode_hint_key(b), SkuKeyColumn::Barcode, b),
        };
        if let Some(id) = self.cache.hint(&hint_key).await
            && let Some(Some(view)) = self.sku_views(&[id]).await?.pop()
        {
            let matches = match column {
                SkuKeyColumn::Code => view.sku.sku_code == *value,
                SkuKeyColumn::Barcode => view.sku.barcode == *value,
            };
            if matches {
                return Ok(Some(id));
            }
        }
        let mut conn = self.pool.acquire().await?;
        let id = store::sku_id_by(&mut conn, column, value).await?;
        if let Some(id) = id {
            self.cache.set_hint(&hint_key, id).await;
        }
        Ok(id)
    }

    /// A SKU (cached) and, when `channel` is given, its listing there (cached).
    pub async fn get_sku(
        &self,
        key: &SkuKey,
        channel: Option<Uuid>,
    ) -> Result<(SkuView, Option<super::ListingOut>)> {
        let not_found = || match key {
            SkuKey::Id(id) => missing("sku_id", format!("sku {id}")),
            SkuKey::Code(c) => missing("sku_code", format!("sku code {c}")),
            SkuKey::Barcode(b) => missing("barcode", format!("barcode {b}")),
        };
        let id = self.resolve_sku(key).await?.ok_or_else(not_found)?;
        let view = self
            .sku_views(&[id])
            .await?
            .pop()
            .flatten()
            .ok_or_else(not_found)?;
        let listing = match channel {
            Some(channel) => {
                if self.channel_cached(channel).await?.is_none() {
                    return Err(missing("channel_id", format!("channel {channel}")));
                }
                self.listings_on(&[id], channel)
                    .await?
                    .pop()
                    .flatten()
                    .map(|row| super::ListingOut::new(row, view.sku.list_price))
            }
            None => None,
        };
        Ok((view, listing))
    }

    /// SKUs in the order asked (cached); unknown ids: NOT_FOUND naming them.
    pub async fn batch_get_skus(
        &self,
        ids: &[Uuid],
        channel: Option<Uuid>,
    ) -> Result<(Vec<SkuView>, Vec<super::ListingOut>)> {
        let views = self.sku_views(ids).await?;
        let unknown: Vec<(String, String)> = ids
            .iter()
            .zip(&views)
            .enumerate()
            .filter(|(_, (_, v))| v.is_none())
            .map(|(i, (id, _))| (format!("sku_ids[{i}]"), format!("sku {id} does not exist")))
            .collect();
        if !unknown.is_empty() {
            let what = unknown
                .iter()
                .map(|(_, d)| d.trim_end_matches(" does not exist"))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(missing_many(what, unknown));
        }
        let views: Vec<SkuView> = views.into_iter().flatten().collect();
        let listings = match channel {
            Some(channel) => {
                if self.channel_cached(channel).await?.is_none() {
                    return Err(missing("channel_id", format!("channel {channel}")));
                }
                self.listings_on(ids, channel)
                    .await?
                    .into_iter()
                    .zip(&views)
                    .filter_map(|(l, v)| l.map(|l| super::ListingOut::new(l, v.sku.list_price)))
                    .collect()
            }
            None => Vec::new(),
        };
        Ok((views, listings))
    }
}

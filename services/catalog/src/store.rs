//! The catalog's Postgres access: row types and small functions over a connection or a
//! transaction. JSON columns are read as text (`::text`) and parsed by the caller.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use crate::domain::PricePolicy;

#[derive(Debug, Clone, FromRow, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChannelRow {
    pub id: Uuid,
    pub kind: i16,
    pub name: String,
    pub store_location_id: String,
    pub currency: String,
    pub active: bool,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, FromRow)]
pub struct CategoryRow {
    pub id: Uuid,
    pub parent_id: Option<Uuid>,
    pub name: String,
    pub path: Vec<Uuid>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, FromRow)]
pub struct ProductRow {
    pub id: Uuid,
    pub name: String,
    pub brand: String,
    pub category_id: Uuid,
    pub description: String,
    pub media_urls: Vec<String>,
    /// A JSON object of strings.
    pub attributes: String,
    pub status: i16,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, FromRow, Serialize, Deserialize, PartialEq, Eq)]
pub struct SkuRow {
    pub id: Uuid,
    pub product_id: Uuid,
    pub sku_code: String,
    pub barcode: String,
    /// A JSON object of strings.
    pub variant_attributes: String,
    pub list_price: i64,
    pub currency: String,
    pub unit_cost: i64,
    pub cost_currency: String,
    pub status: i16,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A SKU with what callers holding only a SKU need from its product; the cached form.
#[derive(Debug, Clone, FromRow, Serialize, Deserialize, PartialEq, Eq)]
pub struct SkuView {
    #[sqlx(flatten)]
    pub sku: SkuRow,
    pub product_name: String,
    pub product_description: String,
    pub category_id: Uuid,
    pub category_path: Vec<Uuid>,
}

#[derive(Debug, Clone, FromRow, Serialize, Deserialize, PartialEq, Eq)]
pub struct ListingRow {
    pub sku_id: Uuid,
    pub channel_id: Uuid,
    pub price: i64,
    pub currency: String,
    pub listed: bool,
    pub title_override: String,
    pub description_override: String,
    pub exception_reason: Option<String>,
    pub exception_approved_by: Option<String>,
    pub exception_expires_at: Option<DateTime<Utc>>,
    pub version: i64,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, FromRow, Serialize, Deserialize, PartialEq, Eq)]
pub struct PromotionRow {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    /// JSON of [`crate::pricing::Rule`].
    pub rule: String,
    pub currency: String,
    pub channel_ids: Vec<Uuid>,
    pub sku_ids: Vec<Uuid>,
    pub category_ids: Vec<Uuid>,
    pub customer_tiers: Vec<String>,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    pub priority: i32,
    pub exclusive: bool,
    pub ended_at: Option<DateTime<Utc>>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, FromRow)]
pub struct CompetitorRow {
    pub id: Uuid,
    pub sku_id: Uuid,
    pub competitor: String,
    pub price: i64,
    pub currency: String,
    pub source: String,
    pub observed_on: NaiveDate,
    pub recorded_at: DateTime<Utc>,
}

#[derive(Debug, Clone, FromRow)]
pub struct PolicyRow {
    pub max_deviation_bps: i32,
    pub flag_text_overrides: bool,
    pub default_target_margin_bps: i32,
    pub updated_at: DateTime<Utc>,
}

impl PolicyRow {
    pub fn policy(&self) -> PricePolicy {
        PricePolicy {
            max_deviation_bps: self.max_deviation_bps,
            flag_text_overrides: self.flag_text_overrides,
            default_target_margin_bps: self.default_target_margin_bps,
        }
    }
}

/// A listing with the SKU and product text the consistency report compares it with.
#[derive(Debug, Clone, FromRow)]
pub struct ListingWithSku {
    #[sqlx(flatten)]
    pub listing: ListingRow,
    pub sku_code: String,
    pub list_price: i64,
    pub sku_currency: String,
    pub product_name: String,
    pub product_description: String,
}

// ----------------------------------------------------------------------------------------------
// Channels

const CHANNEL_COLUMNS: &str =
    "id, kind, name, store_location_id, currency, active, version, created_at, updated_at";

pub async fn insert_channel(conn: &mut PgConnection, c: &ChannelRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO channels (id, kind, name, store_location_id, currency, active) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(c.id)
    .bind(c.kind)
    .bind(&c.name)
    .bind(&c.store_location_id)
    .bind(&c.currency)
    .bind(c.active)
    .execute(conn)
    .await
    .map(|_| ())
}

pub async fn channel(
    conn: &mut PgConnection,
    id: Uuid,
    for_update: bool,
) -> Result<Option<ChannelRow>, sqlx::Error> {
    let lock = if for_update { " FOR UPDATE" } else { "" };
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {CHANNEL_COLUMNS} FROM channels WHERE id = $1{lock}"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await
}

pub async fn update_channel(conn: &mut PgConnection, c: &ChannelRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE channels SET name = $2, store_location_id = $3, currency = $4, active = $5, \
         version = version + 1, updated_at = now() WHERE id = $1",
    )
    .bind(c.id)
    .bind(&c.name)
    .bind(&c.store_location_id)
    .bind(&c.currency)
    .bind(c.active)
    .execute(conn)
    .await
    .map(|_| ())
}

pub async fn list_channels(
    conn: &mut PgConnection,
    kind: Option<i16>,
    include_inactive: bool,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<ChannelRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {CHANNEL_COLUMNS} FROM channels \
         WHERE ($1::smallint IS NULL OR kind = $1) AND ($2 OR active) \
           AND ($3::uuid IS NULL OR id > $3) \
         ORDER BY id LIMIT $4"
    )))
    .bind(kind)
    .bind(include_inactive)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await
}

pub async fn channel_has_listings(conn: &mut PgConnection, id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM listings WHERE channel_id = $1)")
        .bind(id)
        .fetch_one(conn)
        .await
}

pub async fn existing_channels(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM channels WHERE id = ANY($1)")
        .bind(ids)
        .fetch_all(conn)
        .await
}

// ----------------------------------------------------------------------------------------------
// Categories

pub async fn category(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<CategoryRow>, sqlx::Error> {
    sqlx::query_as("SELECT id, parent_id, name, path, created_at FROM categories WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await
}

pub async fn insert_category(
    conn: &mut PgConnection,
    id: Uuid,
    parent_id: Option<Uuid>,
    name: &str,
    path: &[Uuid],
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO categories (id, parent_id, name, path) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(parent_id)
        .bind(name)
        .bind(path)
        .execute(conn)
        .await
        .map(|_| ())
}

/// Children of `parent` (roots when `None`), or every descendant when `recursive`.
pub async fn list_categories(
    conn: &mut PgConnection,
    parent: Option<Uuid>,
    recursive: bool,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<CategoryRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, parent_id, name, path, created_at FROM categories \
         WHERE CASE WHEN $2 THEN ($1::uuid IS NULL OR ($1 = ANY(path) AND id <> $1)) \
                    ELSE parent_id IS NOT DISTINCT FROM $1 END \
           AND ($3::uuid IS NULL OR id > $3) \
         ORDER BY id LIMIT $4",
    )
    .bind(parent)
    .bind(recursive)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Each given category's path, and the category path of each given SKU's product.
pub async fn category_paths(
    conn: &mut PgConnection,
    category_ids: &[Uuid],
    sku_ids: &[Uuid],
) -> Result<Vec<(Uuid, Vec<Uuid>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, path FROM categories WHERE id = ANY($1) \
         UNION ALL \
         SELECT s.id, c.path FROM skus s JOIN products p ON p.id = s.product_id \
           JOIN categories c ON c.id = p.category_id WHERE s.id = ANY($2)",
    )
    .bind(category_ids)
    .bind(sku_ids)
    .fetch_all(conn)
    .await
}

pub async fn existing_categories(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM categories WHERE id = ANY($1)")
        .bind(ids)
        .fetch_all(conn)
        .await
}

// ----------------------------------------------------------------------------------------------
// Products and SKUs

const PRODUCT_COLUMNS: &str = "id, name, brand, category_id, description, media_urls, \
     attributes::text AS attributes, status, version, created_at, updated_at";
const SKU_COLUMNS: &str = "s.id, s.product_id, s.sku_code, s.barcode, \
     s.variant_attributes::text AS variant_attributes, s.list_price, s.currency, s.unit_cost, \
     s.cost_currency, s.status, s.version, s.created_at, s.updated_at";

pub async fn insert_product(conn: &mut PgConnection, p: &ProductRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO products (id, name, brand, category_id, description, media_urls, \
         attributes, status) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8)",
    )
    .bind(p.id)
    .bind(&p.name)
    .bind(&p.brand)
    .bind(p.category_id)
    .bind(&p.description)
    .bind(&p.media_urls)
    .bind(&p.attributes)
    .bind(p.status)
    .execute(conn)
    .await
    .map(|_| ())
}

pub async fn update_product(conn: &mut PgConnection, p: &ProductRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE products SET name = $2, brand = $3, category_id = $4, description = $5, \
         media_urls = $6, attributes = $7::jsonb, status = $8, version = version + 1, \
         updated_at = now() WHERE id = $1",
    )
    .bind(p.id)
    .bind(&p.name)
    .bind(&p.brand)
    .bind(p.category_id)
    .bind(&p.description)
    .bind(&p.media_urls)
    .bind(&p.attributes)
    .bind(p.status)
    .execute(conn)
    .await
    .map(|_| ())
}

pub async fn product(
    conn: &mut PgConnection,
    id: Uuid,
    for_update: bool,
) -> Result<Option<ProductRow>, sqlx::Error> {
    let lock = if for_update { " FOR UPDATE" } else { "" };
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PRODUCT_COLUMNS} FROM products WHERE id = $1{lock}"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await
}

pub async fn skus_of_products(
    conn: &mut PgConnection,
    product_ids: &[Uuid],
) -> Result<Vec<SkuRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {SKU_COLUMNS} FROM skus s WHERE s.product_id = ANY($1) ORDER BY s.sku_code"
    )))
    .bind(product_ids)
    .fetch_all(conn)
    .await
}

pub async fn insert_sku(conn: &mut PgConnection, s: &SkuRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO skus (id, product_id, sku_code, barcode, variant_attributes, list_price, \
         currency, unit_cost, cost_currency, status) \
         VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8, $9, $10)",
    )
    .bind(s.id)
    .bind(s.product_id)
    .bind(&s.sku_code)
    .bind(&s.barcode)
    .bind(&s.variant_attributes)
    .bind(s.list_price)
    .bind(&s.currency)
    .bind(s.unit_cost)
    .bind(&s.cost_currency)
    .bind(s.status)
    .execute(conn)
    .await
    .map(|_| ())
}

pub async fn update_sku(conn: &mut PgConnection, s: &SkuRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE skus SET sku_code = $2, barcode = $3, variant_attributes = $4::jsonb, \
         list_price = $5, currency = $6, unit_cost = $7, cost_currency = $8, status = $9, \
         version = version + 1, updated_at = now() WHERE id = $1",
    )
    .bind(s.id)
    .bind(&s.sku_code)
    .bind(&s.barcode)
    .bind(&s.variant_attributes)
    .bind(s.list_price)
    .bind(&s.currency)
    .bind(s.unit_cost)
    .bind(&s.cost_currency)
    .bind(s.status)
    .execute(conn)
    .await
    .map(|_| ())
}

pub async fn sku(
    conn: &mut PgConnection,
    id: Uuid,
    for_update: bool,
) -> Result<Option<SkuRow>, sqlx::Error> {
    let lock = if for_update { " FOR UPDATE" } else { "" };
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {SKU_COLUMNS} FROM skus s WHERE s.id = $1{lock}"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await
}

pub async fn sku_id_by(
    conn: &mut PgConnection,
    column: SkuKeyColumn,
    value: &str,
) -> Result<Option<Uuid>, sqlx::Error> {
    let sql = match column {
        SkuKeyColumn::Code => "SELECT id FROM skus WHERE sku_code = $1",
        SkuKeyColumn::Barcode => "SELECT id FROM skus WHERE barcode = $1",
    };
    sqlx::query_scalar(sql)
        .bind(value)
        .fetch_optional(conn)
        .await
}

#[derive(Debug, Clone, Copy)]
pub enum SkuKeyColumn {
    Code,
    Barcode,
}

pub async fn sku_views(conn: &mut PgConnection, ids: &[Uuid]) -> Result<Vec<SkuView>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {SKU_COLUMNS}, p.name AS product_name, p.description AS product_description, \
         p.category_id, c.path AS category_path \
         FROM skus s JOIN products p ON p.id = s.product_id \
         JOIN categories c ON c.id = p.category_id WHERE s.id = ANY($1)"
    )))
    .bind(ids)
    .fetch_all(conn)
    .await
}

/// The filters of a product search; `None` means "any".
#[derive(Debug, Clone, Default)]
pub struct ProductSearch {
    pub text: Option<String>,
    pub category_id: Option<Uuid>,
    pub channel_id: Option<Uuid>,
    pub status: Option<i16>,
}

const SEARCH_FILTER: &str = "($1::text IS NULL \
        OR p.name ILIKE $1 OR p.brand ILIKE $1 OR p.description ILIKE $1 \
        OR EXISTS (SELECT 1 FROM skus s WHERE s.product_id = p.id AND s.sku_code ILIKE $1)) \
     AND ($2::uuid IS NULL OR EXISTS (SELECT 1 FROM categories c \
        WHERE c.id = p.category_id AND $2 = ANY(c.path))) \
     AND ($3::uuid IS NULL OR EXISTS (SELECT 1 FROM listings l JOIN skus s ON s.id = l.sku_id \
        WHERE s.product_id = p.id AND l.channel_id = $3 AND l.listed)) \
     AND ($4::smallint IS NULL OR p.status = $4)";

fn like_pattern(text: &str) -> String {
    let escaped = text
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

pub async fn search_products(
    conn: &mut PgConnection,
    search: &ProductSearch,
    after: Option<Uuid>,
    limit: i64,
) -> Result<(Vec<ProductRow>, i64), sqlx::Error> {
    let pattern = search.text.as_deref().map(like_pattern);
    let rows = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PRODUCT_COLUMNS} FROM products p WHERE {SEARCH_FILTER} \
         AND ($5::uuid IS NULL OR p.id > $5) ORDER BY p.id LIMIT $6"
    )))
    .bind(&pattern)
    .bind(search.category_id)
    .bind(search.channel_id)
    .bind(search.status)
    .bind(after)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    let total: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM (SELECT 1 FROM products p WHERE {SEARCH_FILTER} LIMIT 10001) t"
    )))
    .bind(&pattern)
    .bind(search.category_id)
    .bind(search.channel_id)
    .bind(search.status)
    .fetch_one(conn)
    .await?;
    Ok((rows, total))
}

pub async fn existing_skus(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM skus WHERE id = ANY($1)")
        .bind(ids)
        .fetch_all(conn)
        .await
}

// ----------------------------------------------------------------------------------------------
// Listings and pricing

const LISTING_COLUMNS: &str = "l.sku_id, l.channel_id, l.price, l.currency, l.listed, \
     l.title_override, l.description_override, l.exception_reason, l.exception_approved_by, \
     l.exception_expires_at, l.version, l.updated_at";

pub async fn listing(
    conn: &mut PgConnection,
    sku_id: Uuid,
    channel_id: Uuid,
    for_update: bool,
) -> Result<Option<ListingRow>, sqlx::Error> {
    let lock = if for_update { " FOR UPDATE" } else { "" };
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {LISTING_COLUMNS} FROM listings l WHERE l.sku_id = $1 AND l.channel_id = $2{lock}"
    )))
    .bind(sku_id)
    .bind(channel_id)
    .fetch_optional(conn)
    .await
}

pub async fn listings_on_channel(
    conn: &mut PgConnection,
    sku_ids: &[Uuid],
    channel_id: Uuid,
) -> Result<Vec<ListingRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {LISTING_COLUMNS} FROM listings l WHERE l.sku_id = ANY($1) AND l.channel_id = $2"
    )))
    .bind(sku_ids)
    .bind(channel_id)
    .fetch_all(conn)
    .await
}

/// Creates a listing (`create`; `false` when one exists already) or replaces one; the stored
/// version becomes `l.version`.
pub async fn write_listing(
    conn: &mut PgConnection,
    l: &ListingRow,
    create: bool,
) -> Result<bool, sqlx::Error> {
    let sql = if create {
        "INSERT INTO listings (sku_id, channel_id, price, currency, listed, title_override, \
         description_override, exception_reason, exception_approved_by, exception_expires_at, \
         version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
         ON CONFLICT (sku_id, channel_id) DO NOTHING"
    } else {
        "UPDATE listings SET price = $3, currency = $4, listed = $5, title_override = $6, \
         description_override = $7, exception_reason = $8, exception_approved_by = $9, \
         exception_expires_at = $10, version = $11, updated_at = now() \
         WHERE sku_id = $1 AND channel_id = $2"
    };
    let done = sqlx::query(sql)
        .bind(l.sku_id)
        .bind(l.channel_id)
        .bind(l.price)
        .bind(&l.currency)
        .bind(l.listed)
        .bind(&l.title_override)
        .bind(&l.description_override)
        .bind(&l.exception_reason)
        .bind(&l.exception_approved_by)
        .bind(l.exception_expires_at)
        .bind(l.version)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// The list price of each given SKU.
pub async fn list_prices(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<Vec<(Uuid, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT id, list_price FROM skus WHERE id = ANY($1)")
        .bind(ids)
        .fetch_all(conn)
        .await
}

pub async fn list_listings(
    conn: &mut PgConnection,
    sku_id: Option<Uuid>,
    channel_id: Option<Uuid>,
    include_delisted: bool,
    after: Option<(Uuid, Uuid)>,
    limit: i64,
) -> Result<Vec<ListingRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {LISTING_COLUMNS} FROM listings l \
         WHERE ($1::uuid IS NULL OR l.sku_id = $1) AND ($2::uuid IS NULL OR l.channel_id = $2) \
           AND ($3 OR l.listed) \
           AND ($4::uuid IS NULL OR (l.sku_id, l.channel_id) > ($4, $5)) \
         ORDER BY l.sku_id, l.channel_id LIMIT $6"
    )))
    .bind(sku_id)
    .bind(channel_id)
    .bind(include_delisted)
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1))
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Listed listings with their SKU and product text, in (SKU, channel) order.
pub async fn listings_for_report(
    conn: &mut PgConnection,
    channel_id: Option<Uuid>,
    category_id: Option<Uuid>,
    after: Option<(Uuid, Uuid)>,
    limit: i64,
) -> Result<Vec<ListingWithSku>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {LISTING_COLUMNS}, s.sku_code, s.list_price, s.currency AS sku_currency, \
         p.name AS product_name, p.description AS product_description \
         FROM listings l JOIN skus s ON s.id = l.sku_id JOIN products p ON p.id = s.product_id \
         JOIN categories c ON c.id = p.category_id \
         WHERE l.listed AND ($1::uuid IS NULL OR l.channel_id = $1) \
           AND ($2::uuid IS NULL OR $2 = ANY(c.path)) \
           AND ($3::uuid IS NULL OR (l.sku_id, l.channel_id) > ($3, $4)) \
         ORDER BY l.sku_id, l.channel_id LIMIT $5"
    )))
    .bind(channel_id)
    .bind(category_id)
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1))
    .bind(limit)
    .fetch_all(conn)
    .await
}

pub async fn policy(conn: &mut PgConnection, for_update: bool) -> Result<PolicyRow, sqlx::Error> {
    let lock = if for_update { " FOR UPDATE" } else { "" };
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT max_deviation_bps, flag_text_overrides, default_target_margin_bps, updated_at \
         FROM price_policy{lock}"
    )))
    .fetch_one(conn)
    .await
}

pub async fn set_policy(conn: &mut PgConnection, p: &PricePolicy) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE price_policy SET max_deviation_bps = $1, flag_text_overrides = $2, \
         default_target_margin_bps = $3, updated_at = now()",
    )
    .bind(p.max_deviation_bps)
    .bind(p.flag_text_overrides)
    .bind(p.default_target_margin_bps)
    .execute(conn)
    .await
    .map(|_| ())
}

pub async fn insert_competitor_price(
    conn: &mut PgConnection,
    c: &CompetitorRow,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO competitor_prices (id, sku_id, competitor, price, currency, source, \
         observed_on) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(c.id)
    .bind(c.sku_id)
    .bind(&c.competitor)
    .bind(c.price)
    .bind(&c.currency)
    .bind(&c.source)
    .bind(c.observed_on)
    .execute(conn)
    .await
    .map(|_| ())
}

pub async fn competitor_price(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<CompetitorRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, sku_id, competitor, price, currency, source, observed_on, recorded_at \
         FROM competitor_prices WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Newest first; `after` is the (day, id) of the last row of the previous page.
pub async fn competitor_prices(
    conn: &mut PgConnection,
    sku_id: Uuid,
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
    after: Option<(NaiveDate, Uuid)>,
    limit: i64,
) -> Result<Vec<CompetitorRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, sku_id, competitor, price, currency, source, observed_on, recorded_at \
         FROM competitor_prices WHERE sku_id = $1 \
           AND ($2::date IS NULL OR observed_on >= $2) AND ($3::date IS NULL OR observed_on <= $3) \
           AND ($4::date IS NULL OR (observed_on, id) < ($4, $5)) \
         ORDER BY observed_on DESC, id DESC LIMIT $6",
    )
    .bind(sku_id)
    .bind(from)
    .bind(to)
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1))
    .bind(limit)
    .fetch_all(conn)
    .await
}

// ----------------------------------------------------------------------------------------------
// Promotions

const PROMOTION_COLUMNS: &str = "id, name, description, rule::text AS rule, currency, channel_ids, \
     sku_ids, category_ids, customer_tiers, starts_at, ends_at, priority, exclusive, ended_at, \
     version, created_at, updated_at";

pub async fn insert_promotion(
    conn: &mut PgConnection,
    p: &PromotionRow,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO promotions (id, name, description, rule, channel_ids, sku_ids, \
         category_ids, customer_tiers, starts_at, ends_at, priority, exclusive, currency) \
         VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(p.id)
    .bind(&p.name)
    .bind(&p.description)
    .bind(&p.rule)
    .bind(&p.channel_ids)
    .bind(&p.sku_ids)
    .bind(&p.category_ids)
    .bind(&p.customer_tiers)
    .bind(p.starts_at)
    .bind(p.ends_at)
    .bind(p.priority)
    .bind(p.exclusive)
    .bind(&p.currency)
    .execute(conn)
    .await
    .map(|_| ())
}

pub async fn update_promotion(
    conn: &mut PgConnection,
    p: &PromotionRow,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE promotions SET name = $2, description = $3, rule = $4::jsonb, channel_ids = $5, \
         sku_ids = $6, category_ids = $7, customer_tiers = $8, starts_at = $9, ends_at = $10, \
         priority = $11, exclusive = $12, ended_at = $13, currency = $14, version = version + 1, \
         updated_at = now() WHERE id = $1",
    )
    .bind(p.id)
    .bind(&p.name)
    .bind(&p.description)
    .bind(&p.rule)
    .bind(&p.channel_ids)
    .bind(&p.sku_ids)
    .bind(&p.category_ids)
    .bind(&p.customer_tiers)
    .bind(p.starts_at)
    .bind(p.ends_at)
    .bind(p.priority)
    .bind(p.exclusive)
    .bind(p.ended_at)
    .bind(&p.currency)
    .execute(conn)
    .await
    .map(|_| ())
}

pub async fn promotion(
    conn: &mut PgConnection,
    id: Uuid,
    for_update: bool,
) -> Result<Option<PromotionRow>, sqlx::Error> {
    let lock = if for_update { " FOR UPDATE" } else { "" };
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PROMOTION_COLUMNS} FROM promotions WHERE id = $1{lock}"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Promotions not ended by hand whose window has not closed by `now`.
pub async fn live_promotions(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
) -> Result<Vec<PromotionRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PROMOTION_COLUMNS} FROM promotions \
         WHERE ended_at IS NULL AND (ends_at IS NULL OR ends_at > $1) ORDER BY id"
    )))
    .bind(now)
    .fetch_all(conn)
    .await
}

/// Every promotion running at some instant of `[from, to]` (ended ones included), by id.
pub async fn promotions_running_between(
    conn: &mut PgConnection,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<PromotionRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PROMOTION_COLUMNS} FROM promotions \
         WHERE (starts_at IS NULL OR starts_at <= $2) \
           AND (ends_at IS NULL OR ends_at > $1) AND (ended_at IS NULL OR ended_at > $1) \
         ORDER BY id"
    )))
    .bind(from)
    .bind(to)
    .fetch_all(conn)
    .await
}

/// Serialises exclusive-promotion changes, so two overlapping ones cannot both pass the check.
pub async fn lock_exclusive_promotions(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('catalog.exclusive_promotions'))")
        .execute(conn)
        .await
        .map(|_| ())
}

pub async fn list_promotions(
    conn: &mut PgConnection,
    channel_id: Option<Uuid>,
    active_at: Option<DateTime<Utc>>,
    include_ended: bool,
    now: DateTime<Utc>,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<PromotionRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PROMOTION_COLUMNS} FROM promotions \
         WHERE ($1::uuid IS NULL OR cardinality(channel_ids) = 0 OR $1 = ANY(channel_ids)) \
           AND ($2::timestamptz IS NULL OR ((starts_at IS NULL OR starts_at <= $2) \
                AND (ends_at IS NULL OR ends_at > $2) AND (ended_at IS NULL OR ended_at > $2))) \
           AND ($3 OR (ended_at IS NULL AND (ends_at IS NULL OR ends_at > $4))) \
           AND ($5::uuid IS NULL OR id > $5) \
         ORDER BY id LIMIT $6"
    )))
    .bind(channel_id)
    .bind(active_at)
    .bind(include_ended)
    .bind(now)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await
}

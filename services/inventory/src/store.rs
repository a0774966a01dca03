//! inventory's Postgres access: small functions over a connection or a transaction.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use crate::cache::{InboundSnap, LevelSnap, QuotaSnap, Snapshot};
use crate::domain::MovementKind;

/// The one location that holds stock on its way between two others.
pub const IN_TRANSIT: Uuid = Uuid::from_u128(0x0000_0000_0000_7000_8000_0000_0000_0001);

#[derive(Debug, Clone, FromRow)]
pub struct LocationRow {
    pub id: Uuid,
    pub code: String,
    pub name: String,
    pub kind: String,
    pub address_lines: Vec<String>,
    pub city: String,
    pub region: String,
    pub postal_code: String,
    pub country_code: String,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
    pub channel_id: String,
    pub pickup_enabled: bool,
    pub ships_orders: bool,
    pub time_zone: String,
    pub pickup_cutoff_minute: i32,
    pub active: bool,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const LOCATION_COLUMNS: &str = "id, code, name, kind, address_lines, city, region, postal_code, \
     country_code, latitude, longitude, channel_id, pickup_enabled, ships_orders, time_zone, \
     pickup_cutoff_minute, active, version, created_at, updated_at";

pub async fn insert_location(
    conn: &mut PgConnection,
    l: &LocationRow,
) -> Result<LocationRow, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO locations (id, code, name, kind, address_lines, city, region, postal_code, \
         country_code, latitude, longitude, channel_id, pickup_enabled, ships_orders, time_zone, \
         pickup_cutoff_minute, active) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) \
         RETURNING {LOCATION_COLUMNS}"
    )))
    .bind(l.id)
    .bind(&l.code)
    .bind(&l.name)
    .bind(&l.kind)
    .bind(&l.address_lines)
    .bind(&l.city)
    .bind(&l.region)
    .bind(&l.postal_code)
    .bind(&l.country_code)
    .bind(l.latitude)
    .bind(l.longitude)
    .bind(&l.channel_id)
    .bind(l.pickup_enabled)
    .bind(l.ships_orders)
    .bind(&l.time_zone)
    .bind(l.pickup_cutoff_minute)
    .bind(l.active)
    .fetch_one(conn)
    .await
}

/// Updates a location if `expected_version` is current; `None` when it is not (or no row).
pub async fn update_location(
    conn: &mut PgConnection,
    l: &LocationRow,
    expected_version: i64,
) -> Result<Option<LocationRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE locations SET code = $2, name = $3, address_lines = $4, city = $5, region = $6, \
         postal_code = $7, country_code = $8, latitude = $9, longitude = $10, channel_id = $11, \
         pickup_enabled = $12, ships_orders = $13, time_zone = $14, pickup_cutoff_minute = $15, \
         active = $16, version = version + 1, updated_at = now() \
         WHERE id = $1 AND version = $17 RETURNING {LOCATION_COLUMNS}"
    )))
    .bind(l.id)
    .bind(&l.code)
    .bind(&l.name)
    .bind(&l.address_lines)
    .bind(&l.city)
    .bind(&l.region)
    .bind(&l.postal_code)
    .bind(&l.country_code)
    .bind(l.latitude)
    .bind(l.longitude)
    .bind(&l.channel_id)
    .bind(l.pickup_enabled)
    .bind(l.ships_orders)
    .bind(&l.time_zone)
    .bind(l.pickup_cutoff_minute)
    .bind(l.active)
    .bind(expected_version)
    .fetch_optional(conn)
    .await
}

pub async fn location(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<LocationRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {LOCATION_COLUMNS} FROM locations WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await
}

pub async fn all_locations(conn: &mut PgConnection) -> Result<Vec<LocationRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {LOCATION_COLUMNS} FROM locations ORDER BY kind, code"
    )))
    .fetch_all(conn)
    .await
}

#[derive(Debug, Clone, Copy, FromRow)]
pub struct LevelRow {
    pub on_hand: i64,
    pub reserved: i64,
    pub safety_stock: i64,
    pub low_stock_threshold: i64,
}

impl LevelRow {
    pub fn available(&self) -> i64 {
        crate::domain::available(self.on_hand, self.reserved, self.safety_stock)
    }
}

/// Locks (creating it at zero if absent) one SKU's level at one location.
pub async fn lock_level(
    conn: &mut PgConnection,
    sku: &str,
    location: Uuid,
) -> Result<LevelRow, sqlx::Error> {
    sqlx::query(
        "INSERT INTO stock_levels (sku_id, location_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(sku)
    .bind(location)
    .execute(&mut *conn)
    .await?;
    sqlx::query_as(
        "SELECT on_hand, reserved, safety_stock, low_stock_threshold FROM stock_levels \
         WHERE sku_id = $1 AND location_id = $2 FOR UPDATE",
    )
    .bind(sku)
    .bind(location)
    .fetch_one(conn)
    .await
}

/// Changes on hand and reserved of a locked level.
pub async fn change_level(
    conn: &mut PgConnection,
    sku: &str,
    location: Uuid,
    on_hand_delta: i64,
    reserved_delta: i64,
) -> Result<LevelRow, sqlx::Error> {
    sqlx::query_as(
        "UPDATE stock_levels SET on_hand = on_hand + $3, reserved = reserved + $4, \
         version = version + 1, updated_at = now() WHERE sku_id = $1 AND location_id = $2 \
         RETURNING on_hand, reserved, safety_stock, low_stock_threshold",
    )
    .bind(sku)
    .bind(location)
    .bind(on_hand_delta)
    .bind(reserved_delta)
    .fetch_one(conn)
    .await
}

/// Holds `quantity` units if the level has them available; `None` when it does not.
/// Concurrent holds on one row queue on its lock and each re-checks what is left.
pub async fn try_hold(
    conn: &mut PgConnection,
    sku: &str,
    location: Uuid,
    quantity: i64,
) -> Result<Option<LevelRow>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE stock_levels SET reserved = reserved + $3, version = version + 1, updated_at = now() \
         WHERE sku_id = $1 AND location_id = $2 AND on_hand - reserved - safety_stock >= $3 \
         RETURNING on_hand, reserved, safety_stock, low_stock_threshold",
    )
    .bind(sku)
    .bind(location)
    .bind(quantity)
    .fetch_optional(conn)
    .await
}

pub async fn set_settings(
    conn: &mut PgConnection,
    sku: &str,
    location: Uuid,
    safety: i64,
    low: i64,
) -> Result<LevelRow, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO stock_levels (sku_id, location_id, safety_stock, low_stock_threshold) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (sku_id, location_id) DO UPDATE SET \
         safety_stock = excluded.safety_stock, low_stock_threshold = excluded.low_stock_threshold, \
         version = stock_levels.version + 1, updated_at = now() \
         RETURNING on_hand, reserved, safety_stock, low_stock_threshold",
    )
    .bind(sku)
    .bind(location)
    .bind(safety)
    .bind(low)
    .fetch_one(conn)
    .await
}

/// The network's available-to-promise for a SKU: warehouses and stores, active ones.
pub async fn network_available(conn: &mut PgConnection, sku: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT coalesce(sum(greatest(s.on_hand - s.reserved - s.safety_stock, 0)), 0)::bigint \
         FROM stock_levels s JOIN locations l ON l.id = s.location_id \
         WHERE s.sku_id = $1 AND l.kind <> 'in_transit' AND l.active",
    )
    .bind(sku)
    .fetch_one(conn)
    .await
}

/// [`network_available`] of several SKUs in one statement (0 for a SKU with no stock record).
pub async fn network_available_many(
    conn: &mut PgConnection,
    skus: &[String],
) -> Result<std::collections::HashMap<String, i64>, sqlx::Error> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT s.sku_id, coalesce(sum(greatest(s.on_hand - s.reserved - s.safety_stock, 0)), 0)::bigint \
         FROM stock_levels s JOIN locations l ON l.id = s.location_id \
         WHERE s.sku_id = ANY($1) AND l.kind <> 'in_transit' AND l.active \
         GROUP BY s.sku_id",
    )
    .bind(skus)
    .fetch_all(conn)
    .await?;
    let mut out: std::collections::HashMap<String, i64> =
        skus.iter().map(|sku| (sku.clone(), 0)).collect();
    out.extend(rows);
    Ok(out)
}

/// A stock record as a reservation reads it before holding.
#[derive(Debug, Clone, FromRow)]
pub struct ReserveLevel {
    pub sku_id: String,
    pub location_id: Uuid,
    pub available: i64,
    /// Counts toward the network figure (an active location, not in transit).
    pub counts: bool,
    /// The channel has a quota row on the SKU (only then is the quota updated).
    pub quota: bool,
}

/// What a reservation reads before holding, in one statement: every stock record of the SKUs,
/// and whether `channel` has a quota on each.
pub async fn reserve_levels(
    conn: &mut PgConnection,
    skus: &[String],
    channel: &str,
) -> Result<Vec<ReserveLevel>, sqlx::Error> {
    sqlx::query_as(
        "SELECT s.sku_id, s.location_id, \
             greatest(s.on_hand - s.reserved - s.safety_stock, 0) AS available, \
             coalesce(l.kind <> 'in_transit' AND l.active, false) AS counts, \
             EXISTS (SELECT 1 FROM channel_quotas q \
                 WHERE q.sku_id = s.sku_id AND q.channel_id = $2) AS quota \
         FROM stock_levels s LEFT JOIN locations l ON l.id = s.location_id \
         WHERE s.sku_id = ANY($1)",
    )
    .bind(skus)
    .bind(channel)
    .fetch_all(conn)
    .await
}

/// Whether any stock record exists for the SKU (inventory knows a SKU once it was received).
pub async fn sku_known(conn: &mut PgConnection, sku: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM stock_levels WHERE sku_id = $1)")
        .bind(sku)
        .fetch_one(conn)
        .await
}

pub struct NewMovement<'a> {
    pub sku: &'a str,
    pub location: Uuid,
    pub kind: MovementKind,
    pub delta: i64,
    pub reason: &'a str,
    pub reference: &'a str,
    pub actor: &'a str,
}

#[derive(Debug, Clone, FromRow)]
pub struct MovementRow {
    pub id: Uuid,
    pub sku_id: String,
    pub location_id: Uuid,
    pub kind: String,
    pub quantity_delta: i64,
    pub reason: String,
    pub reference: String,
    pub actor_id: String,
    pub occurred_at: DateTime<Utc>,
}

const MOVEMENT_COLUMNS: &str =
    "id, sku_id, location_id, kind, quantity_delta, reason, reference, actor_id, occurred_at";

pub async fn insert_movement(
    conn: &mut PgConnection,
    m: &NewMovement<'_>,
) -> Result<MovementRow, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO movements (id, sku_id, location_id, kind, quantity_delta, reason, reference, actor_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {MOVEMENT_COLUMNS}"
    )))
    .bind(Uuid::now_v7())
    .bind(m.sku)
    .bind(m.location)
    .bind(m.kind.as_str())
    .bind(m.delta)
    .bind(m.reason)
    .bind(m.reference)
    .bind(m.actor)
    .fetch_one(conn)
    .await
}

pub struct MovementFilter {
    pub sku: Option<String>,
    pub location: Option<Uuid>,
    pub kind: Option<MovementKind>,
    pub reference: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Resume after this movement id (ids are time ordered; newest first).
    pub before: Option<Uuid>,
    pub limit: i64,
}

pub async fn movements(
    conn: &mut PgConnection,
    f: &MovementFilter,
) -> Result<Vec<MovementRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {MOVEMENT_COLUMNS} FROM movements WHERE \
         ($1::text IS NULL OR sku_id = $1) AND ($2::uuid IS NULL OR location_id = $2) \
         AND ($3::text IS NULL OR kind = $3) AND ($4::text IS NULL OR reference = $4) \
         AND ($5::timestamptz IS NULL OR occurred_at >= $5) AND ($6::timestamptz IS NULL OR occurred_at < $6) \
         AND ($7::uuid IS NULL OR id < $7) ORDER BY id DESC LIMIT $8"
    )))
    .bind(&f.sku)
    .bind(f.location)
    .bind(f.kind.map(MovementKind::as_str))
    .bind(&f.reference)
    .bind(f.since)
    .bind(f.until)
    .bind(f.before)
    .bind(f.limit)
    .fetch_all(conn)
    .await
}

#[derive(Debug, Clone, FromRow)]
pub struct LevelListRow {
    pub sku_id: String,
    pub location_id: Uuid,
    pub on_hand: i64,
    pub reserved: i64,
    pub safety_stock: i64,
    pub low_stock_threshold: i64,
    pub updated_at: DateTime<Utc>,
}

/// Levels by SKUs and/or location, ordered by (sku, location), after a key.
pub async fn levels(
    conn: &mut PgConnection,
    skus: &[String],
    location: Option<Uuid>,
    low_only: bool,
    after: Option<(String, Uuid)>,
    limit: i64,
) -> Result<Vec<LevelListRow>, sqlx::Error> {
    let (after_sku, after_loc) = after.map_or((None, None), |(s, l)| (Some(s), Some(l)));
    sqlx::query_as(
        "SELECT sku_id, location_id, on_hand, reserved, safety_stock, low_stock_threshold, updated_at \
         FROM stock_levels WHERE (cardinality($1::text[]) = 0 OR sku_id = ANY($1)) \
         AND ($2::uuid IS NULL OR location_id = $2) \
         AND (NOT $3 OR (low_stock_threshold > 0 AND greatest(on_hand - reserved - safety_stock, 0) <= low_stock_threshold)) \
         AND ($4::text IS NULL OR (sku_id, location_id) > ($4, $5)) \
         ORDER BY sku_id, location_id LIMIT $6",
    )
    .bind(skus)
    .bind(location)
    .bind(low_only)
    .bind(after_sku)
    .bind(after_loc)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Everything the cache keeps about a SKU, read in one statement (one consistent view).
pub async fn snapshot(conn: &mut PgConnection, sku: &str) -> Result<Snapshot, sqlx::Error> {
    #[derive(FromRow)]
    struct Row {
        version: i64,
        levels: sqlx::types::Json<Vec<LevelSnap>>,
        quotas: sqlx::types::Json<Vec<QuotaSnap>>,
        inbound: sqlx::types::Json<Vec<InboundSnap>>,
        hot: bool,
    }
    let row: Row = sqlx::query_as(
        "SELECT \
           (coalesce((SELECT sum(version) FROM stock_levels WHERE sku_id = $1), 0) \
            + coalesce((SELECT sum(version) FROM channel_quotas WHERE sku_id = $1), 0) \
            + coalesce((SELECT version FROM hot_skus WHERE sku_id = $1), 0))::bigint AS version, \
           coalesce((SELECT json_agg(json_build_object('l', location_id, 'h', on_hand, 'r', reserved, \
             's', safety_stock, 't', low_stock_threshold) ORDER BY location_id) \
             FROM stock_levels WHERE sku_id = $1), '[]') AS levels, \
           coalesce((SELECT json_agg(json_build_object('c', channel_id, 'q', quota, 'u', used) ORDER BY channel_id) \
             FROM channel_quotas WHERE sku_id = $1 AND quota IS NOT NULL), '[]') AS quotas, \
           coalesce((SELECT json_agg(json_build_object('l', t.to_location_id, 'x', t.id, 'f', t.from_location_id, \
             'q', tl.quantity - tl.received, 'e', coalesce(extract(epoch FROM t.expected_at)::bigint, 0))) \
             FROM transfer_lines tl JOIN transfers t ON t.id = tl.transfer_id \
             WHERE tl.sku_id = $1 AND tl.quantity > tl.received), '[]') AS inbound, \
           coalesce((SELECT hot AND (until IS NULL OR until > now()) FROM hot_skus WHERE sku_id = $1), false) AS hot",
    )
    .bind(sku)
    .fetch_one(conn)
    .await?;
    Ok(Snapshot {
        version: row.version,
        levels: row.levels.0,
        quotas: row.quotas.0,
        inbound: row.inbound.0,
        hot: row.hot,
    })
}

#[derive(Debug, Clone, FromRow)]
pub struct QuotaRow {
    pub sku_id: String,
    pub channel_id: String,
    pub quota: Option<i64>,
    pub used: i64,
    pub updated_at: DateTime<Utc>,
}

/// Takes `quantity` from the channel's quota. `Ok(true)` when there is no quota or it had room.
pub async fn use_quota(
    conn: &mut PgConnection,
    sku: &str,
    channel: &str,
    quantity: i64,
) -> Result<bool, sqlx::Error> {
    if channel.is_empty() {
        return Ok(true);
    }
    let row: Option<(Option<i64>, i64)> = sqlx::query_as(
        "UPDATE channel_quotas SET used = CASE WHEN quota IS NULL THEN used ELSE used + $3 END, \
         version = version + 1, updated_at = now() \
         WHERE sku_id = $1 AND channel_id = $2 RETURNING quota, used",
    )
    .bind(sku)
    .bind(channel)
    .bind(quantity)
    .fetch_optional(conn)
    .await?;
    Ok(match row {
        None | Some((None, _)) => true,
        Some((Some(quota), used)) => used <= quota,
    })
}

/// Gives units back to a channel's quota (a release, never a sale).
pub async fn return_quota(
    conn: &mut PgConnection,
    sku: &str,
    channel: &str,
    quantity: i64,
) -> Result<(), sqlx::Error> {
    if channel.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE channel_quotas SET used = greatest(used - $3, 0), version = version + 1, updated_at = now() \
         WHERE sku_id = $1 AND channel_id = $2",
    )
    .bind(sku)
    .bind(channel)
    .bind(quantity)
    .execute(conn)
    .await
    .map(|_| ())
}

pub async fn set_quota(
    conn: &mut PgConnection,
    sku: &str,
    channel: &str,
    quota: Option<i64>,
    reset_used: bool,
) -> Result<QuotaRow, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO channel_quotas (sku_id, channel_id, quota) VALUES ($1, $2, $3) \
         ON CONFLICT (sku_id, channel_id) DO UPDATE SET quota = excluded.quota, \
         used = CASE WHEN $4 THEN 0 ELSE channel_quotas.used END, \
         version = channel_quotas.version + 1, updated_at = now() \
         RETURNING sku_id, channel_id, quota, used, updated_at",
    )
    .bind(sku)
    .bind(channel)
    .bind(quota)
    .bind(reset_used)
    .fetch_one(conn)
    .await
}

pub async fn quotas(
    conn: &mut PgConnection,
    sku: Option<&str>,
    channels: Option<&[String]>,
    after: Option<(String, String)>,
    limit: i64,
) -> Result<Vec<QuotaRow>, sqlx::Error> {
    let (after_sku, after_channel) = after.map_or((None, None), |(s, c)| (Some(s), Some(c)));
    sqlx::query_as(
        "SELECT sku_id, channel_id, quota, used, updated_at FROM channel_quotas \
         WHERE quota IS NOT NULL AND ($1::text IS NULL OR sku_id = $1) AND ($2::text[] IS NULL OR channel_id = ANY($2)) \
         AND ($3::text IS NULL OR (sku_id, channel_id) > ($3, $4)) ORDER BY sku_id, channel_id LIMIT $5",
    )
    .bind(sku)
    .bind(channels)
    .bind(after_sku)
    .bind(after_channel)
    .bind(limit)
    .fetch_all(conn)
    .await
}

#[derive(Debug, Clone, FromRow)]
pub struct HotRow {
    pub sku_id: String,
    pub source: String,
    pub reason: String,
    pub since: DateTime<Utc>,
    pub until: Option<DateTime<Utc>>,
}

pub async fn set_hot(
    conn: &mut PgConnection,
    sku: &str,
    hot: bool,
    source: &str,
    reason: &str,
    until: Option<DateTime<Utc>>,
) -> Result<HotRow, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO hot_skus (sku_id, hot, source, reason, until) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (sku_id) DO UPDATE SET hot = excluded.hot, source = excluded.source, \
         reason = excluded.reason, until = excluded.until, \
         since = CASE WHEN hot_skus.hot AND excluded.hot THEN hot_skus.since ELSE now() END, \
         version = hot_skus.version + 1 \
         RETURNING sku_id, source, reason, since, until",
    )
    .bind(sku)
    .bind(hot)
    .bind(source)
    .bind(reason)
    .bind(until)
    .fetch_one(conn)
    .await
}

pub async fn hot_skus(
    conn: &mut PgConnection,
    after: Option<String>,
    limit: i64,
) -> Result<Vec<HotRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT sku_id, source, reason, since, until FROM hot_skus \
         WHERE hot AND (until IS NULL OR until > now()) AND ($1::text IS NULL OR sku_id > $1) \
         ORDER BY sku_id LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await
}

pub async fn is_hot(conn: &mut PgConnection, sku: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM hot_skus WHERE sku_id = $1 AND hot AND (until IS NULL OR until > now()))",
    )
    .bind(sku)
    .fetch_one(conn)
    .await
}

#[derive(Debug, Clone, FromRow)]
pub struct ReservationRow {
    pub id: Uuid,
    pub status: String,
    pub channel_id: String,
    pub reference: String,
    /// The principal that reserved; empty for reservations older than the column.
    pub owner_id: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, FromRow)]
pub struct ReservationLineRow {
    pub line_no: i32,
    pub sku_id: String,
    pub location_id: Uuid,
    pub quantity: i64,
    pub fulfilled: i64,
    pub released: i64,
}

impl ReservationLineRow {
    pub fn held(&self) -> i64 {
        self.quantity - self.fulfilled - self.released
    }
}

pub async fn insert_reservation(
    conn: &mut PgConnection,
    r: &ReservationRow,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO reservations (id, status, channel_id, reference, owner_id, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(r.id)
    .bind(&r.status)
    .bind(&r.channel_id)
    .bind(&r.reference)
    .bind(&r.owner_id)
    .bind(r.expires_at)
    .execute(conn)
    .await
    .map(|_| ())
}

pub async fn insert_reservation_lines(
    conn: &mut PgConnection,
    reservation: Uuid,
    lines: &[ReservationLineRow],
) -> Result<(), sqlx::Error> {
    let line_nos: Vec<i32> = lines.iter().map(|l| l.line_no).collect();
    let skus: Vec<&str> = lines.iter().map(|l| l.sku_id.as_str()).collect();
    let locations: Vec<Uuid> = lines.iter().map(|l| l.location_id).collect();
    let quantities: Vec<i64> = lines.iter().map(|l| l.quantity).collect();
    sqlx::query(
        "INSERT INTO reservation_lines (reservation_id, line_no, sku_id, location_id, quantity) \
         SELECT $1, * FROM unnest($2::int[], $3::text[], $4::uuid[], $5::bigint[])",
    )
    .bind(reservation)
    .bind(line_nos)
    .bind(skus)
    .bind(locations)
    .bind(quantities)
    .execute(conn)
    .await
    .map(|_| ())
}

pub async fn reservation(
    conn: &mut PgConnection,
    id: Uuid,
    for_update: bool,
) -> Result<Option<(ReservationRow, Vec<ReservationLineRow>)>, sqlx::Error> {
    let lock = if for_update { " FOR UPDATE" } else { "" };
    let Some(row): Option<ReservationRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT id, status, channel_id, reference, owner_id, expires_at, created_at, updated_at \
         FROM reservations WHERE id = $1{lock}"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    let lines = sqlx::query_as(
        "SELECT line_no, sku_id, location_id, quantity, fulfilled, released FROM reservation_lines \
         WHERE reservation_id = $1 ORDER BY line_no",
    )
    .bind(id)
    .fetch_all(conn)
    .await?;
    Ok(Some((row, lines)))
}

pub async fn progress_line(
    conn: &mut PgConnection,
    reservation: Uuid,
    line_no: i32,
    fulfilled: i64,
    released: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE reservation_lines SET fulfilled = fulfilled + $3, released = released + $4 \
         WHERE reservation_id = $1 AND line_no = $2",
    )
    .bind(reservation)
    .bind(line_no)
    .bind(fulfilled)
    .bind(released)
    .execute(conn)
    .await
    .map(|_| ())
}

pub async fn set_reservation_state(
    conn: &mut PgConnection,
    id: Uuid,
    status: &str,
    expires_at: Option<DateTime<Utc>>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE reservations SET status = $2, expires_at = $3, updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(status)
    .bind(expires_at)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Active reservations whose time ran out, locked for this sweeper only.
pub async fn due_reservations(
    conn: &mut PgConnection,
    limit: i64,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM reservations WHERE status = 'active' AND expires_at <= now() \
         ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(conn)
    .await
}

#[derive(Debug, Clone, FromRow)]
pub struct TransferRow {
    pub id: Uuid,
    pub from_location_id: Uuid,
    pub to_location_id: Uuid,
    pub status: String,
    pub expected_at: Option<DateTime<Utc>>,
    pub reason: String,
    pub automatic: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, FromRow)]
pub struct TransferLineRow {
    pub sku_id: String,
    pub quantity: i64,
    pub received: i64,
}

const TRANSFER_COLUMNS: &str = "id, from_location_id, to_location_id, status, expected_at, reason, automatic, created_at, updated_at";

pub async fn insert_transfer(conn: &mut PgConnection, t: &TransferRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO transfers (id, from_location_id, to_location_id, status, expected_at, reason, automatic) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(t.id)
    .bind(t.from_location_id)
    .bind(t.to_location_id)
    .bind(&t.status)
    .bind(t.expected_at)
    .bind(&t.reason)
    .bind(t.automatic)
    .execute(conn)
    .await
    .map(|_| ())
}

pub async fn insert_transfer_line(
    conn: &mut PgConnection,
    transfer: Uuid,
    sku: &str,
    quantity: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO transfer_lines (transfer_id, sku_id, quantity) VALUES ($1, $2, $3)")
        .bind(transfer)
        .bind(sku)
        .bind(quantity)
        .execute(conn)
        .await
        .map(|_| ())
}

pub async fn transfer(
    conn: &mut PgConnection,
    id: Uuid,
    for_update: bool,
) -> Result<Option<(TransferRow, Vec<TransferLineRow>)>, sqlx::Error> {
    let lock = if for_update { " FOR UPDATE" } else { "" };
    let Some(row): Option<TransferRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {TRANSFER_COLUMNS} FROM transfers WHERE id = $1{lock}"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    let lines = sqlx::query_as(
        "SELECT sku_id, quantity, received FROM transfer_lines WHERE transfer_id = $1 ORDER BY sku_id",
    )
    .bind(id)
    .fetch_all(conn)
    .await?;
    Ok(Some((row, lines)))
}

pub async fn receive_transfer_line(
    conn: &mut PgConnection,
    transfer: Uuid,
    sku: &str,
    quantity: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE transfer_lines SET received = received + $3 WHERE transfer_id = $1 AND sku_id = $2",
    )
    .bind(transfer)
    .bind(sku)
    .bind(quantity)
    .execute(conn)
    .await
    .map(|_| ())
}

pub async fn set_transfer_status(
    conn: &mut PgConnection,
    id: Uuid,
    status: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE transfers SET status = $2, updated_at = now() WHERE id = $1")
        .bind(id)
        .bind(status)
        .execute(conn)
        .await
        .map(|_| ())
}

pub async fn transfers(
    conn: &mut PgConnection,
    location: Option<Uuid>,
    status: Option<&str>,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM transfers WHERE ($1::uuid IS NULL OR from_location_id = $1 OR to_location_id = $1) \
         AND ($2::text IS NULL OR status = $2) AND ($3::uuid IS NULL OR id < $3) ORDER BY id DESC LIMIT $4",
    )
    .bind(location)
    .bind(status)
    .bind(before)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Units sold per (SKU, location) between two times, from the ledger.
pub async fn sales(
    conn: &mut PgConnection,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    skus: &[String],
) -> Result<Vec<(String, Uuid, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT sku_id, location_id, (-sum(quantity_delta))::bigint FROM movements \
         WHERE kind = 'sale' AND occurred_at >= $1 AND occurred_at < $2 \
         AND (cardinality($3::text[]) = 0 OR sku_id = ANY($3)) GROUP BY sku_id, location_id",
    )
    .bind(since)
    .bind(until)
    .bind(skus)
    .fetch_all(conn)
    .await
}

/// Available-to-promise per (SKU, location) for the SKUs given.
pub async fn available_by_location(
    conn: &mut PgConnection,
    skus: &[String],
) -> Result<Vec<(String, Uuid, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT sku_id, location_id, greatest(on_hand - reserved - safety_stock, 0) FROM stock_levels \
         WHERE sku_id = ANY($1) AND location_id <> $2",
    )
    .bind(skus)
    .bind(IN_TRANSIT)
    .fetch_all(conn)
    .await
}

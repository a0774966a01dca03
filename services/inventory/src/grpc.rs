//! inventory's gRPC layer: checks roles and scopes, validates and maps requests into the use
//! cases of [`crate::app`], and maps results back into the contract's messages.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{Datelike as _, NaiveDate};
use omni_proto::omni::inventory::v1 as pb;
use omni_proto::omni::inventory::v1::availability_service_server::AvailabilityService;
use omni_proto::omni::inventory::v1::location_service_server::LocationService;
use omni_proto::omni::inventory::v1::reservation_service_server::ReservationService;
use omni_proto::omni::inventory::v1::stock_service_server::StockService;
use omni_proto::omni::inventory::v1::transfer_service_server::TransferService;
use omni_runtime::auth::{self, Principal, Role};
use omni_runtime::error::Violations;
use omni_runtime::{Error, paging};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::app::stock_input::MovementInput;
use crate::app::transfer_input::TransferInput;
use crate::app::{App, ReserveLineInput, parse_id, parse_sku};
use crate::convert;
use crate::domain;
use crate::store::{LocationRow, MovementFilter};

const ANY: &[Role] = &Role::ALL;
const ADMIN: &[Role] = &[Role::Admin];
const MANAGERS: &[Role] = &[Role::Admin, Role::ChannelManager];
const MOVERS: &[Role] = &[Role::Admin, Role::StoreAssociate, Role::Service];
const READERS: &[Role] = &[
    Role::Admin,
    Role::ChannelManager,
    Role::StoreAssociate,
    Role::Analyst,
    Role::Service,
];
const LIST_READERS: &[Role] = &[
    Role::Admin,
    Role::ChannelManager,
    Role::Analyst,
    Role::Service,
];
const RESERVERS: &[Role] = &[Role::Admin, Role::ChannelApp, Role::Service];
const TRANSFERRERS: &[Role] = &[Role::Admin, Role::ChannelManager, Role::StoreAssociate];
const MAX_LINES: usize = 100;

type Reply<T> = Result<Response<T>, Status>;

#[derive(Debug, Clone)]
pub struct Grpc {
    app: Arc<App>,
}

impl Grpc {
    pub fn new(app: Arc<App>) -> Self {
        Self { app }
    }
}

fn caller<T>(request: &Request<T>, roles: &[Role]) -> Result<Principal, Status> {
    let principal = auth::principal(request)?.clone();
    principal.require_any(roles)?;
    Ok(principal)
}

/// A caller limited to stores (an associate, a store's manager) acts only at those stores,
/// whatever its role; an unlimited one anywhere.
fn require_store_scope(principal: &Principal, location: Uuid) -> Result<(), Error> {
    principal.require_store(&location.to_string())
}

/// The locations a store-wide read or change covers: those `asked`, each in the caller's
/// scope, or, when none is asked, the caller's stores (none: every location).
fn locations_within_scope(principal: &Principal, asked: Vec<Uuid>) -> Result<Vec<Uuid>, Error> {
    for location in &asked {
        require_store_scope(principal, *location)?;
    }
    if !asked.is_empty() {
        return Ok(asked);
    }
    Ok(principal
        .scope
        .stores
        .iter()
        .filter_map(|s| Uuid::parse_str(s).ok())
        .collect())
}

/// A caller limited to stores lists its own stores' records only: it must name a location in
/// its scope.
fn require_read_scope(principal: &Principal, location: Option<Uuid>) -> Result<(), Error> {
    match location {
        Some(l) => require_store_scope(principal, l),
        None if !principal.scope.stores.is_empty() => Err(Error::invalid(
            "location_id",
            "a caller limited to stores lists its own stores' records: name the store",
        )),
        None => Ok(()),
    }
}

fn optional_id(v: &mut Violations, field: &str, raw: &str) -> Option<Uuid> {
    if raw.trim().is_empty() {
        None
    } else {
        v.check(field, parse_id(raw))
    }
}

fn ttl(
    v: &mut Violations,
    field: &str,
    raw: Option<&prost_types::Duration>,
    default: Duration,
) -> Duration {
    match raw {
        None => default,
        Some(d) if d.seconds < 0 || d.nanos < 0 || (d.seconds == 0 && d.nanos == 0) => {
            v.add(field, "must be positive");
            default
        }
        Some(d) if d.seconds > 7 * 24 * 3600 => {
            v.add(field, "must be at most 7 days");
            default
        }
        Some(d) => Duration::new(d.seconds as u64, d.nanos as u32),
    }
}

fn location_row(v: &mut Violations, l: &pb::Location, creating: bool) -> LocationRow {
    let now = chrono::Utc::now();
    let code = l.code.trim().to_owned();
    if code.is_empty() || code.len() > 32 {
        v.add("location.code", "1 to 32 characters");
    }
    let name = l.name.trim().to_owned();
    if name.is_empty() || name.len() > 200 {
        v.add("location.name", "1 to 200 characters");
    }
    let kind = match pb::LocationKind::try_from(l.kind) {
        Ok(pb::LocationKind::Warehouse) => "warehouse",
        Ok(pb::LocationKind::Store) => "store",
        Ok(pb::LocationKind::InTransit) => {
            v.add(
                "location.kind",
                "the in-transit location is managed by the service",
            );
            "in_transit"
        }
        _ => {
            v.add(
                "location.kind",
                "must be LOCATION_KIND_WAREHOUSE or LOCATION_KIND_STORE",
            );
            ""
        }
    };
    let address = l.address.clone().unwrap_or_default();
    let (latitude, longitude) = match &address.location {
        Some(p) => match domain::check_point(p.latitude, p.longitude) {
            Ok(()) => (Some(p.latitude), Some(p.longitude)),
            Err(e) => {
                v.add("location.address.location", e);
                (None, None)
            }
        },
        None => (None, None),
    };
    if kind == "store" && latitude.is_none() && v.is_empty() {
        v.add(
            "location.address.location",
            "a store needs a geo point (nearby search, sourcing)",
        );
    }
    if kind != "store" && l.pickup_enabled {
        v.add("location.pickup_enabled", "only stores hand orders over");
    }
    if !(0..1440).contains(&l.pickup_cutoff_minute) {
        v.add(
            "location.pickup_cutoff_minute",
            "minutes after midnight: 0 to 1439",
        );
    }
    let time_zone = if l.time_zone.trim().is_empty() {
        "UTC".to_owned()
    } else {
        l.time_zone.trim().to_owned()
    };
    if time_zone.parse::<chrono_tz::Tz>().is_err() {
        v.add(
            "location.time_zone",
            "must be an IANA time zone, e.g. Europe/Paris",
        );
    }
    LocationRow {
        id: if creating {
            Uuid::nil()
        } else {
            v.check("location.id", parse_id(&l.id)).unwrap_or_default()
        },
        code,
        name,
        kind: kind.to_owned(),
        address_lines: address.lines,
        city: address.city,
        region: address.region,
        postal_code: address.postal_code,
        country_code: address.country_code,
        latitude,
        longitude,
        channel_id: l.channel_id.trim().to_owned(),
        pickup_enabled: l.pickup_enabled,
        ships_orders: l.ships_orders,
        time_zone,
        pickup_cutoff_minute: l.pickup_cutoff_minute,
        active: if creating { true } else { l.active },
        version: l.version,
        created_at: now,
        updated_at: now,
    }
}

fn sku_lines(v: &mut Violations, lines: &[pb::SkuQuantity]) -> Vec<(String, i64)> {
    if lines.is_empty() {
        v.add("lines", "at least one line is required");
    }
    if lines.len() > MAX_LINES {
        v.add("lines", format!("at most {MAX_LINES} lines"));
    }
    let mut out: Vec<(String, i64)> = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let sku = v.check(&format!("lines[{i}].sku_id"), parse_sku(&l.sku_id));
        if l.quantity <= 0 {
            v.add(format!("lines[{i}].quantity"), "must be greater than zero");
        }
        if let Some(sku) = sku {
            if out.iter().any(|(s, _)| *s == sku) {
                v.add(
                    format!("lines[{i}].sku_id"),
                    "appears twice; give one line per SKU",
                );
            }
            out.push((sku, l.quantity));
        }
    }
    out
}

#[tonic::async_trait]
impl LocationService for Grpc {
    async fn create_location(
        &self,
        request: Request<pb::CreateLocationRequest>,
    ) -> Reply<pb::CreateLocationResponse> {
        let actor = caller(&request, ADMIN)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let row = match &req.location {
            Some(l) => location_row(&mut v, l, true),
            None => {
                v.add("location", "is required");
                location_row(&mut Violations::new(), &pb::Location::default(), true)
            }
        };
        v.finish()?;
        Ok(Response::new(
            self.app.create_location(&req, row, &actor).await?,
        ))
    }

    async fn update_location(
        &self,
        request: Request<pb::UpdateLocationRequest>,
    ) -> Reply<pb::UpdateLocationResponse> {
        caller(&request, ADMIN)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let location = req.location.unwrap_or_default();
        let row = location_row(&mut v, &location, false);
        if location.version <= 0 {
            v.add(
                "location.version",
                "the version read, for optimistic concurrency",
            );
        }
        v.finish()?;
        let updated = self.app.update_location(row, location.version).await?;
        Ok(Response::new(pb::UpdateLocationResponse {
            location: Some(convert::location(&updated)),
        }))
    }

    async fn get_location(
        &self,
        request: Request<pb::GetLocationRequest>,
    ) -> Reply<pb::GetLocationResponse> {
        caller(&request, ANY)?;
        let id = parse_id(&request.get_ref().location_id)
            .map_err(|e| Error::invalid("location_id", e))?;
        let row = self.app.get_location(id).await?;
        Ok(Response::new(pb::GetLocationResponse {
            location: Some(convert::location(&row)),
        }))
    }

    async fn list_locations(
        &self,
        request: Request<pb::ListLocationsRequest>,
    ) -> Reply<pb::ListLocationsResponse> {
        caller(&request, ANY)?;
        let req = request.into_inner();
        let size = paging::page_size(req.page_size)?;
        let after = paging::decode_token(&req.page_token)?;
        let kind = match pb::LocationKind::try_from(req.kind) {
            Ok(pb::LocationKind::Unspecified) => None,
            Ok(k) => Some(k),
            Err(_) => return Err(Error::invalid("kind", "unknown location kind").into()),
        };
        let all = self.app.locations().await?;
        let mut rows: Vec<_> = all
            .values()
            .filter(|l| kind.is_none_or(|k| convert::location_kind(&l.kind) == k))
            .filter(|l| !req.pickup_enabled_only || l.pickup_enabled)
            .filter(|l| req.include_inactive || l.active)
            .filter(|l| after.as_ref().is_none_or(|a| l.code.as_str() > a.as_str()))
            .collect();
        rows.sort_by(|a, b| a.code.cmp(&b.code));
        rows.truncate(usize::try_from(size).unwrap_or(usize::MAX));
        Ok(Response::new(pb::ListLocationsResponse {
            next_page_token: paging::next_token(
                rows.len(),
                size,
                rows.last().map(|l| l.code.clone()),
            ),
            locations: rows.into_iter().map(convert::location).collect(),
        }))
    }
}

#[tonic::async_trait]
impl StockService for Grpc {
    async fn record_movement(
        &self,
        request: Request<pb::RecordMovementRequest>,
    ) -> Reply<pb::RecordMovementResponse> {
        let actor = caller(&request, MOVERS)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let location = v.check("location_id", parse_id(&req.location_id));
        let kind = match convert::movement_kind_from(req.kind) {
            Some(k) if k.is_manual() => Some(k),
            Some(_) => {
                v.add(
                    "kind",
                    "sales and transfers are recorded by reservations and transfers",
                );
                None
            }
            None => {
                v.add("kind", "RECEIPT, RETURN, ADJUSTMENT, COUNT or WRITE_OFF");
                None
            }
        };
        if req.lines.is_empty() {
            v.add("lines", "at least one line is required");
        }
        if req.lines.len() > MAX_LINES {
            v.add("lines", format!("at most {MAX_LINES} lines"));
        }
        let mut lines: Vec<(String, i64)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, l) in req.lines.iter().enumerate().take(MAX_LINES) {
            let sku = v.check(&format!("lines[{i}].sku_id"), parse_sku(&l.sku_id));
            if let Some(kind) = kind {
                v.check(
                    &format!("lines[{i}].quantity"),
                    domain::check_quantity(kind, l.quantity),
                );
            }
            if let Some(sku) = sku {
                if !seen.insert(sku.clone()) {
                    v.add(
                        format!("lines[{i}].sku_id"),
                        "appears twice; give one line per SKU",
                    );
                }
                lines.push((sku, l.quantity));
            }
        }
        v.finish()?;
        let (Some(location), Some(kind)) = (location, kind) else {
            return Err(Error::internal("validated fields missing").into());
        };
        require_store_scope(&actor, location)?;
        let input = MovementInput {
            location,
            kind,
            lines,
            reason: req.reason.trim().to_owned(),
            reference: req.reference.trim().to_owned(),
        };
        Ok(Response::new(
            self.app.record_movement(&req, input, &actor).await?,
        ))
    }

    async fn list_stock_levels(
        &self,
        request: Request<pb::ListStockLevelsRequest>,
    ) -> Reply<pb::ListStockLevelsResponse> {
        let actor = caller(&request, READERS)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let skus: Vec<String> = req
            .sku_ids
            .iter()
            .enumerate()
            .filter_map(|(i, s)| v.check(&format!("sku_ids[{i}]"), parse_sku(s)))
            .collect();
        let location = optional_id(&mut v, "location_id", &req.location_id);
        if req.sku_ids.is_empty() && req.location_id.trim().is_empty() {
            v.add("sku_ids", "give SKUs, a location, or both");
        }
        v.finish()?;
        require_read_scope(&actor, location)?;
        let size = paging::page_size(req.page_size)?;
        let after = match paging::decode_token(&req.page_token)? {
            Some(t) => {
                let (sku, loc) = t.split_once('/').ok_or_else(|| {
                    Error::invalid("page_token", "is not a token this service issued")
                })?;
                Some((
                    sku.to_owned(),
                    parse_id(loc).map_err(|_| {
                        Error::invalid("page_token", "is not a token this service issued")
                    })?,
                ))
            }
            None => None,
        };
        let rows = self
            .app
            .list_levels(&skus, location, req.low_only, after, size)
            .await?;
        let mut distinct: Vec<String> = rows.iter().map(|r| r.sku_id.clone()).collect();
        distinct.dedup();
        let snapshots = self.app.snapshots(&distinct).await?;
        let levels = rows
            .iter()
            .map(|r| {
                let snap = distinct
                    .iter()
                    .position(|s| *s == r.sku_id)
                    .map(|i| &snapshots[i]);
                convert::level(r, snap)
            })
            .collect();
        Ok(Response::new(pb::ListStockLevelsResponse {
            levels,
            next_page_token: paging::next_token(
                rows.len(),
                size,
                rows.last()
                    .map(|r| format!("{}/{}", r.sku_id, r.location_id)),
            ),
        }))
    }

    async fn list_movements(
        &self,
        request: Request<pb::ListMovementsRequest>,
    ) -> Reply<pb::ListMovementsResponse> {
        let actor = caller(&request, READERS)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let sku = if req.sku_id.is_empty() {
            None
        } else {
            v.check("sku_id", parse_sku(&req.sku_id))
        };
        let location = optional_id(&mut v, "location_id", &req.location_id);
        let kind = if req.kind == 0 {
            None
        } else {
            let k = convert::movement_kind_from(req.kind);
            if k.is_none() {
                v.add("kind", "unknown movement kind");
            }
            k
        };
        v.finish()?;
        require_read_scope(&actor, location)?;
        let size = paging::page_size(req.page_size)?;
        let before =
            match paging::decode_token(&req.page_token)? {
                Some(t) => Some(parse_id(&t).map_err(|_| {
                    Error::invalid("page_token", "is not a token this service issued")
                })?),
                None => None,
            };
        let filter = MovementFilter {
            sku,
            location,
            kind,
            reference: (!req.reference.is_empty()).then(|| req.reference.clone()),
            since: req.since.as_ref().and_then(convert::from_timestamp),
            until: req.until.as_ref().and_then(convert::from_timestamp),
            before,
            limit: size,
        };
        let rows = self.app.list_movements(&filter).await?;
        Ok(Response::new(pb::ListMovementsResponse {
            next_page_token: paging::next_token(
                rows.len(),
                size,
                rows.last().map(|m| m.id.to_string()),
            ),
            movements: rows.iter().map(convert::movement).collect(),
        }))
    }

    async fn set_stock_settings(
        &self,
        request: Request<pb::SetStockSettingsRequest>,
    ) -> Reply<pb::SetStockSettingsResponse> {
        let actor = caller(&request, MANAGERS)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let sku = v.check("sku_id", parse_sku(&req.sku_id));
        let location = v.check("location_id", parse_id(&req.location_id));
        if req.safety_stock < 0 {
            v.add("safety_stock", "must not be negative");
        }
        if req.low_stock_threshold < 0 {
            v.add("low_stock_threshold", "must not be negative");
        }
        v.finish()?;
        let (Some(sku), Some(location)) = (sku, location) else {
            return Err(Error::internal("validated fields missing").into());
        };
        require_store_scope(&actor, location)?;
        let row = self
            .app
            .set_settings(
                &sku,
                location,
                req.safety_stock,
                req.low_stock_threshold,
                &actor,
            )
            .await?;
        let snapshot = self.app.snapshots(std::slice::from_ref(&sku)).await?;
        Ok(Response::new(pb::SetStockSettingsResponse {
            level: Some(convert::level(&row, snapshot.first())),
        }))
    }

    async fn set_channel_quota(
        &self,
        request: Request<pb::SetChannelQuotaRequest>,
    ) -> Reply<pb::SetChannelQuotaResponse> {
        let actor = caller(&request, MANAGERS)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let sku = v.check("sku_id", parse_sku(&req.sku_id));
        if req.channel_id.trim().is_empty() {
            v.add("channel_id", "is required");
        }
        if req.limit.is_some_and(|l| l < 0) {
            v.add("limit", "must not be negative");
        }
        v.finish()?;
        // A channel manager sets the quotas of its own channels only.
        actor.require_channel(req.channel_id.trim())?;
        let sku = sku.ok_or_else(|| Error::internal("validated sku missing"))?;
        let row = self
            .app
            .set_quota(&sku, req.channel_id.trim(), req.limit, req.reset_used)
            .await?;
        Ok(Response::new(pb::SetChannelQuotaResponse {
            quota: convert::quota(&row),
        }))
    }

    async fn list_channel_quotas(
        &self,
        request: Request<pb::ListChannelQuotasRequest>,
    ) -> Reply<pb::ListChannelQuotasResponse> {
        let actor = caller(&request, LIST_READERS)?;
        let req = request.into_inner();
        let size = paging::page_size(req.page_size)?;
        let after = match paging::decode_token(&req.page_token)? {
            Some(t) => {
                let (s, c) = t.split_once('/').ok_or_else(|| {
                    Error::invalid("page_token", "is not a token this service issued")
                })?;
                Some((s.to_owned(), c.to_owned()))
            }
            None => None,
        };
        let sku = (!req.sku_id.is_empty()).then_some(req.sku_id.as_str());
        // A quota is its channel's: a caller limited to channels lists its own.
        let asked: Vec<String> = (!req.channel_id.is_empty())
            .then(|| req.channel_id.clone())
            .into_iter()
            .collect();
        let channels = actor.scope.channels_within(&asked)?;
        let channels = (!channels.is_empty()).then_some(channels.as_slice());
        let rows = self.app.list_quotas(sku, channels, after, size).await?;
        Ok(Response::new(pb::ListChannelQuotasResponse {
            next_page_token: paging::next_token(
                rows.len(),
                size,
                rows.last()
                    .map(|q| format!("{}/{}", q.sku_id, q.channel_id)),
            ),
            quotas: rows.iter().filter_map(convert::quota).collect(),
        }))
    }

    async fn set_hot_sku(
        &self,
        request: Request<pb::SetHotSkuRequest>,
    ) -> Reply<pb::SetHotSkuResponse> {
        caller(&request, MANAGERS)?;
        let req = request.into_inner();
        let sku = parse_sku(&req.sku_id).map_err(|e| Error::invalid("sku_id", e))?;
        let until = req.until.as_ref().and_then(convert::from_timestamp);
        if until.is_some_and(|u| u <= chrono::Utc::now()) {
            return Err(Error::invalid("until", "must be in the future").into());
        }
        let row = self
            .app
            .set_hot(&sku, req.hot, "operator", req.reason.trim(), until)
            .await?;
        Ok(Response::new(pb::SetHotSkuResponse {
            hot_sku: req.hot.then(|| convert::hot(&row)),
        }))
    }

    async fn list_hot_skus(
        &self,
        request: Request<pb::ListHotSkusRequest>,
    ) -> Reply<pb::ListHotSkusResponse> {
        caller(&request, LIST_READERS)?;
        let req = request.into_inner();
        let size = paging::page_size(req.page_size)?;
        let after = paging::decode_token(&req.page_token)?;
        let rows = self.app.list_hot(after, size).await?;
        Ok(Response::new(pb::ListHotSkusResponse {
            next_page_token: paging::next_token(
                rows.len(),
                size,
                rows.last().map(|h| h.sku_id.clone()),
            ),
            hot_skus: rows.iter().map(convert::hot).collect(),
        }))
    }

    async fn list_inventory_values(
        &self,
        request: Request<pb::ListInventoryValuesRequest>,
    ) -> Reply<pb::ListInventoryValuesResponse> {
        let actor = caller(&request, &[Role::Admin, Role::Analyst, Role::Service])?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let days = value_days(&mut v, req.days.as_ref());
        let locations: Vec<Uuid> = req
            .location_ids
            .iter()
            .enumerate()
            .filter_map(|(i, id)| v.check(&format!("location_ids[{i}]"), parse_id(id)))
            .collect();
        let size = v.check(
            "page_size",
            paging::page_size(req.page_size).map_err(|_| "must not be negative".to_owned()),
        );
        let after = match paging::decode_token(&req.page_token) {
            Ok(None) => None,
            Ok(Some(key)) => {
                let parsed = key.split_once('/').and_then(|(d, l)| {
                    Some((d.parse::<NaiveDate>().ok()?, Uuid::parse_str(l).ok()?))
                });
                if parsed.is_none() {
                    v.add("page_token", "not a token this call returned");
                }
                parsed
            }
            Err(_) => {
                v.add("page_token", "not a token this call returned");
                None
            }
        };
        v.finish()?;
        let (Some((first, last)), Some(size)) = (days, size) else {
            return Err(Error::invalid("days", "required").into());
        };
        // A caller limited to stores values its stores' stock only (all of them by default).
        let locations = locations_within_scope(&actor, locations)?;
        let rows =
            crate::valuation::values(&self.app.pool, first, last, &locations, after, size).await?;
        Ok(Response::new(pb::ListInventoryValuesResponse {
            next_page_token: paging::next_token(
                rows.len(),
                size,
                rows.last().map(|r| format!("{}/{}", r.day, r.location_id)),
            ),
            values: rows
                .iter()
                .map(|r| pb::InventoryValue {
                    location_id: r.location_id.to_string(),
                    day: Some(omni_proto::common::Date {
                        year: r.day.year(),
                        month: i32::try_from(r.day.month()).unwrap_or_default(),
                        day: i32::try_from(r.day.day()).unwrap_or_default(),
                    }),
                    units: r.units,
                    value: Some(omni_proto::common::Money {
                        minor_units: r.value,
                        currency: r.currency.clone(),
                    }),
                })
                .collect(),
        }))
    }
}

/// Longest range of days one ListInventoryValues call may ask for.
const MAX_VALUE_DAYS: i64 = 366;

/// The days of a ListInventoryValues request: both ends required, in order, at most a year.
fn value_days(
    v: &mut Violations,
    range: Option<&omni_proto::common::DateRange>,
) -> Option<(NaiveDate, NaiveDate)> {
    let date = |field: &str, d: Option<&omni_proto::common::Date>, v: &mut Violations| {
        let parsed = d.and_then(|d| {
            NaiveDate::from_ymd_opt(
                d.year,
                u32::try_from(d.month).ok()?,
                u32::try_from(d.day).ok()?,
            )
        });
        if parsed.is_none() {
            v.add(field, "a valid date is required");
        }
        parsed
    };
    let Some(range) = range else {
        v.add("days", "required");
        return None;
    };
    let start = date("days.start", range.start.as_ref(), v);
    let end = date("days.end", range.end.as_ref(), v);
    let (start, end) = (start?, end?);
    if end < start {
        v.add("days.end", "is before days.start");
        return None;
    }
    if (end - start).num_days() + 1 > MAX_VALUE_DAYS {
        v.add("days", format!("at most {MAX_VALUE_DAYS} days"));
        return None;
    }
    Some((start, end))
}

type WatchStream =
    Pin<Box<dyn Stream<Item = Result<pb::WatchAvailabilityResponse, Status>> + Send>>;

fn availability_args(
    v: &mut Violations,
    sku_ids: &[String],
    location_ids: &[String],
    max: usize,
) -> (Vec<String>, Vec<Uuid>) {
    if sku_ids.is_empty() {
        v.add("sku_ids", "at least one SKU is required");
    }
    if sku_ids.len() > max {
        v.add("sku_ids", format!("at most {max} SKUs"));
    }
    let skus = sku_ids
        .iter()
        .enumerate()
        .filter_map(|(i, s)| v.check(&format!("sku_ids[{i}]"), parse_sku(s)))
        .collect();
    let locations = location_ids
        .iter()
        .enumerate()
        .filter_map(|(i, s)| v.check(&format!("location_ids[{i}]"), parse_id(s)))
        .collect();
    (skus, locations)
}

#[tonic::async_trait]
impl AvailabilityService for Grpc {
    async fn get_availability(
        &self,
        request: Request<pb::GetAvailabilityRequest>,
    ) -> Reply<pb::GetAvailabilityResponse> {
        caller(&request, ANY)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let (skus, locations) = availability_args(&mut v, &req.sku_ids, &req.location_ids, 500);
        v.finish()?;
        let skus = self
            .app
            .availability(
                &skus,
                req.channel_id.trim(),
                req.include_locations,
                &locations,
            )
            .await?;
        Ok(Response::new(pb::GetAvailabilityResponse { skus }))
    }

    async fn find_nearby(
        &self,
        request: Request<pb::FindNearbyRequest>,
    ) -> Reply<pb::FindNearbyResponse> {
        caller(&request, ANY)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let items = sku_lines(&mut v, &req.items);
        let point = req.point.unwrap_or_default();
        if req.point.is_none() {
            v.add("point", "is required");
        } else if let Err(e) = domain::check_point(point.latitude, point.longitude) {
            v.add("point", e);
        }
        if !(req.radius_meters > 0.0 && req.radius_meters <= 500_000.0) {
            v.add("radius_meters", "must be greater than 0 and at most 500 km");
        }
        if req.limit < 0 || req.limit > 100 {
            v.add("limit", "0 (10) to 100");
        }
        v.finish()?;
        let limit = if req.limit == 0 {
            10
        } else {
            req.limit as usize
        };
        let stores = self
            .app
            .find_nearby(
                &items,
                point.latitude,
                point.longitude,
                req.radius_meters,
                limit,
                req.channel_id.trim(),
            )
            .await?;
        Ok(Response::new(pb::FindNearbyResponse { stores }))
    }

    type WatchAvailabilityStream = WatchStream;

    async fn watch_availability(
        &self,
        request: Request<pb::WatchAvailabilityRequest>,
    ) -> Reply<Self::WatchAvailabilityStream> {
        caller(&request, ANY)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let (skus, locations) = availability_args(&mut v, &req.sku_ids, &req.location_ids, 100);
        v.finish()?;
        let app = self.app.clone();
        // Subscribe before reading the initial figures, so no change falls in between.
        let mut changes = app.changes.subscribe();
        let channel = req.channel_id.trim().to_owned();
        let initial = app
            .availability(&skus, &channel, req.include_locations, &locations)
            .await?;
        let include = req.include_locations;
        let stream = async_stream(move |tx| async move {
            for availability in initial {
                if tx
                    .send(Ok(pb::WatchAvailabilityResponse {
                        availability: Some(availability),
                        initial: true,
                    }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            loop {
                let sku = match changes.recv().await {
                    Ok(sku) => sku,
                    // Fell behind: send everything afresh.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => String::new(),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                let wanted: Vec<String> = if sku.is_empty() {
                    skus.clone()
                } else if skus.contains(&sku) {
                    vec![sku]
                } else {
                    continue;
                };
                match app
                    .availability(&wanted, &channel, include, &locations)
                    .await
                {
                    Ok(figures) => {
                        for availability in figures {
                            if tx
                                .send(Ok(pb::WatchAvailabilityResponse {
                                    availability: Some(availability),
                                    initial: false,
                                }))
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(stream))
    }
}

/// A stream fed by a task; the task stops when the client goes away.
fn async_stream<F, Fut>(produce: F) -> WatchStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<pb::WatchAvailabilityResponse, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(produce(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

fn parts(
    v: &mut Violations,
    lines: &[pb::ReservationLinePart],
) -> Vec<crate::app::reservation_input::PartInput> {
    lines
        .iter()
        .enumerate()
        .filter_map(|(i, l)| {
            let sku = v.check(&format!("lines[{i}].sku_id"), parse_sku(&l.sku_id));
            let location = v.check(&format!("lines[{i}].location_id"), parse_id(&l.location_id));
            if l.quantity <= 0 {
                v.add(format!("lines[{i}].quantity"), "must be greater than zero");
            }
            Some(crate::app::reservation_input::PartInput {
                sku: sku?,
                location: location?,
                quantity: l.quantity,
            })
        })
        .collect()
}

/// The reservation and parts a release or fulfilment names.
fn settlement(
    reservation_id: &str,
    idempotency_key: &str,
    lines: &[pb::ReservationLinePart],
) -> Result<(Uuid, Vec<crate::app::reservation_input::PartInput>), Error> {
    let mut v = Violations::new();
    let id = v.check("reservation_id", parse_id(reservation_id));
    let parts = parts(&mut v, lines);
    require_idempotency_key(&mut v, idempotency_key);
    v.finish()?;
    let id = id.ok_or_else(|| Error::internal("validated id missing"))?;
    Ok((id, parts))
}

fn require_idempotency_key(v: &mut Violations, key: &str) {
    if key.trim().is_empty() {
        v.add(
            "idempotency_key",
            "is required: a retry with the same key returns the first result",
        );
    }
}

#[tonic::async_trait]
impl ReservationService for Grpc {
    async fn reserve(&self, request: Request<pb::ReserveRequest>) -> Reply<pb::ReserveResponse> {
        let actor = caller(&request, RESERVERS)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        require_idempotency_key(&mut v, &req.idempotency_key);
        // Every hold is some channel's: its quota applies, and the caller must act for it.
        if req.channel_id.trim().is_empty() {
            v.add(
                "channel_id",
                "is required: the channel holding the stock (its quota applies)",
            );
        } else if req.channel_id.trim() != req.channel_id {
            v.add("channel_id", "must not start or end with spaces");
        }
        if req.lines.is_empty() {
            v.add("lines", "at least one line is required");
        }
        if req.lines.len() > MAX_LINES {
            v.add("lines", format!("at most {MAX_LINES} lines"));
        }
        let mut lines = Vec::new();
        for (i, l) in req.lines.iter().enumerate() {
            let sku = v.check(&format!("lines[{i}].sku_id"), parse_sku(&l.sku_id));
            if l.quantity <= 0 {
                v.add(format!("lines[{i}].quantity"), "must be greater than zero");
            }
            let locations: Vec<Uuid> = l
                .location_ids
                .iter()
                .enumerate()
                .filter_map(|(j, id)| {
                    v.check(&format!("lines[{i}].location_ids[{j}]"), parse_id(id))
                })
                .collect();
            if let Some(sku) = sku {
                lines.push(ReserveLineInput {
                    sku,
                    quantity: l.quantity,
                    locations,
                });
            }
        }
        let ttl = ttl(
            &mut v,
            "ttl",
            req.ttl.as_ref(),
            self.app.settings.default_ttl,
        );
        v.finish()?;
        actor.require_channel(&req.channel_id)?;
        Ok(Response::new(
            self.app.reserve(&req, lines, ttl, &actor).await?,
        ))
    }

    async fn release(&self, request: Request<pb::ReleaseRequest>) -> Reply<pb::ReleaseResponse> {
        let actor = caller(&request, RESERVERS)?;
        let req = request.into_inner();
        let (id, parts) = settlement(&req.reservation_id, &req.idempotency_key, &req.lines)?;
        let (reservation, _) = self
            .app
            .settle(
                "inventory.release",
                &req.idempotency_key,
                &req,
                id,
                &parts,
                false,
                "",
                &actor,
            )
            .await?;
        Ok(Response::new(pb::ReleaseResponse {
            reservation: Some(reservation),
        }))
    }

    async fn fulfil(&self, request: Request<pb::FulfilRequest>) -> Reply<pb::FulfilResponse> {
        let actor = caller(&request, RESERVERS)?;
        let req = request.into_inner();
        let (id, parts) = settlement(&req.reservation_id, &req.idempotency_key, &req.lines)?;
        let (reservation, movements) = self
            .app
            .settle(
                "inventory.fulfil",
                &req.idempotency_key,
                &req,
                id,
                &parts,
                true,
                req.reference.trim(),
                &actor,
            )
            .await?;
        Ok(Response::new(pb::FulfilResponse {
            reservation: Some(reservation),
            movements,
        }))
    }

    async fn extend_reservation(
        &self,
        request: Request<pb::ExtendReservationRequest>,
    ) -> Reply<pb::ExtendReservationResponse> {
        let actor = caller(&request, RESERVERS)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = v.check("reservation_id", parse_id(&req.reservation_id));
        let expiry = match &req.expiry {
            None => {
                v.add("expiry", "give a ttl or no_expiry");
                None
            }
            Some(pb::extend_reservation_request::Expiry::NoExpiry(true)) => None,
            Some(pb::extend_reservation_request::Expiry::NoExpiry(false)) => {
                v.add("no_expiry", "set it to true, or give a ttl");
                None
            }
            Some(pb::extend_reservation_request::Expiry::Ttl(d)) => {
                Some(ttl(&mut v, "ttl", Some(d), Duration::ZERO))
            }
        };
        v.finish()?;
        let id = id.ok_or_else(|| Error::internal("validated id missing"))?;
        let reservation = self.app.extend(id, expiry, &actor).await?;
        Ok(Response::new(pb::ExtendReservationResponse {
            reservation: Some(reservation),
        }))
    }

    async fn get_reservation(
        &self,
        request: Request<pb::GetReservationRequest>,
    ) -> Reply<pb::GetReservationResponse> {
        let actor = caller(&request, RESERVERS)?;
        let id = parse_id(&request.get_ref().reservation_id)
            .map_err(|e| Error::invalid("reservation_id", e))?;
        Ok(Response::new(pb::GetReservationResponse {
            reservation: Some(self.app.get_reservation(id, &actor).await?),
        }))
    }
}

#[tonic::async_trait]
impl TransferService for Grpc {
    async fn create_transfer(
        &self,
        request: Request<pb::CreateTransferRequest>,
    ) -> Reply<pb::CreateTransferResponse> {
        let actor = caller(&request, TRANSFERRERS)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let from = v.check("from_location_id", parse_id(&req.from_location_id));
        let to = v.check("to_location_id", parse_id(&req.to_location_id));
        if from.is_some() && from == to {
            v.add("to_location_id", "must differ from from_location_id");
        }
        let lines = sku_lines(&mut v, &req.lines);
        v.finish()?;
        let (Some(from), Some(to)) = (from, to) else {
            return Err(Error::internal("validated fields missing").into());
        };
        // An associate sends from its own store.
        require_store_scope(&actor, from)?;
        let input = TransferInput {
            from,
            to,
            lines,
            expected_at: req.expected_at.as_ref().and_then(convert::from_timestamp),
            reason: req.reason.trim().to_owned(),
        };
        Ok(Response::new(
            self.app.create_transfer(&req, input, &actor).await?,
        ))
    }

    async fn receive_transfer(
        &self,
        request: Request<pb::ReceiveTransferRequest>,
    ) -> Reply<pb::ReceiveTransferResponse> {
        let actor = caller(&request, TRANSFERRERS)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = v.check("transfer_id", parse_id(&req.transfer_id));
        let lines = sku_lines(&mut v, &req.lines);
        v.finish()?;
        let id = id.ok_or_else(|| Error::internal("validated id missing"))?;
        let transfer = self.app.get_transfer(id).await?;
        let to = parse_id(&transfer.to_location_id).map_err(Error::internal)?;
        // An associate receives at its own store.
        require_store_scope(&actor, to)?;
        Ok(Response::new(
            self.app.receive_transfer(&req, id, &lines, &actor).await?,
        ))
    }

    async fn get_transfer(
        &self,
        request: Request<pb::GetTransferRequest>,
    ) -> Reply<pb::GetTransferResponse> {
        let actor = caller(&request, TRANSFERRERS)?;
        let id = parse_id(&request.get_ref().transfer_id)
            .map_err(|e| Error::invalid("transfer_id", e))?;
        let transfer = self.app.get_transfer(id).await?;
        // A caller limited to stores reads the transfers leaving or reaching one of them.
        if !(actor.scope.allows_store(&transfer.from_location_id)
            || actor.scope.allows_store(&transfer.to_location_id))
        {
            return Err(Error::permission_denied(format!(
                "transfer {id} neither leaves nor reaches a store of the caller's scope"
            ))
            .into());
        }
        Ok(Response::new(pb::GetTransferResponse {
            transfer: Some(transfer),
        }))
    }

    async fn list_transfers(
        &self,
        request: Request<pb::ListTransfersRequest>,
    ) -> Reply<pb::ListTransfersResponse> {
        let actor = caller(&request, TRANSFERRERS)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let location = optional_id(&mut v, "location_id", &req.location_id);
        let status = match pb::TransferStatus::try_from(req.status) {
            Ok(pb::TransferStatus::Unspecified) => None,
            Ok(pb::TransferStatus::InTransit) => Some("in_transit"),
            Ok(pb::TransferStatus::PartiallyReceived) => Some("partially_received"),
            Ok(pb::TransferStatus::Received) => Some("received"),
            Err(_) => {
                v.add("status", "unknown transfer status");
                None
            }
        };
        v.finish()?;
        require_read_scope(&actor, location)?;
        let size = paging::page_size(req.page_size)?;
        let before =
            match paging::decode_token(&req.page_token)? {
                Some(t) => Some(parse_id(&t).map_err(|_| {
                    Error::invalid("page_token", "is not a token this service issued")
                })?),
                None => None,
            };
        let transfers = self
            .app
            .list_transfers(location, status, before, size)
            .await?;
        Ok(Response::new(pb::ListTransfersResponse {
            next_page_token: paging::next_token(
                transfers.len(),
                size,
                transfers.last().map(|t| t.id.clone()),
            ),
            transfers,
        }))
    }

    async fn suggest_rebalance(
        &self,
        request: Request<pb::SuggestRebalanceRequest>,
    ) -> Reply<pb::SuggestRebalanceResponse> {
        let actor = caller(
            &request,
            &[Role::Admin, Role::ChannelManager, Role::Analyst],
        )?;
        let req = request.into_inner();
        if req.auto_create {
            actor.require_any(MANAGERS)?;
        }
        let mut v = Violations::new();
        if req.velocity_days < 0 || req.velocity_days > 365 {
            v.add("velocity_days", "0 (28) to 365");
        }
        if req.surge_threshold_bps < 0 {
            v.add("surge_threshold_bps", "must not be negative");
        }
        for (i, s) in req.sku_ids.iter().enumerate() {
            v.check(&format!("sku_ids[{i}]"), parse_sku(s));
        }
        let locations: Vec<Uuid> = req
            .location_ids
            .iter()
            .enumerate()
            .filter_map(|(i, s)| v.check(&format!("location_ids[{i}]"), parse_id(s)))
            .collect();
        if req.auto_create && req.idempotency_key.trim().is_empty() {
            v.add("idempotency_key", "is required in auto mode");
        }
        v.finish()?;
        let days = if req.velocity_days == 0 {
            28
        } else {
            i64::from(req.velocity_days)
        };
        let surge = if req.surge_threshold_bps == 0 {
            5000
        } else {
            i64::from(req.surge_threshold_bps)
        };
        // A caller limited to stores rebalances between its stores (all of them by default).
        let locations = locations_within_scope(&actor, locations)?;
        Ok(Response::new(
            self.app
                .suggest_rebalance(&req, days, surge, &locations, &actor)
                .await?,
        ))
    }
}

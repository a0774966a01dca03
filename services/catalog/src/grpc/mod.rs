//! catalog's gRPC layer: checks the caller's role, validates and maps requests into the use
//! cases of [`crate::app`], and maps results back into the contract's messages. Every field
//! problem of a request is reported together, as `INVALID_ARGUMENT` with field violations.

mod pricing;
mod products;
mod promotions;

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use omni_proto::common::{self as common_pb, Money};
use omni_proto::omni::catalog::v1 as pb;
use omni_runtime::auth::Role;
use omni_runtime::error::Violations;
use omni_runtime::{Error, paging};
use prost::Message;
use prost_types::Timestamp;
use uuid::Uuid;

use crate::app::{App, Idem, ListingOut};
use crate::domain;
use crate::store::{CategoryRow, ChannelRow, ListingRow, SkuRow, SkuView};

/// Everyone with a role may read.
const ANY_ROLE: &[Role] = &Role::ALL;
const ADMIN: &[Role] = &[Role::Admin];
/// Product, listing, price and promotion changes. Store associates and analysts are not here:
/// they cannot change prices.
const EDITORS: &[Role] = &[Role::Admin, Role::ChannelManager];
/// Merchandising reports and suggestions.
const ANALYSIS: &[Role] = &[Role::Admin, Role::ChannelManager, Role::Analyst];
/// Competitor prices come from merchandisers or from price-feed services.
const COMPETITOR_FEEDS: &[Role] = &[Role::Admin, Role::ChannelManager, Role::Service];
/// Roles that may see unit costs in a quote.
const COST_READERS: &[Role] = &[Role::Admin, Role::Service];

#[derive(Debug, Clone)]
pub struct Grpc {
    app: App,
}

impl Grpc {
    pub fn new(app: App) -> Self {
        Self { app }
    }
}

type GrpcResult<T> = std::result::Result<tonic::Response<T>, tonic::Status>;

fn uuid(raw: &str) -> Result<Uuid, String> {
    if raw.trim().is_empty() {
        return Err("is required".into());
    }
    Uuid::parse_str(raw.trim()).map_err(|_| "must be a UUID".into())
}

/// An optional id: empty means none.
fn opt_uuid(raw: &str) -> Result<Option<Uuid>, String> {
    if raw.trim().is_empty() {
        Ok(None)
    } else {
        uuid(raw).map(Some)
    }
}

fn uuids(v: &mut Violations, field: &str, raw: &[String]) -> Vec<Uuid> {
    let mut out = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        if let Some(id) = v.check(&format!("{field}[{i}]"), uuid(r))
            && !out.contains(&id)
        {
            out.push(id);
        }
    }
    out
}

fn timestamp(t: DateTime<Utc>) -> Option<Timestamp> {
    Some(omni_runtime::time::timestamp(t))
}

fn from_timestamp(t: &Timestamp) -> Result<DateTime<Utc>, String> {
    let nanos = u32::try_from(t.nanos).map_err(|_| "nanos must not be negative".to_owned())?;
    DateTime::from_timestamp(t.seconds, nanos).ok_or_else(|| "is not a valid time".to_owned())
}

fn money(minor_units: i64, currency: &str) -> Option<Money> {
    Some(Money {
        minor_units,
        currency: currency.to_owned(),
    })
}

/// A required, non-negative amount with a currency.
fn money_in(v: &mut Violations, field: &str, m: Option<&Money>) -> Option<(i64, String)> {
    let Some(m) = m else {
        v.add(field, "is required");
        return None;
    };
    let amount = v.check(
        &format!("{field}.minor_units"),
        domain::non_negative(m.minor_units),
    );
    let currency = v.check(
        &format!("{field}.currency"),
        domain::parse_currency(&m.currency),
    );
    Some((amount?, currency?))
}

fn date(d: &common_pb::Date) -> Result<NaiveDate, String> {
    let month = u32::try_from(d.month).map_err(|_| "month must be 1..12".to_owned())?;
    let day = u32::try_from(d.day).map_err(|_| "day must be 1..31".to_owned())?;
    NaiveDate::from_ymd_opt(d.year, month, day).ok_or_else(|| "is not a valid date".to_owned())
}

fn date_pb(d: NaiveDate) -> Option<common_pb::Date> {
    use chrono::Datelike;
    Some(common_pb::Date {
        year: d.year(),
        month: i32::try_from(d.month()).unwrap_or(0),
        day: i32::try_from(d.day()).unwrap_or(0),
    })
}

fn attributes(
    v: &mut Violations,
    field: &str,
    raw: &std::collections::HashMap<String, String>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (k, value) in raw {
        if k.trim().is_empty() {
            v.add(field, "keys must not be empty");
        } else {
            out.insert(k.trim().to_owned(), value.clone());
        }
    }
    out
}

fn json_attributes(raw: &str) -> std::collections::HashMap<String, String> {
    serde_json::from_str(raw).unwrap_or_default()
}

/// The idempotency record of `caller`'s request, when it carries a key.
fn idem<Q: Message>(caller: &str, scope: &'static str, key: &str, request: &Q) -> Option<Idem> {
    (!key.trim().is_empty()).then(|| Idem {
        caller: caller.to_owned(),
        scope,
        key: key.to_owned(),
        request: request.encode_to_vec(),
    })
}

fn page(v: &mut Violations, size: i32) -> i64 {
    match paging::page_size(size) {
        Ok(s) => s,
        Err(_) => {
            v.add("page_size", "must not be negative");
            paging::DEFAULT_PAGE_SIZE
        }
    }
}

/// A page token carrying one id.
fn token_id(v: &mut Violations, token: &str) -> Option<Uuid> {
    match paging::decode_token(token) {
        Ok(None) => None,
        Ok(Some(raw)) => match Uuid::parse_str(&raw) {
            Ok(id) => Some(id),
            Err(_) => {
                v.add("page_token", "is not a token this service issued");
                None
            }
        },
        Err(_) => {
            v.add("page_token", "is not a token this service issued");
            None
        }
    }
}

/// A page token carrying a (SKU, channel) pair.
fn token_pair(v: &mut Violations, token: &str) -> Option<(Uuid, Uuid)> {
    let decoded = paging::decode_token(token).ok().flatten();
    if token.is_empty() {
        return None;
    }
    let pair = decoded.and_then(|raw| {
        let (a, b) = raw.split_once('/')?;
        Some((Uuid::parse_str(a).ok()?, Uuid::parse_str(b).ok()?))
    });
    if pair.is_none() {
        v.add("page_token", "is not a token this service issued");
    }
    pair
}

fn pair_token(pair: Option<(Uuid, Uuid)>) -> String {
    pair.map(|(a, b)| paging::encode_token(&format!("{a}/{b}")))
        .unwrap_or_default()
}

/// The status for an app error: things that do not exist become NOT_FOUND with the fields
/// that named them; everything else maps as the runtime decides.
fn status(err: Error) -> tonic::Status {
    use tonic_types::{ErrorDetails, FieldViolation, StatusExt as _};
    if let Error::Internal(inner) = &err
        && let Some(m) = inner.downcast_ref::<crate::app::Missing>()
    {
        let violations = m
            .fields
            .iter()
            .map(|(field, description)| FieldViolation::new(field.clone(), description.clone()))
            .collect::<Vec<_>>();
        return tonic::Status::with_error_details(
            tonic::Code::NotFound,
            m.to_string(),
            ErrorDetails::with_bad_request(violations),
        );
    }
    err.into()
}

fn finish(v: Violations) -> Result<(), tonic::Status> {
    v.finish().map_err(tonic::Status::from)
}

fn internal(what: &str) -> tonic::Status {
    Error::internal(format!("validated {what} missing")).into()
}

// ----------------------------------------------------------------------------------------------
// Mapping rows into the contract

fn channel_pb(c: ChannelRow) -> pb::Channel {
    pb::Channel {
        id: c.id.to_string(),
        kind: i32::from(c.kind),
        name: c.name,
        store_location_id: c.store_location_id,
        currency: c.currency,
        active: c.active,
        version: c.version,
        created_at: timestamp(c.created_at),
        updated_at: timestamp(c.updated_at),
    }
}

fn category_pb(c: CategoryRow) -> pb::Category {
    pb::Category {
        id: c.id.to_string(),
        parent_id: c.parent_id.map(|p| p.to_string()).unwrap_or_default(),
        name: c.name,
        path: c.path.iter().map(Uuid::to_string).collect(),
        created_at: timestamp(c.created_at),
    }
}

fn sku_pb(s: SkuRow, product_name: String, category_id: String) -> pb::Sku {
    pb::Sku {
        id: s.id.to_string(),
        product_id: s.product_id.to_string(),
        sku_code: s.sku_code,
        barcode: s.barcode,
        variant_attributes: json_attributes(&s.variant_attributes),
        list_price: money(s.list_price, &s.currency),
        unit_cost: money(s.unit_cost, &s.cost_currency),
        status: i32::from(s.status),
        version: s.version,
        created_at: timestamp(s.created_at),
        updated_at: timestamp(s.updated_at),
        product_name,
        category_id,
    }
}

fn sku_view_pb(v: SkuView) -> pb::Sku {
    sku_pb(v.sku, v.product_name, v.category_id.to_string())
}

fn listing_pb(l: ListingOut) -> pb::Listing {
    let ListingOut { row, deviation_bps } = l;
    let ListingRow {
        sku_id,
        channel_id,
        price,
        currency,
        listed,
        title_override,
        description_override,
        exception_reason,
        exception_approved_by,
        exception_expires_at,
        version,
        updated_at,
    } = row;
    pb::Listing {
        sku_id: sku_id.to_string(),
        channel_id: channel_id.to_string(),
        price: money(price, &currency),
        listed,
        title_override,
        description_override,
        price_exception: exception_reason.map(|reason| pb::PriceException {
            reason,
            approved_by: exception_approved_by.unwrap_or_default(),
            expires_at: exception_expires_at.and_then(timestamp),
        }),
        deviation_bps,
        version,
        updated_at: timestamp(updated_at),
    }
}

//! Rows to contract messages (the store never sees prost types; the grpc layer and the
//! idempotent use cases, whose replies are stored, use these).

use chrono::{DateTime, Utc};
use omni_proto::common;
use omni_proto::omni::inventory::v1 as pb;
use prost_types::Timestamp;

use crate::cache::{QuotaSnap, Snapshot};
use crate::domain::MovementKind;
use crate::store::{
    HotRow, LevelListRow, LocationRow, MovementRow, QuotaRow, ReservationLineRow, ReservationRow,
    TransferLineRow, TransferRow,
};

pub fn timestamp(t: DateTime<Utc>) -> Option<Timestamp> {
    Some(omni_runtime::time::timestamp(t))
}

pub fn from_timestamp(t: &Timestamp) -> Option<DateTime<Utc>> {
    omni_runtime::time::from_timestamp(t)
}

pub fn location_kind(kind: &str) -> pb::LocationKind {
    match kind {
        "warehouse" => pb::LocationKind::Warehouse,
        "store" => pb::LocationKind::Store,
        "in_transit" => pb::LocationKind::InTransit,
        _ => pb::LocationKind::Unspecified,
    }
}

pub fn location(l: &LocationRow) -> pb::Location {
    pb::Location {
        id: l.id.to_string(),
        code: l.code.clone(),
        name: l.name.clone(),
        kind: location_kind(&l.kind) as i32,
        address: Some(common::Address {
            recipient_name: String::new(),
            lines: l.address_lines.clone(),
            city: l.city.clone(),
            region: l.region.clone(),
            postal_code: l.postal_code.clone(),
            country_code: l.country_code.clone(),
            location: match (l.latitude, l.longitude) {
                (Some(latitude), Some(longitude)) => Some(common::GeoPoint {
                    latitude,
                    longitude,
                }),
                _ => None,
            },
            phone: String::new(),
        }),
        channel_id: l.channel_id.clone(),
        pickup_enabled: l.pickup_enabled,
        ships_orders: l.ships_orders,
        time_zone: l.time_zone.clone(),
        pickup_cutoff_minute: l.pickup_cutoff_minute,
        active: l.active,
        version: l.version,
        created_at: timestamp(l.created_at),
        updated_at: timestamp(l.updated_at),
    }
}

pub fn movement_kind(kind: MovementKind) -> pb::MovementKind {
    match kind {
        MovementKind::Receipt => pb::MovementKind::Receipt,
        MovementKind::Sale => pb::MovementKind::Sale,
        MovementKind::Return => pb::MovementKind::Return,
        MovementKind::Adjustment => pb::MovementKind::Adjustment,
        MovementKind::Count => pb::MovementKind::Count,
        MovementKind::TransferOut => pb::MovementKind::TransferOut,
        MovementKind::TransferIn => pb::MovementKind::TransferIn,
        MovementKind::WriteOff => pb::MovementKind::WriteOff,
    }
}

pub fn movement_kind_from(raw: i32) -> Option<MovementKind> {
    Some(match pb::MovementKind::try_from(raw).ok()? {
        pb::MovementKind::Unspecified => return None,
        pb::MovementKind::Receipt => MovementKind::Receipt,
        pb::MovementKind::Sale => MovementKind::Sale,
        pb::MovementKind::Return => MovementKind::Return,
        pb::MovementKind::Adjustment => MovementKind::Adjustment,
        pb::MovementKind::Count => MovementKind::Count,
        pb::MovementKind::TransferOut => MovementKind::TransferOut,
        pb::MovementKind::TransferIn => MovementKind::TransferIn,
        pb::MovementKind::WriteOff => MovementKind::WriteOff,
    })
}

pub fn movement(m: &MovementRow) -> pb::Movement {
    pb::Movement {
        id: m.id.to_string(),
        sku_id: m.sku_id.clone(),
        location_id: m.location_id.to_string(),
        kind: MovementKind::parse(&m.kind).map_or(0, |k| movement_kind(k) as i32),
        quantity_delta: m.quantity_delta,
        reason: m.reason.clone(),
        reference: m.reference.clone(),
        actor_id: m.actor_id.clone(),
        occurred_at: timestamp(m.occurred_at),
    }
}

/// A level with its inbound transfers, from a snapshot of its SKU.
pub fn level(row: &LevelListRow, snapshot: Option<&Snapshot>) -> pb::StockLevel {
    let inbound: Vec<pb::InboundStock> = snapshot
        .map(|s| {
            s.inbound
                .iter()
                .filter(|i| i.location == row.location_id)
                .map(|i| pb::InboundStock {
                    transfer_id: i.transfer.to_string(),
                    from_location_id: i.from.to_string(),
                    quantity: i.quantity,
                    expected_at: (i.expected_at > 0).then_some(Timestamp {
                        seconds: i.expected_at,
                        nanos: 0,
                    }),
                })
                .collect()
        })
        .unwrap_or_default();
    pb::StockLevel {
        sku_id: row.sku_id.clone(),
        location_id: row.location_id.to_string(),
        on_hand: row.on_hand,
        reserved: row.reserved,
        safety_stock: row.safety_stock,
        available: crate::domain::available(row.on_hand, row.reserved, row.safety_stock),
        low_stock_threshold: row.low_stock_threshold,
        inbound_quantity: inbound.iter().map(|i| i.quantity).sum(),
        inbound,
        updated_at: timestamp(row.updated_at),
    }
}

pub fn quota(row: &QuotaRow) -> Option<pb::ChannelQuota> {
    let limit = row.quota?;
    Some(pb::ChannelQuota {
        sku_id: row.sku_id.clone(),
        channel_id: row.channel_id.clone(),
        limit,
        used: row.used,
        remaining: (limit - row.used).max(0),
        updated_at: timestamp(row.updated_at),
    })
}

pub fn quota_snap(sku: &str, q: &QuotaSnap) -> pb::ChannelQuota {
    pb::ChannelQuota {
        sku_id: sku.to_owned(),
        channel_id: q.channel.clone(),
        limit: q.quota,
        used: q.used,
        remaining: (q.quota - q.used).max(0),
        updated_at: None,
    }
}

pub fn hot(row: &HotRow) -> pb::HotSku {
    pb::HotSku {
        sku_id: row.sku_id.clone(),
        source: match row.source.as_str() {
            "operator" => pb::HotSource::Operator as i32,
            "detected" => pb::HotSource::Detected as i32,
            _ => 0,
        },
        reason: row.reason.clone(),
        since: timestamp(row.since),
        until: row.until.and_then(timestamp),
    }
}

pub fn reservation(r: &ReservationRow, lines: &[ReservationLineRow]) -> pb::Reservation {
    pb::Reservation {
        id: r.id.to_string(),
        status: match r.status.as_str() {
            "active" => pb::ReservationStatus::Active,
            "fulfilled" => pb::ReservationStatus::Fulfilled,
            "released" => pb::ReservationStatus::Released,
            "expired" => pb::ReservationStatus::Expired,
            _ => pb::ReservationStatus::Unspecified,
        } as i32,
        lines: lines
            .iter()
            .map(|l| pb::ReservationLine {
                sku_id: l.sku_id.clone(),
                location_id: l.location_id.to_string(),
                quantity: l.quantity,
                fulfilled_quantity: l.fulfilled,
                released_quantity: l.released,
            })
            .collect(),
        channel_id: r.channel_id.clone(),
        reference: r.reference.clone(),
        expires_at: r.expires_at.and_then(timestamp),
        created_at: timestamp(r.created_at),
        updated_at: timestamp(r.updated_at),
    }
}

pub fn transfer(t: &TransferRow, lines: &[TransferLineRow]) -> pb::Transfer {
    pb::Transfer {
        id: t.id.to_string(),
        from_location_id: t.from_location_id.to_string(),
        to_location_id: t.to_location_id.to_string(),
        lines: lines
            .iter()
            .map(|l| pb::TransferLine {
                sku_id: l.sku_id.clone(),
                quantity: l.quantity,
                received_quantity: l.received,
            })
            .collect(),
        status: match t.status.as_str() {
            "in_transit" => pb::TransferStatus::InTransit,
            "partially_received" => pb::TransferStatus::PartiallyReceived,
            "received" => pb::TransferStatus::Received,
            _ => pb::TransferStatus::Unspecified,
        } as i32,
        expected_at: t.expected_at.and_then(timestamp),
        reason: t.reason.clone(),
        automatic: t.automatic,
        created_at: timestamp(t.created_at),
        updated_at: timestamp(t.updated_at),
    }
}

//! inventory's rules, free of I/O: available-to-promise, movements, where a reservation line
//! is held, stock signals, distances, and rebalancing.

use std::collections::HashMap;

/// Available-to-promise: what can still be sold.
pub fn available(on_hand: i64, reserved: i64, safety_stock: i64) -> i64 {
    (on_hand - reserved - safety_stock).max(0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MovementKind {
    Receipt,
    Sale,
    Return,
    Adjustment,
    Count,
    TransferOut,
    TransferIn,
    WriteOff,
}

impl MovementKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MovementKind::Receipt => "receipt",
            MovementKind::Sale => "sale",
            MovementKind::Return => "return",
            MovementKind::Adjustment => "adjustment",
            MovementKind::Count => "count",
            MovementKind::TransferOut => "transfer_out",
            MovementKind::TransferIn => "transfer_in",
            MovementKind::WriteOff => "write_off",
        }
    }

    pub fn parse(s: &str) -> Option<MovementKind> {
        use MovementKind::*;
        [
            Receipt,
            Sale,
            Return,
            Adjustment,
            Count,
            TransferOut,
            TransferIn,
            WriteOff,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }

    /// Whether callers may record this kind directly (the others come from reservations and
    /// transfers).
    pub fn is_manual(self) -> bool {
        matches!(
            self,
            MovementKind::Receipt
                | MovementKind::Return
                | MovementKind::Adjustment
                | MovementKind::Count
                | MovementKind::WriteOff
        )
    }
}

/// Checks a manual movement line's quantity for its kind.
/// The largest quantity one movement line may carry, either way.
pub const MAX_MOVEMENT_QUANTITY: i64 = 1_000_000_000;
/// The most units one location may hold of a SKU: on hand stays far from `i64` overflow
/// whatever movements arrive.
pub const MAX_ON_HAND: i64 = 1_000_000_000_000;

pub fn check_quantity(kind: MovementKind, quantity: i64) -> Result<(), String> {
    if quantity
        .checked_abs()
        .is_none_or(|q| q > MAX_MOVEMENT_QUANTITY)
    {
        return Err(format!(
            "must be between -{MAX_MOVEMENT_QUANTITY} and {MAX_MOVEMENT_QUANTITY}"
        ));
    }
    match kind {
        MovementKind::Adjustment if quantity == 0 => Err("an adjustment must change stock".into()),
        MovementKind::Adjustment => Ok(()),
        MovementKind::Count if quantity < 0 => Err("a count cannot be negative".into()),
        MovementKind::Count => Ok(()),
        _ if quantity <= 0 => Err("must be greater than zero".into()),
        _ => Ok(()),
    }
}

/// The change of on hand a manual movement makes, given the current on hand.
pub fn delta(kind: MovementKind, quantity: i64, on_hand: i64) -> i64 {
    match kind {
        MovementKind::Receipt | MovementKind::Return | MovementKind::TransferIn => quantity,
        MovementKind::Adjustment => quantity,
        MovementKind::Count => quantity - on_hand,
        MovementKind::Sale | MovementKind::TransferOut | MovementKind::WriteOff => -quantity,
    }
}

/// One location's figures for a SKU, as a reservation sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holdable {
    pub location: uuid::Uuid,
    pub available: i64,
}

/// Where a line of `quantity` units is held: the first candidate, in preference order, that can
/// hold the whole line.
pub fn choose_location(candidates: &[Holdable], quantity: i64) -> Option<uuid::Uuid> {
    candidates
        .iter()
        .find(|c| c.available >= quantity)
        .map(|c| c.location)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StockSignal {
    OutOfStock,
    Low,
    BackInStock,
}

/// The threshold a change of available-to-promise crossed, if any.
pub fn signal(previous: i64, current: i64, low_threshold: i64) -> Option<StockSignal> {
    if current == previous {
        return None;
    }
    if current == 0 {
        return Some(StockSignal::OutOfStock);
    }
    if previous == 0 {
        return Some(StockSignal::BackInStock);
    }
    if low_threshold > 0 && current <= low_threshold && previous > low_threshold {
        return Some(StockSignal::Low);
    }
    if low_threshold > 0 && previous <= low_threshold && current > low_threshold {
        return Some(StockSignal::BackInStock);
    }
    None
}

/// Great-circle distance in meters (haversine, mean Earth radius).
pub fn distance_meters(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    const EARTH_RADIUS_M: f64 = 6_371_008.8;
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = (lat2 - lat1).to_radians();
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * a.sqrt().asin()
}

/// When an order placed at `now` can be ready for pickup at a store: half an hour later, if
/// that is still the same local day and before the store's cut-off (minutes after local
/// midnight; 0: none). `None`: not today.
pub fn pickup_ready_by(
    now: chrono::DateTime<chrono::Utc>,
    time_zone: chrono_tz::Tz,
    cutoff_minute: i32,
) -> Option<chrono::DateTime<chrono::Utc>> {
    use chrono::Timelike as _;
    let ready = now + chrono::Duration::minutes(30);
    let (local_now, local_ready) = (
        now.with_timezone(&time_zone),
        ready.with_timezone(&time_zone),
    );
    if local_ready.date_naive() != local_now.date_naive() {
        return None;
    }
    let minute = i32::try_from(local_ready.hour() * 60 + local_ready.minute()).unwrap_or(i32::MAX);
    if cutoff_minute > 0 && minute > cutoff_minute {
        return None;
    }
    Some(ready)
}

/// Valid WGS 84 coordinates.
pub fn check_point(lat: f64, lon: f64) -> Result<(), String> {
    if !lat.is_finite() || !(-90.0..=90.0).contains(&lat) {
        return Err("latitude must be between -90 and 90".into());
    }
    if !lon.is_finite() || !(-180.0..=180.0).contains(&lon) {
        return Err("longitude must be between -180 and 180".into());
    }
    Ok(())
}

/// One SKU at one location, for rebalancing.
#[derive(Debug, Clone, PartialEq)]
pub struct Position {
    pub location: uuid::Uuid,
    pub available: i64,
    /// Units sold over the velocity window.
    pub sold: i64,
}

/// A suggested move of one SKU.
#[derive(Debug, Clone, PartialEq)]
pub struct Move {
    pub from: uuid::Uuid,
    pub to: uuid::Uuid,
    pub quantity: i64,
    pub from_cover_days: f64,
    pub to_cover_days: f64,
}

fn cover_days(available: i64, daily: f64) -> f64 {
    if daily <= 0.0 {
        f64::INFINITY
    } else {
        available as f64 / daily
    }
}

/// Moves that even out days of cover (available ÷ daily sales) for one SKU: stock goes from
/// locations with more than the network's cover to those with less, where it sells; moves
/// under `min_move` units are dropped.
pub fn rebalance(positions: &[Position], window_days: i64, min_move: i64) -> Vec<Move> {
    let days = window_days.max(1) as f64;
    let total_available: i64 = positions.iter().map(|p| p.available).sum();
    let total_daily: f64 = positions.iter().map(|p| p.sold as f64 / days).sum();
    if total_daily <= 0.0 || total_available <= 0 {
        return Vec::new();
    }
    let target = total_available as f64 / total_daily;
    // What each location should hold to have the network's cover.
    let mut surplus: Vec<(uuid::Uuid, i64, f64)> = Vec::new();
    let mut deficit: Vec<(uuid::Uuid, i64, f64)> = Vec::new();
    for p in positions {
        let daily = p.sold as f64 / days;
        let ideal = (daily * target).floor() as i64;
        let diff = p.available - ideal;
        if diff >= min_move {
            surplus.push((p.location, diff, daily));
        } else if -diff >= min_move && daily > 0.0 {
            deficit.push((p.location, -diff, daily));
        }
    }
    // Biggest needs first, served from the biggest surpluses; ties by id for determinism.
    surplus.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    deficit.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut available: HashMap<uuid::Uuid, i64> = positions
        .iter()
        .map(|p| (p.location, p.available))
        .collect();
    let mut moves = Vec::new();
    let mut s = 0;
    for (to, mut need, to_daily) in deficit {
        while need >= min_move && s < surplus.len() {
            let (from, spare, from_daily) = surplus[s];
            let quantity = need.min(spare);
            if quantity < min_move {
                s += 1;
                continue;
            }
            let from_after = available[&from] - quantity;
            let to_after = available[&to] + quantity;
            available.insert(from, from_after);
            available.insert(to, to_after);
            moves.push(Move {
                from,
                to,
                quantity,
                from_cover_days: cover_days(from_after, from_daily),
                to_cover_days: cover_days(to_after, to_daily),
            });
            need -= quantity;
            surplus[s].1 -= quantity;
            if surplus[s].1 < min_move {
                s += 1;
            }
        }
    }
    moves
}

/// Growth of the last 7 days over the 7 before, in basis points; `None` when there is no
/// base to compare with.
pub fn growth_bps(last: i64, previous: i64) -> Option<i64> {
    if previous <= 0 {
        return None;
    }
    Some((last - previous) * 10_000 / previous)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use uuid::Uuid;

    use super::*;

    #[test]
    fn atp_never_goes_below_zero() {
        assert_eq!(available(10, 3, 2), 5);
        assert_eq!(available(10, 9, 2), 0);
    }

    #[test]
    fn counts_record_the_difference() {
        assert_eq!(delta(MovementKind::Count, 7, 10), -3);
        assert_eq!(delta(MovementKind::WriteOff, 2, 10), -2);
        assert!(check_quantity(MovementKind::Receipt, 0).is_err());
        assert!(check_quantity(MovementKind::Adjustment, -4).is_ok());
        assert!(check_quantity(MovementKind::Count, 0).is_ok());
    }

    #[test]
    fn the_first_location_that_holds_the_whole_line_wins() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let c = [
            Holdable {
                location: a,
                available: 2,
            },
            Holdable {
                location: b,
                available: 5,
            },
        ];
        assert_eq!(choose_location(&c, 3), Some(b));
        assert_eq!(choose_location(&c, 2), Some(a));
        assert_eq!(choose_location(&c, 6), None);
    }

    #[test]
    fn signals_fire_on_crossings_only() {
        assert_eq!(signal(5, 0, 0), Some(StockSignal::OutOfStock));
        assert_eq!(signal(0, 3, 0), Some(StockSignal::BackInStock));
        assert_eq!(signal(10, 4, 5), Some(StockSignal::Low));
        assert_eq!(signal(4, 3, 5), None);
        assert_eq!(signal(4, 8, 5), Some(StockSignal::BackInStock));
        assert_eq!(signal(8, 7, 5), None);
    }

    #[test]
    fn distances_match_known_values() {
        // Paris (Notre-Dame) to Lyon (Bellecour): about 392 km.
        let d = distance_meters(48.853, 2.3499, 45.7578, 4.8320);
        assert!((d - 392_000.0).abs() < 3_000.0, "{d}");
        assert_eq!(distance_meters(1.0, 1.0, 1.0, 1.0), 0.0);
    }

    #[test]
    fn rebalancing_moves_stock_to_where_it_sells() {
        let (wh, store) = (Uuid::now_v7(), Uuid::now_v7());
        let positions = [
            Position {
                location: wh,
                available: 100,
                sold: 2,
            },
            Position {
                location: store,
                available: 2,
                sold: 40,
            },
        ];
        let moves = rebalance(&positions, 28, 1);
        assert_eq!(moves.len(), 1);
        assert_eq!((moves[0].from, moves[0].to), (wh, store));
        assert!(
            moves[0].quantity > 80 && moves[0].quantity <= 98,
            "{moves:?}"
        );
        assert!(moves[0].to_cover_days > moves[0].from_cover_days * 0.5);
    }

    #[test]
    fn pickups_are_ready_today_only_before_the_cutoff() {
        use chrono::TimeZone as _;
        let paris: chrono_tz::Tz = "Europe/Paris".parse().unwrap();
        // 15:00 UTC is 16:00 in Paris in November: ready at 16:30, before an 18:00 cut-off.
        let afternoon = chrono::Utc
            .with_ymd_and_hms(2026, 11, 23, 15, 0, 0)
            .unwrap();
        assert_eq!(
            pickup_ready_by(afternoon, paris, 18 * 60),
            Some(afternoon + chrono::Duration::minutes(30))
        );
        // 17:00 UTC is 18:00 in Paris: 18:30 is past the cut-off.
        let evening = chrono::Utc
            .with_ymd_and_hms(2026, 11, 23, 17, 0, 0)
            .unwrap();
        assert_eq!(pickup_ready_by(evening, paris, 18 * 60), None);
        // No cut-off, but 23:45 local + 30 minutes is tomorrow.
        let late = chrono::Utc
            .with_ymd_and_hms(2026, 11, 23, 22, 45, 0)
            .unwrap();
        assert_eq!(pickup_ready_by(late, paris, 0), None);
        assert!(pickup_ready_by(late, chrono_tz::UTC, 0).is_some());
    }

    #[test]
    fn growth_is_in_basis_points() {
        assert_eq!(growth_bps(15, 10), Some(5000));
        assert_eq!(growth_bps(5, 0), None);
    }

    proptest! {
        #[test]
        fn rebalancing_never_moves_more_than_a_location_has(
            stock in proptest::collection::vec((0i64..500, 0i64..200), 1..8)
        ) {
            let positions: Vec<Position> = stock
                .iter()
                .map(|(available, sold)| Position { location: Uuid::now_v7(), available: *available, sold: *sold })
                .collect();
            let moves = rebalance(&positions, 28, 1);
            let mut out: HashMap<Uuid, i64> = HashMap::new();
            let mut total_in = 0;
            for m in &moves {
                prop_assert!(m.quantity > 0);
                prop_assert_ne!(m.from, m.to);
                *out.entry(m.from).or_default() += m.quantity;
                total_in += m.quantity;
            }
            let total_out: i64 = out.values().sum();
            prop_assert_eq!(total_in, total_out);
            for p in &positions {
                prop_assert!(out.get(&p.location).copied().unwrap_or(0) <= p.available);
            }
        }
    }
}

//! Loyalty tiers by rolling net spend: the tier follows the orders as they arrive, because it is
//! computed from them on every read.

use chrono::{DateTime, Duration, Utc};

use crate::store::OrderRow;

/// Days of spend a tier looks back on.
pub const WINDOW_DAYS: i64 = 365;

/// (code, name, minimum rolling net spend in minor units, earn multiplier in basis points),
/// lowest first. Every tier earns at the base rate until rules become configurable.
pub const TIERS: &[(&str, &str, i64, i32)] = &[
    ("member", "Member", 0, 10_000),
    ("silver", "Silver", 50_000, 10_000),
    ("gold", "Gold", 200_000, 10_000),
];

/// Net spend of non-cancelled orders placed within the window before `now`.
pub fn rolling_spend(orders: &[OrderRow], now: DateTime<Utc>, cancelled: i32) -> i64 {
    let since = now - Duration::days(WINDOW_DAYS);
    orders
        .iter()
        .filter(|o| o.status != cancelled && o.placed_at >= since)
        .map(|o| o.total_minor - o.refunded_minor)
        .sum()
}

/// The tier a rolling spend reaches, and the next one with the spend still missing.
pub fn tier_for(spend: i64) -> (&'static str, Option<(&'static str, i64)>) {
    let mut current = TIERS[0].0;
    let mut next = None;
    for (code, _, min, _) in TIERS {
        if spend >= *min {
            current = code;
        } else {
            next = Some((*code, min - spend));
            break;
        }
    }
    (current, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_follow_spend_thresholds() {
        assert_eq!(tier_for(0), ("member", Some(("silver", 50_000))));
        assert_eq!(tier_for(49_999), ("member", Some(("silver", 1))));
        assert_eq!(tier_for(50_000), ("silver", Some(("gold", 150_000))));
        assert_eq!(tier_for(250_000), ("gold", None));
    }
}

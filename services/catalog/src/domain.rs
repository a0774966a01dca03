//! The catalog's rules, without I/O: barcodes and their check digits, the price policy and the
//! consistency it reports, optimistic versions, promotion windows and the exclusivity overlap
//! rule, and price suggestions. The pricing engine behind `Quote` lives in [`crate::pricing`].

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Basis points in a whole.
pub const BPS: i64 = 10_000;

/// An EAN-13 or UPC-A barcode, normalised to 13 digits (UPC-A gets a leading zero, which is
/// how GS1 maps it into EAN-13; the check digit is unchanged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Barcode(String);

impl Barcode {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let digits = raw.trim();
        if digits.is_empty() {
            return Err("is required".into());
        }
        if !digits.chars().all(|c| c.is_ascii_digit()) {
            return Err("must contain digits only".into());
        }
        let normalised = match digits.len() {
            13 => digits.to_owned(),
            12 => format!("0{digits}"),
            n => return Err(format!("must be 13 (EAN-13) or 12 (UPC-A) digits, not {n}")),
        };
        let bytes = normalised.as_bytes();
        let expected = gtin_check_digit(&bytes[..12]);
        let given = bytes[12] - b'0';
        if expected != given {
            return Err(format!(
                "check digit {given} is wrong; {expected} was expected"
            ));
        }
        Ok(Self(normalised))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The GS1 check digit of the digits before it: weights 1 and 3 alternating from the left for
/// a 12-digit body (EAN-13 layout).
fn gtin_check_digit(body: &[u8]) -> u8 {
    let sum: u32 = body
        .iter()
        .enumerate()
        .map(|(i, d)| u32::from(d - b'0') * if i % 2 == 0 { 1 } else { 3 })
        .sum();
    u8::try_from((10 - sum % 10) % 10).unwrap_or(0)
}

/// An ISO 4217 code: three upper-case letters.
pub fn parse_currency(raw: &str) -> Result<String, String> {
    let code = raw.trim();
    if code.is_empty() {
        return Err("is required".into());
    }
    if code.len() != 3 || !code.chars().all(|c| c.is_ascii_uppercase()) {
        return Err("must be an ISO 4217 code, three upper-case letters".into());
    }
    Ok(code.to_owned())
}

/// A SKU code: what people type and scan, so short and free of spaces.
pub fn parse_sku_code(raw: &str) -> Result<String, String> {
    let code = raw.trim();
    if code.is_empty() {
        return Err("is required".into());
    }
    if code.len() > 64 {
        return Err("must be at most 64 characters".into());
    }
    if !code
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
    {
        return Err("may contain letters, digits and - _ . / only".into());
    }
    Ok(code.to_owned())
}

/// A required, trimmed name of at most `max` characters.
pub fn parse_name(raw: &str, max: usize) -> Result<String, String> {
    let name = raw.trim();
    if name.is_empty() {
        return Err("is required".into());
    }
    if name.chars().count() > max {
        return Err(format!("must be at most {max} characters"));
    }
    Ok(name.to_owned())
}

/// An amount of money that may not be negative.
pub fn non_negative(minor_units: i64) -> Result<i64, String> {
    if minor_units < 0 {
        Err("must not be negative".into())
    } else {
        Ok(minor_units)
    }
}

/// `Ok` when the caller's version is the stored one; the error describes the conflict.
pub fn check_version(given: i64, current: i64) -> Result<(), String> {
    if given == current {
        Ok(())
    } else {
        Err(format!(
            "version {given} is stale; the current version is {current}: reload and retry"
        ))
    }
}

/// The retailer's price policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PricePolicy {
    pub max_deviation_bps: i32,
    pub flag_text_overrides: bool,
    pub default_target_margin_bps: i32,
}

/// How far `price` is from `list_price`, in basis points of the list price, rounded half away
/// from zero. A free list price makes any other price infinitely far: it saturates.
pub fn deviation_bps(price: i64, list_price: i64) -> i32 {
    if list_price == 0 {
        return match price {
            0 => 0,
            p if p > 0 => i32::MAX,
            _ => i32::MIN,
        };
    }
    let diff = i128::from(price) - i128::from(list_price);
    let scaled = diff * i128::from(BPS);
    let list = i128::from(list_price);
    let rounded = if scaled >= 0 {
        (scaled + list / 2) / list
    } else {
        (scaled - list / 2) / list
    };
    i32::try_from(rounded).unwrap_or(if rounded > 0 { i32::MAX } else { i32::MIN })
}

/// A listing's recorded exception, as far as the policy cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exception {
    pub reason: String,
    pub expires_at: Option<DateTime<Utc>>,
}

impl Exception {
    pub fn valid_at(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_none_or(|e| e > now)
    }
}

/// Where a listing's price stands against the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PriceStanding {
    WithinPolicy,
    /// Outside policy, allowed by a valid exception.
    Excepted,
    /// Outside policy, its exception expired.
    ExceptionExpired,
    /// Outside policy with no exception.
    OutsidePolicy,
}

pub fn price_standing(
    policy: &PricePolicy,
    deviation: i32,
    exception: Option<&Exception>,
    now: DateTime<Utc>,
) -> PriceStanding {
    if deviation.unsigned_abs() <= policy.max_deviation_bps.unsigned_abs() {
        return PriceStanding::WithinPolicy;
    }
    match exception {
        None => PriceStanding::OutsidePolicy,
        Some(e) if e.valid_at(now) => PriceStanding::Excepted,
        Some(_) => PriceStanding::ExceptionExpired,
    }
}

/// A money amount for people: `2490` → `24.90` (two decimals; the code follows).
pub fn format_minor(minor: i64) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

/// The sentence a merchandiser reads for a price outside policy.
pub fn describe_deviation(price: i64, list_price: i64, deviation: i32, allowed: i32) -> String {
    let direction = if deviation < 0 { "below" } else { "above" };
    let percent = f64::from(deviation.unsigned_abs().min(1_000_000)) / 100.0;
    format!(
        "price {} is {percent}% {direction} list {} (max {}%)",
        format_minor(price),
        format_minor(list_price),
        f64::from(allowed) / 100.0
    )
}

/// The margin a price leaves over a cost, in basis points of the price.
pub fn margin_bps(price: i64, unit_cost: i64) -> i32 {
    if price <= 0 {
        return 0;
    }
    let margin = (i128::from(price) - i128::from(unit_cost)) * i128::from(BPS) / i128::from(price);
    i32::try_from(margin).unwrap_or(if margin > 0 { i32::MAX } else { i32::MIN })
}

/// The price that leaves `target_margin_bps` of itself over `unit_cost`:
/// `unit_cost / (1 - margin)`, rounded half up to the minor unit.
pub fn cost_plus_price(unit_cost: i64, target_margin_bps: i32) -> Result<i64, String> {
    if !(0..10_000).contains(&target_margin_bps) {
        return Err("must be between 0 and 9999 basis points".into());
    }
    let denominator = i128::from(BPS - i64::from(target_margin_bps));
    let numerator = i128::from(unit_cost) * i128::from(BPS);
    let price = (numerator + denominator / 2) / denominator;
    i64::try_from(price).map_err(|_| "the price does not fit".to_owned())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompetitorBasis {
    Lowest,
    Median,
}

/// The competitor figure to match: the lowest, or the median (the lower middle of an even
/// count, so the suggestion is a price somebody actually charges). `None` without prices.
pub fn competitor_price(prices: &[i64], basis: CompetitorBasis) -> Option<i64> {
    let mut sorted = prices.to_vec();
    sorted.sort_unstable();
    match basis {
        CompetitorBasis::Lowest => sorted.first().copied(),
        CompetitorBasis::Median => {
            if sorted.is_empty() {
                None
            } else {
                sorted.get((sorted.len() - 1) / 2).copied()
            }
        }
    }
}

/// A promotion's half-open window `[start, end)`; `None` ends are unbounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Window {
    pub start: Option<DateTime<Utc>>,
    pub end: Option<DateTime<Utc>>,
}

impl Window {
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        self.start.is_none_or(|s| s <= at) && self.end.is_none_or(|e| at < e)
    }

    pub fn overlaps(&self, other: &Window) -> bool {
        let starts_before_other_ends = match (self.start, other.end) {
            (Some(s), Some(e)) => s < e,
            _ => true,
        };
        let other_starts_before_end = match (other.start, self.end) {
            (Some(s), Some(e)) => s < e,
            _ => true,
        };
        starts_before_other_ends && other_starts_before_end
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromotionStatus {
    Scheduled,
    Active,
    Ended,
}

pub fn promotion_status(
    window: &Window,
    ended_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> PromotionStatus {
    if ended_at.is_some() || window.end.is_some_and(|e| e <= now) {
        PromotionStatus::Ended
    } else if window.start.is_some_and(|s| s > now) {
        PromotionStatus::Scheduled
    } else {
        PromotionStatus::Active
    }
}

/// Where a promotion applies; an empty list means "no restriction".
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Scope {
    pub channels: Vec<Uuid>,
    pub skus: Vec<Uuid>,
    pub categories: Vec<Uuid>,
    pub tiers: Vec<String>,
}

/// What the overlap check knows about one promotion.
#[derive(Debug, Clone)]
pub struct ExclusiveCandidate<'a> {
    pub id: Uuid,
    pub scope: &'a Scope,
    pub window: Window,
}

fn lists_overlap<T: PartialEq>(a: &[T], b: &[T]) -> bool {
    a.is_empty() || b.is_empty() || a.iter().any(|x| b.contains(x))
}

/// Whether two scopes can both apply to one line. Products are restricted by SKUs and
/// categories together (a line matches when it is one of the SKUs or in one of the categories);
/// `category_paths` gives each category's and each SKU's path of category ids from the root,
/// for the SKUs and categories the scopes name.
pub fn scopes_overlap(a: &Scope, b: &Scope, category_paths: &HashMap<Uuid, Vec<Uuid>>) -> bool {
    if !lists_overlap(&a.channels, &b.channels) || !lists_overlap(&a.tiers, &b.tiers) {
        return false;
    }
    let a_all = a.skus.is_empty() && a.categories.is_empty();
    let b_all = b.skus.is_empty() && b.categories.is_empty();
    if a_all || b_all {
        return true;
    }
    if a.skus.iter().any(|s| b.skus.contains(s)) {
        return true;
    }
    let path = |id: &Uuid| category_paths.get(id).cloned().unwrap_or_default();
    // A SKU of one inside a category of the other.
    let sku_in = |skus: &[Uuid], cats: &[Uuid]| {
        skus.iter()
            .any(|s| path(s).iter().any(|c| cats.contains(c)))
    };
    if sku_in(&a.skus, &b.categories) || sku_in(&b.skus, &a.categories) {
        return true;
    }
    // One category inside (or equal to) the other's.
    a.categories.iter().any(|ca| {
        b.categories
            .iter()
            .any(|cb| path(ca).contains(cb) || path(cb).contains(ca))
    })
}

/// The first existing exclusive promotion that `candidate` would overlap in scope and time.
pub fn overlapping_exclusive(
    candidate: &ExclusiveCandidate<'_>,
    existing: &[ExclusiveCandidate<'_>],
    category_paths: &HashMap<Uuid, Vec<Uuid>>,
) -> Option<Uuid> {
    existing
        .iter()
        .filter(|e| e.id != candidate.id)
        .find(|e| {
            e.window.overlaps(&candidate.window)
                && scopes_overlap(e.scope, candidate.scope, category_paths)
        })
        .map(|e| e.id)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn barcodes_need_a_right_check_digit() {
        assert_eq!(
            Barcode::parse("4006381333931").unwrap().as_str(),
            "4006381333931"
        );
        // UPC-A 036000291452 is EAN-13 0036000291452.
        assert_eq!(
            Barcode::parse("036000291452").unwrap().as_str(),
            "0036000291452"
        );
        assert!(
            Barcode::parse("4006381333932")
                .unwrap_err()
                .contains("check digit")
        );
        assert!(Barcode::parse("036000291453").is_err());
        assert!(Barcode::parse("12345").is_err());
        assert!(Barcode::parse("40063813339a1").is_err());
    }

    proptest! {
        #[test]
        fn any_body_with_its_check_digit_parses(body in proptest::collection::vec(0u8..10, 12)) {
            let digits: String = body.iter().map(|d| char::from(b'0' + d)).collect();
            let check = gtin_check_digit(digits.as_bytes());
            let code = format!("{digits}{check}");
            prop_assert!(Barcode::parse(&code).is_ok());
            let wrong = format!("{digits}{}", (check + 1) % 10);
            prop_assert!(Barcode::parse(&wrong).is_err());
        }
    }

    #[test]
    fn deviation_is_in_basis_points_of_list() {
        assert_eq!(deviation_bps(2490, 2990), -1672);
        assert_eq!(deviation_bps(3290, 2990), 1003);
        assert_eq!(deviation_bps(1000, 1000), 0);
        assert_eq!(deviation_bps(0, 0), 0);
        assert_eq!(deviation_bps(1, 0), i32::MAX);
    }

    #[test]
    fn standing_follows_policy_and_exceptions() {
        let policy = PricePolicy {
            max_deviation_bps: 1500,
            flag_text_overrides: true,
            default_target_margin_bps: 4000,
        };
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        assert_eq!(
            price_standing(&policy, -1500, None, now),
            PriceStanding::WithinPolicy
        );
        assert_eq!(
            price_standing(&policy, -1501, None, now),
            PriceStanding::OutsidePolicy
        );
        let valid = Exception {
            reason: "clearance".into(),
            expires_at: Some(now + chrono::Duration::days(1)),
        };
        let expired = Exception {
            reason: "clearance".into(),
            expires_at: Some(now - chrono::Duration::days(1)),
        };
        assert_eq!(
            price_standing(&policy, 2000, Some(&valid), now),
            PriceStanding::Excepted
        );
        assert_eq!(
            price_standing(&policy, 2000, Some(&expired), now),
            PriceStanding::ExceptionExpired
        );
    }

    #[test]
    fn suggestions() {
        // 40% margin on a cost of 600 → 1000.
        assert_eq!(cost_plus_price(600, 4000).unwrap(), 1000);
        assert_eq!(margin_bps(1000, 600), 4000);
        assert!(cost_plus_price(600, 10_000).is_err());
        assert_eq!(
            competitor_price(&[900, 1100, 1000], CompetitorBasis::Median),
            Some(1000)
        );
        assert_eq!(
            competitor_price(&[900, 1100, 1000, 1200], CompetitorBasis::Median),
            Some(1000)
        );
        assert_eq!(
            competitor_price(&[900, 1100], CompetitorBasis::Lowest),
            Some(900)
        );
        assert_eq!(competitor_price(&[], CompetitorBasis::Median), None);
        assert_eq!(
            describe_deviation(2490, 2990, -1672, 1500),
            "price 24.90 is 16.72% below list 29.90 (max 15%)"
        );
    }

    #[test]
    fn versions_must_match() {
        assert!(check_version(3, 3).is_ok());
        assert!(check_version(2, 3).unwrap_err().contains("stale"));
    }

    fn at(day: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, day, 0, 0, 0).unwrap()
    }

    #[test]
    fn windows_are_half_open() {
        let w = Window {
            start: Some(at(1)),
            end: Some(at(10)),
        };
        assert!(w.contains(at(1)) && !w.contains(at(10)));
        let next = Window {
            start: Some(at(10)),
            end: None,
        };
        assert!(!w.overlaps(&next));
        assert!(w.overlaps(&Window::default()));
        assert_eq!(promotion_status(&w, None, at(10)), PromotionStatus::Ended);
        assert_eq!(
            promotion_status(&next, None, at(2)),
            PromotionStatus::Scheduled
        );
        assert_eq!(promotion_status(&w, None, at(2)), PromotionStatus::Active);
    }

    #[test]
    fn scopes_overlap_through_categories_channels_and_tiers() {
        let (shoes, running, hats, sku) = (
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
        );
        let (web, store) = (Uuid::now_v7(), Uuid::now_v7());
        let paths = HashMap::from([
            (shoes, vec![shoes]),
            (running, vec![shoes, running]),
            (hats, vec![hats]),
            (sku, vec![shoes, running]),
        ]);
        let scope = |channels: Vec<Uuid>, skus: Vec<Uuid>, cats: Vec<Uuid>, tiers: &[&str]| Scope {
            channels,
            skus,
            categories: cats,
            tiers: tiers.iter().map(|t| (*t).to_owned()).collect(),
        };
        let all_shoes = scope(vec![], vec![], vec![shoes], &[]);
        assert!(scopes_overlap(
            &all_shoes,
            &scope(vec![], vec![], vec![running], &[]),
            &paths
        ));
        assert!(scopes_overlap(
            &all_shoes,
            &scope(vec![], vec![sku], vec![], &[]),
            &paths
        ));
        assert!(!scopes_overlap(
            &all_shoes,
            &scope(vec![], vec![], vec![hats], &[]),
            &paths
        ));
        assert!(!scopes_overlap(
            &scope(vec![web], vec![], vec![], &[]),
            &scope(vec![store], vec![], vec![], &[]),
            &paths
        ));
        assert!(!scopes_overlap(
            &scope(vec![], vec![], vec![], &["gold"]),
            &scope(vec![], vec![], vec![], &["silver"]),
            &paths
        ));
        assert!(scopes_overlap(&Scope::default(), &all_shoes, &paths));
    }
}

//! Decisions without I/O: the order lifecycle, order numbers and pickup codes, sourcing, and
//! refunds.

use std::collections::{BTreeMap, HashMap};

use omni_proto::omni::orders::v1::{Fulfilment, Order, OrderStatus, SourcingStrategy};

// ---------------------------------------------------------------------------------------------
// Lifecycle

/// How far along an order or fulfilment is; cancelled is outside the line.
fn rank(status: OrderStatus) -> u8 {
    match status {
        OrderStatus::Unspecified => 0,
        OrderStatus::PendingPayment => 1,
        OrderStatus::Confirmed => 2,
        OrderStatus::Allocated => 3,
        OrderStatus::Picking => 4,
        OrderStatus::ReadyForPickup | OrderStatus::Shipped => 5,
        OrderStatus::Completed => 6,
        OrderStatus::Cancelled => 7,
    }
}

/// Whether a fulfilment may move from `from` to `to`.
pub fn fulfilment_transition_allowed(from: OrderStatus, to: OrderStatus) -> bool {
    use OrderStatus as S;
    matches!(
        (from, to),
        (S::Allocated, S::Picking)
            | (S::Picking, S::ReadyForPickup)
            | (S::Picking, S::Shipped)
            | (S::ReadyForPickup, S::Completed)
            | (S::Shipped, S::Completed)
            | (S::Allocated, S::Completed)
    )
}

/// An order still in the customer's hands to cancel: nothing has left a location.
pub fn cancellable(order: &Order) -> bool {
    let status = order.status();
    !matches!(status, OrderStatus::Completed | OrderStatus::Cancelled)
        && order
            .fulfilments
            .iter()
            .all(|f| !matches!(f.status(), OrderStatus::Shipped | OrderStatus::Completed))
}

/// The order's status once it is allocated: its least advanced fulfilment's.
pub fn status_from_fulfilments(fulfilments: &[Fulfilment]) -> OrderStatus {
    fulfilments
        .iter()
        .map(Fulfilment::status)
        .filter(|s| *s != OrderStatus::Cancelled)
        .min_by_key(|s| rank(*s))
        .unwrap_or(OrderStatus::Cancelled)
}

// ---------------------------------------------------------------------------------------------
// Numbers and codes

/// The Luhn check digit of `digits`.
fn luhn_digit(digits: &str) -> u32 {
    let sum: u32 = digits
        .chars()
        .rev()
        .filter_map(|c| c.to_digit(10))
        .enumerate()
        .map(|(i, d)| {
            if i % 2 == 0 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    (10 - sum % 10) % 10
}

fn luhn_valid(digits: &str) -> bool {
    match digits.len().checked_sub(1) {
        Some(body) if digits.chars().all(|c| c.is_ascii_digit()) => {
            digits[body..].parse::<u32>().ok() == Some(luhn_digit(&digits[..body]))
        }
        _ => false,
    }
}

/// `O-YYMM-NNNNN-C`: the year and month placed, a sequence number, and a check digit over
/// both, so a mistyped number is caught before it is looked up.
pub fn order_number(year: i32, month: u32, sequence: i64) -> String {
    let yymm = format!("{:02}{month:02}", year.rem_euclid(100));
    let serial = format!("{:05}", sequence);
    let check = luhn_digit(&format!("{yymm}{serial}"));
    format!("O-{yymm}-{serial}-{check}")
}

/// Whether `number` is shaped like an order number and its check digit holds.
pub fn order_number_valid(number: &str) -> bool {
    let parts: Vec<&str> = number.split('-').collect();
    matches!(parts.as_slice(), ["O", yymm, serial, check]
        if yymm.len() == 4 && serial.len() >= 5 && check.len() == 1
            && luhn_valid(&format!("{yymm}{serial}{check}")))
}

/// A six-digit pickup code: five random digits and a check digit.
pub fn pickup_code(random: u32) -> String {
    let body = format!("{:05}", random % 100_000);
    format!("{body}{}", luhn_digit(&body))
}

/// Whether the code the customer shows matches, ignoring spaces.
pub fn pickup_code_matches(expected: &str, given: &str) -> bool {
    let given: String = given.chars().filter(|c| !c.is_whitespace()).collect();
    !expected.is_empty() && given == expected
}

// ---------------------------------------------------------------------------------------------
// Sourcing

/// Great-circle distance in meters.
pub fn distance_meters(a: (f64, f64), b: (f64, f64)) -> f64 {
    const EARTH_RADIUS_M: f64 = 6_371_000.0;
    let (lat1, lon1) = (a.0.to_radians(), a.1.to_radians());
    let (lat2, lon2) = (b.0.to_radians(), b.1.to_radians());
    let h = ((lat2 - lat1) / 2.0).sin().powi(2)
        + lat1.cos() * lat2.cos() * ((lon2 - lon1) / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * h.sqrt().asin()
}

/// A location that could send units, with what it has of the order's SKUs.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub location_id: String,
    pub code: String,
    pub is_store: bool,
    /// From the delivery address; `None` when either point is unknown.
    pub distance_meters: Option<f64>,
    /// Units available per SKU id.
    pub available: HashMap<String, i64>,
}

impl Candidate {
    fn has(&self, sku: &str, quantity: i64) -> bool {
        self.available.get(sku).copied().unwrap_or(0) >= quantity
    }

    fn units_of(&self, lines: &[Want]) -> i64 {
        lines
            .iter()
            .map(|l| self.available.get(&l.sku_id).copied().unwrap_or(0))
            .sum()
    }

    fn describe(&self) -> String {
        let kind = if self.is_store { "store" } else { "warehouse" };
        match self.distance_meters {
            Some(d) => format!("{kind} {} ({:.1} km)", self.code, d / 1000.0),
            None => format!("{kind} {}", self.code),
        }
    }
}

/// One line the order wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    pub sku_id: String,
    pub quantity: i64,
}

/// Where each line leaves from: `assignment[i]` indexes the candidates for line `i`.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub assignment: Vec<usize>,
    pub reason: String,
}

impl Plan {
    /// The distinct locations used, in first-use order.
    pub fn locations(&self) -> Vec<usize> {
        let mut seen = Vec::new();
        for &c in &self.assignment {
            if !seen.contains(&c) {
                seen.push(c);
            }
        }
        seen
    }
}

/// Why no plan exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unsourceable {
    /// Line `i` cannot be served whole by any single location; `best` is the most any has.
    Line { index: usize, best: i64 },
}

/// How the strategy orders candidates among plans with the same number of shipments.
fn preference(strategy: SourcingStrategy, c: &Candidate, lines: &[Want]) -> (i64, f64) {
    let distance = c.distance_meters.unwrap_or(f64::MAX);
    match strategy {
        SourcingStrategy::DrainOverstock => (-c.units_of(lines), distance),
        SourcingStrategy::WarehouseFirst => (i64::from(c.is_store), distance),
        SourcingStrategy::StoreFirst => (i64::from(!c.is_store), distance),
        _ => (0, distance),
    }
}

/// How good a plan is, smaller first: shipments, the strategy's preference, total distance.
type Cost = (usize, i64, f64);

fn plan_cost(
    strategy: SourcingStrategy,
    candidates: &[Candidate],
    lines: &[Want],
    used: &[usize],
) -> Cost {
    let (rank_sum, distance) = used.iter().fold((0i64, 0f64), |(r, d), &c| {
        let (pr, pd) = preference(strategy, &candidates[c], lines);
        (r + pr, d + if pd == f64::MAX { 1e12 } else { pd })
    });
    (used.len(), rank_sum, distance)
}

/// Chooses where each line ships from.
///
/// Every strategy prefers one location for the whole order and splits only when no single
/// location can serve it, then minimises the number of shipments; among plans with as many
/// shipments, NEAREST and FEWEST_SPLITS take the least total distance, DRAIN_OVERSTOCK the
/// locations holding the most units of the order's SKUs, WAREHOUSE_FIRST and STORE_FIRST that
/// kind of location first. Each line leaves whole from one location. Plans of one and two
/// locations are searched exhaustively, larger ones greedily (the location covering most
/// remaining lines first).
pub fn source(
    strategy: SourcingStrategy,
    lines: &[Want],
    candidates: &[Candidate],
) -> Result<Plan, Unsourceable> {
    // Which candidates can serve each line whole.
    let able: Vec<Vec<usize>> = lines
        .iter()
        .map(|l| {
            (0..candidates.len())
                .filter(|&c| candidates[c].has(&l.sku_id, l.quantity))
                .collect()
        })
        .collect();
    if let Some(index) = able.iter().position(Vec::is_empty) {
        let best = candidates
            .iter()
            .map(|c| c.available.get(&lines[index].sku_id).copied().unwrap_or(0))
            .max()
            .unwrap_or(0);
        return Err(Unsourceable::Line { index, best });
    }
    let cost = |used: &[usize]| plan_cost(strategy, candidates, lines, used);
    let better =
        |a: (usize, i64, f64), b: (usize, i64, f64)| a.partial_cmp(&b).is_some_and(|o| o.is_lt());

    // One location for everything.
    let single = (0..candidates.len())
        .filter(|c| able.iter().all(|a| a.contains(c)))
        .min_by(|&a, &b| {
            cost(&[a])
                .partial_cmp(&cost(&[b]))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
    if let Some(c) = single {
        return Ok(Plan {
            assignment: vec![c; lines.len()],
            reason: format!("{} has every line", candidates[c].describe()),
        });
    }

    // Two locations: every pair that covers all lines; each line goes to the preferred one.
    let mut best_pair: Option<((usize, usize), Cost)> = None;
    for a in 0..candidates.len() {
        for b in (a + 1)..candidates.len() {
            if able.iter().all(|l| l.contains(&a) || l.contains(&b)) {
                let c = cost(&[a, b]);
                if best_pair.is_none_or(|(_, best)| better(c, best)) {
                    best_pair = Some(((a, b), c));
                }
            }
        }
    }
    let used = match best_pair {
        Some(((a, b), _)) => vec![a, b],
        None => greedy_cover(&able, |c| preference(strategy, &candidates[c], lines)),
    };
    let assignment: Vec<usize> = able
        .iter()
        .map(|l| {
            *used
                .iter()
                .filter(|u| l.contains(u))
                .min_by(|&&x, &&y| {
                    preference(strategy, &candidates[x], lines)
                        .partial_cmp(&preference(strategy, &candidates[y], lines))
                        .unwrap_or(std::cmp::Ordering::Equal)
                })
                .unwrap_or(&l[0])
        })
        .collect();
    let plan = Plan {
        assignment,
        reason: String::new(),
    };
    let names: Vec<String> = plan
        .locations()
        .iter()
        .map(|&c| candidates[c].describe())
        .collect();
    Ok(Plan {
        reason: format!(
            "no single location has every line; {} shipments: {}",
            names.len(),
            names.join(", ")
        ),
        ..plan
    })
}

fn greedy_cover(able: &[Vec<usize>], preference: impl Fn(usize) -> (i64, f64)) -> Vec<usize> {
    let mut uncovered: Vec<usize> = (0..able.len()).collect();
    let mut used = Vec::new();
    while !uncovered.is_empty() {
        let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
        for &line in &uncovered {
            for &c in &able[line] {
                *counts.entry(c).or_default() += 1;
            }
        }
        let Some((&pick, _)) = counts.iter().max_by(|(a, na), (b, nb)| {
            na.cmp(nb).then_with(|| {
                preference(**b)
                    .partial_cmp(&preference(**a))
                    .unwrap_or(std::cmp::Ordering::Equal)
            })
        }) else {
            break;
        };
        used.push(pick);
        uncovered.retain(|&line| !able[line].contains(&pick));
    }
    used
}

// ---------------------------------------------------------------------------------------------
// Refunds

/// The refund for `quantity` units of a line whose `net_amount` paid for `bought` units, of
/// which `already` were refunded before: the units' share of the net amount (discounts
/// prorated), with the rounding remainder on the last unit, so refunding every unit returns
/// exactly the net amount and never more.
pub fn line_refund(net_amount: i64, bought: i64, already: i64, quantity: i64) -> i64 {
    if bought <= 0 {
        return 0;
    }
    let share = |units: i64| net_amount * units / bought;
    let upto = (already + quantity).min(bought);
    share(upto) - share(already.min(bought))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cand(id: &str, store: bool, km: f64, stock: &[(&str, i64)]) -> Candidate {
        Candidate {
            location_id: id.to_owned(),
            code: id.to_owned(),
            is_store: store,
            distance_meters: Some(km * 1000.0),
            available: stock.iter().map(|(s, q)| ((*s).to_owned(), *q)).collect(),
        }
    }

    fn want(sku: &str, quantity: i64) -> Want {
        Want {
            sku_id: sku.to_owned(),
            quantity,
        }
    }

    #[test]
    fn order_numbers_carry_a_check_digit() {
        let n = order_number(2026, 11, 18374);
        assert!(n.starts_with("O-2611-18374-"), "{n}");
        assert!(order_number_valid(&n));
        let typo = n.replace("18374", "18347");
        assert!(!order_number_valid(&typo));
        assert!(!order_number_valid("O-2611-1"));
    }

    #[test]
    fn pickup_codes_check() {
        let code = pickup_code(4711);
        assert_eq!(code.len(), 6);
        assert!(luhn_valid(&code));
        assert!(pickup_code_matches(
            &code,
            &format!("{} {}", &code[..3], &code[3..])
        ));
        assert!(!pickup_code_matches(&code, "000000"));
    }

    #[test]
    fn one_nearest_location_when_one_has_everything() {
        let c = vec![
            cand("WH", false, 300.0, &[("a", 9), ("b", 9)]),
            cand("FAR", true, 20.0, &[("a", 9), ("b", 9)]),
            cand("NEAR", true, 2.0, &[("a", 9)]),
        ];
        let plan = source(SourcingStrategy::Nearest, &[want("a", 1), want("b", 1)], &c).unwrap();
        assert_eq!(plan.assignment, vec![1, 1]);
        assert!(plan.reason.contains("FAR"), "{}", plan.reason);
    }

    #[test]
    fn splits_only_when_no_single_location_can() {
        let c = vec![
            cand("A", true, 1.0, &[("a", 5)]),
            cand("B", true, 2.0, &[("b", 5)]),
            cand("C", false, 50.0, &[("b", 5)]),
        ];
        let plan = source(SourcingStrategy::Nearest, &[want("a", 1), want("b", 1)], &c).unwrap();
        assert_eq!(plan.assignment, vec![0, 1]);
        assert_eq!(plan.locations().len(), 2);
    }

    #[test]
    fn a_line_no_location_can_serve_whole_is_reported() {
        let c = vec![
            cand("A", true, 1.0, &[("a", 2)]),
            cand("B", true, 1.0, &[("a", 3)]),
        ];
        assert_eq!(
            source(SourcingStrategy::Nearest, &[want("a", 4)], &c),
            Err(Unsourceable::Line { index: 0, best: 3 })
        );
    }

    #[test]
    fn strategies_break_ties_their_way() {
        let c = vec![
            cand("STORE", true, 1.0, &[("a", 2)]),
            cand("WH", false, 100.0, &[("a", 50)]),
        ];
        let lines = [want("a", 1)];
        assert_eq!(
            source(SourcingStrategy::Nearest, &lines, &c)
                .unwrap()
                .assignment,
            vec![0]
        );
        assert_eq!(
            source(SourcingStrategy::WarehouseFirst, &lines, &c)
                .unwrap()
                .assignment,
            vec![1]
        );
        assert_eq!(
            source(SourcingStrategy::DrainOverstock, &lines, &c)
                .unwrap()
                .assignment,
            vec![1]
        );
        assert_eq!(
            source(SourcingStrategy::StoreFirst, &lines, &c)
                .unwrap()
                .assignment,
            vec![0]
        );
    }

    #[test]
    fn refunds_add_up_to_the_net_amount() {
        // 3 units for 1000: 333 + 333 + 334.
        assert_eq!(line_refund(1000, 3, 0, 1), 333);
        assert_eq!(line_refund(1000, 3, 1, 1), 333);
        assert_eq!(line_refund(1000, 3, 2, 1), 334);
        assert_eq!(line_refund(1000, 3, 0, 3), 1000);
    }

    proptest! {
        #[test]
        fn partial_refunds_never_exceed_what_was_paid(
            net in 0i64..1_000_000, bought in 1i64..50, splits in proptest::collection::vec(1i64..5, 1..20)
        ) {
            let mut already = 0;
            let mut total = 0;
            for q in splits {
                if already >= bought { break; }
                let q = q.min(bought - already);
                total += line_refund(net, bought, already, q);
                already += q;
            }
            prop_assert!(total <= net);
            if already == bought { prop_assert_eq!(total, net); }
        }

        #[test]
        fn every_plan_serves_every_line_from_a_location_that_has_it(
            stock in proptest::collection::vec(proptest::collection::vec(0i64..4, 4), 1..6),
            wants in proptest::collection::vec((0usize..4, 1i64..3), 1..5),
        ) {
            let skus = ["a", "b", "c", "d"];
            let candidates: Vec<Candidate> = stock.iter().enumerate().map(|(i, s)| Candidate {
                location_id: i.to_string(),
                code: i.to_string(),
                is_store: i % 2 == 0,
                distance_meters: Some(i as f64 * 1000.0),
                available: skus.iter().zip(s).map(|(k, q)| ((*k).to_owned(), *q)).collect(),
            }).collect();
            let wants: BTreeMap<usize, i64> = wants.into_iter().collect();
            let lines: Vec<Want> = wants.iter().map(|(s, q)| want(skus[*s], *q)).collect();
            match source(SourcingStrategy::Nearest, &lines, &candidates) {
                Ok(plan) => {
                    for (line, &c) in lines.iter().zip(&plan.assignment) {
                        prop_assert!(candidates[c].has(&line.sku_id, line.quantity));
                    }
                    let single = candidates.iter().any(|c| lines.iter().all(|l| c.has(&l.sku_id, l.quantity)));
                    prop_assert_eq!(single, plan.locations().len() == 1);
                }
                Err(Unsourceable::Line { index, .. }) => {
                    prop_assert!(candidates.iter().all(|c| !c.has(&lines[index].sku_id, lines[index].quantity)));
                }
            }
        }
    }
}

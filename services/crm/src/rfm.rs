//! RFM scores and lifecycle stages: pure functions over each customer's purchase aggregate.
//!
//! Scores are quintiles across every customer with a purchase: 5 is the best fifth, 1 the
//! worst, 0 no purchase. Equal values always get the same score (the score of the first of
//! them in rank order), so a crafted base of five customers with distinct values scores 1..5.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};

/// What one customer's non-cancelled orders add up to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aggregate {
    pub customer_id: String,
    pub first_purchase: DateTime<Utc>,
    pub last_purchase: DateTime<Utc>,
    pub orders: i64,
    /// Net spend in minor units.
    pub monetary: i64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rfm {
    pub recency: i32,
    pub frequency: i32,
    pub monetary: i32,
}

/// Lifecycle stages, numbered as the contract's `LifecycleStage`.
pub const NEW: i32 = 1;
pub const ACTIVE: i32 = 2;
pub const AT_RISK: i32 = 3;
pub const LAPSED: i32 = 4;

/// A first purchase this recent makes a customer new.
const NEW_DAYS: i64 = 30;
/// No purchase for this long makes a customer lapsed.
const LAPSED_DAYS: i64 = 365;
/// A one-time buyer silent this long is at risk.
const ONE_TIME_AT_RISK_DAYS: i64 = 90;
/// The shortest usual interval considered, so weekly buyers are not at risk after a fortnight.
const MIN_INTERVAL_DAYS: i64 = 30;

/// Quintile scores (1..=5) of `values`, higher value is better; same order as `values`.
pub fn quintiles(values: &[i64]) -> Vec<i32> {
    let n = values.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| values[i]);
    let mut scores = vec![0; n];
    let mut first_rank_of_value = 0;
    for (rank, &i) in order.iter().enumerate() {
        if rank > 0 && values[order[rank - 1]] != values[i] {
            first_rank_of_value = rank;
        }
        scores[i] = 1 + (5 * first_rank_of_value / n) as i32;
    }
    scores
}

/// The quintile score of a value with `below` of the base's `n` values strictly below it: the
/// score [`quintiles`] gives it.
pub fn score_below(below: i64, n: i64) -> i32 {
    if n <= 0 {
        return 0;
    }
    1 + (5 * below / n) as i32
}

/// RFM scores of every customer in `base`, by customer id.
pub fn scores(base: &[Aggregate]) -> HashMap<String, Rfm> {
    let recency = quintiles(
        &base
            .iter()
            .map(|a| a.last_purchase.timestamp_micros())
            .collect::<Vec<_>>(),
    );
    let frequency = quintiles(&base.iter().map(|a| a.orders).collect::<Vec<_>>());
    let monetary = quintiles(&base.iter().map(|a| a.monetary).collect::<Vec<_>>());
    base.iter()
        .enumerate()
        .map(|(i, a)| {
            (
                a.customer_id.clone(),
                Rfm {
                    recency: recency[i],
                    frequency: frequency[i],
                    monetary: monetary[i],
                },
            )
        })
        .collect()
}

/// The lifecycle stage of a customer with this aggregate (`None`: no purchase yet).
pub fn lifecycle(aggregate: Option<&Aggregate>, now: DateTime<Utc>) -> i32 {
    let Some(a) = aggregate.filter(|a| a.orders > 0) else {
        return NEW;
    };
    let silent = now - a.last_purchase;
    if silent > Duration::days(LAPSED_DAYS) {
        return LAPSED;
    }
    if now - a.first_purchase <= Duration::days(NEW_DAYS) {
        return NEW;
    }
    if a.orders == 1 {
        return if silent > Duration::days(ONE_TIME_AT_RISK_DAYS) {
            AT_RISK
        } else {
            ACTIVE
        };
    }
    let usual = (a.last_purchase - a.first_purchase) / (a.orders as i32 - 1);
    let usual = usual.max(Duration::days(MIN_INTERVAL_DAYS));
    if silent > usual * 2 { AT_RISK } else { ACTIVE }
}

/// The stage's name in segment rules.
pub fn lifecycle_name(stage: i32) -> &'static str {
    match stage {
        NEW => "new",
        ACTIVE => "active",
        AT_RISK => "at_risk",
        LAPSED => "lapsed",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agg(id: &str, now: DateTime<Utc>, first: i64, last: i64, orders: i64) -> Aggregate {
        Aggregate {
            customer_id: id.into(),
            first_purchase: now - Duration::days(first),
            last_purchase: now - Duration::days(last),
            orders,
            monetary: 100,
        }
    }

    #[test]
    fn quintiles_split_distinct_values_evenly_and_keep_ties_together() {
        assert_eq!(quintiles(&[50, 10, 40, 20, 30]), vec![5, 1, 4, 2, 3]);
        assert_eq!(
            quintiles(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]),
            vec![1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
        );
        assert_eq!(quintiles(&[7, 7, 7]), vec![1, 1, 1]);
        assert_eq!(quintiles(&[1, 9, 9, 9, 9]), vec![1, 2, 2, 2, 2]);
        assert!(quintiles(&[]).is_empty());
    }

    #[test]
    fn scores_from_counts_below_match_the_ranking() {
        for values in [
            vec![50, 10, 40, 20, 30],
            vec![1, 9, 9, 9, 9],
            vec![7, 7, 7],
            (1..=13).collect(),
        ] {
            let n = values.len() as i64;
            let ranked = quintiles(&values);
            for (i, v) in values.iter().enumerate() {
                let below = values.iter().filter(|x| *x < v).count() as i64;
                assert_eq!(score_below(below, n), ranked[i], "{values:?} at {v}");
            }
        }
    }

    #[test]
    fn lifecycle_follows_purchase_rhythm() {
        let now = Utc::now();
        assert_eq!(lifecycle(None, now), NEW);
        assert_eq!(lifecycle(Some(&agg("a", now, 10, 10, 1)), now), NEW);
        assert_eq!(lifecycle(Some(&agg("a", now, 200, 20, 5)), now), ACTIVE);
        // Bought every ~45 days, silent for 120: at risk.
        assert_eq!(lifecycle(Some(&agg("a", now, 300, 120, 5)), now), AT_RISK);
        assert_eq!(lifecycle(Some(&agg("a", now, 120, 120, 1)), now), AT_RISK);
        assert_eq!(lifecycle(Some(&agg("a", now, 800, 400, 9)), now), LAPSED);
    }
}

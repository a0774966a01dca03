//! The pricing engine behind `Quote`: promotions, then coupons, on cart lines. Pure and
//! deterministic: integer minor units only, promotions in a fixed order (priority, then id), and
//! every spread amount allocated by largest remainder, so line amounts always add up exactly
//! and no line ever goes below zero.
//!
//! Stacking: promotions apply one after the other, highest priority first, each on what the
//! line still costs after the ones before. An exclusive promotion applies only to lines no
//! promotion has discounted yet, and a line it discounts gets no further promotion. Coupons
//! (checked by crm) apply after every promotion, in the order given.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::{BPS, Scope, Window};

/// One cart line as the engine sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub sku_id: Uuid,
    /// The product's category path, root first.
    pub category_path: Vec<Uuid>,
    pub quantity: i64,
    /// The channel's price for one unit.
    pub unit_price: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendTier {
    pub min_spend: i64,
    pub discount: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleItem {
    pub sku_id: Uuid,
    pub quantity: i64,
}

/// What a promotion does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Rule {
    PercentOff {
        percent_bps: i64,
    },
    AmountOff {
        amount_per_unit: i64,
    },
    /// Ascending by `min_spend`; the highest tier reached applies.
    SpendThreshold {
        tiers: Vec<SpendTier>,
    },
    BuyXGetY {
        buy: i64,
        get: i64,
        get_discount_bps: i64,
    },
    Bundle {
        items: Vec<BundleItem>,
        bundle_price: i64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promotion {
    pub id: Uuid,
    pub label: String,
    pub rule: Rule,
    pub scope: Scope,
    pub window: Window,
    pub priority: i32,
    pub exclusive: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CouponDiscount {
    /// Off the eligible lines together.
    AmountOff(i64),
    /// Off each eligible line.
    PercentOff(i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coupon {
    pub code: String,
    pub discount: CouponDiscount,
    pub min_spend: Option<i64>,
    pub skus: Vec<Uuid>,
    pub categories: Vec<Uuid>,
}

/// Who granted a discount.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    Promotion(Uuid),
    Coupon(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discount {
    pub source: Source,
    pub label: String,
    pub amount: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricedLine {
    pub gross: i64,
    pub discounts: Vec<Discount>,
    pub discount: i64,
    pub net: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Priced {
    pub lines: Vec<PricedLine>,
    /// Each source's total over all lines, in the order they applied.
    pub adjustments: Vec<Discount>,
    pub subtotal: i64,
    pub discount_total: i64,
    pub total: i64,
    pub unapplied_coupons: Vec<String>,
}

/// Who is buying where and when.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub channel_id: Uuid,
    pub customer_tier: &'a str,
    pub at: DateTime<Utc>,
}

fn half_up(amount: i64, bps: i64) -> i64 {
    let scaled = i128::from(amount) * i128::from(bps);
    i64::try_from((scaled + i128::from(BPS) / 2) / i128::from(BPS)).unwrap_or(i64::MAX)
}

/// Splits `total` across `weights` in proportion, by largest remainder (ties to the earlier
/// index). With `0 <= total <= sum(weights)` the parts add up to `total` exactly and none
/// exceeds its weight.
pub fn allocate(total: i64, weights: &[i64]) -> Vec<i64> {
    let sum: i128 = weights.iter().map(|w| i128::from(*w)).sum();
    if sum <= 0 || total <= 0 {
        return vec![0; weights.len()];
    }
    let total = i128::from(total).min(sum);
    let mut parts: Vec<i128> = Vec::with_capacity(weights.len());
    let mut remainders: Vec<(i128, usize)> = Vec::with_capacity(weights.len());
    for (i, w) in weights.iter().enumerate() {
        let exact = total * i128::from(*w);
        parts.push(exact / sum);
        remainders.push((exact % sum, i));
    }
    let mut left = total - parts.iter().sum::<i128>();
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, i) in remainders {
        if left == 0 {
            break;
        }
        parts[i] += 1;
        left -= 1;
    }
    parts
        .into_iter()
        .map(|p| i64::try_from(p).unwrap_or(0))
        .collect()
}

fn in_products(scope_skus: &[Uuid], scope_categories: &[Uuid], line: &Line) -> bool {
    (scope_skus.is_empty() && scope_categories.is_empty())
        || scope_skus.contains(&line.sku_id)
        || line
            .category_path
            .iter()
            .any(|c| scope_categories.contains(c))
}

impl Promotion {
    /// Whether the promotion can apply in this context at all.
    pub fn applies_in(&self, ctx: &Context<'_>) -> bool {
        self.window.contains(ctx.at)
            && (self.scope.channels.is_empty() || self.scope.channels.contains(&ctx.channel_id))
            && (self.scope.tiers.is_empty()
                || self.scope.tiers.iter().any(|t| t == ctx.customer_tier))
    }

    fn covers(&self, line: &Line) -> bool {
        in_products(&self.scope.skus, &self.scope.categories, line)
    }

    /// The discount on each line (0 for lines not in `eligible`), each at most what the line
    /// still costs.
    fn discounts(&self, lines: &[Line], remaining: &[i64], eligible: &[bool]) -> Vec<i64> {
        let mut out = vec![0; lines.len()];
        let unit_value = |i: usize| remaining[i] / lines[i].quantity.max(1);
        match &self.rule {
            Rule::PercentOff { percent_bps } => {
                for i in (0..lines.len()).filter(|i| eligible[*i]) {
                    out[i] = half_up(remaining[i], *percent_bps).min(remaining[i]);
                }
            }
            Rule::AmountOff { amount_per_unit } => {
                for i in (0..lines.len()).filter(|i| eligible[*i]) {
                    let off = i128::from(*amount_per_unit) * i128::from(lines[i].quantity);
                    out[i] = i64::try_from(off.min(i128::from(remaining[i]))).unwrap_or(0);
                }
            }
            Rule::SpendThreshold { tiers } => {
                let weights: Vec<i64> = (0..lines.len())
                    .map(|i| if eligible[i] { remaining[i] } else { 0 })
                    .collect();
                let spend: i64 = weights.iter().sum();
                let reached = tiers
                    .iter()
                    .filter(|t| t.min_spend <= spend)
                    .max_by_key(|t| t.min_spend);
                if let Some(tier) = reached {
                    out = allocate(tier.discount.min(spend), &weights);
                }
            }
            Rule::BuyXGetY {
                buy,
                get,
                get_discount_bps,
            } => {
                let group = buy + get;
                let units: i64 = (0..lines.len())
                    .filter(|i| eligible[*i])
                    .map(|i| lines[i].quantity)
                    .sum();
                if group > 0 {
                    let mut discounted = units / group * get;
                    // The cheapest units are the ones given away.
                    let mut order: Vec<usize> = (0..lines.len()).filter(|i| eligible[*i]).collect();
                    order.sort_by_key(|i| (unit_value(*i), *i));
                    for i in order {
                        if discounted == 0 {
                            break;
                        }
                        let n = discounted.min(lines[i].quantity);
                        discounted -= n;
                        let off = half_up(unit_value(i), *get_discount_bps).saturating_mul(n);
                        out[i] = off.min(remaining[i]);
                    }
                }
            }
            Rule::Bundle {
                items,
                bundle_price,
            } => {
                let available = |sku: Uuid| -> i64 {
                    (0..lines.len())
                        .filter(|i| eligible[*i] && lines[*i].sku_id == sku)
                        .map(|i| lines[i].quantity)
                        .sum()
                };
                let bundles = items
                    .iter()
                    .map(|item| available(item.sku_id) / item.quantity.max(1))
                    .min()
                    .unwrap_or(0);
                if bundles > 0 {
                    let mut weights = vec![0i64; lines.len()];
                    for item in items {
                        let mut needed = item.quantity * bundles;
                        for i in 0..lines.len() {
                            if needed == 0 {
                                break;
                            }
                            if eligible[i] && lines[i].sku_id == item.sku_id {
                                let n = needed.min(lines[i].quantity);
                                needed -= n;
                                weights[i] = weights[i]
                                    .saturating_add(unit_value(i).saturating_mul(n))
                                    .min(remaining[i]);
                            }
                        }
                    }
                    let normal: i64 = weights.iter().sum();
                    let saving = normal.saturating_sub(bundle_price.saturating_mul(bundles));
                    if saving > 0 {
                        out = allocate(saving, &weights);
                    }
                }
            }
        }
        out
    }
}

impl Coupon {
    fn covers(&self, line: &Line) -> bool {
        in_products(&self.skus, &self.categories, line)
    }
}

/// Prices `lines`: promotions that apply in `ctx`, then `coupons`. Fails only when an amount
/// does not fit in 64 bits.
pub fn quote(
    lines: &[Line],
    ctx: &Context<'_>,
    promotions: &[Promotion],
    coupons: &[Coupon],
) -> Result<Priced, String> {
    let mut gross = Vec::with_capacity(lines.len());
    for line in lines {
        let amount = line
            .unit_price
            .checked_mul(line.quantity)
            .ok_or_else(|| "a line amount does not fit in 64 bits".to_owned())?;
        gross.push(amount);
    }
    let subtotal = gross
        .iter()
        .try_fold(0i64, |acc, g| acc.checked_add(*g))
        .ok_or_else(|| "the subtotal does not fit in 64 bits".to_owned())?;
    let mut remaining = gross.clone();
    let mut discounts: Vec<Vec<Discount>> = vec![Vec::new(); lines.len()];
    let mut promoted = vec![false; lines.len()];
    let mut locked = vec![false; lines.len()];
    let mut adjustments: Vec<Discount> = Vec::new();

    let mut applicable: Vec<&Promotion> = promotions.iter().filter(|p| p.applies_in(ctx)).collect();
    applicable.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.id.cmp(&b.id)));
    for promo in applicable {
        let eligible: Vec<bool> = (0..lines.len())
            .map(|i| {
                remaining[i] > 0
                    && !locked[i]
                    && !(promo.exclusive && promoted[i])
                    && promo.covers(&lines[i])
            })
            .collect();
        let amounts = promo.discounts(lines, &remaining, &eligible);
        let source = Source::Promotion(promo.id);
        record(
            &amounts,
            &source,
            &promo.label,
            &mut remaining,
            &mut discounts,
            &mut adjustments,
        );
        for (i, amount) in amounts.iter().enumerate() {
            if *amount > 0 {
                promoted[i] = true;
                locked[i] |= promo.exclusive;
            }
        }
    }

    let mut unapplied_coupons = Vec::new();
    for coupon in coupons {
        let weights: Vec<i64> = (0..lines.len())
            .map(|i| {
                if coupon.covers(&lines[i]) {
                    remaining[i]
                } else {
                    0
                }
            })
            .collect();
        let spend: i64 = weights.iter().sum();
        if spend == 0 || coupon.min_spend.is_some_and(|m| spend < m) {
            unapplied_coupons.push(coupon.code.clone());
            continue;
        }
        let amounts = match coupon.discount {
            CouponDiscount::AmountOff(amount) => allocate(amount.min(spend), &weights),
            CouponDiscount::PercentOff(bps) => {
                weights.iter().map(|w| half_up(*w, bps).min(*w)).collect()
            }
        };
        if amounts.iter().all(|a| *a == 0) {
            unapplied_coupons.push(coupon.code.clone());
            continue;
        }
        let source = Source::Coupon(coupon.code.clone());
        record(
            &amounts,
            &source,
            &coupon.code,
            &mut remaining,
            &mut discounts,
            &mut adjustments,
        );
    }

    let priced: Vec<PricedLine> = discounts
        .into_iter()
        .enumerate()
        .map(|(i, discounts)| PricedLine {
            gross: gross[i],
            discount: gross[i] - remaining[i],
            net: remaining[i],
            discounts,
        })
        .collect();
    let total: i64 = remaining.iter().sum();
    Ok(Priced {
        lines: priced,
        adjustments,
        subtotal,
        discount_total: subtotal - total,
        total,
        unapplied_coupons,
    })
}

fn record(
    amounts: &[i64],
    source: &Source,
    label: &str,
    remaining: &mut [i64],
    discounts: &mut [Vec<Discount>],
    adjustments: &mut Vec<Discount>,
) {
    let mut sum = 0;
    for (i, amount) in amounts.iter().enumerate() {
        let amount = (*amount).clamp(0, remaining[i]);
        if amount == 0 {
            continue;
        }
        remaining[i] -= amount;
        sum += amount;
        discounts[i].push(Discount {
            source: source.clone(),
            label: label.to_owned(),
            amount,
        });
    }
    if sum > 0 {
        adjustments.push(Discount {
            source: source.clone(),
            label: label.to_owned(),
            amount: sum,
        });
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn ctx() -> Context<'static> {
        Context {
            channel_id: id(900),
            customer_tier: "gold",
            at: Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap(),
        }
    }

    fn line(sku: u128, qty: i64, price: i64) -> Line {
        Line {
            sku_id: id(sku),
            category_path: vec![id(500), id(500 + sku)],
            quantity: qty,
            unit_price: price,
        }
    }

    fn promo(n: u128, rule: Rule) -> Promotion {
        Promotion {
            id: id(n),
            label: format!("promo {n}"),
            rule,
            scope: Scope::default(),
            window: Window::default(),
            priority: 0,
            exclusive: false,
        }
    }

    fn nets(p: &Priced) -> Vec<i64> {
        p.lines.iter().map(|l| l.net).collect()
    }

    #[test]
    fn allocation_is_exact_and_capped() {
        // Never more than the weights allow.
        assert_eq!(allocate(100, &[1, 1, 1]), vec![1, 1, 1]);
        assert_eq!(allocate(10, &[10, 10, 10]), vec![4, 3, 3]);
        assert_eq!(allocate(3, &[1, 1, 1]), vec![1, 1, 1]);
        assert_eq!(allocate(5, &[0, 0]), vec![0, 0]);
        assert_eq!(allocate(7, &[300, 100]), vec![5, 2]);
    }

    #[test]
    fn percent_off_rounds_half_up_per_line() {
        let p = quote(
            &[line(1, 3, 333), line(2, 1, 1000)],
            &ctx(),
            &[promo(1, Rule::PercentOff { percent_bps: 1500 })],
            &[],
        )
        .unwrap();
        // 999 * 15% = 149.85 → 150; 1000 → 150.
        assert_eq!(nets(&p), vec![849, 850]);
        assert_eq!(p.total, 1699);
        assert_eq!(p.adjustments[0].amount, 300);
    }

    #[test]
    fn amount_off_never_goes_below_zero() {
        let p = quote(
            &[line(1, 2, 300)],
            &ctx(),
            &[promo(
                1,
                Rule::AmountOff {
                    amount_per_unit: 500,
                },
            )],
            &[],
        )
        .unwrap();
        assert_eq!(nets(&p), vec![0]);
        assert_eq!(p.discount_total, 600);
    }

    #[test]
    fn spend_threshold_takes_the_highest_tier_reached_pro_rata() {
        let rule = Rule::SpendThreshold {
            tiers: vec![
                SpendTier {
                    min_spend: 5000,
                    discount: 500,
                },
                SpendTier {
                    min_spend: 10_000,
                    discount: 1500,
                },
            ],
        };
        let p = quote(
            &[line(1, 1, 6000), line(2, 1, 3000)],
            &ctx(),
            &[promo(1, rule.clone())],
            &[],
        )
        .unwrap();
        assert_eq!(p.discount_total, 500);
        assert_eq!(nets(&p), vec![5667, 2833]);
        let p = quote(
            &[line(1, 2, 6000), line(2, 1, 3000)],
            &ctx(),
            &[promo(1, rule.clone())],
            &[],
        )
        .unwrap();
        assert_eq!(p.discount_total, 1500);
        let p = quote(&[line(1, 1, 4000)], &ctx(), &[promo(1, rule)], &[]).unwrap();
        assert_eq!(p.discount_total, 0);
        assert!(p.adjustments.is_empty());
    }

    #[test]
    fn buy_two_get_one_free_discounts_the_cheapest() {
        let rule = Rule::BuyXGetY {
            buy: 2,
            get: 1,
            get_discount_bps: 10_000,
        };
        let p = quote(
            &[line(1, 2, 1000), line(2, 1, 400)],
            &ctx(),
            &[promo(1, rule.clone())],
            &[],
        )
        .unwrap();
        assert_eq!(nets(&p), vec![2000, 0]);
        // Five units: one group of three; the remaining two pay full price.
        let p = quote(&[line(1, 5, 1000)], &ctx(), &[promo(1, rule)], &[]).unwrap();
        assert_eq!(p.total, 4000);
    }

    #[test]
    fn bundle_price_spreads_the_saving() {
        let rule = Rule::Bundle {
            items: vec![
                BundleItem {
                    sku_id: id(1),
                    quantity: 1,
                },
                BundleItem {
                    sku_id: id(2),
                    quantity: 2,
                },
            ],
            bundle_price: 2000,
        };
        // One bundle (1 + 2 units) normally 1500 + 2 × 500 = 2500; a second unit of sku 1
        // stays at full price.
        let p = quote(
            &[line(1, 2, 1500), line(2, 2, 500)],
            &ctx(),
            &[promo(1, rule.clone())],
            &[],
        )
        .unwrap();
        assert_eq!(p.discount_total, 500);
        assert_eq!(nets(&p), vec![2700, 800]);
        // Incomplete bundle: nothing.
        let p = quote(
            &[line(1, 1, 1500), line(2, 1, 500)],
            &ctx(),
            &[promo(1, rule)],
            &[],
        )
        .unwrap();
        assert_eq!(p.discount_total, 0);
    }

    #[test]
    fn stacking_applies_by_priority_on_what_remains() {
        let mut first = promo(1, Rule::PercentOff { percent_bps: 1000 });
        first.priority = 10;
        let second = promo(
            2,
            Rule::AmountOff {
                amount_per_unit: 100,
            },
        );
        let p = quote(&[line(1, 1, 1000)], &ctx(), &[second, first], &[]).unwrap();
        assert_eq!(p.total, 800);
        assert_eq!(p.adjustments[0].source, Source::Promotion(id(1)));
        assert_eq!(p.lines[0].discounts.len(), 2);
    }

    #[test]
    fn an_exclusive_promotion_blocks_the_others_on_its_lines() {
        let mut exclusive = promo(1, Rule::PercentOff { percent_bps: 3000 });
        exclusive.exclusive = true;
        exclusive.priority = 5;
        exclusive.scope.skus = vec![id(1)];
        let everything = promo(2, Rule::PercentOff { percent_bps: 1000 });
        let p = quote(
            &[line(1, 1, 1000), line(2, 1, 1000)],
            &ctx(),
            &[everything, exclusive],
            &[],
        )
        .unwrap();
        assert_eq!(nets(&p), vec![700, 900]);
        assert_eq!(p.lines[0].discounts.len(), 1);
    }

    #[test]
    fn scope_window_channel_and_tier_limit_promotions() {
        let mut p1 = promo(1, Rule::PercentOff { percent_bps: 5000 });
        p1.scope.tiers = vec!["silver".into()];
        let mut p2 = promo(2, Rule::PercentOff { percent_bps: 5000 });
        p2.scope.channels = vec![id(901)];
        let mut p3 = promo(3, Rule::PercentOff { percent_bps: 5000 });
        p3.window.start = Some(ctx().at + chrono::Duration::hours(1));
        let mut p4 = promo(4, Rule::PercentOff { percent_bps: 5000 });
        p4.scope.categories = vec![id(502)];
        let p = quote(
            &[line(1, 1, 1000), line(2, 1, 1000)],
            &ctx(),
            &[p1, p2, p3, p4],
            &[],
        )
        .unwrap();
        assert_eq!(nets(&p), vec![1000, 500]);
    }

    #[test]
    fn coupons_apply_after_promotions_with_minimum_spend() {
        let ten_percent = promo(1, Rule::PercentOff { percent_bps: 1000 });
        let coupons = vec![
            Coupon {
                code: "SAVE5".into(),
                discount: CouponDiscount::AmountOff(500),
                min_spend: Some(1500),
                skus: vec![],
                categories: vec![],
            },
            Coupon {
                code: "BIG".into(),
                discount: CouponDiscount::PercentOff(1000),
                min_spend: Some(100_000),
                skus: vec![],
                categories: vec![],
            },
            Coupon {
                code: "OTHER".into(),
                discount: CouponDiscount::PercentOff(1000),
                min_spend: None,
                skus: vec![id(77)],
                categories: vec![],
            },
        ];
        let p = quote(
            &[line(1, 1, 1000), line(2, 1, 1000)],
            &ctx(),
            &[ten_percent],
            &coupons,
        )
        .unwrap();
        assert_eq!(p.total, 1300);
        assert_eq!(
            p.unapplied_coupons,
            vec!["BIG".to_owned(), "OTHER".to_owned()]
        );
        assert_eq!(p.adjustments.len(), 2);
    }

    fn arb_rule() -> impl Strategy<Value = Rule> {
        prop_oneof![
            (0i64..=10_000).prop_map(|percent_bps| Rule::PercentOff { percent_bps }),
            (0i64..5_000).prop_map(|amount_per_unit| Rule::AmountOff { amount_per_unit }),
            proptest::collection::vec((0i64..50_000, 0i64..20_000), 1..4).prop_map(|mut t| {
                t.sort_unstable();
                Rule::SpendThreshold {
                    tiers: t
                        .into_iter()
                        .map(|(min_spend, discount)| SpendTier {
                            min_spend,
                            discount,
                        })
                        .collect(),
                }
            }),
            (1i64..4, 1i64..3, 0i64..=10_000).prop_map(|(buy, get, get_discount_bps)| {
                Rule::BuyXGetY {
                    buy,
                    get,
                    get_discount_bps,
                }
            }),
            (1u128..4, 1i64..3, 0i64..5_000).prop_map(|(sku, quantity, bundle_price)| {
                Rule::Bundle {
                    items: vec![
                        BundleItem {
                            sku_id: id(sku),
                            quantity,
                        },
                        BundleItem {
                            sku_id: id(sku + 1),
                            quantity: 1,
                        },
                    ],
                    bundle_price,
                }
            }),
        ]
    }

    fn arb_promotions() -> impl Strategy<Value = Vec<Promotion>> {
        proptest::collection::vec(
            (
                arb_rule(),
                -3i32..3,
                any::<bool>(),
                proptest::option::of(1u128..5),
            ),
            0..5,
        )
        .prop_map(|specs| {
            specs
                .into_iter()
                .enumerate()
                .map(|(n, (rule, priority, exclusive, sku))| {
                    let mut p = promo(n as u128 + 1, rule);
                    p.priority = priority;
                    p.exclusive = exclusive;
                    p.scope.skus = sku.map(id).into_iter().collect();
                    p
                })
                .collect()
        })
    }

    fn arb_coupons() -> impl Strategy<Value = Vec<Coupon>> {
        proptest::collection::vec(
            (
                prop_oneof![
                    (0i64..20_000).prop_map(CouponDiscount::AmountOff),
                    (0i64..=10_000).prop_map(CouponDiscount::PercentOff),
                ],
                proptest::option::of(0i64..30_000),
            ),
            0..3,
        )
        .prop_map(|specs| {
            specs
                .into_iter()
                .enumerate()
                .map(|(n, (discount, min_spend))| Coupon {
                    code: format!("C{n}"),
                    discount,
                    min_spend,
                    skus: vec![],
                    categories: vec![],
                })
                .collect()
        })
    }

    fn arb_lines() -> impl Strategy<Value = Vec<Line>> {
        proptest::collection::vec((1u128..6, 1i64..6, 0i64..10_000), 1..6).prop_map(|specs| {
            specs
                .into_iter()
                .map(|(sku, qty, price)| line(sku, qty, price))
                .collect()
        })
    }

    proptest! {
        #[test]
        fn line_amounts_always_sum_to_the_total_and_never_go_negative(
            lines in arb_lines(),
            promotions in arb_promotions(),
            coupons in arb_coupons(),
        ) {
            let p = quote(&lines, &ctx(), &promotions, &coupons).unwrap();
            prop_assert_eq!(p.lines.iter().map(|l| l.net).sum::<i64>(), p.total);
            prop_assert_eq!(p.lines.iter().map(|l| l.gross).sum::<i64>(), p.subtotal);
            prop_assert_eq!(p.subtotal - p.discount_total, p.total);
            prop_assert_eq!(
                p.adjustments.iter().map(|a| a.amount).sum::<i64>(),
                p.discount_total
            );
            for l in &p.lines {
                prop_assert!(l.net >= 0);
                prop_assert!(l.net <= l.gross);
                prop_assert_eq!(l.discounts.iter().map(|d| d.amount).sum::<i64>(), l.discount);
                prop_assert!(l.discounts.iter().all(|d| d.amount > 0));
            }
        }

        #[test]
        fn quotes_are_deterministic_whatever_the_promotion_order(
            lines in arb_lines(),
            promotions in arb_promotions(),
            coupons in arb_coupons(),
        ) {
            let first = quote(&lines, &ctx(), &promotions, &coupons).unwrap();
            let mut reversed = promotions.clone();
            reversed.reverse();
            let second = quote(&lines, &ctx(), &reversed, &coupons).unwrap();
            prop_assert_eq!(first, second);
        }

        #[test]
        fn allocation_sums_exactly(
            weights in proptest::collection::vec(0i64..1_000_000, 1..20),
            share in 0u32..=100,
        ) {
            let sum: i64 = weights.iter().sum();
            let total = sum * i64::from(share) / 100;
            let parts = allocate(total, &weights);
            prop_assert_eq!(parts.iter().sum::<i64>(), total);
            for (p, w) in parts.iter().zip(&weights) {
                prop_assert!(*p >= 0 && p <= w);
            }
        }
    }
}

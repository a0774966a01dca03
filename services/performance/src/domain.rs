//! performance's decisions, without I/O: date ranges and their previous period, KPIs derived
//! from summed facts (a zero denominator gives "no value", never a division by zero), scorecard
//! conditions and payouts, and deterministic experiment assignment.

use chrono::NaiveDate;

/// Longest report range, so one call cannot ask for centuries of rollups.
pub const MAX_RANGE_DAYS: i64 = 3 * 366;

/// A range of days, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayRange {
    pub start: NaiveDate,
    pub end: NaiveDate,
}

impl DayRange {
    /// `Err` names what is wrong: a reversed range, or one longer than [`MAX_RANGE_DAYS`].
    pub fn new(start: NaiveDate, end: NaiveDate) -> Result<Self, String> {
        if end < start {
            return Err("end is before start".into());
        }
        let range = Self { start, end };
        if range.days() > MAX_RANGE_DAYS {
            return Err(format!("at most {MAX_RANGE_DAYS} days"));
        }
        Ok(range)
    }

    pub fn days(&self) -> i64 {
        (self.end - self.start).num_days() + 1
    }

    /// The same number of days just before this range.
    pub fn previous(&self) -> Self {
        let days = chrono::Duration::days(self.days());
        Self {
            start: self.start - days,
            end: self.end - days,
        }
    }
}

/// Channel ids are opaque to this service, but must look like ids.
pub fn check_channel_id(raw: &str) -> Result<(), String> {
    if raw.is_empty() || raw.len() > 64 {
        return Err("1 to 64 characters".into());
    }
    if !raw
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
    {
        return Err("letters, digits, '-', '_', '.' and ':' only".into());
    }
    Ok(())
}

/// What one report row adds up to over one period, read from rollups (or raw facts).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sums {
    pub orders: i64,
    pub units: i64,
    /// What customers paid, after discounts, before returns.
    pub sales: i64,
    pub returns: i64,
    pub cogs: i64,
    pub new_customers: i64,
    pub repeat_net_sales: i64,
    pub pickup_orders: i64,
    pub pickup_hits: i64,
    pub visits: i64,
    pub impressions: i64,
    pub interactions: i64,
    pub reach: i64,
    pub marketing_spend: i64,
    pub operations_spend: i64,
    /// Distinct buying customers.
    pub customers: i64,
    /// Of those, customers with two orders or more in the period.
    pub repeat_customers: i64,
    /// New customers of the period who ordered twice or more within it.
    pub new_customers_repeating: i64,
    /// Net sales to date of the customers acquired in the period.
    pub cohort_net_sales: i64,
    pub average_inventory_value: Option<i64>,
    pub csat_sum: i64,
    pub csat_count: i64,
    pub nps_promoters: i64,
    pub nps_detractors: i64,
    pub nps_count: i64,
}

/// Every KPI of one row and period. `None`: undefined (zero denominator).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Kpis {
    pub net_sales: i64,
    pub gross_sales: i64,
    pub returns: i64,
    pub cost_of_goods_sold: i64,
    pub gross_margin: i64,
    pub sales_share: Option<f64>,
    pub orders: i64,
    pub average_order_value: Option<i64>,
    pub new_customers: i64,
    pub acquisition_share: Option<f64>,
    pub customer_acquisition_cost: Option<i64>,
    pub visits: i64,
    pub conversion_rate: Option<f64>,
    pub customers: i64,
    pub repeat_purchase_rate: Option<f64>,
    pub new_customer_repeat_rate: Option<f64>,
    pub repurchase_share: Option<f64>,
    pub return_rate: Option<f64>,
    pub customer_lifetime_value: Option<i64>,
    pub inventory_turnover: Option<f64>,
    pub average_inventory_value: Option<i64>,
    pub pickup_orders: i64,
    pub pickup_sla_hit_rate: Option<f64>,
    pub impressions: i64,
    pub interactions: i64,
    pub interaction_rate: Option<f64>,
    pub reach: i64,
    pub marketing_spend: i64,
    pub operations_spend: i64,
    pub channel_roi: Option<f64>,
    pub satisfaction: Option<f64>,
    pub nps: Option<f64>,
    pub feedback_count: i64,
}

/// `num / den`, or `None` when `den` is zero.
pub fn ratio(num: i64, den: i64) -> Option<f64> {
    (den != 0).then(|| num as f64 / den as f64)
}

/// Money divided by a count, rounded half away from zero to a minor unit; `None` for zero.
pub fn per(amount: i64, count: i64) -> Option<i64> {
    if count == 0 {
        return None;
    }
    let (a, c) = (i128::from(amount), i128::from(count));
    let rounded = (2 * a + c.signum() * a.signum() * c.abs()) / (2 * c);
    i64::try_from(rounded).ok()
}

/// The KPIs of `row`, with shares against `total` (every row of the report together).
pub fn derive(row: &Sums, total: &Sums) -> Kpis {
    let net_sales = row.sales - row.returns;
    let gross_margin = net_sales - row.cogs;
    let total_net = total.sales - total.returns;
    let spend = row.marketing_spend + row.operations_spend;
    Kpis {
        net_sales,
        gross_sales: row.sales,
        returns: row.returns,
        cost_of_goods_sold: row.cogs,
        gross_margin,
        sales_share: ratio(net_sales, total_net),
        orders: row.orders,
        average_order_value: per(net_sales, row.orders),
        new_customers: row.new_customers,
        acquisition_share: ratio(row.new_customers, total.new_customers),
        customer_acquisition_cost: per(row.marketing_spend, row.new_customers),
        visits: row.visits,
        conversion_rate: ratio(row.orders, row.visits),
        customers: row.customers,
        repeat_purchase_rate: ratio(row.repeat_customers, row.customers),
        new_customer_repeat_rate: ratio(row.new_customers_repeating, row.new_customers),
        repurchase_share: ratio(row.repeat_net_sales, net_sales),
        return_rate: ratio(row.returns, row.sales),
        customer_lifetime_value: per(row.cohort_net_sales, row.new_customers),
        inventory_turnover: row
            .average_inventory_value
            .and_then(|avg| ratio(row.cogs, avg)),
        average_inventory_value: row.average_inventory_value,
        pickup_orders: row.pickup_orders,
        pickup_sla_hit_rate: ratio(row.pickup_hits, row.pickup_orders),
        impressions: row.impressions,
        interactions: row.interactions,
        interaction_rate: ratio(row.interactions, row.impressions),
        reach: row.reach,
        marketing_spend: row.marketing_spend,
        operations_spend: row.operations_spend,
        channel_roi: ratio(gross_margin, spend),
        satisfaction: ratio(row.csat_sum, row.csat_count),
        nps: ratio(
            100 * (row.nps_promoters - row.nps_detractors),
            row.nps_count,
        ),
        feedback_count: row.csat_count + row.nps_count,
    }
}

impl Sums {
    /// Adds another row's additive figures (distinct customers are not additive: the caller
    /// sets them from their own query).
    pub fn add(&mut self, o: &Sums) {
        self.orders += o.orders;
        self.units += o.units;
        self.sales += o.sales;
        self.returns += o.returns;
        self.cogs += o.cogs;
        self.new_customers += o.new_customers;
        self.repeat_net_sales += o.repeat_net_sales;
        self.pickup_orders += o.pickup_orders;
        self.pickup_hits += o.pickup_hits;
        self.visits += o.visits;
        self.impressions += o.impressions;
        self.interactions += o.interactions;
        self.reach += o.reach;
        self.marketing_spend += o.marketing_spend;
        self.operations_spend += o.operations_spend;
        self.new_customers_repeating += o.new_customers_repeating;
        self.cohort_net_sales += o.cohort_net_sales;
        self.csat_sum += o.csat_sum;
        self.csat_count += o.csat_count;
        self.nps_promoters += o.nps_promoters;
        self.nps_detractors += o.nps_detractors;
        self.nps_count += o.nps_count;
    }
}

/// A KPI's figure: money, a count, a ratio, or undefined.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Figure {
    Money(i64),
    Count(i64),
    Ratio(f64),
    Undefined,
}

impl Figure {
    fn number(self) -> Option<f64> {
        match self {
            Figure::Money(v) | Figure::Count(v) => Some(v as f64),
            Figure::Ratio(v) => Some(v),
            Figure::Undefined => None,
        }
    }
}

/// The KPIs a scorecard condition can name (the contract's `Kpi` numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kpi {
    NetSales,
    SalesShare,
    Orders,
    AverageOrderValue,
    NewCustomers,
    AcquisitionShare,
    CustomerAcquisitionCost,
    ConversionRate,
    RepeatPurchaseRate,
    NewCustomerRepeatRate,
    RepurchaseShare,
    ReturnRate,
    CustomerLifetimeValue,
    InventoryTurnover,
    PickupSlaHitRate,
    InteractionRate,
    Reach,
    GrossMargin,
    ChannelRoi,
    Satisfaction,
    Nps,
}

impl Kpi {
    pub fn figure(self, k: &Kpis) -> Figure {
        let money = |v: Option<i64>| v.map_or(Figure::Undefined, Figure::Money);
        let ratio = |v: Option<f64>| v.map_or(Figure::Undefined, Figure::Ratio);
        match self {
            Kpi::NetSales => Figure::Money(k.net_sales),
            Kpi::SalesShare => ratio(k.sales_share),
            Kpi::Orders => Figure::Count(k.orders),
            Kpi::AverageOrderValue => money(k.average_order_value),
            Kpi::NewCustomers => Figure::Count(k.new_customers),
            Kpi::AcquisitionShare => ratio(k.acquisition_share),
            Kpi::CustomerAcquisitionCost => money(k.customer_acquisition_cost),
            Kpi::ConversionRate => ratio(k.conversion_rate),
            Kpi::RepeatPurchaseRate => ratio(k.repeat_purchase_rate),
            Kpi::NewCustomerRepeatRate => ratio(k.new_customer_repeat_rate),
            Kpi::RepurchaseShare => ratio(k.repurchase_share),
            Kpi::ReturnRate => ratio(k.return_rate),
            Kpi::CustomerLifetimeValue => money(k.customer_lifetime_value),
            Kpi::InventoryTurnover => ratio(k.inventory_turnover),
            Kpi::PickupSlaHitRate => ratio(k.pickup_sla_hit_rate),
            Kpi::InteractionRate => ratio(k.interaction_rate),
            Kpi::Reach => Figure::Count(k.reach),
            Kpi::GrossMargin => Figure::Money(k.gross_margin),
            Kpi::ChannelRoi => ratio(k.channel_roi),
            Kpi::Satisfaction => ratio(k.satisfaction),
            Kpi::Nps => ratio(k.nps),
        }
    }

    /// Money KPIs take an amount threshold; the others a plain value.
    pub fn is_money(self) -> bool {
        matches!(
            self,
            Kpi::NetSales
                | Kpi::AverageOrderValue
                | Kpi::CustomerAcquisitionCost
                | Kpi::CustomerLifetimeValue
                | Kpi::GrossMargin
        )
    }

    /// The inputs shown beside a condition's figure: what the KPI is computed from.
    pub fn inputs(self) -> &'static [Input] {
        use Input::*;
        match self {
            Kpi::NetSales => &[GrossSales, Returns],
            Kpi::SalesShare | Kpi::Orders | Kpi::Reach => &[NetSales],
            Kpi::AverageOrderValue => &[NetSales, Orders],
            Kpi::NewCustomers | Kpi::AcquisitionShare => &[NewCustomers],
            Kpi::CustomerAcquisitionCost => &[MarketingSpend, NewCustomers],
            Kpi::ConversionRate => &[Orders, Visits],
            Kpi::RepeatPurchaseRate => &[Customers],
            Kpi::NewCustomerRepeatRate => &[NewCustomers],
            Kpi::RepurchaseShare | Kpi::ReturnRate => &[NetSales, Returns],
            Kpi::CustomerLifetimeValue => &[NewCustomers],
            Kpi::InventoryTurnover => &[CostOfGoodsSold],
            Kpi::PickupSlaHitRate => &[PickupOrders],
            Kpi::InteractionRate => &[Interactions, Impressions],
            Kpi::GrossMargin => &[NetSales, CostOfGoodsSold],
            Kpi::ChannelRoi => &[GrossMargin, MarketingSpend, OperationsSpend],
            Kpi::Satisfaction | Kpi::Nps => &[FeedbackCount],
        }
    }
}

/// A named input of a KPI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    GrossSales,
    Returns,
    NetSales,
    Orders,
    NewCustomers,
    MarketingSpend,
    OperationsSpend,
    Visits,
    Customers,
    CostOfGoodsSold,
    PickupOrders,
    Interactions,
    Impressions,
    GrossMargin,
    FeedbackCount,
}

impl Input {
    pub fn name(self) -> &'static str {
        match self {
            Input::GrossSales => "gross_sales",
            Input::Returns => "returns",
            Input::NetSales => "net_sales",
            Input::Orders => "orders",
            Input::NewCustomers => "new_customers",
            Input::MarketingSpend => "marketing_spend",
            Input::OperationsSpend => "operations_spend",
            Input::Visits => "visits",
            Input::Customers => "customers",
            Input::CostOfGoodsSold => "cost_of_goods_sold",
            Input::PickupOrders => "pickup_orders",
            Input::Interactions => "interactions",
            Input::Impressions => "impressions",
            Input::GrossMargin => "gross_margin",
            Input::FeedbackCount => "feedback_count",
        }
    }

    pub fn figure(self, k: &Kpis) -> Figure {
        match self {
            Input::GrossSales => Figure::Money(k.gross_sales),
            Input::Returns => Figure::Money(k.returns),
            Input::NetSales => Figure::Money(k.net_sales),
            Input::Orders => Figure::Count(k.orders),
            Input::NewCustomers => Figure::Count(k.new_customers),
            Input::MarketingSpend => Figure::Money(k.marketing_spend),
            Input::OperationsSpend => Figure::Money(k.operations_spend),
            Input::Visits => Figure::Count(k.visits),
            Input::Customers => Figure::Count(k.customers),
            Input::CostOfGoodsSold => Figure::Money(k.cost_of_goods_sold),
            Input::PickupOrders => Figure::Count(k.pickup_orders),
            Input::Interactions => Figure::Count(k.interactions),
            Input::Impressions => Figure::Count(k.impressions),
            Input::GrossMargin => Figure::Money(k.gross_margin),
            Input::FeedbackCount => Figure::Count(k.feedback_count),
        }
    }
}

/// What a condition asks of its KPI.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    /// Up by at least this many basis points over the baseline.
    IncreaseBy(i32),
    /// Down by at least this many basis points from the baseline.
    DecreaseBy(i32),
    AtLeast(f64),
    AtMost(f64),
}

/// (current - baseline) / baseline in basis points; `None` when the baseline is zero or either
/// figure undefined.
pub fn change_bps(current: Figure, baseline: Figure) -> Option<i32> {
    let (c, b) = (current.number()?, baseline.number()?);
    if b == 0.0 {
        return None;
    }
    let bps = ((c - b) / b.abs() * 10_000.0).round();
    (bps.is_finite() && bps.abs() < f64::from(i32::MAX)).then_some(bps as i32)
}

/// Whether a condition is met; an undefined figure never meets one.
pub fn met(rule: Rule, current: Figure, baseline: Figure) -> bool {
    match rule {
        Rule::IncreaseBy(bps) => change_bps(current, baseline).is_some_and(|c| c >= bps),
        Rule::DecreaseBy(bps) => change_bps(current, baseline).is_some_and(|c| c <= -bps),
        Rule::AtLeast(t) => current.number().is_some_and(|c| c >= t),
        Rule::AtMost(t) => current.number().is_some_and(|c| c <= t),
    }
}

/// A payout rule: `min_met` of `conditions` (0: all) pays `payout_bps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayoutRule {
    pub conditions: Vec<String>,
    pub min_met: usize,
    pub payout_bps: i32,
}

/// The highest payout among satisfied rules, and its index; `(0, None)` when none is.
pub fn payout(rules: &[PayoutRule], met: &[String]) -> (i32, Option<usize>) {
    let mut best: (i32, Option<usize>) = (0, None);
    for (i, rule) in rules.iter().enumerate() {
        let hits = rule.conditions.iter().filter(|c| met.contains(c)).count();
        let needed = if rule.min_met == 0 {
            rule.conditions.len()
        } else {
            rule.min_met
        };
        if hits >= needed && (best.1.is_none() || rule.payout_bps > best.0) {
            best = (rule.payout_bps, Some(i));
        }
    }
    best
}

/// FNV-1a, 64 bits: stable across processes and releases, unlike std's hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The variant a subject falls in: a hash of experiment and subject picks a bucket of 10,000,
/// and variants own consecutive buckets by weight.
pub fn assign<'a>(experiment_id: &str, subject_id: &str, variants: &'a [(String, i32)]) -> &'a str {
    let key = format!("{experiment_id}:{subject_id}");
    let bucket = (fnv1a(key.as_bytes()) % 10_000) as i64;
    let mut upper = 0i64;
    for (name, weight) in variants {
        upper += i64::from(*weight);
        if bucket < upper {
            return name;
        }
    }
    variants.last().map_or("", |(n, _)| n.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).expect("valid date")
    }

    #[test]
    fn the_previous_period_has_the_same_length() {
        let r = DayRange::new(day(2026, 3, 1), day(2026, 3, 31)).expect("valid");
        assert_eq!(r.days(), 31);
        let p = r.previous();
        assert_eq!((p.start, p.end), (day(2026, 1, 29), day(2026, 2, 28)));
        assert!(DayRange::new(day(2026, 3, 2), day(2026, 3, 1)).is_err());
        assert!(DayRange::new(day(2020, 1, 1), day(2026, 1, 1)).is_err());
    }

    #[test]
    fn zero_denominators_are_undefined() {
        let k = derive(&Sums::default(), &Sums::default());
        assert_eq!(k.average_order_value, None);
        assert_eq!(k.customer_acquisition_cost, None);
        assert_eq!(k.conversion_rate, None);
        assert_eq!(k.sales_share, None);
        assert_eq!(k.channel_roi, None);
        assert_eq!(k.nps, None);
    }

    #[test]
    fn kpis_follow_their_definitions() {
        let row = Sums {
            orders: 4,
            sales: 10_000,
            returns: 1_000,
            cogs: 4_000,
            new_customers: 2,
            visits: 100,
            marketing_spend: 3_001,
            operations_spend: 999,
            customers: 3,
            repeat_customers: 1,
            csat_sum: 9,
            csat_count: 2,
            nps_promoters: 2,
            nps_detractors: 1,
            nps_count: 4,
            ..Sums::default()
        };
        let mut total = row.clone();
        total.sales = 20_000;
        total.returns = 2_000;
        total.new_customers = 8;
        let k = derive(&row, &total);
        assert_eq!(k.net_sales, 9_000);
        assert_eq!(k.gross_margin, 5_000);
        assert_eq!(k.average_order_value, Some(2_250));
        assert_eq!(k.customer_acquisition_cost, Some(1_501));
        assert_eq!(k.sales_share, Some(0.5));
        assert_eq!(k.acquisition_share, Some(0.25));
        assert_eq!(k.conversion_rate, Some(0.04));
        assert_eq!(k.return_rate, Some(0.1));
        assert_eq!(k.channel_roi, Some(1.25));
        assert_eq!(k.satisfaction, Some(4.5));
        assert_eq!(k.nps, Some(25.0));
        assert_eq!(k.feedback_count, 6);
    }

    #[test]
    fn money_per_count_rounds_half_away_from_zero() {
        assert_eq!(per(5, 2), Some(3));
        assert_eq!(per(-5, 2), Some(-3));
        assert_eq!(per(4, 3), Some(1));
        assert_eq!(per(1, 0), None);
    }

    #[test]
    fn conditions_compare_against_the_baseline() {
        // CAC 900 from 1000: down 10%.
        assert_eq!(
            change_bps(Figure::Money(900), Figure::Money(1000)),
            Some(-1000)
        );
        assert!(met(
            Rule::DecreaseBy(1000),
            Figure::Money(900),
            Figure::Money(1000)
        ));
        assert!(!met(
            Rule::DecreaseBy(1001),
            Figure::Money(900),
            Figure::Money(1000)
        ));
        assert!(met(
            Rule::IncreaseBy(500),
            Figure::Ratio(0.42),
            Figure::Ratio(0.40)
        ));
        assert!(!met(
            Rule::IncreaseBy(0),
            Figure::Count(3),
            Figure::Count(0)
        ));
        assert!(!met(
            Rule::AtLeast(0.0),
            Figure::Undefined,
            Figure::Count(1)
        ));
        assert!(met(Rule::AtMost(5.0), Figure::Count(5), Figure::Undefined));
    }

    #[test]
    fn the_best_satisfied_payout_applies() {
        let rules = vec![
            PayoutRule {
                conditions: vec!["a".into(), "b".into()],
                min_met: 0,
                payout_bps: 10_000,
            },
            PayoutRule {
                conditions: vec!["a".into(), "b".into()],
                min_met: 1,
                payout_bps: 5_000,
            },
        ];
        assert_eq!(payout(&rules, &["a".into(), "b".into()]), (10_000, Some(0)));
        assert_eq!(payout(&rules, &["b".into()]), (5_000, Some(1)));
        assert_eq!(payout(&rules, &[]), (0, None));
    }

    #[test]
    fn assignment_is_deterministic_and_follows_weights() {
        let variants = vec![("control".to_owned(), 5_000), ("b".to_owned(), 5_000)];
        let first = assign("exp", "c-1", &variants);
        for _ in 0..3 {
            assert_eq!(assign("exp", "c-1", &variants), first);
        }
        let b = (0..10_000)
            .filter(|i| assign("exp", &format!("c-{i}"), &variants) == "b")
            .count();
        assert!((4_700..5_300).contains(&b), "{b}");
        let all_control = vec![("control".to_owned(), 10_000), ("b".to_owned(), 0)];
        assert_eq!(assign("exp", "x", &all_control), "control");
    }
}

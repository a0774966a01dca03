//! Loyalty rules: the earn rate, what a point is worth and the tier ladder by rolling net
//! spend. The tier follows the orders as they arrive, because it is computed on every read
//! from the rolling spend, which sums the days of each customer's purchase figures
//! ([`crate::purchases`]); after each batch of events the consumer recomputes the tiers of the customers it
//! touched and announces each change (`CustomerTierChanged`), which order-management keeps to
//! price orders without asking crm each time. Rules are the built-in ones until an admin
//! replaces them (`SetLoyaltyRules`); they are stored as one row and read where needed.

use chrono::{DateTime, Duration, Utc};
use omni_proto::common::Money;
use omni_proto::events::CustomerTierChanged;
use omni_proto::events::event::Payload;
use omni_proto::omni::crm::v1 as pb;
use omni_runtime::Error;
use omni_runtime::error::Violations;
use omni_runtime::outbox::Outbox;
use prost::Message;
use sqlx::PgConnection;

/// Days of spend a tier looks back on unless the rules say otherwise.
pub const WINDOW_DAYS: i64 = 365;

/// The built-in ladder: (code, name, minimum rolling net spend in minor units, earn multiplier
/// in basis points), lowest first. Every tier earns at the base rate.
pub const TIERS: &[(&str, &str, i64, i32)] = &[
    ("member", "Member", 0, 10_000),
    ("silver", "Silver", 50_000, 10_000),
    ("gold", "Gold", 200_000, 10_000),
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    pub code: String,
    pub name: String,
    pub min_spend: i64,
    pub earn_bps: i32,
}

/// The loyalty rules in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// Points per whole currency unit, before the tier multiplier.
    pub points_per_unit: i64,
    /// What one point is worth when redeemed, in minor units (0: not stated).
    pub point_value: i64,
    pub currency: String,
    pub window_days: i64,
    /// Ascending by `min_spend`.
    pub tiers: Vec<Tier>,
    pub updated_at: Option<DateTime<Utc>>,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            points_per_unit: 1,
            point_value: 0,
            currency: String::new(),
            window_days: WINDOW_DAYS,
            tiers: TIERS
                .iter()
                .map(|(code, name, min, bps)| Tier {
                    code: (*code).to_owned(),
                    name: (*name).to_owned(),
                    min_spend: *min,
                    earn_bps: *bps,
                })
                .collect(),
            updated_at: None,
        }
    }
}

impl Rules {
    /// The earliest placement time the rolling spend at `now` counts.
    pub fn window_start(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now - Duration::days(self.window_days)
    }

    /// The tier a rolling spend reaches ("" below the first), and the next one with the spend
    /// still missing.
    pub fn tier_for(&self, spend: i64) -> (&str, Option<(&str, i64)>) {
        let mut current = "";
        let mut next = None;
        for t in &self.tiers {
            if spend >= t.min_spend {
                current = &t.code;
            } else {
                next = Some((t.code.as_str(), t.min_spend - spend));
                break;
            }
        }
        (current, next)
    }

    /// Points earned by `net_minor` of spend for a customer in `tier`.
    pub fn points_for(&self, net_minor: i64, tier: &str) -> i64 {
        let bps = self
            .tiers
            .iter()
            .find(|t| t.code == tier)
            .map_or(10_000, |t| i64::from(t.earn_bps));
        (net_minor / 100) * self.points_per_unit * bps / 10_000
    }

    pub fn to_pb(&self) -> pb::LoyaltyRules {
        pb::LoyaltyRules {
            points_per_unit: self.points_per_unit as i32,
            point_value: (self.point_value > 0).then(|| Money {
                minor_units: self.point_value,
                currency: self.currency.clone(),
            }),
            tier_window_days: self.window_days as i32,
            tiers: self
                .tiers
                .iter()
                .map(|t| pb::Tier {
                    code: t.code.clone(),
                    name: t.name.clone(),
                    min_rolling_spend: Some(Money {
                        minor_units: t.min_spend,
                        currency: self.currency.clone(),
                    }),
                    earn_multiplier_bps: t.earn_bps,
                })
                .collect(),
            updated_at: self.updated_at.map(crate::grpc::ts),
        }
    }

    /// Validated rules from the contract; violations name `rules.*` fields.
    pub fn from_pb(r: &pb::LoyaltyRules) -> Result<Self, Error> {
        let mut v = Violations::new();
        if !(0..=1_000).contains(&r.points_per_unit) {
            v.add("rules.points_per_unit", "between 0 and 1000");
        }
        let point_value = r.point_value.as_ref().map_or(0, |m| m.minor_units);
        if point_value < 0 {
            v.add("rules.point_value", "must not be negative");
        }
        let window = if r.tier_window_days == 0 {
            WINDOW_DAYS
        } else {
            i64::from(r.tier_window_days)
        };
        if !(1..=3_650).contains(&window) {
            v.add("rules.tier_window_days", "0 (365) or 1 to 3650");
        }
        if r.tiers.is_empty() || r.tiers.len() > 20 {
            v.add("rules.tiers", "1 to 20 tiers");
        }
        let mut tiers: Vec<Tier> = Vec::with_capacity(r.tiers.len());
        for (i, t) in r.tiers.iter().enumerate() {
            let code = t.code.trim();
            if code.is_empty()
                || code.len() > 32
                || !code
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                v.add(format!("rules.tiers[{i}].code"), "1 to 32 of a-z, 0-9, _");
            }
            if tiers.iter().any(|x| x.code == code) {
                v.add(format!("rules.tiers[{i}].code"), "used twice");
            }
            let min = t.min_rolling_spend.as_ref().map_or(0, |m| m.minor_units);
            if min < 0 {
                v.add(
                    format!("rules.tiers[{i}].min_rolling_spend"),
                    "must not be negative",
                );
            }
            if tiers.last().is_some_and(|p| p.min_spend >= min) {
                v.add(
                    format!("rules.tiers[{i}].min_rolling_spend"),
                    "tiers must ascend by minimum spend",
                );
            }
            if !(0..=100_000).contains(&t.earn_multiplier_bps) {
                v.add(
                    format!("rules.tiers[{i}].earn_multiplier_bps"),
                    "between 0 and 100000",
                );
            }
            tiers.push(Tier {
                code: code.to_owned(),
                name: if t.name.trim().is_empty() {
                    code.to_owned()
                } else {
                    t.name.trim().to_owned()
                },
                min_spend: min,
                earn_bps: t.earn_multiplier_bps,
            });
        }
        v.finish()?;
        Ok(Self {
            points_per_unit: i64::from(r.points_per_unit),
            point_value,
            currency: r
                .point_value
                .as_ref()
                .map(|m| m.currency.clone())
                .unwrap_or_default(),
            window_days: window,
            tiers,
            updated_at: None,
        })
    }
}

/// Recomputes the tier of each of `customers` (survivors, sorted) and announces every change
/// (`crm.customer_tier_changed`) in the caller's transaction. Two statements whatever the
/// number of customers, plus one outbox row per change; each rolling spend sums the days of
/// the customer's purchase figures ([`crate::purchases`]), not its orders.
pub async fn announce_changes(
    conn: &mut PgConnection,
    outbox: &Outbox,
    customers: &[String],
) -> Result<usize, Error> {
    if customers.is_empty() {
        return Ok(0);
    }
    let rules = load(conn).await?;
    let since = rules.window_start(Utc::now());
    let rows: Vec<(String, i64, Option<String>, String)> = sqlx::query_as(
        "SELECT c.id, rolling_spend(c.id, $2), t.tier,
             coalesce((SELECT currency FROM customer_orders o WHERE o.customer_id = c.id
                 ORDER BY o.placed_at DESC, o.order_id LIMIT 1), '')
         FROM unnest($1::text[]) AS c(id)
         LEFT JOIN customer_tiers t ON t.customer_id = c.id
         ORDER BY c.id",
    )
    .bind(customers)
    .bind(since)
    .fetch_all(&mut *conn)
    .await?;
    let mut changed = Vec::new();
    for (customer, spend, previous, currency) in rows {
        let previous = previous.unwrap_or_default();
        let tier = rules.tier_for(spend).0.to_owned();
        if tier != previous {
            changed.push((customer, previous, tier, spend, currency));
        }
    }
    if changed.is_empty() {
        return Ok(0);
    }
    let ids: Vec<&str> = changed.iter().map(|c| c.0.as_str()).collect();
    let new_tiers: Vec<&str> = changed.iter().map(|c| c.2.as_str()).collect();
    sqlx::query(
        "INSERT INTO customer_tiers (customer_id, tier)
         SELECT * FROM unnest($1::text[], $2::text[])
         ON CONFLICT (customer_id) DO UPDATE SET tier = EXCLUDED.tier, changed_at = now()",
    )
    .bind(&ids)
    .bind(&new_tiers)
    .execute(&mut *conn)
    .await?;
    for (customer, previous_tier, tier, spend, currency) in &changed {
        outbox
            .add(
                conn,
                "crm.customer_tier_changed",
                customer,
                "",
                Payload::CustomerTierChanged(CustomerTierChanged {
                    customer_id: customer.clone(),
                    previous_tier: previous_tier.clone(),
                    tier: tier.clone(),
                    rolling_spend: Some(Money {
                        minor_units: *spend,
                        currency: currency.clone(),
                    }),
                }),
            )
            .await?;
    }
    Ok(changed.len())
}

/// The rules in force: the stored ones, else the built-in ones.
pub async fn load(conn: &mut PgConnection) -> Result<Rules, Error> {
    let row: Option<(Vec<u8>, DateTime<Utc>)> =
        sqlx::query_as("SELECT rules, updated_at FROM loyalty_rules")
            .fetch_optional(conn)
            .await?;
    let Some((bytes, updated_at)) = row else {
        return Ok(Rules::default());
    };
    let stored = pb::LoyaltyRules::decode(bytes.as_slice())
        .map_err(|e| Error::Internal(anyhow::anyhow!("stored loyalty rules do not decode: {e}")))?;
    let mut rules = Rules::from_pb(&stored)?;
    rules.updated_at = Some(updated_at);
    Ok(rules)
}

/// Replaces the rules; tiers follow at once, as they are computed on read.
pub async fn save(conn: &mut PgConnection, rules: &Rules) -> Result<Rules, Error> {
    let updated_at: DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO loyalty_rules (id, rules) VALUES (true, $1)
         ON CONFLICT (id) DO UPDATE SET rules = EXCLUDED.rules, updated_at = now()
         RETURNING updated_at",
    )
    .bind(rules.to_pb().encode_to_vec())
    .fetch_one(conn)
    .await?;
    Ok(Rules {
        updated_at: Some(updated_at),
        ..rules.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_follow_spend_thresholds() {
        let r = Rules::default();
        assert_eq!(r.tier_for(0), ("member", Some(("silver", 50_000))));
        assert_eq!(r.tier_for(49_999), ("member", Some(("silver", 1))));
        assert_eq!(r.tier_for(50_000), ("silver", Some(("gold", 150_000))));
        assert_eq!(r.tier_for(250_000), ("gold", None));
    }

    #[test]
    fn points_follow_the_rate_and_the_tier_multiplier() {
        let mut r = Rules::default();
        assert_eq!(r.points_for(12_345, "gold"), 123);
        r.points_per_unit = 2;
        r.tiers[2].earn_bps = 15_000;
        assert_eq!(r.points_for(10_000, "gold"), 300);
        assert_eq!(r.points_for(10_000, "member"), 200);
    }

    #[test]
    fn a_descending_ladder_is_refused() {
        let mut p = Rules::default().to_pb();
        p.tiers.swap(1, 2);
        let Err(Error::InvalidArgument(v)) = Rules::from_pb(&p) else {
            panic!("accepted a descending ladder");
        };
        assert_eq!(v[0].field, "rules.tiers[2].min_rolling_spend");
    }
}

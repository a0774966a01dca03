//! Where an order's lines leave from: the channel's strategy (or its experiment's variant),
//! live availability per location from inventory, and the decision with its reason.

use std::collections::HashMap;

use chrono::Utc;
use omni_proto::omni::inventory::v1 as inventory;
use omni_proto::omni::orders::v1::{
    AllocatedItem, Delivery, DeliveryKind, ExperimentVariant, SourcingAllocation, SourcingConfig,
    SourcingDecision, SourcingStrategy,
};
use omni_runtime::error::PreconditionViolation;
use omni_runtime::{Error, Result};

use super::{App, ts};
use crate::domain::{self, Candidate, Unsourceable, Want};
use crate::store;
use crate::upstream::call;

/// How far from a pickup store its alternatives are looked for.
const ALTERNATIVES_RADIUS_M: f64 = 50_000.0;

/// A decision and, per line, the location it leaves from.
#[derive(Debug, Clone)]
pub struct Sourced {
    pub decision: SourcingDecision,
    pub line_locations: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct PreviewInput {
    pub channel_id: String,
    pub lines: Vec<Want>,
    pub delivery: Delivery,
    pub strategy: Option<SourcingStrategy>,
}

fn point(l: &inventory::Location) -> Option<(f64, f64)> {
    l.address
        .as_ref()
        .and_then(|a| a.location.as_ref())
        .map(|p| (p.latitude, p.longitude))
}

fn delivery_point(delivery: &Delivery) -> Option<(f64, f64)> {
    delivery
        .address
        .as_ref()
        .and_then(|a| a.location.as_ref())
        .map(|p| (p.latitude, p.longitude))
}

impl App {
    /// The strategy for an order of `channel_id`: the channel's setting, or the variant
    /// performance assigns `subject` when the channel runs a sourcing experiment.
    pub(super) async fn strategy_for(
        &self,
        conn: &mut sqlx::PgConnection,
        channel_id: &str,
        subject: &str,
    ) -> Result<(SourcingStrategy, Option<ExperimentVariant>)> {
        let Some(config) = store::sourcing_config(conn, channel_id).await? else {
            return Ok((SourcingStrategy::Nearest, None));
        };
        let fallback = match config.strategy() {
            SourcingStrategy::Unspecified => SourcingStrategy::Nearest,
            s => s,
        };
        if config.experiment_id.is_empty() {
            return Ok((fallback, None));
        }
        match self
            .upstreams
            .assignment(&config.experiment_id, subject)
            .await
        {
            Ok(Some(variant)) => {
                let strategy = config
                    .variant_strategies
                    .get(&variant)
                    .and_then(|s| SourcingStrategy::try_from(*s).ok())
                    .filter(|s| *s != SourcingStrategy::Unspecified)
                    .unwrap_or(fallback);
                Ok((
                    strategy,
                    Some(ExperimentVariant {
                        experiment_id: config.experiment_id,
                        variant,
                    }),
                ))
            }
            Ok(None) => Ok((fallback, None)),
            Err(e) => {
                // The experiment is an optimisation: an order is never refused for it.
                tracing::warn!(error = %e, "no sourcing assignment; using the channel strategy");
                Ok((fallback, None))
            }
        }
    }

    /// Units available per location and SKU, for the channel.
    async fn availability(
        &self,
        channel_id: &str,
        lines: &[Want],
        location_ids: Vec<String>,
    ) -> Result<HashMap<String, HashMap<String, i64>>> {
        let response = call!(
            "inventory",
            self.upstreams.availability.clone(),
            get_availability,
            inventory::GetAvailabilityRequest {
                sku_ids: lines.iter().map(|l| l.sku_id.clone()).collect(),
                channel_id: channel_id.to_owned(),
                include_locations: true,
                location_ids,
            }
        )
        .map_err(|e| e.within(""))?;
        let mut by_location: HashMap<String, HashMap<String, i64>> = HashMap::new();
        for sku in response.skus {
            for l in sku.locations {
                by_location
                    .entry(l.location_id)
                    .or_default()
                    .insert(sku.sku_id.clone(), l.available);
            }
        }
        Ok(by_location)
    }

    /// Decides where each line leaves from. `held` adds units this order already holds per
    /// location and SKU (re-sourcing after an address change).
    pub(super) async fn source(
        &self,
        channel_id: &str,
        lines: &[Want],
        delivery: &Delivery,
        strategy: SourcingStrategy,
        experiment: Option<ExperimentVariant>,
        held: &HashMap<String, HashMap<String, i64>>,
    ) -> Result<Sourced> {
        let now = Utc::now();
        match delivery.kind() {
            DeliveryKind::Pickup | DeliveryKind::CarryOut => {
                let store = self
                    .upstreams
                    .location(&delivery.store_id, "delivery.store_id")
                    .await?;
                if store.kind() != inventory::LocationKind::Store || !store.active {
                    return Err(Error::precondition(
                        "NOT_A_STORE",
                        format!("location/{}", store.id),
                        format!("{} is not an open store", store.code),
                    ));
                }
                if delivery.kind() == DeliveryKind::Pickup && !store.pickup_enabled {
                    return Err(Error::precondition(
                        "PICKUP_NOT_OFFERED",
                        format!("location/{}", store.id),
                        format!("store {} does not offer pickup", store.code),
                    ));
                }
                let available = self
                    .availability(channel_id, lines, vec![store.id.clone()])
                    .await?;
                let here = available.get(&store.id).cloned().unwrap_or_default();
                let short: Vec<usize> = lines
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| {
                        here.get(&l.sku_id).copied().unwrap_or(0)
                            + held
                                .get(&store.id)
                                .and_then(|h| h.get(&l.sku_id))
                                .copied()
                                .unwrap_or(0)
                            < l.quantity
                    })
                    .map(|(i, _)| i)
                    .collect();
                if !short.is_empty() {
                    if delivery.kind() == DeliveryKind::Pickup {
                        return Err(self.pickup_alternatives(channel_id, lines, &store).await?);
                    }
                    return Err(Error::FailedPrecondition {
                        message: format!("store {} does not have every line", store.code),
                        violations: short
                            .iter()
                            .map(|&i| {
                                PreconditionViolation::new(
                                    "STOCK_SHORTAGE",
                                    format!("lines[{i}]"),
                                    format!(
                                        "{} of {} requested, {} available at {}",
                                        lines[i].quantity,
                                        lines[i].sku_id,
                                        here.get(&lines[i].sku_id).copied().unwrap_or(0),
                                        store.code
                                    ),
                                )
                            })
                            .collect(),
                    });
                }
                let what = if delivery.kind() == DeliveryKind::Pickup {
                    "picked up at"
                } else {
                    "carried out at"
                };
                Ok(Sourced {
                    decision: SourcingDecision {
                        strategy: strategy as i32,
                        experiment,
                        allocations: vec![SourcingAllocation {
                            location_id: store.id.clone(),
                            items: items(lines),
                            line_ids: Vec::new(),
                            distance_meters: 0.0,
                        }],
                        split: false,
                        reason: format!("{what} store {}, which has every line", store.code),
                        decided_at: ts(now),
                    },
                    line_locations: vec![store.id.clone(); lines.len()],
                })
            }
            _ => {
                let locations = self.upstreams.locations(false).await?;
                let destination = delivery_point(delivery);
                let shippers: Vec<&inventory::Location> = locations
                    .by_id
                    .values()
                    .filter(|l| {
                        l.active && l.ships_orders && l.kind() != inventory::LocationKind::InTransit
                    })
                    .collect();
                let available = self.availability(channel_id, lines, Vec::new()).await?;
                let mut candidates: Vec<Candidate> = shippers
                    .iter()
                    .map(|l| {
                        let mut stock = available.get(&l.id).cloned().unwrap_or_default();
                        if let Some(h) = held.get(&l.id) {
                            for (sku, q) in h {
                                *stock.entry(sku.clone()).or_default() += q;
                            }
                        }
                        Candidate {
                            location_id: l.id.clone(),
                            code: l.code.clone(),
                            is_store: l.kind() == inventory::LocationKind::Store,
                            distance_meters: destination
                                .zip(point(l))
                                .map(|(a, b)| domain::distance_meters(a, b)),
                            available: stock,
                        }
                    })
                    .collect();
                // A stable order, so equal candidates always resolve the same way.
                candidates.sort_by(|a, b| a.code.cmp(&b.code));
                let plan = domain::source(strategy, lines, &candidates).map_err(|e| match e {
                    Unsourceable::Line { index, best } => Error::FailedPrecondition {
                        message: "not enough stock to ship the order".to_owned(),
                        violations: vec![PreconditionViolation::new(
                            "STOCK_SHORTAGE",
                            format!("lines[{index}]"),
                            format!(
                                "{} of {} requested; no location that ships orders has more than {best}",
                                lines[index].quantity, lines[index].sku_id
                            ),
                        )],
                    },
                })?;
                let used = plan.locations();
                let allocations = used
                    .iter()
                    .map(|&c| {
                        let chosen: Vec<Want> = lines
                            .iter()
                            .zip(&plan.assignment)
                            .filter(|(_, a)| **a == c)
                            .map(|(l, _)| l.clone())
                            .collect();
                        SourcingAllocation {
                            location_id: candidates[c].location_id.clone(),
                            items: items(&chosen),
                            line_ids: Vec::new(),
                            distance_meters: candidates[c].distance_meters.unwrap_or(0.0),
                        }
                    })
                    .collect();
                Ok(Sourced {
                    decision: SourcingDecision {
                        strategy: strategy as i32,
                        experiment,
                        allocations,
                        split: used.len() > 1,
                        reason: plan.reason.clone(),
                        decided_at: ts(now),
                    },
                    line_locations: plan
                        .assignment
                        .iter()
                        .map(|&c| candidates[c].location_id.clone())
                        .collect(),
                })
            }
        }
    }

    /// The refusal for a pickup the store cannot serve: the nearest stores that can.
    async fn pickup_alternatives(
        &self,
        channel_id: &str,
        lines: &[Want],
        store: &inventory::Location,
    ) -> Result<Error> {
        // Open pickup stores near this one, nearest first, that have every line now.
        let origin = point(store);
        let locations = self.upstreams.locations(false).await?;
        let mut near: Vec<(&inventory::Location, f64)> = locations
            .by_id
            .values()
            .filter(|l| {
                l.id != store.id
                    && l.active
                    && l.pickup_enabled
                    && l.kind() == inventory::LocationKind::Store
            })
            .filter_map(|l| {
                let d = domain::distance_meters(origin?, point(l)?);
                (d <= ALTERNATIVES_RADIUS_M).then_some((l, d))
            })
            .collect();
        near.sort_by(|a, b| a.1.total_cmp(&b.1));
        let available = if near.is_empty() {
            HashMap::new()
        } else {
            self.availability(
                channel_id,
                lines,
                near.iter().map(|(l, _)| l.id.clone()).collect(),
            )
            .await?
        };
        let alternatives: Vec<PreconditionViolation> = near
            .iter()
            .filter(|(l, _)| {
                let here = available.get(&l.id);
                lines.iter().all(|w| {
                    here.and_then(|h| h.get(&w.sku_id)).copied().unwrap_or(0) >= w.quantity
                })
            })
            .take(5)
            .map(|(l, d)| {
                PreconditionViolation::new(
                    "PICKUP_UNAVAILABLE",
                    format!("location/{}", l.id),
                    format!(
                        "store {} ({:.1} km away) can hand the order over",
                        l.code,
                        d / 1000.0
                    ),
                )
            })
            .collect();
        let message = format!("store {} cannot hand every line over", store.code);
        Ok(if alternatives.is_empty() {
            Error::precondition(
                "PICKUP_UNAVAILABLE",
                format!("location/{}", store.id),
                format!("{message}, and no store within 50 km can"),
            )
        } else {
            Error::FailedPrecondition {
                message: format!("{message}; the nearest stores that can are listed"),
                violations: alternatives,
            }
        })
    }

    /// Where the lines would leave from, without holding anything.
    pub async fn preview_sourcing(
        &self,
        input: PreviewInput,
    ) -> Result<(SourcingDecision, Vec<String>)> {
        self.upstreams
            .channel(&input.channel_id, "channel_id")
            .await?;
        let (strategy, experiment) = match input.strategy {
            Some(s) => (s, None),
            None => {
                let mut conn = self.pool.acquire().await?;
                let (s, _) = self.strategy_for(&mut conn, &input.channel_id, "").await?;
                (s, None)
            }
        };
        match self
            .source(
                &input.channel_id,
                &input.lines,
                &input.delivery,
                strategy,
                experiment,
                &HashMap::new(),
            )
            .await
        {
            Ok(sourced) => Ok((sourced.decision, Vec::new())),
            Err(Error::FailedPrecondition { violations, .. })
                if violations.iter().any(|v| {
                    v.r#type == "PICKUP_UNAVAILABLE" && v.description.contains("can hand")
                }) =>
            {
                let ids = violations
                    .iter()
                    .filter_map(|v| v.subject.strip_prefix("location/").map(str::to_owned))
                    .collect();
                Ok((
                    SourcingDecision {
                        strategy: strategy as i32,
                        reason: "the pickup store cannot hand every line over".to_owned(),
                        decided_at: ts(Utc::now()),
                        ..Default::default()
                    },
                    ids,
                ))
            }
            Err(e) => Err(e),
        }
    }

    pub async fn set_sourcing_config(&self, mut config: SourcingConfig) -> Result<SourcingConfig> {
        self.upstreams
            .channel(&config.channel_id, "config.channel_id")
            .await?;
        config.updated_at = ts(Utc::now());
        store::put_sourcing_config(&self.pool, &config).await?;
        Ok(config)
    }

    pub async fn sourcing_config(&self, channel_id: &str) -> Result<SourcingConfig> {
        let mut conn = self.pool.acquire().await?;
        match store::sourcing_config(&mut conn, channel_id).await? {
            Some(c) => Ok(c),
            None => {
                self.upstreams.channel(channel_id, "channel_id").await?;
                Ok(SourcingConfig {
                    channel_id: channel_id.to_owned(),
                    strategy: SourcingStrategy::Nearest as i32,
                    ..Default::default()
                })
            }
        }
    }
}

fn items(lines: &[Want]) -> Vec<AllocatedItem> {
    lines
        .iter()
        .map(|l| AllocatedItem {
            sku_id: l.sku_id.clone(),
            quantity: i32::try_from(l.quantity).unwrap_or(i32::MAX),
        })
        .collect()
}

//! Promotions: creation and changes under the exclusivity rule, ending, reads.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use omni_runtime::error::PreconditionViolation;
use omni_runtime::{Error, Result};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{App, Idem, claim, complete, missing, missing_many, stale};
use crate::domain::{self, ExclusiveCandidate, Scope, Window};
use crate::pricing::{self, Rule};
use crate::store::{self, PromotionRow};

#[derive(Debug, Clone)]
pub struct PromotionInput {
    pub name: String,
    pub description: String,
    pub rule: Rule,
    pub scope: Scope,
    pub window: Window,
    pub priority: i32,
    pub exclusive: bool,
}

impl PromotionRow {
    pub fn scope(&self) -> Scope {
        Scope {
            channels: self.channel_ids.clone(),
            skus: self.sku_ids.clone(),
            categories: self.category_ids.clone(),
            tiers: self.customer_tiers.clone(),
        }
    }

    pub fn window(&self) -> Window {
        Window {
            start: self.starts_at,
            end: self.ends_at,
        }
    }

    pub fn rule(&self) -> Result<Rule> {
        serde_json::from_str(&self.rule).map_err(|e| {
            Error::internal(format!("promotion {} has an unreadable rule: {e}", self.id))
        })
    }

    /// Whether the promotion was running at `at`: within its window and not ended by then
    /// (what `store::list_promotions` selects for an `active_at`).
    pub fn running_at(&self, at: DateTime<Utc>) -> bool {
        self.starts_at.is_none_or(|s| s <= at)
            && self.ends_at.is_none_or(|e| e > at)
            && self.ended_at.is_none_or(|e| e > at)
    }

    /// The engine's view of the promotion.
    pub fn pricing(&self) -> Result<pricing::Promotion> {
        Ok(pricing::Promotion {
            id: self.id,
            label: if self.description.is_empty() {
                self.name.clone()
            } else {
                self.description.clone()
            },
            rule: self.rule()?,
            scope: self.scope(),
            window: self.window(),
            priority: self.priority,
            exclusive: self.exclusive,
        })
    }
}

fn row_of(id: Uuid, input: &PromotionInput, currency: &str) -> Result<PromotionRow> {
    let now = Utc::now();
    Ok(PromotionRow {
        id,
        name: input.name.clone(),
        description: input.description.clone(),
        rule: serde_json::to_string(&input.rule)
            .map_err(|e| Error::internal(format!("encoding a rule: {e}")))?,
        currency: currency.to_owned(),
        channel_ids: input.scope.channels.clone(),
        sku_ids: input.scope.skus.clone(),
        category_ids: input.scope.categories.clone(),
        customer_tiers: input.scope.tiers.clone(),
        starts_at: input.window.start,
        ends_at: input.window.end,
        priority: input.priority,
        exclusive: input.exclusive,
        ended_at: None,
        version: 1,
        created_at: now,
        updated_at: now,
    })
}

/// Every SKU a rule or scope names.
fn named_skus(input: &PromotionInput) -> Vec<Uuid> {
    let mut skus = input.scope.skus.clone();
    if let Rule::Bundle { items, .. } = &input.rule {
        skus.extend(items.iter().map(|i| i.sku_id));
    }
    skus.sort_unstable();
    skus.dedup();
    skus
}

/// The ids of `wanted` that are not in `found`, as (field, description) pairs.
fn unknown(field: &str, kind: &str, wanted: &[Uuid], found: &[Uuid]) -> Vec<(String, String)> {
    let found: HashSet<&Uuid> = found.iter().collect();
    wanted
        .iter()
        .filter(|id| !found.contains(id))
        .map(|id| (field.to_owned(), format!("{kind} {id} does not exist")))
        .collect()
}

impl App {
    /// Unknown channels, SKUs or categories: NOT_FOUND naming them.
    async fn check_references(
        &self,
        conn: &mut PgConnection,
        input: &PromotionInput,
    ) -> Result<()> {
        let skus = named_skus(input);
        let found_channels = store::existing_channels(conn, &input.scope.channels).await?;
        let found_skus = store::existing_skus(conn, &skus).await?;
        let found_categories = store::existing_categories(conn, &input.scope.categories).await?;
        let fields: Vec<(String, String)> = [
            unknown(
                "promotion.scope.channel_ids",
                "channel",
                &input.scope.channels,
                &found_channels,
            ),
            unknown("promotion.scope.sku_ids", "sku", &skus, &found_skus),
            unknown(
                "promotion.scope.category_ids",
                "category",
                &input.scope.categories,
                &found_categories,
            ),
        ]
        .into_iter()
        .flatten()
        .collect();
        if fields.is_empty() {
            Ok(())
        } else {
            Err(missing_many("channels, SKUs or categories", fields))
        }
    }

    /// Refuses an exclusive promotion that overlaps another exclusive one in scope and time.
    /// Runs under a transaction-wide lock so two overlapping ones cannot both pass.
    async fn check_exclusive(
        &self,
        conn: &mut PgConnection,
        id: Uuid,
        input: &PromotionInput,
    ) -> Result<()> {
        if !input.exclusive {
            return Ok(());
        }
        store::lock_exclusive_promotions(conn).await?;
        let live: Vec<PromotionRow> = store::live_promotions(conn, Utc::now())
            .await?
            .into_iter()
            .filter(|p| p.exclusive && p.id != id)
            .collect();
        if live.is_empty() {
            return Ok(());
        }
        let scopes: Vec<Scope> = live.iter().map(PromotionRow::scope).collect();
        let mut categories: Vec<Uuid> = input.scope.categories.clone();
        let mut skus: Vec<Uuid> = input.scope.skus.clone();
        for s in &scopes {
            categories.extend(&s.categories);
            skus.extend(&s.skus);
        }
        let paths: HashMap<Uuid, Vec<Uuid>> = store::category_paths(conn, &categories, &skus)
            .await?
            .into_iter()
            .collect();
        let existing: Vec<ExclusiveCandidate<'_>> = live
            .iter()
            .zip(&scopes)
            .map(|(p, scope)| ExclusiveCandidate {
                id: p.id,
                scope,
                window: p.window(),
            })
            .collect();
        let candidate = ExclusiveCandidate {
            id,
            scope: &input.scope,
            window: input.window,
        };
        if let Some(other) = domain::overlapping_exclusive(&candidate, &existing, &paths) {
            let name = live
                .iter()
                .find(|p| p.id == other)
                .map(|p| p.name.clone())
                .unwrap_or_default();
            return Err(Error::FailedPrecondition {
                message: format!(
                    "exclusive promotions may not overlap: this one overlaps \"{name}\" in scope and time"
                ),
                violations: vec![PreconditionViolation::new(
                    "PROMOTION_OVERLAP",
                    format!("promotion/{other}"),
                    format!("overlaps the exclusive promotion \"{name}\" ({other})"),
                )],
            });
        }
        Ok(())
    }

    async fn promotions_changed(&self) {
        self.cache
            .invalidate(&[self.cache.promotions_entry()])
            .await;
    }

    #[tracing::instrument(name = "catalog.create_promotion", skip_all, err)]
    pub async fn create_promotion(
        &self,
        input: PromotionInput,
        currency: &str,
        idem: Option<&Idem>,
    ) -> Result<PromotionRow> {
        let mut tx = self.pool.begin().await?;
        if let Some(id) = claim(&mut tx, idem).await? {
            return store::promotion(&mut tx, id, false)
                .await?
                .ok_or_else(|| Error::not_found(format!("promotion {id}")));
        }
        self.check_references(&mut tx, &input).await?;
        let id = Uuid::now_v7();
        self.check_exclusive(&mut tx, id, &input).await?;
        store::insert_promotion(&mut tx, &row_of(id, &input, currency)?).await?;
        let row = store::promotion(&mut tx, id, false)
            .await?
            .ok_or_else(|| Error::internal("promotion vanished inside its transaction"))?;
        complete(&mut tx, idem, id).await?;
        tx.commit().await?;
        self.promotions_changed().await;
        tracing::info!(promotion_id = %id, "promotion created");
        Ok(row)
    }

    #[tracing::instrument(name = "catalog.update_promotion", skip_all, fields(promotion_id = %id), err)]
    pub async fn update_promotion(
        &self,
        id: Uuid,
        version: i64,
        input: PromotionInput,
        currency: &str,
    ) -> Result<PromotionRow> {
        let mut tx = self.pool.begin().await?;
        let current = store::promotion(&mut tx, id, true)
            .await?
            .ok_or_else(|| missing("promotion.id", format!("promotion {id}")))?;
        domain::check_version(version, current.version).map_err(|m| stale("promotion", id, m))?;
        if current.ended_at.is_some() {
            return Err(Error::precondition(
                "ENDED",
                format!("promotion/{id}"),
                "the promotion was ended; create a new one",
            ));
        }
        self.check_references(&mut tx, &input).await?;
        self.check_exclusive(&mut tx, id, &input).await?;
        let next = PromotionRow {
            version: current.version,
            created_at: current.created_at,
            ..row_of(id, &input, currency)?
        };
        store::update_promotion(&mut tx, &next).await?;
        let row = store::promotion(&mut tx, id, false)
            .await?
            .ok_or_else(|| Error::internal("promotion vanished inside its transaction"))?;
        tx.commit().await?;
        self.promotions_changed().await;
        Ok(row)
    }

    #[tracing::instrument(name = "catalog.end_promotion", skip_all, fields(promotion_id = %id), err)]
    pub async fn end_promotion(&self, id: Uuid) -> Result<PromotionRow> {
        let mut tx = self.pool.begin().await?;
        let current = store::promotion(&mut tx, id, true)
            .await?
            .ok_or_else(|| missing("promotion_id", format!("promotion {id}")))?;
        if current.ended_at.is_none() {
            let now = Utc::now();
            let next = PromotionRow {
                ended_at: Some(now),
                ends_at: Some(current.ends_at.map_or(now, |e| e.min(now))),
                ..current
            };
            store::update_promotion(&mut tx, &next).await?;
        }
        let row = store::promotion(&mut tx, id, false)
            .await?
            .ok_or_else(|| Error::internal("promotion vanished inside its transaction"))?;
        tx.commit().await?;
        self.promotions_changed().await;
        Ok(row)
    }

    pub async fn get_promotion(&self, id: Uuid) -> Result<PromotionRow> {
        let mut conn = self.pool.acquire().await?;
        store::promotion(&mut conn, id, false)
            .await?
            .ok_or_else(|| missing("promotion_id", format!("promotion {id}")))
    }

    pub async fn list_promotions(
        &self,
        channel_id: Option<Uuid>,
        active_at: Option<DateTime<Utc>>,
        include_ended: bool,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<PromotionRow>> {
        let mut conn = self.pool.acquire().await?;
        Ok(store::list_promotions(
            &mut conn,
            channel_id,
            active_at,
            include_ended,
            Utc::now(),
            after,
            limit,
        )
        .await?)
    }

    /// The promotions that may apply at each of `instants`, in their order (each list by id):
    /// the cached live set for the present; for past instants, one Postgres read covering all
    /// of them (promotions ended since still applied then), each instant keeping those that
    /// were running at it. Every rule is parsed once.
    pub(super) async fn promotions_at(
        &self,
        instants: &[DateTime<Utc>],
    ) -> Result<Vec<Vec<(String, pricing::Promotion)>>> {
        let now = Utc::now();
        let past = |at: &DateTime<Utc>| *at < now - chrono::Duration::minutes(1);
        let live = if instants.iter().any(|at| !past(at)) {
            self.live_promotions(now).await?
        } else {
            Vec::new()
        };
        let earliest = instants.iter().filter(|at| past(at)).min();
        let latest = instants.iter().filter(|at| past(at)).max();
        let history = match (earliest, latest) {
            (Some(from), Some(to)) => {
                let mut conn = self.pool.acquire().await?;
                store::promotions_running_between(&mut conn, *from, *to).await?
            }
            _ => Vec::new(),
        };
        let parsed = |rows: Vec<PromotionRow>| {
            rows.into_iter()
                .map(|row| Ok((row.pricing()?, row)))
                .collect::<Result<Vec<_>>>()
        };
        let (live, history) = (parsed(live)?, parsed(history)?);
        Ok(instants
            .iter()
            .map(|at| {
                let (rows, filter) = if past(at) {
                    (&history, true)
                } else {
                    (&live, false)
                };
                rows.iter()
                    .filter(|(_, row)| !filter || row.running_at(*at))
                    .map(|(promotion, row)| (row.currency.clone(), promotion.clone()))
                    .collect()
            })
            .collect())
    }

    /// The live promotions (not ended, not past their end), cached.
    async fn live_promotions(&self, now: DateTime<Utc>) -> Result<Vec<PromotionRow>> {
        let slot = self.cache.promotions_slot();
        match self.cache.get::<Vec<PromotionRow>>(&slot).await {
            crate::cache::Lookup::Hit(rows) => Ok(rows),
            crate::cache::Lookup::Miss(epoch) => {
                let rows = {
                    let mut conn = self.pool.acquire().await?;
                    store::live_promotions(&mut conn, now).await?
                };
                self.cache.fill(&slot, epoch, &rows).await;
                Ok(rows)
            }
        }
    }
}

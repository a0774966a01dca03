//! Channel listings under the price policy, the consistency report, competitor prices and
//! price suggestions.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};
use omni_proto::common::Money;
use omni_proto::events::event::Payload;
use omni_proto::events::{ListingChanged, PriceChanged};
use omni_runtime::auth::Principal;
use omni_runtime::error::PreconditionViolation;
use omni_runtime::{Error, Result};
use uuid::Uuid;

use super::{App, Idem, claim, complete, missing, stale};
use crate::domain::{self, CompetitorBasis, Exception, PricePolicy, PriceStanding};
use crate::store::{self, CompetitorRow, ListingRow, PolicyRow};

/// A validated SetListing.
#[derive(Debug, Clone)]
pub struct ListingInput {
    pub sku_id: Uuid,
    pub channel_id: Uuid,
    pub price: i64,
    pub currency: String,
    pub listed: bool,
    pub title_override: String,
    pub description_override: String,
    pub exception: Option<Exception>,
    pub version: i64,
}

/// A listing with its deviation from the SKU's list price.
#[derive(Debug, Clone)]
pub struct ListingOut {
    pub row: ListingRow,
    pub deviation_bps: i32,
}

impl ListingOut {
    pub fn new(row: ListingRow, list_price: i64) -> Self {
        let deviation_bps = domain::deviation_bps(row.price, list_price);
        Self { row, deviation_bps }
    }
}

/// One inconsistency the report lists.
#[derive(Debug, Clone)]
pub struct Issue {
    pub sku_id: Uuid,
    pub sku_code: String,
    pub channel_id: Uuid,
    pub kind: IssueKind,
    pub list_price: i64,
    pub channel_price: i64,
    pub currency: String,
    pub deviation_bps: i32,
    pub allowed_deviation_bps: i32,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueKind {
    PriceOutsidePolicy,
    PriceExceptionExpired,
    PriceException,
    TextDiverges,
}

#[derive(Debug, Clone)]
pub struct SuggestInput {
    pub sku_id: Uuid,
    pub channel_id: Uuid,
    pub target_margin_bps: Option<i32>,
    pub basis: CompetitorBasis,
    pub window_days: i64,
}

#[derive(Debug, Clone)]
pub struct Suggested {
    pub price: i64,
    pub margin_bps: i32,
    pub deviation_bps: i32,
    pub within_policy: bool,
}

#[derive(Debug, Clone)]
pub struct Suggestion {
    pub currency: String,
    pub current_price: Option<i64>,
    pub list_price: i64,
    pub unit_cost: i64,
    pub cost_currency: String,
    pub current_margin_bps: i32,
    pub cost_plus: Suggested,
    pub competitor_based: Option<Suggested>,
    pub competitor_prices: Vec<CompetitorRow>,
}

fn money(minor_units: i64, currency: &str) -> Option<Money> {
    Some(Money {
        minor_units,
        currency: currency.to_owned(),
    })
}

fn exception_of(row: &ListingRow) -> Option<Exception> {
    row.exception_reason.as_ref().map(|reason| Exception {
        reason: reason.clone(),
        expires_at: row.exception_expires_at,
    })
}

/// The issues one listing raises under `policy` at `now`.
fn issues_of(
    l: &store::ListingWithSku,
    policy: &PricePolicy,
    include_exceptions: bool,
    now: DateTime<Utc>,
) -> Vec<Issue> {
    let row = &l.listing;
    let deviation = domain::deviation_bps(row.price, l.list_price);
    let issue = |kind: IssueKind, detail: String| Issue {
        sku_id: row.sku_id,
        sku_code: l.sku_code.clone(),
        channel_id: row.channel_id,
        kind,
        list_price: l.list_price,
        channel_price: row.price,
        currency: row.currency.clone(),
        deviation_bps: deviation,
        allowed_deviation_bps: policy.max_deviation_bps,
        detail,
    };
    let mut out = Vec::new();
    let describe =
        domain::describe_deviation(row.price, l.list_price, deviation, policy.max_deviation_bps);
    match domain::price_standing(policy, deviation, exception_of(row).as_ref(), now) {
        PriceStanding::WithinPolicy => {}
        PriceStanding::OutsidePolicy => out.push(issue(IssueKind::PriceOutsidePolicy, describe)),
        PriceStanding::ExceptionExpired => out.push(issue(
            IssueKind::PriceExceptionExpired,
            format!("{describe}; its exception expired"),
        )),
        PriceStanding::Excepted if include_exceptions => out.push(issue(
            IssueKind::PriceException,
            format!(
                "{describe}; excepted: {}",
                row.exception_reason.clone().unwrap_or_default()
            ),
        )),
        PriceStanding::Excepted => {}
    }
    if policy.flag_text_overrides {
        let title = !row.title_override.is_empty() && row.title_override != l.product_name;
        let description = !row.description_override.is_empty()
            && row.description_override != l.product_description;
        if title || description {
            let what = match (title, description) {
                (true, true) => "title and description differ",
                (true, false) => "title differs",
                _ => "description differs",
            };
            out.push(issue(
                IssueKind::TextDiverges,
                format!("{what} from the product's"),
            ));
        }
    }
    out
}

impl App {
    pub async fn get_policy(&self) -> Result<PolicyRow> {
        let mut conn = self.pool.acquire().await?;
        Ok(store::policy(&mut conn, false).await?)
    }

    #[tracing::instrument(name = "catalog.set_price_policy", skip_all, err)]
    pub async fn set_policy(&self, policy: PricePolicy) -> Result<PolicyRow> {
        let mut tx = self.pool.begin().await?;
        store::policy(&mut tx, true).await?;
        store::set_policy(&mut tx, &policy).await?;
        let row = store::policy(&mut tx, false).await?;
        tx.commit().await?;
        Ok(row)
    }

    #[tracing::instrument(
        name = "catalog.set_listing",
        skip_all,
        fields(sku_id = %input.sku_id, channel_id = %input.channel_id),
        err
    )]
    pub async fn set_listing(&self, input: ListingInput, actor: &Principal) -> Result<ListingOut> {
        let mut tx = self.pool.begin().await?;
        let channel = store::channel(&mut tx, input.channel_id, false)
            .await?
            .ok_or_else(|| {
                missing(
                    "listing.channel_id",
                    format!("channel {}", input.channel_id),
                )
            })?;
        // Locks the SKU: its list price is what the policy measures against.
        let sku = store::sku(&mut tx, input.sku_id, true)
            .await?
            .ok_or_else(|| missing("listing.sku_id", format!("sku {}", input.sku_id)))?;
        if input.currency != channel.currency {
            return Err(Error::invalid(
                "listing.price.currency",
                format!("must be the channel's currency, {}", channel.currency),
            ));
        }
        if sku.currency != channel.currency {
            return Err(Error::precondition(
                "CURRENCY",
                format!("sku/{}", sku.id),
                format!(
                    "the list price is in {} but the channel sells in {}",
                    sku.currency, channel.currency
                ),
            ));
        }
        let policy = store::policy(&mut tx, false).await?.policy();
        let now = Utc::now();
        let deviation = domain::deviation_bps(input.price, sku.list_price);
        let standing = domain::price_standing(&policy, deviation, input.exception.as_ref(), now);
        if standing != PriceStanding::WithinPolicy && standing != PriceStanding::Excepted {
            return Err(Error::FailedPrecondition {
                message: "the channel price is outside the price policy; record an exception \
                          with a reason to allow it"
                    .into(),
                violations: vec![PreconditionViolation::new(
                    "PRICE_POLICY",
                    format!("listing/{}/{}", sku.id, channel.id),
                    domain::describe_deviation(
                        input.price,
                        sku.list_price,
                        deviation,
                        policy.max_deviation_bps,
                    ),
                )],
            });
        }
        let current = store::listing(&mut tx, sku.id, channel.id, true).await?;
        let subject = format!("{}/{}", sku.id, channel.id);
        match (&current, input.version) {
            (None, 0) => {}
            (None, v) => {
                return Err(stale(
                    "listing",
                    &subject,
                    format!("version {v} given but the listing does not exist; use 0 to create it"),
                ));
            }
            (Some(c), v) => {
                domain::check_version(v, c.version).map_err(|m| stale("listing", &subject, m))?
            }
        }
        let row = ListingRow {
            sku_id: sku.id,
            channel_id: channel.id,
            price: input.price,
            currency: input.currency.clone(),
            listed: input.listed,
            title_override: input.title_override.clone(),
            description_override: input.description_override.clone(),
            exception_reason: input.exception.as_ref().map(|e| e.reason.clone()),
            exception_approved_by: input.exception.as_ref().map(|_| actor.id.clone()),
            exception_expires_at: input.exception.as_ref().and_then(|e| e.expires_at),
            version: current.as_ref().map_or(1, |c| c.version + 1),
            updated_at: now,
        };
        if !store::write_listing(&mut tx, &row, current.is_none()).await? {
            return Err(stale(
                "listing",
                &subject,
                "the listing was created meanwhile; reload and retry".into(),
            ));
        }
        let row = store::listing(&mut tx, sku.id, channel.id, false)
            .await?
            .ok_or_else(|| Error::internal("listing vanished inside its transaction"))?;
        let aggregate = sku.id.to_string();
        self.outbox
            .add(
                &mut tx,
                "catalog.listing_changed",
                &aggregate,
                &actor.id,
                Payload::ListingChanged(ListingChanged {
                    sku_id: aggregate.clone(),
                    sku_code: sku.sku_code.clone(),
                    channel_id: channel.id.to_string(),
                    listed: row.listed,
                    created: current.is_none(),
                    price: money(row.price, &row.currency),
                    text_overridden: !row.title_override.is_empty()
                        || !row.description_override.is_empty(),
                    version: row.version,
                }),
            )
            .await?;
        let old_price = current.as_ref().map(|c| (c.price, c.currency.clone()));
        if old_price.as_ref() != Some(&(row.price, row.currency.clone())) {
            self.outbox
                .add(
                    &mut tx,
                    "catalog.price_changed",
                    &aggregate,
                    &actor.id,
                    Payload::PriceChanged(PriceChanged {
                        sku_id: aggregate.clone(),
                        sku_code: sku.sku_code.clone(),
                        channel_id: channel.id.to_string(),
                        old_price: old_price.and_then(|(p, c)| money(p, &c)),
                        new_price: money(row.price, &row.currency),
                        list_price: money(sku.list_price, &sku.currency),
                        deviation_bps: deviation,
                        under_exception: standing == PriceStanding::Excepted,
                        effective_at: Some(std::time::SystemTime::now().into()),
                    }),
                )
                .await?;
        }
        tx.commit().await?;
        self.outbox.wake();
        self.invalidate_skus(&[sku.id]).await;
        tracing::info!(version = row.version, "listing set");
        Ok(ListingOut::new(row, sku.list_price))
    }

    async fn with_deviation(&self, rows: Vec<ListingRow>) -> Result<Vec<ListingOut>> {
        let ids: Vec<Uuid> = rows.iter().map(|r| r.sku_id).collect();
        let mut conn = self.pool.acquire().await?;
        let prices: HashMap<Uuid, i64> = store::list_prices(&mut conn, &ids)
            .await?
            .into_iter()
            .collect();
        Ok(rows
            .into_iter()
            .map(|r| {
                let list = prices.get(&r.sku_id).copied().unwrap_or(r.price);
                ListingOut::new(r, list)
            })
            .collect())
    }

    pub async fn list_listings(
        &self,
        sku_id: Option<Uuid>,
        channel_id: Option<Uuid>,
        include_delisted: bool,
        after: Option<(Uuid, Uuid)>,
        limit: i64,
    ) -> Result<Vec<ListingOut>> {
        let rows = {
            let mut conn = self.pool.acquire().await?;
            if let Some(s) = sku_id
                && store::sku(&mut conn, s, false).await?.is_none()
            {
                return Err(missing("sku_id", format!("sku {s}")));
            }
            if let Some(c) = channel_id
                && store::channel(&mut conn, c, false).await?.is_none()
            {
                return Err(missing("channel_id", format!("channel {c}")));
            }
            store::list_listings(
                &mut conn,
                sku_id,
                channel_id,
                include_delisted,
                after,
                limit,
            )
            .await?
        };
        self.with_deviation(rows).await
    }

    /// Issues of listings after `after`, until `limit` issues are found; returns them with the
    /// (SKU, channel) of the last listing examined when more may follow.
    pub async fn consistency_issues(
        &self,
        channel_id: Option<Uuid>,
        category_id: Option<Uuid>,
        include_exceptions: bool,
        mut after: Option<(Uuid, Uuid)>,
        limit: i64,
    ) -> Result<(Vec<Issue>, Option<(Uuid, Uuid)>)> {
        const BATCH: i64 = 500;
        let mut conn = self.pool.acquire().await?;
        if let Some(c) = channel_id
            && store::channel(&mut conn, c, false).await?.is_none()
        {
            return Err(missing("channel_id", format!("channel {c}")));
        }
        if let Some(c) = category_id
            && store::category(&mut conn, c).await?.is_none()
        {
            return Err(missing("category_id", format!("category {c}")));
        }
        let policy = store::policy(&mut conn, false).await?.policy();
        let now = Utc::now();
        let wanted = usize::try_from(limit).unwrap_or(usize::MAX);
        let mut issues = Vec::new();
        loop {
            let batch =
                store::listings_for_report(&mut conn, channel_id, category_id, after, BATCH)
                    .await?;
            let full_batch = i64::try_from(batch.len()).unwrap_or(0) == BATCH;
            for l in &batch {
                after = Some((l.listing.sku_id, l.listing.channel_id));
                issues.extend(issues_of(l, &policy, include_exceptions, now));
                if issues.len() >= wanted {
                    return Ok((issues, after));
                }
            }
            if !full_batch {
                return Ok((issues, None));
            }
        }
    }

    #[tracing::instrument(name = "catalog.record_competitor_price", skip_all, err)]
    pub async fn record_competitor_price(
        &self,
        row: CompetitorRow,
        idem: Option<&Idem>,
    ) -> Result<CompetitorRow> {
        let mut tx = self.pool.begin().await?;
        let id = match claim(&mut tx, idem).await? {
            Some(id) => id,
            None => {
                if store::sku(&mut tx, row.sku_id, false).await?.is_none() {
                    return Err(missing(
                        "competitor_price.sku_id",
                        format!("sku {}", row.sku_id),
                    ));
                }
                store::insert_competitor_price(&mut tx, &row).await?;
                complete(&mut tx, idem, row.id).await?;
                row.id
            }
        };
        let stored = store::competitor_price(&mut tx, id)
            .await?
            .ok_or_else(|| Error::not_found(format!("competitor price {id}")))?;
        tx.commit().await?;
        Ok(stored)
    }

    pub async fn list_competitor_prices(
        &self,
        sku_id: Uuid,
        from: Option<NaiveDate>,
        to: Option<NaiveDate>,
        after: Option<(NaiveDate, Uuid)>,
        limit: i64,
    ) -> Result<Vec<CompetitorRow>> {
        let mut conn = self.pool.acquire().await?;
        if store::sku(&mut conn, sku_id, false).await?.is_none() {
            return Err(missing("sku_id", format!("sku {sku_id}")));
        }
        Ok(store::competitor_prices(&mut conn, sku_id, from, to, after, limit).await?)
    }

    pub async fn suggest_price(&self, input: SuggestInput) -> Result<Suggestion> {
        let mut conn = self.pool.acquire().await?;
        let sku = store::sku(&mut conn, input.sku_id, false)
            .await?
            .ok_or_else(|| missing("sku_id", format!("sku {}", input.sku_id)))?;
        let channel = store::channel(&mut conn, input.channel_id, false)
            .await?
            .ok_or_else(|| missing("channel_id", format!("channel {}", input.channel_id)))?;
        let listing = store::listing(&mut conn, sku.id, channel.id, false).await?;
        let policy = store::policy(&mut conn, false).await?.policy();
        let target = input
            .target_margin_bps
            .unwrap_or(policy.default_target_margin_bps);
        let suggested = |price: i64| {
            let deviation_bps = domain::deviation_bps(price, sku.list_price);
            Suggested {
                price,
                margin_bps: domain::margin_bps(price, sku.unit_cost),
                deviation_bps,
                within_policy: domain::price_standing(&policy, deviation_bps, None, Utc::now())
                    == PriceStanding::WithinPolicy,
            }
        };
        let cost_plus = domain::cost_plus_price(sku.unit_cost, target)
            .map_err(|e| Error::invalid("target_margin_bps", e))?;
        let since = Utc::now().date_naive() - chrono::Duration::days(input.window_days);
        let observed: Vec<CompetitorRow> =
            store::competitor_prices(&mut conn, sku.id, Some(since), None, None, 1000)
                .await?
                .into_iter()
                .filter(|c| c.currency == channel.currency)
                .collect();
        let figures: Vec<i64> = observed.iter().map(|c| c.price).collect();
        let current_price = listing.map(|l| l.price);
        Ok(Suggestion {
            currency: channel.currency.clone(),
            current_price,
            list_price: sku.list_price,
            unit_cost: sku.unit_cost,
            cost_currency: sku.cost_currency.clone(),
            current_margin_bps: domain::margin_bps(
                current_price.unwrap_or(sku.list_price),
                sku.unit_cost,
            ),
            cost_plus: suggested(cost_plus),
            competitor_based: domain::competitor_price(&figures, input.basis).map(suggested),
            competitor_prices: observed,
        })
    }
}

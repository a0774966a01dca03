//! Quote: gathers the pricing inputs (channel, SKUs, listings, promotions; all cached) and
//! hands them to the pure engine in [`crate::pricing`]. Many carts priced at once read what
//! they share once: each channel, the SKUs and listings of every cart, and the promotions of
//! every instant (a batch of historical orders is one Postgres read of promotions, not one
//! per order).

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use omni_runtime::error::PreconditionViolation;
use omni_runtime::{Error, Result};
use uuid::Uuid;

use super::{App, missing, missing_many};
use crate::pricing::{self, Context, Coupon, Line, Priced};
use crate::store::{ChannelRow, ListingRow, SkuView};

#[derive(Debug, Clone)]
pub struct QuoteLineInput {
    pub sku_id: Uuid,
    pub quantity: i64,
}

#[derive(Debug, Clone)]
pub struct QuoteInput {
    pub channel_id: Uuid,
    pub customer_tier: String,
    pub lines: Vec<QuoteLineInput>,
    /// Coupons with the currency their amounts were given in.
    pub coupons: Vec<(Coupon, Option<String>)>,
    pub priced_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub struct Quoted {
    pub channel: ChannelRow,
    /// Per input line, its SKU and listing.
    pub skus: Vec<SkuView>,
    pub listings: Vec<ListingRow>,
    pub priced: Priced,
    pub priced_at: DateTime<Utc>,
}

impl App {
    #[tracing::instrument(name = "catalog.quote", skip_all, fields(channel_id = %input.channel_id, lines = input.lines.len()), err)]
    pub async fn quote(&self, input: QuoteInput) -> Result<Quoted> {
        self.price(vec![input])
            .await?
            .pop()
            .ok_or_else(|| Error::internal("a quote went missing"))?
    }

    /// Prices every cart as [`App::quote`] would, in their order; each is priced or refused on
    /// its own. The outer error is a failure to read the shared inputs.
    #[tracing::instrument(name = "catalog.batch_quote", skip_all, fields(quotes = inputs.len()), err)]
    pub async fn batch_quote(&self, inputs: Vec<QuoteInput>) -> Result<Vec<Result<Quoted>>> {
        self.price(inputs).await
    }

    async fn price(&self, inputs: Vec<QuoteInput>) -> Result<Vec<Result<Quoted>>> {
        let channel_ids = distinct(inputs.iter().map(|i| i.channel_id));
        let channels = by_id(&channel_ids, self.channels_cached(&channel_ids).await?);
        let sku_ids = distinct(inputs.iter().flat_map(|i| i.lines.iter().map(|l| l.sku_id)));
        let views = by_id(&sku_ids, self.sku_views(&sku_ids).await?);
        let mut listings: HashMap<(Uuid, Uuid), ListingRow> = HashMap::new();
        for &channel in channels.keys() {
            let ids = distinct(
                inputs
                    .iter()
                    .filter(|i| i.channel_id == channel)
                    .flat_map(|i| i.lines.iter().map(|l| l.sku_id))
                    .filter(|id| views.contains_key(id)),
            );
            let found = by_id(&ids, self.listings_on(&ids, channel).await?);
            listings.extend(found.into_iter().map(|(id, l)| ((id, channel), l)));
        }
        let now = Utc::now();
        let instants: Vec<DateTime<Utc>> =
            inputs.iter().map(|i| i.priced_at.unwrap_or(now)).collect();
        let promotions = self.promotions_at(&instants).await?;
        let shared = Shared {
            channels: &channels,
            views: &views,
            listings: &listings,
        };
        Ok(inputs
            .into_iter()
            .zip(instants)
            .zip(promotions)
            .map(|((input, at), promotions)| shared.price(input, at, promotions))
            .collect())
    }
}

/// Each id once, in the order first met.
fn distinct(ids: impl Iterator<Item = Uuid>) -> Vec<Uuid> {
    let mut seen = HashSet::new();
    ids.filter(|id| seen.insert(*id)).collect()
}

/// What a cached read of `ids` found, by id.
fn by_id<T>(ids: &[Uuid], found: Vec<Option<T>>) -> HashMap<Uuid, T> {
    ids.iter()
        .copied()
        .zip(found)
        .filter_map(|(id, v)| Some((id, v?)))
        .collect()
}

/// What the carts of one call were priced from.
struct Shared<'a> {
    channels: &'a HashMap<Uuid, ChannelRow>,
    views: &'a HashMap<Uuid, SkuView>,
    /// By (SKU, channel).
    listings: &'a HashMap<(Uuid, Uuid), ListingRow>,
}

impl Shared<'_> {
    /// One cart, with the promotions (and their currencies) that may apply at its instant.
    fn price(
        &self,
        input: QuoteInput,
        priced_at: DateTime<Utc>,
        promotions: Vec<(String, pricing::Promotion)>,
    ) -> Result<Quoted> {
        let channel = self
            .channels
            .get(&input.channel_id)
            .cloned()
            .ok_or_else(|| missing("channel_id", format!("channel {}", input.channel_id)))?;
        if !channel.active {
            return Err(Error::precondition(
                "CHANNEL_INACTIVE",
                format!("channel/{}", channel.id),
                "the channel is not active",
            ));
        }
        for (i, (_, currency)) in input.coupons.iter().enumerate() {
            if let Some(currency) = currency
                && *currency != channel.currency
            {
                return Err(Error::invalid(
                    format!("coupons[{i}]"),
                    format!(
                        "amounts must be in the channel's currency, {}",
                        channel.currency
                    ),
                ));
            }
        }
        let unknown: Vec<(String, String)> = input
            .lines
            .iter()
            .enumerate()
            .filter(|(_, l)| !self.views.contains_key(&l.sku_id))
            .map(|(i, l)| {
                (
                    format!("lines[{i}].sku_id"),
                    format!("sku {} does not exist", l.sku_id),
                )
            })
            .collect();
        if !unknown.is_empty() {
            let what = unknown
                .iter()
                .map(|(_, d)| d.trim_end_matches(" does not exist"))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(missing_many(what, unknown));
        }
        let views: Vec<SkuView> = input
            .lines
            .iter()
            .map(|l| self.views[&l.sku_id].clone())
            .collect();
        let listings: Vec<Option<&ListingRow>> = input
            .lines
            .iter()
            .map(|l| self.listings.get(&(l.sku_id, channel.id)))
            .collect();
        let mut violations = Vec::new();
        for (i, (view, listing)) in views.iter().zip(&listings).enumerate() {
            let subject = format!("lines[{i}]/sku/{}", view.sku.sku_code);
            if view.sku.status != omni_proto::omni::catalog::v1::SkuStatus::Active as i16 {
                violations.push(PreconditionViolation::new(
                    "SKU_NOT_SELLABLE",
                    subject,
                    "the SKU is not active",
                ));
            } else if !listing.is_some_and(|l| l.listed) {
                violations.push(PreconditionViolation::new(
                    "NOT_LISTED",
                    subject,
                    "the SKU is not listed on this channel",
                ));
            }
        }
        if !violations.is_empty() {
            return Err(Error::FailedPrecondition {
                message: "some lines cannot be sold on this channel".into(),
                violations,
            });
        }
        let listings: Vec<ListingRow> = listings.into_iter().flatten().cloned().collect();
        let lines: Vec<Line> = input
            .lines
            .iter()
            .zip(views.iter().zip(&listings))
            .map(|(line, (view, listing))| Line {
                sku_id: view.sku.id,
                category_path: view.category_path.clone(),
                quantity: line.quantity,
                unit_price: listing.price,
            })
            .collect();
        let promotions: Vec<pricing::Promotion> = promotions
            .into_iter()
            .filter(|(currency, _)| currency.is_empty() || *currency == channel.currency)
            .map(|(_, p)| p)
            .collect();
        let coupons: Vec<Coupon> = input.coupons.into_iter().map(|(c, _)| c).collect();
        let ctx = Context {
            channel_id: channel.id,
            customer_tier: &input.customer_tier,
            at: priced_at,
        };
        let priced = pricing::quote(&lines, &ctx, &promotions, &coupons)
            .map_err(|e| Error::invalid("lines", e))?;
        Ok(Quoted {
            channel,
            skus: views,
            listings,
            priced,
            priced_at,
        })
    }
}

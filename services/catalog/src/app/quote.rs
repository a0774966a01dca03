//! Quote: gathers the pricing inputs (channel, SKUs, listings, promotions; all cached) and
//! hands them to the pure engine in [`crate::pricing`].

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
        let channel = self
            .channel_cached(input.channel_id)
            .await?
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
        let ids: Vec<Uuid> = input.lines.iter().map(|l| l.sku_id).collect();
        let views = self.sku_views(&ids).await?;
        let unknown: Vec<(String, String)> = ids
            .iter()
            .zip(&views)
            .enumerate()
            .filter(|(_, (_, v))| v.is_none())
            .map(|(i, (id, _))| {
                (
                    format!("lines[{i}].sku_id"),
                    format!("sku {id} does not exist"),
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
        let views: Vec<SkuView> = views.into_iter().flatten().collect();
        let listings = self.listings_on(&ids, channel.id).await?;
        let mut violations = Vec::new();
        for (i, (view, listing)) in views.iter().zip(&listings).enumerate() {
            let subject = format!("lines[{i}]/sku/{}", view.sku.sku_code);
            if view.sku.status != omni_proto::omni::catalog::v1::SkuStatus::Active as i16 {
                violations.push(PreconditionViolation::new(
                    "SKU_NOT_SELLABLE",
                    subject,
                    "the SKU is not active",
                ));
            } else if !listing.as_ref().is_some_and(|l| l.listed) {
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
        let listings: Vec<ListingRow> = listings.into_iter().flatten().collect();
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
        let priced_at = input.priced_at.unwrap_or_else(Utc::now);
        let promotions = self
            .promotions_at(priced_at)
            .await?
            .iter()
            .filter(|p| p.currency.is_empty() || p.currency == channel.currency)
            .map(|p| p.pricing())
            .collect::<Result<Vec<_>>>()?;
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

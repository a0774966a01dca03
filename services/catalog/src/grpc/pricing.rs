//! PricingService (listings, policy, consistency, competitor prices, suggestions) and
//! QuoteService.

use omni_proto::common::coupon_effect::Discount;
use omni_proto::omni::catalog::v1 as pb;
use omni_proto::omni::catalog::v1::pricing_service_server::PricingService;
use omni_proto::omni::catalog::v1::quote_service_server::QuoteService;
use omni_runtime::error::Violations;
use omni_runtime::{Error, auth, paging};
use tonic::{Request, Response};
use uuid::Uuid;

use super::{
    ADMIN, ANALYSIS, ANY_ROLE, COMPETITOR_FEEDS, COST_READERS, EDITORS, Grpc, GrpcResult, date,
    date_pb, finish, from_timestamp, idem, internal, listing_pb, money, money_in, opt_uuid, page,
    pair_token, status, timestamp, token_pair, uuid, uuids,
};
use crate::app::{
    Issue, IssueKind, ListingInput, Missing, QuoteInput, QuoteLineInput, Quoted, SuggestInput,
    Suggested, Suggestion, missing_many,
};
use crate::domain::{self, CompetitorBasis, Exception, PricePolicy};
use crate::pricing::{Coupon, CouponDiscount, Source};
use crate::store::{CompetitorRow, PolicyRow};

fn policy_pb(p: PolicyRow) -> pb::PricePolicy {
    pb::PricePolicy {
        max_deviation_bps: p.max_deviation_bps,
        flag_text_overrides: p.flag_text_overrides,
        default_target_margin_bps: p.default_target_margin_bps,
        updated_at: timestamp(p.updated_at),
    }
}

fn competitor_pb(c: CompetitorRow) -> pb::CompetitorPrice {
    pb::CompetitorPrice {
        id: c.id.to_string(),
        sku_id: c.sku_id.to_string(),
        competitor: c.competitor,
        price: money(c.price, &c.currency),
        source: c.source,
        observed_on: date_pb(c.observed_on),
        recorded_at: timestamp(c.recorded_at),
    }
}

fn issue_pb(i: Issue) -> pb::ConsistencyIssue {
    let kind = match i.kind {
        IssueKind::PriceOutsidePolicy => pb::ConsistencyIssueKind::PriceOutsidePolicy,
        IssueKind::PriceExceptionExpired => pb::ConsistencyIssueKind::PriceExceptionExpired,
        IssueKind::PriceException => pb::ConsistencyIssueKind::PriceException,
        IssueKind::TextDiverges => pb::ConsistencyIssueKind::TextDiverges,
    };
    pb::ConsistencyIssue {
        sku_id: i.sku_id.to_string(),
        sku_code: i.sku_code,
        channel_id: i.channel_id.to_string(),
        kind: kind as i32,
        list_price: money(i.list_price, &i.currency),
        channel_price: money(i.channel_price, &i.currency),
        deviation_bps: i.deviation_bps,
        allowed_deviation_bps: i.allowed_deviation_bps,
        detail: i.detail,
    }
}

fn suggested_pb(s: Suggested, currency: &str) -> pb::SuggestedPrice {
    pb::SuggestedPrice {
        price: money(s.price, currency),
        margin_bps: s.margin_bps,
        deviation_bps: s.deviation_bps,
        within_policy: s.within_policy,
    }
}

fn suggestion_pb(s: Suggestion) -> pb::SuggestPriceResponse {
    let currency = s.currency.clone();
    pb::SuggestPriceResponse {
        current_price: s.current_price.and_then(|p| money(p, &currency)),
        list_price: money(s.list_price, &currency),
        unit_cost: money(s.unit_cost, &s.cost_currency),
        current_margin_bps: s.current_margin_bps,
        cost_plus: Some(suggested_pb(s.cost_plus, &currency)),
        competitor_based: s.competitor_based.map(|c| suggested_pb(c, &currency)),
        competitor_prices: s.competitor_prices.into_iter().map(competitor_pb).collect(),
    }
}

fn bps(v: &mut Violations, field: &str, raw: i32, max: i32) -> i32 {
    if !(0..=max).contains(&raw) {
        v.add(field, format!("must be between 0 and {max} basis points"));
    }
    raw
}

fn coupon(
    v: &mut Violations,
    i: usize,
    c: &omni_proto::common::CouponEffect,
) -> Option<(Coupon, Option<String>)> {
    let field = format!("coupons[{i}]");
    let code = c.code.trim().to_owned();
    if code.is_empty() {
        v.add(format!("{field}.code"), "is required");
    }
    let (discount, currency) = match &c.discount {
        None => {
            v.add(
                format!("{field}.discount"),
                "give amount_off or percent_off_bps",
            );
            return None;
        }
        Some(Discount::AmountOff(m)) => {
            let (amount, currency) = money_in(v, &format!("{field}.amount_off"), Some(m))?;
            (CouponDiscount::AmountOff(amount), Some(currency))
        }
        Some(Discount::PercentOffBps(p)) => {
            if !(1..=10_000).contains(p) {
                v.add(
                    format!("{field}.percent_off_bps"),
                    "must be between 1 and 10000",
                );
            }
            (CouponDiscount::PercentOff(i64::from(*p)), None)
        }
    };
    let min_spend = match &c.min_spend {
        None => None,
        Some(m) => {
            let (amount, min_currency) = money_in(v, &format!("{field}.min_spend"), Some(m))?;
            if let Some(cur) = &currency
                && *cur != min_currency
            {
                v.add(
                    format!("{field}.min_spend.currency"),
                    "must match the discount's",
                );
            }
            Some(amount)
        }
    };
    let skus = uuids(v, &format!("{field}.sku_ids"), &c.sku_ids);
    let categories = uuids(v, &format!("{field}.category_ids"), &c.category_ids);
    let currency = currency.or_else(|| c.min_spend.as_ref().map(|m| m.currency.clone()));
    Some((
        Coupon {
            code,
            discount,
            min_spend,
            skus,
            categories,
        },
        currency,
    ))
}

#[tonic::async_trait]
impl PricingService for Grpc {
    async fn get_price_policy(
        &self,
        request: Request<pb::GetPricePolicyRequest>,
    ) -> GrpcResult<pb::GetPricePolicyResponse> {
        auth::principal(&request)?.require_any(ANY_ROLE)?;
        let row = self.app.get_policy().await.map_err(status)?;
        Ok(Response::new(pb::GetPricePolicyResponse {
            policy: Some(policy_pb(row)),
        }))
    }

    async fn set_price_policy(
        &self,
        request: Request<pb::SetPricePolicyRequest>,
    ) -> GrpcResult<pb::SetPricePolicyResponse> {
        auth::principal(&request)?.require_any(ADMIN)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let Some(p) = req.policy else {
            v.add("policy", "is required");
            return Err(finish(v).err().unwrap_or_else(|| internal("policy")));
        };
        let policy = PricePolicy {
            max_deviation_bps: bps(
                &mut v,
                "policy.max_deviation_bps",
                p.max_deviation_bps,
                10_000,
            ),
            flag_text_overrides: p.flag_text_overrides,
            default_target_margin_bps: bps(
                &mut v,
                "policy.default_target_margin_bps",
                p.default_target_margin_bps,
                9_999,
            ),
        };
        finish(v)?;
        let row = self.app.set_policy(policy).await.map_err(status)?;
        Ok(Response::new(pb::SetPricePolicyResponse {
            policy: Some(policy_pb(row)),
        }))
    }

    async fn set_listing(
        &self,
        request: Request<pb::SetListingRequest>,
    ) -> GrpcResult<pb::SetListingResponse> {
        let actor = auth::principal(&request)?.clone();
        actor.require_any(EDITORS)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let Some(l) = req.listing else {
            v.add("listing", "is required");
            return Err(finish(v).err().unwrap_or_else(|| internal("listing")));
        };
        let sku_id = v.check("listing.sku_id", uuid(&l.sku_id));
        let channel_id = v.check("listing.channel_id", uuid(&l.channel_id));
        let price = money_in(&mut v, "listing.price", l.price.as_ref());
        if l.version < 0 {
            v.add("listing.version", "must not be negative");
        }
        let exception = match &l.price_exception {
            None => None,
            Some(e) => {
                if e.reason.trim().is_empty() {
                    v.add(
                        "listing.price_exception.reason",
                        "an exception needs a reason",
                    );
                }
                let expires_at = match &e.expires_at {
                    None => None,
                    Some(t) => match from_timestamp(t) {
                        Ok(t) if t > chrono::Utc::now() => Some(t),
                        Ok(_) => {
                            v.add(
                                "listing.price_exception.expires_at",
                                "must be in the future",
                            );
                            None
                        }
                        Err(err) => {
                            v.add("listing.price_exception.expires_at", err);
                            None
                        }
                    },
                };
                Some(Exception {
                    reason: e.reason.trim().to_owned(),
                    expires_at,
                })
            }
        };
        finish(v)?;
        let (Some(sku_id), Some(channel_id), Some((price, currency))) = (sku_id, channel_id, price)
        else {
            return Err(internal("listing"));
        };
        actor.require_channel(&channel_id.to_string())?;
        let out = self
            .app
            .set_listing(
                ListingInput {
                    sku_id,
                    channel_id,
                    price,
                    currency,
                    listed: l.listed,
                    title_override: l.title_override.trim().to_owned(),
                    description_override: l.description_override.trim().to_owned(),
                    exception,
                    version: l.version,
                },
                &actor,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::SetListingResponse {
            listing: Some(listing_pb(out)),
        }))
    }

    async fn list_listings(
        &self,
        request: Request<pb::ListListingsRequest>,
    ) -> GrpcResult<pb::ListListingsResponse> {
        auth::principal(&request)?.require_any(ANY_ROLE)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let sku_id = v.check("sku_id", opt_uuid(&req.sku_id)).flatten();
        let channel_id = v.check("channel_id", opt_uuid(&req.channel_id)).flatten();
        if req.sku_id.trim().is_empty() && req.channel_id.trim().is_empty() {
            v.add("sku_id", "give at least one of sku_id and channel_id");
        }
        let size = page(&mut v, req.page_size);
        let after = token_pair(&mut v, &req.page_token);
        finish(v)?;
        let rows = self
            .app
            .list_listings(sku_id, channel_id, req.include_delisted, after, size)
            .await
            .map_err(status)?;
        let last = rows.last().map(|l| (l.row.sku_id, l.row.channel_id));
        let next = if i64::try_from(rows.len()).unwrap_or(0) >= size {
            pair_token(last)
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListListingsResponse {
            listings: rows.into_iter().map(listing_pb).collect(),
            next_page_token: next,
        }))
    }

    async fn list_consistency_issues(
        &self,
        request: Request<pb::ListConsistencyIssuesRequest>,
    ) -> GrpcResult<pb::ListConsistencyIssuesResponse> {
        auth::principal(&request)?.require_any(ANALYSIS)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let channel_id = v.check("channel_id", opt_uuid(&req.channel_id)).flatten();
        let category_id = v.check("category_id", opt_uuid(&req.category_id)).flatten();
        let size = page(&mut v, req.page_size);
        let after = token_pair(&mut v, &req.page_token);
        finish(v)?;
        let (issues, last) = self
            .app
            .consistency_issues(channel_id, category_id, req.include_exceptions, after, size)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListConsistencyIssuesResponse {
            issues: issues.into_iter().map(issue_pb).collect(),
            next_page_token: pair_token(last),
        }))
    }

    async fn record_competitor_price(
        &self,
        request: Request<pb::RecordCompetitorPriceRequest>,
    ) -> GrpcResult<pb::RecordCompetitorPriceResponse> {
        let actor = auth::principal(&request)?.clone();
        actor.require_any(COMPETITOR_FEEDS)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let Some(c) = &req.competitor_price else {
            v.add("competitor_price", "is required");
            return Err(finish(v)
                .err()
                .unwrap_or_else(|| internal("competitor_price")));
        };
        let sku_id = v.check("competitor_price.sku_id", uuid(&c.sku_id));
        let competitor = v.check(
            "competitor_price.competitor",
            domain::parse_name(&c.competitor, 200),
        );
        let source = v.check(
            "competitor_price.source",
            domain::parse_name(&c.source, 500),
        );
        let price = money_in(&mut v, "competitor_price.price", c.price.as_ref());
        let observed_on = match &c.observed_on {
            None => {
                v.add("competitor_price.observed_on", "is required");
                None
            }
            Some(d) => match date(d) {
                Ok(d) if d > chrono::Utc::now().date_naive() => {
                    v.add("competitor_price.observed_on", "must not be in the future");
                    None
                }
                Ok(d) => Some(d),
                Err(e) => {
                    v.add("competitor_price.observed_on", e);
                    None
                }
            },
        };
        finish(v)?;
        let (
            Some(sku_id),
            Some(competitor),
            Some(source),
            Some((price, currency)),
            Some(observed_on),
        ) = (sku_id, competitor, source, price, observed_on)
        else {
            return Err(internal("competitor_price"));
        };
        let key = idem(
            &actor.id,
            "catalog.record_competitor_price",
            &req.idempotency_key,
            &req,
        );
        let row = self
            .app
            .record_competitor_price(
                CompetitorRow {
                    id: Uuid::now_v7(),
                    sku_id,
                    competitor,
                    price,
                    currency,
                    source,
                    observed_on,
                    recorded_at: chrono::Utc::now(),
                },
                key.as_ref(),
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RecordCompetitorPriceResponse {
            competitor_price: Some(competitor_pb(row)),
        }))
    }

    async fn list_competitor_prices(
        &self,
        request: Request<pb::ListCompetitorPricesRequest>,
    ) -> GrpcResult<pb::ListCompetitorPricesResponse> {
        auth::principal(&request)?.require_any(ANALYSIS)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let sku_id = v.check("sku_id", uuid(&req.sku_id));
        let (mut from, mut to) = (None, None);
        if let Some(range) = &req.observed {
            from = range
                .start
                .as_ref()
                .and_then(|d| v.check("observed.start", date(d)));
            to = range
                .end
                .as_ref()
                .and_then(|d| v.check("observed.end", date(d)));
        }
        let size = page(&mut v, req.page_size);
        let after = match paging::decode_token(&req.page_token) {
            Ok(None) => None,
            Ok(Some(raw)) => {
                let parsed = raw.split_once('|').and_then(|(d, id)| {
                    Some((
                        chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok()?,
                        Uuid::parse_str(id).ok()?,
                    ))
                });
                if parsed.is_none() {
                    v.add("page_token", "is not a token this service issued");
                }
                parsed
            }
            Err(_) => {
                v.add("page_token", "is not a token this service issued");
                None
            }
        };
        finish(v)?;
        let sku_id = sku_id.ok_or_else(|| internal("sku_id"))?;
        let rows = self
            .app
            .list_competitor_prices(sku_id, from, to, after, size)
            .await
            .map_err(status)?;
        let next = paging::next_token(
            rows.len(),
            size,
            rows.last().map(|r| format!("{}|{}", r.observed_on, r.id)),
        );
        Ok(Response::new(pb::ListCompetitorPricesResponse {
            competitor_prices: rows.into_iter().map(competitor_pb).collect(),
            next_page_token: next,
        }))
    }

    async fn suggest_price(
        &self,
        request: Request<pb::SuggestPriceRequest>,
    ) -> GrpcResult<pb::SuggestPriceResponse> {
        auth::principal(&request)?.require_any(ANALYSIS)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let sku_id = v.check("sku_id", uuid(&req.sku_id));
        let channel_id = v.check("channel_id", uuid(&req.channel_id));
        let target = bps(&mut v, "target_margin_bps", req.target_margin_bps, 9_999);
        let basis = match pb::CompetitorBasis::try_from(req.competitor_basis) {
            Ok(pb::CompetitorBasis::Lowest) => CompetitorBasis::Lowest,
            Ok(_) => CompetitorBasis::Median,
            Err(_) => {
                v.add("competitor_basis", "is not a known basis");
                CompetitorBasis::Median
            }
        };
        if !(0..=3650).contains(&req.competitor_window_days) {
            v.add("competitor_window_days", "must be between 0 and 3650");
        }
        finish(v)?;
        let (Some(sku_id), Some(channel_id)) = (sku_id, channel_id) else {
            return Err(internal("ids"));
        };
        let suggestion = self
            .app
            .suggest_price(SuggestInput {
                sku_id,
                channel_id,
                target_margin_bps: (target > 0).then_some(target),
                basis,
                window_days: if req.competitor_window_days == 0 {
                    30
                } else {
                    i64::from(req.competitor_window_days)
                },
            })
            .await
            .map_err(status)?;
        Ok(Response::new(suggestion_pb(suggestion)))
    }
}

/// Carts per BatchQuote call, and lines over all of them (an ImportOrders batch at most).
const MAX_QUOTES: usize = 500;
const MAX_BATCH_LINES: usize = 50_000;

/// A cart's request checked into the engine's input; its problems go to `v`, named as in a
/// QuoteRequest.
fn quote_input(v: &mut Violations, req: &pb::QuoteRequest) -> Option<QuoteInput> {
    let channel_id = v.check("channel_id", uuid(&req.channel_id));
    if req.lines.is_empty() {
        v.add("lines", "at least one line is required");
    }
    if req.lines.len() > 500 {
        v.add("lines", "at most 500 lines");
    }
    let mut lines = Vec::with_capacity(req.lines.len());
    for (i, l) in req.lines.iter().enumerate() {
        let sku_id = v.check(&format!("lines[{i}].sku_id"), uuid(&l.sku_id));
        if !(1..=100_000).contains(&l.quantity) {
            v.add(
                format!("lines[{i}].quantity"),
                "must be between 1 and 100000",
            );
        }
        if let Some(sku_id) = sku_id {
            lines.push(QuoteLineInput {
                sku_id,
                quantity: i64::from(l.quantity),
            });
        }
    }
    let mut coupons = Vec::new();
    for (i, c) in req.coupons.iter().enumerate() {
        if let Some(c) = coupon(v, i, c) {
            coupons.push(c);
        }
    }
    let priced_at = req
        .priced_at
        .as_ref()
        .and_then(|t| v.check("priced_at", from_timestamp(t)));
    Some(QuoteInput {
        channel_id: channel_id?,
        customer_tier: req.customer_tier.trim().to_owned(),
        lines,
        coupons,
        priced_at,
    })
}

/// A priced cart in the contract's terms; `lines` are the request's, in the same order.
fn quote_pb(lines: &[pb::QuoteLineInput], quoted: Quoted, show_cost: bool) -> pb::QuoteResponse {
    let currency = quoted.channel.currency.clone();
    let label_of = |source: &Source| match source {
        Source::Promotion(id) => (id.to_string(), String::new()),
        Source::Coupon(code) => (String::new(), code.clone()),
    };
    let lines = lines
        .iter()
        .zip(quoted.priced.lines)
        .zip(quoted.skus.iter().zip(&quoted.listings))
        .map(|((input, priced), (view, listing))| pb::QuotedLine {
            line_ref: input.line_ref.clone(),
            sku_id: view.sku.id.to_string(),
            sku_code: view.sku.sku_code.clone(),
            product_id: view.sku.product_id.to_string(),
            product_name: view.product_name.clone(),
            category_id: view.category_id.to_string(),
            quantity: input.quantity,
            unit_price: money(listing.price, &currency),
            list_price: money(view.sku.list_price, &view.sku.currency),
            gross_amount: money(priced.gross, &currency),
            discounts: priced
                .discounts
                .iter()
                .map(|d| {
                    let (promotion_id, coupon_code) = label_of(&d.source);
                    pb::AppliedDiscount {
                        promotion_id,
                        coupon_code,
                        label: d.label.clone(),
                        amount: money(d.amount, &currency),
                    }
                })
                .collect(),
            discount_amount: money(priced.discount, &currency),
            net_amount: money(priced.net, &currency),
            unit_cost: if show_cost {
                money(view.sku.unit_cost, &view.sku.cost_currency)
            } else {
                None
            },
        })
        .collect();
    pb::QuoteResponse {
        lines,
        adjustments: quoted
            .priced
            .adjustments
            .iter()
            .map(|a| {
                let (promotion_id, coupon_code) = label_of(&a.source);
                pb::AppliedAdjustment {
                    promotion_id,
                    coupon_code,
                    label: a.label.clone(),
                    amount: money(a.amount, &currency),
                }
            })
            .collect(),
        subtotal: money(quoted.priced.subtotal, &currency),
        discount_total: money(quoted.priced.discount_total, &currency),
        total: money(quoted.priced.total, &currency),
        unapplied_coupon_codes: quoted.priced.unapplied_coupons,
        priced_at: timestamp(quoted.priced_at),
    }
}

/// A refusal of the batch's cart `i`, every field and subject it names prefixed `quotes[i].`.
fn in_quote(err: Error, i: usize) -> Error {
    let named = |field: &str| {
        if field.is_empty() {
            format!("quotes[{i}]")
        } else {
            format!("quotes[{i}].{field}")
        }
    };
    match err {
        Error::Internal(inner) if inner.is::<Missing>() => match inner.downcast::<Missing>() {
            Ok(m) => missing_many(
                m.what,
                m.fields
                    .into_iter()
                    .map(|(field, description)| (named(&field), description))
                    .collect(),
            ),
            Err(inner) => Error::Internal(inner),
        },
        other => other.renamed(named),
    }
}

#[tonic::async_trait]
impl QuoteService for Grpc {
    async fn quote(&self, request: Request<pb::QuoteRequest>) -> GrpcResult<pb::QuoteResponse> {
        let actor = auth::principal(&request)?.clone();
        actor.require_any(ANY_ROLE)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let input = quote_input(&mut v, &req);
        finish(v)?;
        let input = input.ok_or_else(|| internal("channel_id"))?;
        let quoted = self.app.quote(input).await.map_err(status)?;
        Ok(Response::new(quote_pb(
            &req.lines,
            quoted,
            actor.has_any(COST_READERS),
        )))
    }

    async fn batch_quote(
        &self,
        request: Request<pb::BatchQuoteRequest>,
    ) -> GrpcResult<pb::BatchQuoteResponse> {
        let actor = auth::principal(&request)?.clone();
        actor.require_any(ANY_ROLE)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        if req.quotes.is_empty() {
            v.add("quotes", "at least one quote is required");
        }
        if req.quotes.len() > MAX_QUOTES {
            v.add("quotes", format!("at most {MAX_QUOTES} quotes"));
        }
        if req.quotes.iter().map(|q| q.lines.len()).sum::<usize>() > MAX_BATCH_LINES {
            v.add(
                "quotes",
                format!("at most {MAX_BATCH_LINES} lines over all quotes"),
            );
        }
        finish(v)?;
        let mut refused = Vec::new();
        let mut inputs = Vec::with_capacity(req.quotes.len());
        for (i, quote) in req.quotes.iter().enumerate() {
            let mut v = Violations::new();
            let input = quote_input(&mut v, quote);
            match (v.finish().map_err(|e| in_quote(e, i)), input) {
                (Err(Error::InvalidArgument(violations)), _) => refused.extend(violations),
                (Err(other), _) => return Err(status(other)),
                (Ok(()), Some(input)) => inputs.push(input),
                (Ok(()), None) => return Err(internal("channel_id")),
            }
        }
        if !refused.is_empty() {
            return Err(Error::InvalidArgument(refused).into());
        }
        let quoted = self.app.batch_quote(inputs).await.map_err(status)?;
        let show_cost = actor.has_any(COST_READERS);
        let quotes = req
            .quotes
            .iter()
            .zip(quoted)
            .enumerate()
            .map(|(i, (asked, quoted))| {
                quoted
                    .map(|q| quote_pb(&asked.lines, q, show_cost))
                    .map_err(|e| status(in_quote(e, i)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Response::new(pb::BatchQuoteResponse { quotes }))
    }
}

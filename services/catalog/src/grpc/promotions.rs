//! PromotionService.

use omni_proto::common::TimeRange;
use omni_proto::omni::catalog::v1 as pb;
use omni_proto::omni::catalog::v1::promotion::Rule as PbRule;
use omni_proto::omni::catalog::v1::promotion_service_server::PromotionService;
use omni_runtime::error::Violations;
use omni_runtime::{Error, auth, paging};
use tonic::{Request, Response};

use super::{
    ANY_ROLE, EDITORS, Grpc, GrpcResult, finish, from_timestamp, idem, internal, money, money_in,
    opt_uuid, page, status, timestamp, token_id, uuid, uuids,
};
use crate::app::PromotionInput;
use crate::domain::{self, PromotionStatus, Scope, Window};
use crate::pricing::{BundleItem, Rule, SpendTier};
use crate::store::PromotionRow;

fn rule(v: &mut Violations, raw: Option<&PbRule>) -> Option<(Rule, Option<String>)> {
    let Some(raw) = raw else {
        v.add(
            "promotion.rule",
            "give one of percent_off, amount_off, spend_threshold, buy_x_get_y, bundle_price",
        );
        return None;
    };
    match raw {
        PbRule::PercentOff(r) => {
            if !(1..=10_000).contains(&r.percent_bps) {
                v.add(
                    "promotion.percent_off.percent_bps",
                    "must be between 1 and 10000",
                );
            }
            Some((
                Rule::PercentOff {
                    percent_bps: i64::from(r.percent_bps),
                },
                None,
            ))
        }
        PbRule::AmountOff(r) => {
            let (amount, currency) = money_in(
                v,
                "promotion.amount_off.amount_per_unit",
                r.amount_per_unit.as_ref(),
            )?;
            if amount == 0 {
                v.add(
                    "promotion.amount_off.amount_per_unit",
                    "must be more than zero",
                );
            }
            Some((
                Rule::AmountOff {
                    amount_per_unit: amount,
                },
                Some(currency),
            ))
        }
        PbRule::SpendThreshold(r) => {
            if r.tiers.is_empty() {
                v.add(
                    "promotion.spend_threshold.tiers",
                    "at least one tier is required",
                );
            }
            let mut tiers = Vec::new();
            let mut currency: Option<String> = None;
            for (i, t) in r.tiers.iter().enumerate() {
                let field = format!("promotion.spend_threshold.tiers[{i}]");
                let min = money_in(v, &format!("{field}.min_spend"), t.min_spend.as_ref());
                let discount = money_in(v, &format!("{field}.discount"), t.discount.as_ref());
                let (Some((min_spend, c1)), Some((discount, c2))) = (min, discount) else {
                    continue;
                };
                if c1 != c2 || currency.as_ref().is_some_and(|c| *c != c1) {
                    v.add(field.clone(), "every amount must be in one currency");
                }
                if discount == 0 {
                    v.add(format!("{field}.discount"), "must be more than zero");
                }
                if tiers
                    .last()
                    .is_some_and(|prev: &SpendTier| prev.min_spend >= min_spend)
                {
                    v.add(
                        format!("{field}.min_spend"),
                        "tiers must ascend by min_spend",
                    );
                }
                currency = Some(c1);
                tiers.push(SpendTier {
                    min_spend,
                    discount,
                });
            }
            Some((Rule::SpendThreshold { tiers }, currency))
        }
        PbRule::BuyXGetY(r) => {
            if r.buy_quantity < 1 {
                v.add("promotion.buy_x_get_y.buy_quantity", "must be at least 1");
            }
            if r.get_quantity < 1 {
                v.add("promotion.buy_x_get_y.get_quantity", "must be at least 1");
            }
            if !(1..=10_000).contains(&r.get_discount_bps) {
                v.add(
                    "promotion.buy_x_get_y.get_discount_bps",
                    "must be between 1 and 10000",
                );
            }
            Some((
                Rule::BuyXGetY {
                    buy: i64::from(r.buy_quantity),
                    get: i64::from(r.get_quantity),
                    get_discount_bps: i64::from(r.get_discount_bps),
                },
                None,
            ))
        }
        PbRule::BundlePrice(r) => {
            if r.items.len() < 2 {
                v.add(
                    "promotion.bundle_price.items",
                    "a bundle has at least two items",
                );
            }
            let mut items: Vec<BundleItem> = Vec::new();
            for (i, item) in r.items.iter().enumerate() {
                let field = format!("promotion.bundle_price.items[{i}]");
                let sku = v.check(&format!("{field}.sku_id"), uuid(&item.sku_id));
                if item.quantity < 1 {
                    v.add(format!("{field}.quantity"), "must be at least 1");
                }
                if let Some(sku_id) = sku {
                    if items.iter().any(|o| o.sku_id == sku_id) {
                        v.add(
                            format!("{field}.sku_id"),
                            "is given twice; raise its quantity",
                        );
                    }
                    items.push(BundleItem {
                        sku_id,
                        quantity: i64::from(item.quantity),
                    });
                }
            }
            let (price, currency) = money_in(
                v,
                "promotion.bundle_price.bundle_price",
                r.bundle_price.as_ref(),
            )?;
            Some((
                Rule::Bundle {
                    items,
                    bundle_price: price,
                },
                Some(currency),
            ))
        }
    }
}

fn window(v: &mut Violations, raw: Option<&TimeRange>) -> Window {
    let Some(raw) = raw else {
        return Window::default();
    };
    let start = raw
        .start
        .as_ref()
        .and_then(|t| v.check("promotion.window.start", from_timestamp(t)));
    let end = raw
        .end
        .as_ref()
        .and_then(|t| v.check("promotion.window.end", from_timestamp(t)));
    if let (Some(s), Some(e)) = (start, end)
        && e <= s
    {
        v.add("promotion.window.end", "must be after the start");
    }
    Window { start, end }
}

fn promotion_input(v: &mut Violations, p: &pb::Promotion) -> Option<PromotionInput> {
    let name = v.check("promotion.name", domain::parse_name(&p.name, 200));
    let rule = rule(v, p.rule.as_ref());
    let scope = p.scope.clone().unwrap_or_default();
    let mut tiers: Vec<String> = Vec::new();
    for (i, t) in scope.customer_tiers.iter().enumerate() {
        let t = t.trim();
        if t.is_empty() {
            v.add(
                format!("promotion.scope.customer_tiers[{i}]"),
                "must not be empty",
            );
        } else if !tiers.iter().any(|o| o == t) {
            tiers.push(t.to_owned());
        }
    }
    let scope = Scope {
        channels: uuids(v, "promotion.scope.channel_ids", &scope.channel_ids),
        skus: uuids(v, "promotion.scope.sku_ids", &scope.sku_ids),
        categories: uuids(v, "promotion.scope.category_ids", &scope.category_ids),
        tiers,
    };
    let window = window(v, p.window.as_ref());
    let (rule, _currency) = rule?;
    Some(PromotionInput {
        name: name?,
        description: p.description.trim().to_owned(),
        rule,
        scope,
        window,
        priority: p.priority,
        exclusive: p.exclusive,
    })
}

fn rule_pb(rule: &Rule, currency: &str) -> PbRule {
    match rule {
        Rule::PercentOff { percent_bps } => PbRule::PercentOff(pb::PercentOffRule {
            percent_bps: i32::try_from(*percent_bps).unwrap_or(0),
        }),
        Rule::AmountOff { amount_per_unit } => PbRule::AmountOff(pb::AmountOffRule {
            amount_per_unit: money(*amount_per_unit, currency),
        }),
        Rule::SpendThreshold { tiers } => PbRule::SpendThreshold(pb::SpendThresholdRule {
            tiers: tiers
                .iter()
                .map(|t| pb::SpendTier {
                    min_spend: money(t.min_spend, currency),
                    discount: money(t.discount, currency),
                })
                .collect(),
        }),
        Rule::BuyXGetY {
            buy,
            get,
            get_discount_bps,
        } => PbRule::BuyXGetY(pb::BuyXGetYRule {
            buy_quantity: i32::try_from(*buy).unwrap_or(0),
            get_quantity: i32::try_from(*get).unwrap_or(0),
            get_discount_bps: i32::try_from(*get_discount_bps).unwrap_or(0),
        }),
        Rule::Bundle {
            items,
            bundle_price,
        } => PbRule::BundlePrice(pb::BundlePriceRule {
            items: items
                .iter()
                .map(|i| pb::BundleItem {
                    sku_id: i.sku_id.to_string(),
                    quantity: i32::try_from(i.quantity).unwrap_or(0),
                })
                .collect(),
            bundle_price: money(*bundle_price, currency),
        }),
    }
}

fn promotion_pb(p: PromotionRow) -> Result<pb::Promotion, Error> {
    let rule = p.rule()?;
    let status = match domain::promotion_status(&p.window(), p.ended_at, chrono::Utc::now()) {
        PromotionStatus::Scheduled => pb::PromotionStatus::Scheduled,
        PromotionStatus::Active => pb::PromotionStatus::Active,
        PromotionStatus::Ended => pb::PromotionStatus::Ended,
    };
    Ok(pb::Promotion {
        id: p.id.to_string(),
        name: p.name.clone(),
        description: p.description.clone(),
        rule: Some(rule_pb(&rule, &p.currency)),
        scope: Some(pb::PromotionScope {
            channel_ids: p.channel_ids.iter().map(ToString::to_string).collect(),
            sku_ids: p.sku_ids.iter().map(ToString::to_string).collect(),
            category_ids: p.category_ids.iter().map(ToString::to_string).collect(),
            customer_tiers: p.customer_tiers.clone(),
        }),
        window: Some(TimeRange {
            start: p.starts_at.and_then(timestamp),
            end: p.ends_at.and_then(timestamp),
        }),
        priority: p.priority,
        exclusive: p.exclusive,
        status: status as i32,
        version: p.version,
        created_at: timestamp(p.created_at),
        updated_at: timestamp(p.updated_at),
    })
}

fn input_and_currency(v: &mut Violations, p: &pb::Promotion) -> Option<(PromotionInput, String)> {
    let currency = match p.rule.as_ref() {
        Some(PbRule::AmountOff(r)) => r.amount_per_unit.as_ref().map(|m| m.currency.clone()),
        Some(PbRule::SpendThreshold(r)) => r
            .tiers
            .first()
            .and_then(|t| t.min_spend.as_ref())
            .map(|m| m.currency.clone()),
        Some(PbRule::BundlePrice(r)) => r.bundle_price.as_ref().map(|m| m.currency.clone()),
        _ => None,
    }
    .unwrap_or_default();
    promotion_input(v, p).map(|i| (i, currency))
}

/// A caller limited to channels changes only promotions limited to its channels; a promotion
/// for every channel (none listed) needs a caller not limited at all. A caller limited to
/// stores alone has no channel of its own to promote in.
fn require_channels(actor: &auth::Principal, channels: &[uuid::Uuid]) -> Result<(), Error> {
    let channels: Vec<String> = channels.iter().map(uuid::Uuid::to_string).collect();
    actor.scope.require_channels(&channels)
}

#[tonic::async_trait]
impl PromotionService for Grpc {
    async fn create_promotion(
        &self,
        request: Request<pb::CreatePromotionRequest>,
    ) -> GrpcResult<pb::CreatePromotionResponse> {
        let actor = auth::principal(&request)?.clone();
        actor.require_any(EDITORS)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let Some(p) = &req.promotion else {
            v.add("promotion", "is required");
            return Err(finish(v).err().unwrap_or_else(|| internal("promotion")));
        };
        let input = input_and_currency(&mut v, p);
        finish(v)?;
        let (input, currency) = input.ok_or_else(|| internal("promotion"))?;
        require_channels(&actor, &input.scope.channels)?;
        let key = idem(
            &actor.id,
            "catalog.create_promotion",
            &req.idempotency_key,
            &req,
        );
        let row = self
            .app
            .create_promotion(input, &currency, key.as_ref())
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CreatePromotionResponse {
            promotion: Some(promotion_pb(row)?),
        }))
    }

    async fn update_promotion(
        &self,
        request: Request<pb::UpdatePromotionRequest>,
    ) -> GrpcResult<pb::UpdatePromotionResponse> {
        let actor = auth::principal(&request)?.clone();
        actor.require_any(EDITORS)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let Some(p) = &req.promotion else {
            v.add("promotion", "is required");
            return Err(finish(v).err().unwrap_or_else(|| internal("promotion")));
        };
        let id = v.check("promotion.id", uuid(&p.id));
        let input = input_and_currency(&mut v, p);
        finish(v)?;
        let (Some(id), Some((input, currency))) = (id, input) else {
            return Err(internal("promotion"));
        };
        // Both what the promotion reaches now and what it would reach.
        let current = self.app.get_promotion(id).await.map_err(status)?;
        require_channels(&actor, &current.channel_ids)?;
        require_channels(&actor, &input.scope.channels)?;
        let row = self
            .app
            .update_promotion(id, p.version, input, &currency)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::UpdatePromotionResponse {
            promotion: Some(promotion_pb(row)?),
        }))
    }

    async fn end_promotion(
        &self,
        request: Request<pb::EndPromotionRequest>,
    ) -> GrpcResult<pb::EndPromotionResponse> {
        let actor = auth::principal(&request)?.clone();
        actor.require_any(EDITORS)?;
        let req = request.into_inner();
        let id = uuid(&req.promotion_id).map_err(|e| Error::invalid("promotion_id", e))?;
        let current = self.app.get_promotion(id).await.map_err(status)?;
        require_channels(&actor, &current.channel_ids)?;
        let row = self.app.end_promotion(id).await.map_err(status)?;
        Ok(Response::new(pb::EndPromotionResponse {
            promotion: Some(promotion_pb(row)?),
        }))
    }

    async fn get_promotion(
        &self,
        request: Request<pb::GetPromotionRequest>,
    ) -> GrpcResult<pb::GetPromotionResponse> {
        auth::principal(&request)?.require_any(ANY_ROLE)?;
        let req = request.into_inner();
        let id = uuid(&req.promotion_id).map_err(|e| Error::invalid("promotion_id", e))?;
        let row = self.app.get_promotion(id).await.map_err(status)?;
        Ok(Response::new(pb::GetPromotionResponse {
            promotion: Some(promotion_pb(row)?),
        }))
    }

    async fn list_promotions(
        &self,
        request: Request<pb::ListPromotionsRequest>,
    ) -> GrpcResult<pb::ListPromotionsResponse> {
        auth::principal(&request)?.require_any(ANY_ROLE)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let channel_id = v.check("channel_id", opt_uuid(&req.channel_id)).flatten();
        let active_at = req
            .active_at
            .as_ref()
            .and_then(|t| v.check("active_at", from_timestamp(t)));
        let size = page(&mut v, req.page_size);
        let after = token_id(&mut v, &req.page_token);
        finish(v)?;
        let rows = self
            .app
            .list_promotions(channel_id, active_at, req.include_ended, after, size)
            .await
            .map_err(status)?;
        let next = paging::next_token(rows.len(), size, rows.last().map(|r| r.id.to_string()));
        let promotions = rows
            .into_iter()
            .map(promotion_pb)
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(Response::new(pb::ListPromotionsResponse {
            promotions,
            next_page_token: next,
        }))
    }
}

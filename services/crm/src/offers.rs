//! Triggered offers: rules that fire on events (an order placed or fulfilled, an interaction
//! recorded) and cross channels on purpose, e.g. an online purchase in category X delivers a
//! store-only coupon for category Y. A firing goes through the same consent and weekly cap as
//! campaigns ([`crate::contact`]) and respects the rule's cooldown per customer.

use chrono::{DateTime, Utc};
use omni_proto::omni::crm::v1 as pb;
use omni_runtime::Error;
use omni_runtime::auth::Scope;
use omni_runtime::error::Violations;
use omni_runtime::paging;
use prost::Message;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::campaigns::{Origin, check_channels, check_content, check_template};
use crate::contact;
use crate::grpc::{Grpc, ts};
use crate::idem;

pub const ORDER_PLACED: i32 = 1;
pub const ORDER_FULFILLED: i32 = 2;
pub const INTERACTION: i32 = 3;

#[derive(Debug, Clone, sqlx::FromRow)]
struct RuleRow {
    id: Uuid,
    name: String,
    condition: Vec<u8>,
    action: Vec<u8>,
    cooldown_days: i32,
    enabled: bool,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// What happened, as offer conditions see it.
#[derive(Debug, Clone, Default)]
pub struct Happening {
    pub trigger: i32,
    pub interaction_kind: i32,
    pub channel_kind: i32,
    pub store_id: String,
    pub category_ids: Vec<String>,
    pub sku_ids: Vec<String>,
}

/// Whether `c` fires on `h`; every empty field of the condition means "any".
pub fn fires(c: &pb::OfferCondition, h: &Happening) -> bool {
    c.trigger == h.trigger
        && (c.interaction_kind == 0 || c.interaction_kind == h.interaction_kind)
        && (c.channel_kinds.is_empty() || c.channel_kinds.contains(&h.channel_kind))
        && (c.category_ids.is_empty() || c.category_ids.iter().any(|x| h.category_ids.contains(x)))
        && (c.sku_ids.is_empty() || c.sku_ids.iter().any(|x| h.sku_ids.contains(x)))
}

fn rule_pb(r: &RuleRow) -> pb::OfferRule {
    pb::OfferRule {
        id: r.id.to_string(),
        name: r.name.clone(),
        condition: pb::OfferCondition::decode(r.condition.as_slice()).ok(),
        action: pb::OfferAction::decode(r.action.as_slice()).ok(),
        cooldown_days: r.cooldown_days,
        enabled: r.enabled,
        version: r.version,
        created_at: Some(ts(r.created_at)),
        updated_at: Some(ts(r.updated_at)),
    }
}

fn validate(r: &pb::OfferRule) -> Result<(pb::OfferCondition, pb::OfferAction), Error> {
    let mut v = Violations::new();
    if r.name.trim().is_empty() || r.name.len() > 200 {
        v.add("rule.name", "1 to 200 characters");
    }
    let condition = r.condition.clone().unwrap_or_default();
    if !matches!(
        condition.trigger,
        ORDER_PLACED | ORDER_FULFILLED | INTERACTION
    ) {
        v.add(
            "rule.condition.trigger",
            "ORDER_PLACED, ORDER_FULFILLED or INTERACTION",
        );
    }
    if condition.trigger != INTERACTION && condition.interaction_kind != 0 {
        v.add(
            "rule.condition.interaction_kind",
            "only an INTERACTION trigger has an interaction kind",
        );
    }
    let action = r.action.clone().unwrap_or_default();
    let mut content = action.content.clone().unwrap_or_default();
    if content.coupon_template_id.is_empty() {
        content.coupon_template_id = action.coupon_template_id.clone();
    }
    check_content(&mut v, Some(&content), "rule.action.content");
    check_channels(&mut v, &action.channel_ids, "rule.action.channel_ids");
    if r.cooldown_days < 0 {
        v.add("rule.cooldown_days", "must not be negative");
    }
    v.finish()?;
    Ok((condition, action))
}

/// The content an action delivers: its message, with the coupon template of the action.
/// The channels a rule's offers are delivered through (none named: every channel).
pub(crate) fn delivery_channels(rule: Option<&pb::OfferRule>) -> &[String] {
    rule.and_then(|r| r.action.as_ref())
        .map_or(&[], |a| a.channel_ids.as_slice())
}

fn action_content(action: &pb::OfferAction) -> pb::MessageContent {
    let mut content = action.content.clone().unwrap_or_default();
    if !action.coupon_template_id.is_empty() {
        content.coupon_template_id = action.coupon_template_id.clone();
    }
    content
}

impl Grpc {
    pub(crate) async fn create_offer_rule(
        &self,
        caller: &str,
        req: pb::CreateOfferRuleRequest,
    ) -> Result<pb::CreateOfferRuleResponse, Error> {
        const SCOPE: &str = "crm.create_offer_rule";
        let r = req.rule.clone().unwrap_or_default();
        let (condition, action) = validate(&r)?;
        let mut tx = self.pool.begin().await?;
        if let Some(reply) =
            idem::replay(&mut tx, SCOPE, caller, &req.idempotency_key, &req).await?
        {
            return Ok(reply);
        }
        check_template(
            &mut tx,
            Some(&action_content(&action)),
            "rule.action.coupon_template_id",
        )
        .await?;
        let row: RuleRow = sqlx::query_as(
            "INSERT INTO offer_rules (id, name, condition, action, trigger, cooldown_days, enabled)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             RETURNING id, name, condition, action, cooldown_days, enabled, version, created_at,
                 updated_at",
        )
        .bind(Uuid::now_v7())
        .bind(r.name.trim())
        .bind(condition.encode_to_vec())
        .bind(action.encode_to_vec())
        .bind(condition.trigger)
        .bind(r.cooldown_days)
        .bind(r.enabled)
        .fetch_one(&mut *tx)
        .await?;
        let reply = pb::CreateOfferRuleResponse {
            rule: Some(rule_pb(&row)),
        };
        idem::remember(&mut tx, SCOPE, caller, &req.idempotency_key, None, &reply).await?;
        tx.commit().await?;
        Ok(reply)
    }

    /// Changes a rule; a caller limited to channels changes only rules that deliver through
    /// its channels, before and after the change.
    pub(crate) async fn update_offer_rule(
        &self,
        scope: &Scope,
        r: pb::OfferRule,
    ) -> Result<pb::OfferRule, Error> {
        let id: Uuid =
            r.id.trim()
                .parse()
                .map_err(|_| Error::invalid("rule.id", "must be a UUID"))?;
        let (condition, action) = validate(&r)?;
        scope.require_channels(delivery_channels(Some(&r)))?;
        let mut tx = self.pool.begin().await?;
        let current: Option<(i64, Vec<u8>)> =
            sqlx::query_as("SELECT version, action FROM offer_rules WHERE id = $1 FOR UPDATE")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((version, current)) = current else {
            return Err(Error::not_found(format!("offer rule {id}")));
        };
        let current = pb::OfferAction::decode(current.as_slice()).unwrap_or_default();
        scope.require_channels(&current.channel_ids)?;
        if version != r.version {
            return Err(Error::Aborted(format!(
                "offer rule {id} is at version {version}, not {}",
                r.version
            )));
        }
        check_template(
            &mut tx,
            Some(&action_content(&action)),
            "rule.action.coupon_template_id",
        )
        .await?;
        let row: RuleRow = sqlx::query_as(
            "UPDATE offer_rules SET name = $2, condition = $3, action = $4, trigger = $5,
                 cooldown_days = $6, enabled = $7, version = version + 1, updated_at = now()
             WHERE id = $1
             RETURNING id, name, condition, action, cooldown_days, enabled, version, created_at,
                 updated_at",
        )
        .bind(id)
        .bind(r.name.trim())
        .bind(condition.encode_to_vec())
        .bind(action.encode_to_vec())
        .bind(condition.trigger)
        .bind(r.cooldown_days)
        .bind(r.enabled)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rule_pb(&row))
    }

    pub(crate) async fn list_offer_rules(
        &self,
        req: pb::ListOfferRulesRequest,
    ) -> Result<pb::ListOfferRulesResponse, Error> {
        let size = paging::page_size(req.page_size)?;
        let after = paging::decode_token(&req.page_token)?
            .map(|t| t.parse::<Uuid>())
            .transpose()
            .map_err(|_| Error::invalid("page_token", "is not a token this service issued"))?
            .unwrap_or(Uuid::nil());
        let rows: Vec<RuleRow> = sqlx::query_as(
            "SELECT id, name, condition, action, cooldown_days, enabled, version, created_at,
                 updated_at
             FROM offer_rules WHERE id > $1 AND (enabled OR NOT $2) ORDER BY id LIMIT $3",
        )
        .bind(after)
        .bind(req.enabled_only)
        .bind(size)
        .fetch_all(&self.pool)
        .await?;
        Ok(pb::ListOfferRulesResponse {
            next_page_token: paging::next_token(
                rows.len(),
                size,
                rows.last().map(|r| r.id.to_string()),
            ),
            rules: rows.iter().map(rule_pb).collect(),
        })
    }

    /// Fires every enabled rule `h` matches for `customer`, inside the caller's transaction;
    /// returns how many deliveries were written.
    pub(crate) async fn fire_offers(
        &self,
        conn: &mut PgConnection,
        customer: &str,
        h: &Happening,
    ) -> Result<usize, Error> {
        let rules = armed_rules(conn, h.trigger).await?;
        self.fire(conn, customer, h, &rules).await
    }

    /// [`Grpc::fire_offers`] with the trigger's rules already loaded ([`armed_rules`]), for a
    /// batch of happenings that loads them once.
    #[tracing::instrument(name = "crm.fire_offers", skip_all, fields(trigger = h.trigger), err)]
    pub(crate) async fn fire(
        &self,
        conn: &mut PgConnection,
        customer: &str,
        h: &Happening,
        rules: &[ArmedRule],
    ) -> Result<usize, Error> {
        let mut cap = None;
        let mut fired = 0;
        for rule in rules.iter().filter(|r| fires(&r.condition, h)) {
            // Cooldown: 0 means once ever per customer.
            let recent: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM deliveries WHERE offer_rule_id = $1
                     AND customer_id = $2
                     AND ($3 = 0 OR created_at > now() - make_interval(days => $3)))",
            )
            .bind(rule.id)
            .bind(customer)
            .bind(rule.cooldown_days)
            .fetch_one(&mut *conn)
            .await?;
            if recent {
                continue;
            }
            let cap = match cap {
                Some(cap) => cap,
                None => *cap.insert(contact::weekly_cap(conn).await?),
            };
            let action = &rule.action;
            let channel = match contact::check(conn, customer, &action.channel_ids, cap).await? {
                Ok(channel) => channel,
                Err(reason) => {
                    tracing::debug!(offer_rule_id = %rule.id, reason, "offer suppressed");
                    continue;
                }
            };
            let store = if action.invite_to_nearest_store {
                nearest_store(conn, customer, &h.store_id).await?
            } else {
                String::new()
            };
            let mut content = action_content(action);
            if !store.is_empty() && content.body.contains("{store}") {
                content.body = content.body.replace("{store}", &store);
            }
            self.deliver(
                conn,
                Origin::Offer(rule.id),
                customer,
                (&channel.0, channel.1),
                &content,
                &store,
            )
            .await?;
            fired += 1;
        }
        Ok(fired)
    }
}

/// An enabled offer rule, decoded.
#[derive(Debug, Clone)]
pub(crate) struct ArmedRule {
    id: Uuid,
    condition: pb::OfferCondition,
    action: pb::OfferAction,
    cooldown_days: i32,
}

/// The enabled rules of `trigger`, in id order; a stored rule that does not decode is left
/// out.
pub(crate) async fn armed_rules(
    conn: &mut PgConnection,
    trigger: i32,
) -> Result<Vec<ArmedRule>, Error> {
    let rows: Vec<RuleRow> = sqlx::query_as(
        "SELECT id, name, condition, action, cooldown_days, enabled, version, created_at,
             updated_at
         FROM offer_rules WHERE enabled AND trigger = $1 ORDER BY id",
    )
    .bind(trigger)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|rule| {
            let (Ok(condition), Ok(action)) = (
                pb::OfferCondition::decode(rule.condition.as_slice()),
                pb::OfferAction::decode(rule.action.as_slice()),
            ) else {
                tracing::warn!(offer_rule_id = %rule.id, "stored offer rule does not decode");
                return None;
            };
            Some(ArmedRule {
                id: rule.id,
                condition,
                action,
                cooldown_days: rule.cooldown_days,
            })
        })
        .collect())
}

/// The store to invite a customer to: where the event happened, else the store the customer
/// visits or buys in most. crm knows no geography or stock, so "nearest" is the customer's own
/// store.
async fn nearest_store(
    conn: &mut PgConnection,
    customer: &str,
    event_store: &str,
) -> Result<String, Error> {
    if !event_store.is_empty() {
        return Ok(event_store.to_owned());
    }
    let store: Option<String> = sqlx::query_scalar(
        "SELECT store_id FROM (
             SELECT store_id FROM customer_orders WHERE customer_id = $1 AND store_id <> ''
             UNION ALL
             SELECT store_id FROM interactions WHERE customer_id = $1 AND store_id <> ''
         ) s GROUP BY store_id ORDER BY count(*) DESC, store_id LIMIT 1",
    )
    .bind(customer)
    .fetch_optional(conn)
    .await?;
    Ok(store.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_match_on_every_set_field() {
        let c = pb::OfferCondition {
            trigger: ORDER_PLACED,
            channel_kinds: vec![1],
            category_ids: vec!["x".into()],
            ..Default::default()
        };
        let h = Happening {
            trigger: ORDER_PLACED,
            channel_kind: 1,
            category_ids: vec!["y".into(), "x".into()],
            ..Default::default()
        };
        assert!(fires(&c, &h));
        assert!(!fires(
            &c,
            &Happening {
                channel_kind: 2,
                ..h.clone()
            }
        ));
        assert!(!fires(
            &c,
            &Happening {
                trigger: ORDER_FULFILLED,
                ..h.clone()
            }
        ));
        assert!(!fires(
            &c,
            &Happening {
                category_ids: vec!["y".into()],
                ..h
            }
        ));
    }
}

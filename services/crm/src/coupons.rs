//! Coupons: templates, issuing to a customer, and checking, redeeming and releasing a coupon.
//! Redemption locks the coupon row, so two channels redeeming one code at the same instant
//! serialise and the second sees it redeemed.

use chrono::{DateTime, Duration, Utc};
use omni_proto::common::{CouponEffect, Money, TimeRange, coupon_effect};
use omni_proto::events::event::Payload;
use omni_proto::events::{CouponIssued, CouponRedeemed, CouponReleased};
use omni_proto::omni::crm::v1 as pb;
use omni_proto::omni::crm::v1::coupon_service_server::CouponService;
use omni_runtime::Error;
use omni_runtime::auth::{Role, Scope};
use omni_runtime::error::Violations;
use omni_runtime::paging;
use sqlx::PgConnection;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::grpc::{Grpc, caller, customer_id, ts};
use crate::idem;
use crate::store;

const REDEEM_SCOPE: &str = "crm.redeem_coupon";
const ISSUED: i32 = 1;
const REDEEMED: i32 = 2;
const MANAGERS: &[Role] = &[Role::Admin, Role::ChannelManager];
const ANY: &[Role] = &Role::ALL;
const USERS: &[Role] = &[
    Role::Admin,
    Role::ChannelApp,
    Role::Service,
    Role::StoreAssociate,
];

type Reply<T> = Result<Response<T>, Status>;

enum Recipients {
    Customer(String),
    Segment(Uuid),
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct TemplateRow {
    id: Uuid,
    name: String,
    amount_off_minor: Option<i64>,
    currency: String,
    percent_off_bps: Option<i32>,
    min_spend_minor: i64,
    channel_ids: Vec<String>,
    valid_from: Option<DateTime<Utc>>,
    valid_until: Option<DateTime<Utc>>,
    valid_days: i32,
    issuing_channel_id: String,
    active: bool,
    created_at: DateTime<Utc>,
    sku_ids: Vec<String>,
    category_ids: Vec<String>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct CouponRow {
    id: Uuid,
    code: String,
    template_id: Uuid,
    customer_id: String,
    status: i32,
    issuing_channel_id: String,
    channel_ids: Vec<String>,
    valid_from: Option<DateTime<Utc>>,
    valid_until: Option<DateTime<Utc>>,
    issued_at: DateTime<Utc>,
    redeemed_order_id: Option<String>,
    redeemed_channel_id: Option<String>,
    redeemed_at: Option<DateTime<Utc>>,
    campaign_id: String,
    offer_rule_id: String,
}

fn from_ts(t: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    t.and_then(|t| DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
}

fn money(minor_units: i64, currency: &str) -> Money {
    Money {
        minor_units,
        currency: currency.to_owned(),
    }
}

fn discount_of(t: &TemplateRow) -> Option<coupon_effect::Discount> {
    match (t.amount_off_minor, t.percent_off_bps) {
        (Some(a), _) => Some(coupon_effect::Discount::AmountOff(money(a, &t.currency))),
        (None, Some(p)) => Some(coupon_effect::Discount::PercentOffBps(p)),
        (None, None) => None,
    }
}

fn template_pb(t: &TemplateRow) -> pb::CouponTemplate {
    pb::CouponTemplate {
        id: t.id.to_string(),
        name: t.name.clone(),
        discount: match discount_of(t) {
            Some(coupon_effect::Discount::AmountOff(m)) => {
                Some(pb::coupon_template::Discount::AmountOff(m))
            }
            Some(coupon_effect::Discount::PercentOffBps(p)) => {
                Some(pb::coupon_template::Discount::PercentOffBps(p))
            }
            None => None,
        },
        min_spend: Some(money(t.min_spend_minor, &t.currency)),
        channel_ids: t.channel_ids.clone(),
        validity: Some(TimeRange {
            start: t.valid_from.map(ts),
            end: t.valid_until.map(ts),
        }),
        valid_days: t.valid_days,
        issuing_channel_id: t.issuing_channel_id.clone(),
        active: t.active,
        created_at: Some(ts(t.created_at)),
        sku_ids: t.sku_ids.clone(),
        category_ids: t.category_ids.clone(),
    }
}

fn coupon_pb(c: &CouponRow, t: &TemplateRow) -> pb::Coupon {
    pb::Coupon {
        id: c.id.to_string(),
        code: c.code.clone(),
        template_id: c.template_id.to_string(),
        customer_id: c.customer_id.clone(),
        status: c.status,
        issuing_channel_id: c.issuing_channel_id.clone(),
        validity: Some(TimeRange {
            start: c.valid_from.map(ts),
            end: c.valid_until.map(ts),
        }),
        effect: Some(CouponEffect {
            code: c.code.clone(),
            coupon_id: c.id.to_string(),
            discount: discount_of(t),
            min_spend: Some(money(t.min_spend_minor, &t.currency)),
            issuing_channel_id: c.issuing_channel_id.clone(),
            sku_ids: t.sku_ids.clone(),
            category_ids: t.category_ids.clone(),
        }),
        channel_ids: c.channel_ids.clone(),
        issued_at: Some(ts(c.issued_at)),
        redeemed_order_id: c.redeemed_order_id.clone().unwrap_or_default(),
        redeemed_channel_id: c.redeemed_channel_id.clone().unwrap_or_default(),
        redeemed_at: c.redeemed_at.map(ts),
        campaign_id: c.campaign_id.clone(),
        offer_rule_id: c.offer_rule_id.clone(),
    }
}

async fn template(conn: &mut PgConnection, id: Uuid) -> Result<Option<TemplateRow>, Error> {
    Ok(
        sqlx::query_as("SELECT * FROM coupon_templates WHERE id = $1")
            .bind(id)
            .fetch_optional(conn)
            .await?,
    )
}

async fn coupon(conn: &mut PgConnection, code: &str, lock: bool) -> Result<CouponRow, Error> {
    let sql = if lock {
        "SELECT * FROM coupons WHERE code = $1 FOR UPDATE"
    } else {
        "SELECT * FROM coupons WHERE code = $1"
    };
    sqlx::query_as(sql)
        .bind(code.trim().to_uppercase())
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| Error::not_found(format!("coupon {}", code.trim())))
}

fn parse_template_id(raw: &str) -> Result<Uuid, Error> {
    raw.trim()
        .parse()
        .map_err(|_| Error::invalid("template_id", "must be a UUID"))
}

/// The most the order can have spent for a percentage coupon to have given `discount`: the
/// contract's redemption carries the discount, not the order's subtotal, so this is the
/// minimum-spend check crm can make (amount-off coupons are checked by the quote only).
fn implied_spend(t: &TemplateRow, discount: i64) -> Option<i64> {
    let bps = i64::from(t.percent_off_bps?);
    if discount <= 0 || bps <= 0 || t.min_spend_minor <= 0 {
        return None;
    }
    // discount = floor(spend x bps / 10000), so spend < (discount + 1) x 10000 / bps.
    Some(((discount + 1) * 10_000 - 1) / bps)
}

/// Why the coupon cannot be used by `customer` on `channel` now, if it cannot.
fn unusable(c: &CouponRow, customer: &str, channel: &str, now: DateTime<Utc>) -> Option<Error> {
    let subject = format!("coupon/{}", c.code);
    if c.status != ISSUED {
        return Some(Error::precondition(
            "COUPON_REDEEMED",
            subject,
            "the coupon has already been redeemed",
        ));
    }
    if c.customer_id != customer {
        return Some(Error::precondition(
            "COUPON_CUSTOMER",
            subject,
            "the coupon belongs to another customer",
        ));
    }
    if c.valid_from.is_some_and(|f| now < f) || c.valid_until.is_some_and(|u| now >= u) {
        return Some(Error::precondition(
            "COUPON_VALIDITY",
            subject,
            "the coupon is outside its validity",
        ));
    }
    if !c.channel_ids.is_empty() && !c.channel_ids.iter().any(|x| x == channel) {
        return Some(Error::precondition(
            "COUPON_CHANNEL",
            subject,
            "the coupon is not valid in this channel",
        ));
    }
    None
}

/// What issued a coupon, besides a direct `IssueCoupons`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Source<'a> {
    Direct,
    Campaign(&'a str),
    Offer(&'a str),
}

impl Grpc {
    /// Issues one coupon of `t` to `customer` inside the caller's transaction, with its
    /// `CouponIssued` event.
    async fn issue_one(
        &self,
        conn: &mut PgConnection,
        t: &TemplateRow,
        customer: &str,
        issuing: &str,
        source: Source<'_>,
    ) -> Result<CouponRow, Error> {
        let now = Utc::now();
        let until = if t.valid_days > 0 {
            let by_days = now + Duration::days(i64::from(t.valid_days));
            Some(t.valid_until.map_or(by_days, |u| u.min(by_days)))
        } else {
            t.valid_until
        };
        let (campaign_id, offer_rule_id) = match source {
            Source::Direct => ("", ""),
            Source::Campaign(c) => (c, ""),
            Source::Offer(o) => ("", o),
        };
        // gen_random_uuid draws from a strong random source, so codes cannot be guessed.
        let row: CouponRow = sqlx::query_as(
            "INSERT INTO coupons (id, code, template_id, customer_id, issuing_channel_id,
                 channel_ids, valid_from, valid_until, campaign_id, offer_rule_id)
             VALUES ($1, upper(substr(replace(gen_random_uuid()::text, '-', ''), 1, 16)),
                 $2, $3, $4, $5, $6, $7, $8, $9)
             RETURNING *",
        )
        .bind(Uuid::now_v7())
        .bind(t.id)
        .bind(customer)
        .bind(issuing)
        .bind(&t.channel_ids)
        .bind(t.valid_from)
        .bind(until)
        .bind(campaign_id)
        .bind(offer_rule_id)
        .fetch_one(&mut *conn)
        .await?;
        self.outbox
            .add(
                conn,
                "crm.coupon_issued",
                &row.id.to_string(),
                "",
                Payload::CouponIssued(CouponIssued {
                    coupon_id: row.id.to_string(),
                    code: row.code.clone(),
                    customer_id: customer.to_owned(),
                    template_id: t.id.to_string(),
                    issuing_channel_id: issuing.to_owned(),
                    campaign_id: campaign_id.to_owned(),
                    offer_rule_id: offer_rule_id.to_owned(),
                    effect: coupon_pb(&row, t).effect,
                    channel_ids: row.channel_ids.clone(),
                    valid_from: row.valid_from.map(ts),
                    valid_until: row.valid_until.map(ts),
                }),
            )
            .await?;
        Ok(row)
    }

    /// Issues a coupon of the template `template_id` for a campaign or an offer; returns its
    /// code.
    pub(crate) async fn issue_for(
        &self,
        conn: &mut PgConnection,
        template_id: &str,
        customer: &str,
        source: Source<'_>,
    ) -> Result<String, Error> {
        let id = parse_template_id(template_id)?;
        let t = template(conn, id)
            .await?
            .ok_or_else(|| Error::not_found(format!("coupon template {id}")))?;
        let issuing = t.issuing_channel_id.clone();
        Ok(self
            .issue_one(conn, &t, customer, &issuing, source)
            .await?
            .code)
    }
}

impl Grpc {
    async fn create_template(
        &self,
        caller: &str,
        req: pb::CreateCouponTemplateRequest,
    ) -> Result<pb::CreateCouponTemplateResponse, Error> {
        const SCOPE: &str = "crm.create_coupon_template";
        let t = req.template.clone().unwrap_or_default();
        let mut v = Violations::new();
        let name = t.name.trim().to_owned();
        if name.is_empty() || name.len() > 200 {
            v.add("template.name", "1 to 200 characters");
        }
        let (amount, percent, mut currency) = match &t.discount {
            Some(pb::coupon_template::Discount::AmountOff(m)) => {
                if m.minor_units <= 0 {
                    v.add("template.amount_off", "must be positive");
                }
                (Some(m.minor_units), None, m.currency.clone())
            }
            Some(pb::coupon_template::Discount::PercentOffBps(p)) => {
                if !(1..=10_000).contains(p) {
                    v.add("template.percent_off_bps", "between 1 and 10000");
                }
                (None, Some(*p), String::new())
            }
            None => {
                v.add("template.discount", "an amount or a percentage is required");
                (None, None, String::new())
            }
        };
        let min_spend = t.min_spend.as_ref().map_or(0, |m| m.minor_units);
        if min_spend < 0 {
            v.add("template.min_spend", "must not be negative");
        }
        if currency.is_empty() {
            currency = t
                .min_spend
                .as_ref()
                .map(|m| m.currency.clone())
                .unwrap_or_default();
        }
        let from = from_ts(t.validity.as_ref().and_then(|r| r.start.as_ref()));
        let until = from_ts(t.validity.as_ref().and_then(|r| r.end.as_ref()));
        if let (Some(f), Some(u)) = (from, until)
            && u <= f
        {
            v.add("template.validity.end", "must be after the start");
        }
        if t.valid_days < 0 {
            v.add("template.valid_days", "must not be negative");
        }
        v.finish()?;
        let mut tx = self.pool.begin().await?;
        if let Some(reply) =
            idem::replay(&mut tx, SCOPE, caller, &req.idempotency_key, &req).await?
        {
            return Ok(reply);
        }
        let row: TemplateRow = sqlx::query_as(
            "INSERT INTO coupon_templates (id, name, amount_off_minor, currency, percent_off_bps,
                 min_spend_minor, channel_ids, valid_from, valid_until, valid_days,
                 issuing_channel_id, sku_ids, category_ids)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING *",
        )
        .bind(Uuid::now_v7())
        .bind(&name)
        .bind(amount)
        .bind(&currency)
        .bind(percent)
        .bind(min_spend)
        .bind(&t.channel_ids)
        .bind(from)
        .bind(until)
        .bind(t.valid_days)
        .bind(&t.issuing_channel_id)
        .bind(&t.sku_ids)
        .bind(&t.category_ids)
        .fetch_one(&mut *tx)
        .await?;
        let reply = pb::CreateCouponTemplateResponse {
            template: Some(template_pb(&row)),
        };
        idem::remember(&mut tx, SCOPE, caller, &req.idempotency_key, None, &reply).await?;
        tx.commit().await?;
        Ok(reply)
    }

    async fn issue(
        &self,
        caller: &str,
        scope: &Scope,
        req: pb::IssueCouponsRequest,
    ) -> Result<pb::IssueCouponsResponse, Error> {
        const SCOPE: &str = "crm.issue_coupons";
        let template_id = parse_template_id(&req.template_id)?;
        let recipients = match &req.recipients {
            Some(pb::issue_coupons_request::Recipients::CustomerId(c)) => {
                Recipients::Customer(customer_id(c)?)
            }
            Some(pb::issue_coupons_request::Recipients::SegmentId(s)) => {
                Recipients::Segment(crate::segments::parse_id(s, "segment_id")?)
            }
            None => {
                return Err(Error::invalid(
                    "customer_id",
                    "a recipient is required: customer_id or segment_id",
                ));
            }
        };
        let mut tx = self.pool.begin().await?;
        if let Some(reply) =
            idem::replay(&mut tx, SCOPE, caller, &req.idempotency_key, &req).await?
        {
            return Ok(reply);
        }
        let Some(t) = template(&mut tx, template_id).await? else {
            return Err(Error::not_found_at(
                "template_id",
                format!("coupon template {template_id}"),
            ));
        };
        if !t.active {
            return Err(Error::precondition(
                "TEMPLATE_INACTIVE",
                format!("coupon_template/{template_id}"),
                "the template is inactive",
            ));
        }
        let issuing = if req.issuing_channel_id.is_empty() {
            t.issuing_channel_id.clone()
        } else {
            req.issuing_channel_id.clone()
        };
        // Coupons go out through the caller's channels, valid where it may act.
        scope.require_channels(&t.channel_ids)?;
        if !issuing.is_empty() && !scope.allows_channel(&issuing) {
            return Err(Error::permission_denied(format!(
                "channel {issuing} is outside the caller's scope"
            )));
        }
        let reply = match recipients {
            Recipients::Customer(asked) => {
                let customer = store::resolve(&mut tx, &asked).await?;
                if store::customer(&mut tx, &customer).await?.is_none() {
                    return Err(Error::not_found_at(
                        "customer_id",
                        format!("customer {asked}"),
                    ));
                }
                let row = self
                    .issue_one(&mut tx, &t, &customer, &issuing, Source::Direct)
                    .await?;
                pb::IssueCouponsResponse {
                    issued_count: 1,
                    coupons: vec![coupon_pb(&row, &t)],
                }
            }
            Recipients::Segment(segment_id) => {
                let segment = crate::segments::segment(&mut tx, segment_id)
                    .await
                    .map_err(|_| {
                        Error::not_found_at("segment_id", format!("segment {segment_id}"))
                    })?;
                crate::segments::refresh(&mut tx, segment.id, &segment.rule).await?;
                let members = crate::segments::members(&mut tx, segment.id).await?;
                for customer in &members {
                    self.issue_one(&mut tx, &t, customer, &issuing, Source::Direct)
                        .await?;
                }
                pb::IssueCouponsResponse {
                    issued_count: members.len() as i64,
                    coupons: Vec::new(),
                }
            }
        };
        idem::remember(&mut tx, SCOPE, caller, &req.idempotency_key, None, &reply).await?;
        tx.commit().await?;
        self.outbox.wake();
        Ok(reply)
    }

    async fn redeem_coupon(
        &self,
        caller: &str,
        req: pb::RedeemCouponRequest,
    ) -> Result<pb::Coupon, Error> {
        let mut v = Violations::new();
        if req.code.trim().is_empty() {
            v.add("code", "required");
        }
        if req.order_id.trim().is_empty() {
            v.add("order_id", "required");
        }
        if req.channel_id.trim().is_empty() {
            v.add("channel_id", "required");
        }
        v.finish()?;
        let asked = customer_id(&req.customer_id)?;
        let mut tx = self.pool.begin().await?;
        if let Some(reply) = idem::replay::<_, pb::RedeemCouponResponse>(
            &mut tx,
            REDEEM_SCOPE,
            caller,
            &req.idempotency_key,
            &req,
        )
        .await?
        {
            return reply
                .coupon
                .ok_or_else(|| Error::internal("stored redemption without coupon"));
        }
        let c = coupon(&mut tx, &req.code, true).await?;
        let t = template(&mut tx, c.template_id)
            .await?
            .ok_or_else(|| Error::internal("coupon without template"))?;
        if c.status == REDEEMED && c.redeemed_order_id.as_deref() == Some(req.order_id.as_str()) {
            // A retry for the same order: the first redemption stands.
            return Ok(coupon_pb(&c, &t));
        }
        let customer = store::resolve(&mut tx, &asked).await?;
        if let Some(e) = unusable(&c, &customer, &req.channel_id, Utc::now()) {
            return Err(e);
        }
        let discount = req.discount.as_ref().map_or(0, |m| m.minor_units);
        if let Some(spend) = implied_spend(&t, discount)
            && spend < t.min_spend_minor
        {
            return Err(Error::precondition(
                "COUPON_MIN_SPEND",
                format!("coupon/{}", c.code),
                "the order does not reach the coupon's minimum spend",
            ));
        }
        let row: CouponRow = sqlx::query_as(
            "UPDATE coupons SET status = 2, redeemed_order_id = $2, redeemed_channel_id = $3,
                 redeemed_at = now()
             WHERE id = $1 AND status = 1 RETURNING *",
        )
        .bind(c.id)
        .bind(&req.order_id)
        .bind(&req.channel_id)
        .fetch_one(&mut *tx)
        .await?;
        self.outbox
            .add(
                &mut tx,
                "crm.coupon_redeemed",
                &row.id.to_string(),
                "",
                Payload::CouponRedeemed(CouponRedeemed {
                    coupon_id: row.id.to_string(),
                    code: row.code.clone(),
                    customer_id: row.customer_id.clone(),
                    issuing_channel_id: row.issuing_channel_id.clone(),
                    channel_id: req.channel_id.clone(),
                    order_id: req.order_id.clone(),
                    discount: req.discount.clone(),
                    redeemed_at: row.redeemed_at.map(ts),
                }),
            )
            .await?;
        let reply = pb::RedeemCouponResponse {
            coupon: Some(coupon_pb(&row, &t)),
        };
        idem::remember(
            &mut tx,
            REDEEM_SCOPE,
            caller,
            &req.idempotency_key,
            None,
            &reply,
        )
        .await?;
        tx.commit().await?;
        self.outbox.wake();
        tracing::info!(coupon_id = %row.id, order_id = %req.order_id, channel_id = %req.channel_id, "coupon redeemed");
        Ok(coupon_pb(&row, &t))
    }

    async fn release(
        &self,
        scope: &Scope,
        req: pb::ReleaseCouponRequest,
    ) -> Result<pb::Coupon, Error> {
        if req.order_id.trim().is_empty() {
            return Err(Error::invalid("order_id", "required"));
        }
        let mut tx = self.pool.begin().await?;
        let c = coupon(&mut tx, &req.code, true).await?;
        // Given back through the channel it was redeemed in.
        if let Some(channel) = &c.redeemed_channel_id
            && !scope.allows_channel(channel)
        {
            return Err(Error::permission_denied(format!(
                "coupon {} was redeemed in channel {channel}, outside the caller's scope",
                c.code
            )));
        }
        let t = template(&mut tx, c.template_id)
            .await?
            .ok_or_else(|| Error::internal("coupon without template"))?;
        if c.status == ISSUED {
            // Already given back: releasing again changes nothing.
            return Ok(coupon_pb(&c, &t));
        }
        if c.redeemed_order_id.as_deref() != Some(req.order_id.as_str()) {
            return Err(Error::precondition(
                "COUPON_ORDER",
                format!("coupon/{}", c.code),
                "the coupon was redeemed for another order",
            ));
        }
        let row: CouponRow = sqlx::query_as(
            "UPDATE coupons SET status = 1, redeemed_order_id = NULL, redeemed_channel_id = NULL,
                 redeemed_at = NULL
             WHERE id = $1 RETURNING *",
        )
        .bind(c.id)
        .fetch_one(&mut *tx)
        .await?;
        self.outbox
            .add(
                &mut tx,
                "crm.coupon_released",
                &row.id.to_string(),
                "",
                Payload::CouponReleased(CouponReleased {
                    coupon_id: row.id.to_string(),
                    code: row.code.clone(),
                    customer_id: row.customer_id.clone(),
                    order_id: req.order_id.clone(),
                    reason: req.reason.clone(),
                }),
            )
            .await?;
        tx.commit().await?;
        self.outbox.wake();
        Ok(coupon_pb(&row, &t))
    }
}

#[tonic::async_trait]
impl CouponService for Grpc {
    async fn create_coupon_template(
        &self,
        request: Request<pb::CreateCouponTemplateRequest>,
    ) -> Reply<pb::CreateCouponTemplateResponse> {
        let who = caller(&request, MANAGERS)?;
        // A manager limited to channels makes coupons for its own channels only.
        let t = request.get_ref().template.clone().unwrap_or_default();
        who.scope.require_channels(&t.channel_ids)?;
        if !t.issuing_channel_id.is_empty() {
            who.require_channel(&t.issuing_channel_id)?;
        }
        Ok(Response::new(
            self.create_template(&who.id, request.into_inner()).await?,
        ))
    }

    async fn get_coupon_template(
        &self,
        request: Request<pb::GetCouponTemplateRequest>,
    ) -> Reply<pb::GetCouponTemplateResponse> {
        caller(&request, ANY)?;
        let id = parse_template_id(&request.get_ref().template_id)?;
        let mut conn = self.pool.acquire().await.map_err(Error::from)?;
        let t = template(&mut conn, id)
            .await?
            .ok_or_else(|| Error::not_found(format!("coupon template {id}")))?;
        Ok(Response::new(pb::GetCouponTemplateResponse {
            template: Some(template_pb(&t)),
        }))
    }

    async fn list_coupon_templates(
        &self,
        request: Request<pb::ListCouponTemplatesRequest>,
    ) -> Reply<pb::ListCouponTemplatesResponse> {
        caller(&request, ANY)?;
        let req = request.into_inner();
        let size = paging::page_size(req.page_size)?;
        let after = paging::decode_token(&req.page_token)?
            .map(|t| t.parse::<Uuid>())
            .transpose()
            .map_err(|_| Error::invalid("page_token", "is not a token this service issued"))?
            .unwrap_or(Uuid::nil());
        let rows: Vec<TemplateRow> = sqlx::query_as(
            "SELECT * FROM coupon_templates WHERE id > $1 AND (active OR $2)
             ORDER BY id LIMIT $3",
        )
        .bind(after)
        .bind(req.include_inactive)
        .bind(size)
        .fetch_all(&self.pool)
        .await
        .map_err(Error::from)?;
        Ok(Response::new(pb::ListCouponTemplatesResponse {
            next_page_token: paging::next_token(
                rows.len(),
                size,
                rows.last().map(|r| r.id.to_string()),
            ),
            templates: rows.iter().map(template_pb).collect(),
        }))
    }

    async fn issue_coupons(
        &self,
        request: Request<pb::IssueCouponsRequest>,
    ) -> Reply<pb::IssueCouponsResponse> {
        let who = caller(
            &request,
            &[Role::Admin, Role::ChannelManager, Role::Service],
        )?;
        Ok(Response::new(
            self.issue(&who.id, &who.scope, request.into_inner())
                .await?,
        ))
    }

    async fn get_coupon(
        &self,
        request: Request<pb::GetCouponRequest>,
    ) -> Reply<pb::GetCouponResponse> {
        caller(&request, ANY)?;
        let mut conn = self.pool.acquire().await.map_err(Error::from)?;
        let c = coupon(&mut conn, &request.get_ref().code, false).await?;
        let t = template(&mut conn, c.template_id)
            .await?
            .ok_or_else(|| Error::internal("coupon without template"))?;
        Ok(Response::new(pb::GetCouponResponse {
            coupon: Some(coupon_pb(&c, &t)),
        }))
    }

    async fn list_customer_coupons(
        &self,
        request: Request<pb::ListCustomerCouponsRequest>,
    ) -> Reply<pb::ListCustomerCouponsResponse> {
        caller(&request, ANY)?;
        let req = request.into_inner();
        let asked = customer_id(&req.customer_id)?;
        let size = paging::page_size(req.page_size)?;
        let after = paging::decode_token(&req.page_token)?
            .map(|t| t.parse::<Uuid>())
            .transpose()
            .map_err(|_| Error::invalid("page_token", "is not a token this service issued"))?
            .unwrap_or(Uuid::nil());
        let mut conn = self.pool.acquire().await.map_err(Error::from)?;
        let customer = store::resolve(&mut conn, &asked).await?;
        if store::customer(&mut conn, &customer).await?.is_none() {
            return Err(Error::not_found(format!("customer {asked}")).into());
        }
        let rows: Vec<CouponRow> = sqlx::query_as(
            "SELECT * FROM coupons WHERE customer_id = $1 AND id > $2
                 AND (cardinality($3::INT[]) = 0 OR status = ANY($3))
             ORDER BY id LIMIT $4",
        )
        .bind(&customer)
        .bind(after)
        .bind(&req.statuses)
        .bind(size)
        .fetch_all(&mut *conn)
        .await
        .map_err(Error::from)?;
        let mut coupons = Vec::with_capacity(rows.len());
        for c in &rows {
            let t = template(&mut conn, c.template_id)
                .await?
                .ok_or_else(|| Error::internal("coupon without template"))?;
            coupons.push(coupon_pb(c, &t));
        }
        Ok(Response::new(pb::ListCustomerCouponsResponse {
            next_page_token: paging::next_token(
                rows.len(),
                size,
                rows.last().map(|r| r.id.to_string()),
            ),
            coupons,
        }))
    }

    async fn check_coupon(
        &self,
        request: Request<pb::CheckCouponRequest>,
    ) -> Reply<pb::CheckCouponResponse> {
        caller(&request, ANY)?;
        let req = request.into_inner();
        let asked = customer_id(&req.customer_id)?;
        let mut conn = self.pool.acquire().await.map_err(Error::from)?;
        let c = coupon(&mut conn, &req.code, false).await?;
        let t = template(&mut conn, c.template_id)
            .await?
            .ok_or_else(|| Error::internal("coupon without template"))?;
        let customer = store::resolve(&mut conn, &asked).await?;
        let reason = unusable(&c, &customer, &req.channel_id, Utc::now()).map(|e| e.to_string());
        Ok(Response::new(pb::CheckCouponResponse {
            coupon: Some(coupon_pb(&c, &t)),
            usable: reason.is_none(),
            reason: reason.unwrap_or_default(),
        }))
    }

    async fn redeem_coupon(
        &self,
        request: Request<pb::RedeemCouponRequest>,
    ) -> Reply<pb::RedeemCouponResponse> {
        let who = caller(&request, USERS)?;
        who.require_channel(&request.get_ref().channel_id)?;
        let coupon = Grpc::redeem_coupon(self, &who.id, request.into_inner()).await?;
        Ok(Response::new(pb::RedeemCouponResponse {
            coupon: Some(coupon),
        }))
    }

    async fn release_coupon(
        &self,
        request: Request<pb::ReleaseCouponRequest>,
    ) -> Reply<pb::ReleaseCouponResponse> {
        let who = caller(&request, USERS)?;
        let coupon = self.release(&who.scope, request.into_inner()).await?;
        Ok(Response::new(pb::ReleaseCouponResponse {
            coupon: Some(coupon),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn percent(bps: i32, min_spend: i64) -> TemplateRow {
        TemplateRow {
            id: Uuid::nil(),
            name: "t".into(),
            amount_off_minor: None,
            currency: "EUR".into(),
            percent_off_bps: Some(bps),
            min_spend_minor: min_spend,
            channel_ids: Vec::new(),
            valid_from: None,
            valid_until: None,
            valid_days: 0,
            issuing_channel_id: String::new(),
            active: true,
            created_at: Utc::now(),
            sku_ids: Vec::new(),
            category_ids: Vec::new(),
        }
    }

    #[test]
    fn a_percentage_discount_bounds_the_spend_behind_it() {
        // 10% of 49.99 is 4.99: the spend behind 4.99 is at most 49.99.
        assert_eq!(implied_spend(&percent(1_000, 5_000), 499), Some(4_999));
        assert!(implied_spend(&percent(1_000, 5_000), 500).is_some_and(|s| s >= 5_000));
        assert_eq!(implied_spend(&percent(1_000, 0), 499), None);
        let mut amount = percent(1_000, 5_000);
        amount.percent_off_bps = None;
        amount.amount_off_minor = Some(500);
        assert_eq!(implied_spend(&amount, 500), None);
    }
}

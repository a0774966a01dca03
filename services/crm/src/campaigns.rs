//! Campaigns: a segment, content and the channels allowed. Sending resolves the segment and
//! gives every member at most one delivery (the unique index on (campaign, customer) makes a
//! second one impossible), through the first allowed channel the customer is reachable and
//! consenting on, within the weekly frequency cap (see [`crate::contact`]). Each delivery is
//! written to crm's event stream as `CampaignDeliveryRequested` for the channel adapters, in
//! the same transaction; every member without one gets a suppression row with the reason.

use chrono::{DateTime, Utc};
use omni_proto::events::CampaignDeliveryRequested;
use omni_proto::events::event::Payload;
use omni_proto::omni::crm::v1 as pb;
use omni_proto::omni::crm::v1::campaign_service_server::CampaignService;
use omni_runtime::Error;
use omni_runtime::auth::Role;
use omni_runtime::error::Violations;
use omni_runtime::paging;
use prost::Message;
use sqlx::PgConnection;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::contact;
use crate::coupons::Source;
use crate::grpc::{Grpc, caller, customer_id, from_ts, ts};
use crate::idem;
use crate::offers;
use crate::segments;

const WRITERS: &[Role] = &[Role::Admin, Role::ChannelManager];
const ANALYSTS: &[Role] = &[Role::Admin, Role::ChannelManager, Role::Analyst];
const ADAPTERS: &[Role] = &[Role::Admin, Role::ChannelApp, Role::Service];

const DRAFT: i32 = 1;
const SENT: i32 = 3;
const PENDING: i32 = 1;
const DELIVERED: i32 = 2;
const FAILED: i32 = 3;
const CLICKED: i32 = 4;
const INTERACTION_CAMPAIGN_DELIVERY: i32 = 3;
const INTERACTION_CLICK: i32 = 4;

type Reply<T> = Result<Response<T>, Status>;

#[derive(Debug, Clone, sqlx::FromRow)]
struct CampaignRow {
    id: Uuid,
    name: String,
    segment_id: Uuid,
    content: Vec<u8>,
    channel_ids: Vec<String>,
    status: i32,
    version: i64,
    created_at: DateTime<Utc>,
    sent_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct DeliveryRow {
    id: Uuid,
    campaign_id: Option<Uuid>,
    offer_rule_id: Option<Uuid>,
    customer_id: String,
    channel_id: String,
    content: Vec<u8>,
    coupon_code: String,
    status: i32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

fn campaign_pb(c: &CampaignRow) -> pb::Campaign {
    pb::Campaign {
        id: c.id.to_string(),
        name: c.name.clone(),
        segment_id: c.segment_id.to_string(),
        content: pb::MessageContent::decode(c.content.as_slice()).ok(),
        channel_ids: c.channel_ids.clone(),
        status: c.status,
        version: c.version,
        created_at: Some(ts(c.created_at)),
        sent_at: c.sent_at.map(ts),
        ..Default::default()
    }
}

fn delivery_pb(d: &DeliveryRow) -> pb::Delivery {
    pb::Delivery {
        id: d.id.to_string(),
        campaign_id: d.campaign_id.map(|c| c.to_string()).unwrap_or_default(),
        offer_rule_id: d.offer_rule_id.map(|c| c.to_string()).unwrap_or_default(),
        customer_id: d.customer_id.clone(),
        channel_id: d.channel_id.clone(),
        variant: String::new(),
        content: pb::MessageContent::decode(d.content.as_slice()).ok(),
        coupon_code: d.coupon_code.clone(),
        status: d.status,
        created_at: Some(ts(d.created_at)),
        updated_at: Some(ts(d.updated_at)),
    }
}

/// Checks content shared by campaigns and offer actions; `field` prefixes the violations.
pub(crate) fn check_content(v: &mut Violations, c: Option<&pb::MessageContent>, field: &str) {
    let Some(c) = c else {
        v.add(field, "required");
        return;
    };
    if c.title.trim().is_empty() && c.body.trim().is_empty() {
        v.add(format!("{field}.title"), "a title or a body is required");
    }
    if c.title.len() > 200 {
        v.add(format!("{field}.title"), "at most 200 characters");
    }
    if c.body.len() > 5_000 {
        v.add(format!("{field}.body"), "at most 5000 characters");
    }
    if !c.coupon_template_id.is_empty() && c.coupon_template_id.parse::<Uuid>().is_err() {
        v.add(format!("{field}.coupon_template_id"), "must be a UUID");
    }
}

/// Checks a list of allowed channels.
pub(crate) fn check_channels(v: &mut Violations, channels: &[String], field: &str) {
    if channels.is_empty() {
        v.add(field, "at least one channel is required");
    }
    for (i, c) in channels.iter().enumerate() {
        if c.trim().is_empty() || c.len() > 64 {
            v.add(format!("{field}[{i}]"), "1 to 64 characters");
        }
    }
}

fn validate(c: &pb::Campaign) -> Result<Uuid, Error> {
    let mut v = Violations::new();
    if c.name.trim().is_empty() || c.name.len() > 200 {
        v.add("campaign.name", "1 to 200 characters");
    }
    let segment = c.segment_id.trim().parse::<Uuid>();
    if segment.is_err() {
        v.add("campaign.segment_id", "must be a UUID");
    }
    check_content(&mut v, c.content.as_ref(), "campaign.content");
    check_channels(&mut v, &c.channel_ids, "campaign.channel_ids");
    if !c.experiment_id.is_empty() || !c.variant_contents.is_empty() {
        v.add(
            "campaign.experiment_id",
            "experiment variants are not supported by this crm version",
        );
    }
    v.finish()?;
    segment.map_err(|_| Error::invalid("campaign.segment_id", "must be a UUID"))
}

/// Referenced things exist: the segment and the coupon template.
async fn check_references(
    conn: &mut PgConnection,
    c: &pb::Campaign,
    segment: Uuid,
) -> Result<(), Error> {
    segments::segment(conn, segment)
        .await
        .map_err(|_| Error::not_found_at("campaign.segment_id", format!("segment {segment}")))?;
    check_template(
        conn,
        c.content.as_ref(),
        "campaign.content.coupon_template_id",
    )
    .await
}

pub(crate) async fn check_template(
    conn: &mut PgConnection,
    content: Option<&pb::MessageContent>,
    field: &str,
) -> Result<(), Error> {
    let Some(id) = content
        .map(|c| c.coupon_template_id.as_str())
        .filter(|t| !t.is_empty())
    else {
        return Ok(());
    };
    let id: Uuid = id
        .parse()
        .map_err(|_| Error::invalid(field, "must be a UUID"))?;
    let exists: Option<bool> =
        sqlx::query_scalar("SELECT active FROM coupon_templates WHERE id = $1")
            .bind(id)
            .fetch_optional(conn)
            .await?;
    match exists {
        None => Err(Error::not_found_at(field, format!("coupon template {id}"))),
        Some(false) => Err(Error::precondition(
            "TEMPLATE_INACTIVE",
            format!("coupon_template/{id}"),
            "the coupon template is inactive",
        )),
        Some(true) => Ok(()),
    }
}

async fn campaign(conn: &mut PgConnection, id: Uuid, lock: bool) -> Result<CampaignRow, Error> {
    let sql = if lock {
        "SELECT * FROM campaigns WHERE id = $1 FOR UPDATE"
    } else {
        "SELECT * FROM campaigns WHERE id = $1"
    };
    sqlx::query_as(sql)
        .bind(id)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| Error::not_found(format!("campaign {id}")))
}

fn parse_id(raw: &str, field: &str) -> Result<Uuid, Error> {
    raw.trim()
        .parse()
        .map_err(|_| Error::invalid(field, "must be a UUID"))
}

/// What a delivery is for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Origin {
    Campaign(Uuid),
    Offer(Uuid),
}

impl Grpc {
    /// Writes one delivery (with its coupon when the content asks for one), its event for the
    /// channel adapters and the customer's interaction, inside the caller's transaction.
    /// `None` when the campaign already has a delivery for this customer.
    pub(crate) async fn deliver(
        &self,
        conn: &mut PgConnection,
        origin: Origin,
        customer: &str,
        (channel_id, channel_kind): (&str, i32),
        content: &pb::MessageContent,
        store_id: &str,
    ) -> Result<Option<DeliveryRow>, Error> {
        let (campaign_id, offer_rule_id) = match origin {
            Origin::Campaign(c) => (Some(c), None),
            Origin::Offer(o) => (None, Some(o)),
        };
        let id = Uuid::now_v7();
        let inserted: Option<DeliveryRow> = sqlx::query_as(
            "INSERT INTO deliveries (id, campaign_id, offer_rule_id, customer_id, channel_id,
                 content, store_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (campaign_id, customer_id) WHERE campaign_id IS NOT NULL DO NOTHING
             RETURNING id, campaign_id, offer_rule_id, customer_id, channel_id, content,
                 coupon_code, status, created_at, updated_at",
        )
        .bind(id)
        .bind(campaign_id)
        .bind(offer_rule_id)
        .bind(customer)
        .bind(channel_id)
        .bind(content.encode_to_vec())
        .bind(store_id)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(mut row) = inserted else {
            return Ok(None);
        };
        if !content.coupon_template_id.is_empty() {
            let origin_id = campaign_id
                .or(offer_rule_id)
                .unwrap_or_default()
                .to_string();
            let source = match origin {
                Origin::Campaign(_) => Source::Campaign(&origin_id),
                Origin::Offer(_) => Source::Offer(&origin_id),
            };
            let code = self
                .issue_for(conn, &content.coupon_template_id, customer, source)
                .await?;
            sqlx::query("UPDATE deliveries SET coupon_code = $2 WHERE id = $1")
                .bind(id)
                .bind(&code)
                .execute(&mut *conn)
                .await?;
            row.coupon_code = code;
        }
        let reference = campaign_id
            .or(offer_rule_id)
            .unwrap_or_default()
            .to_string();
        sqlx::query(
            "INSERT INTO interactions (id, customer_id, kind, channel_id, reference, occurred_at)
             VALUES ($1, $2, $3, $4, $5, now())",
        )
        .bind(Uuid::now_v7())
        .bind(customer)
        .bind(INTERACTION_CAMPAIGN_DELIVERY)
        .bind(channel_id)
        .bind(&reference)
        .execute(&mut *conn)
        .await?;
        self.outbox
            .add(
                conn,
                "crm.campaign_delivery_requested",
                &id.to_string(),
                "",
                Payload::CampaignDeliveryRequested(CampaignDeliveryRequested {
                    delivery_id: id.to_string(),
                    campaign_id: campaign_id.map(|c| c.to_string()).unwrap_or_default(),
                    offer_rule_id: offer_rule_id.map(|c| c.to_string()).unwrap_or_default(),
                    customer_id: customer.to_owned(),
                    channel_id: channel_id.to_owned(),
                    channel_kind,
                    variant: String::new(),
                    content: Some(content.clone()),
                    coupon_code: row.coupon_code.clone(),
                    store_id: store_id.to_owned(),
                }),
            )
            .await?;
        Ok(Some(row))
    }

    #[tracing::instrument(name = "crm.send_campaign", skip_all, fields(campaign_id = %req.campaign_id, dry_run = req.dry_run), err)]
    async fn send(
        &self,
        caller: &str,
        req: pb::SendCampaignRequest,
    ) -> Result<pb::SendCampaignResponse, Error> {
        const SCOPE: &str = "crm.send_campaign";
        let id = parse_id(&req.campaign_id, "campaign_id")?;
        let mut tx = self.pool.begin().await?;
        if !req.dry_run
            && let Some(reply) =
                idem::replay(&mut tx, SCOPE, caller, &req.idempotency_key, &req).await?
        {
            return Ok(reply);
        }
        let c = campaign(&mut tx, id, true).await?;
        if c.status != DRAFT {
            return Err(Error::precondition(
                "CAMPAIGN_STATUS",
                format!("campaign/{id}"),
                "only a draft campaign can be sent",
            ));
        }
        let content = pb::MessageContent::decode(c.content.as_slice())
            .map_err(|e| Error::Internal(anyhow::anyhow!("stored content does not decode: {e}")))?;
        let segment = segments::segment(&mut tx, c.segment_id).await?;
        segments::refresh(&mut tx, segment.id, &segment.rule).await?;
        let members = segments::members(&mut tx, segment.id).await?;
        let cap = contact::weekly_cap(&mut tx).await?;
        let mut reached = std::collections::HashSet::new();
        for member in &members {
            let customer = crate::store::resolve(&mut tx, member).await?;
            let outcome = if reached.contains(&customer) {
                Err(contact::DUPLICATE)
            } else {
                contact::check(&mut tx, &customer, &c.channel_ids, cap).await?
            };
            let suppressed = match outcome {
                Ok((channel, kind)) => {
                    let delivered = self
                        .deliver(
                            &mut tx,
                            Origin::Campaign(id),
                            &customer,
                            (&channel, kind),
                            &content,
                            "",
                        )
                        .await?;
                    reached.insert(customer.clone());
                    delivered.is_none().then_some(contact::DUPLICATE)
                }
                Err(reason) => Some(reason),
            };
            if let Some(reason) = suppressed {
                sqlx::query(
                    "INSERT INTO campaign_suppressions (campaign_id, customer_id, reason)
                     VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                )
                .bind(id)
                .bind(member)
                .bind(reason)
                .execute(&mut *tx)
                .await?;
            }
        }
        sqlx::query(
            "UPDATE campaigns SET status = $2, sent_at = now(), targeted = $3, version = version + 1
             WHERE id = $1",
        )
        .bind(id)
        .bind(SENT)
        .bind(members.len() as i64)
        .execute(&mut *tx)
        .await?;
        let reply = pb::SendCampaignResponse {
            report: Some(report(&mut tx, id).await?),
        };
        if req.dry_run {
            // Everything above is rolled back: a dry run writes nothing.
            tx.rollback().await?;
            return Ok(reply);
        }
        idem::remember(&mut tx, SCOPE, caller, &req.idempotency_key, None, &reply).await?;
        tx.commit().await?;
        self.outbox.wake();
        tracing::info!(campaign_id = %id, targeted = members.len(), "campaign sent");
        Ok(reply)
    }
}

async fn report(conn: &mut PgConnection, id: Uuid) -> Result<pb::CampaignReport, Error> {
    let targeted: i64 = sqlx::query_scalar("SELECT targeted FROM campaigns WHERE id = $1")
        .bind(id)
        .fetch_one(&mut *conn)
        .await?;
    let suppressions: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT reason, count(*) FROM campaign_suppressions WHERE campaign_id = $1
         GROUP BY reason ORDER BY reason",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    let per_channel: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT channel_id, count(*),
             count(*) FILTER (WHERE status IN ($2, $4)),
             count(*) FILTER (WHERE status = $3),
             count(*) FILTER (WHERE status = $4)
         FROM deliveries WHERE campaign_id = $1 GROUP BY channel_id ORDER BY channel_id",
    )
    .bind(id)
    .bind(DELIVERED)
    .bind(FAILED)
    .bind(CLICKED)
    .fetch_all(&mut *conn)
    .await?;
    Ok(pb::CampaignReport {
        campaign_id: id.to_string(),
        targeted,
        suppressed: suppressions.iter().map(|(_, n)| n).sum(),
        suppressions: suppressions
            .iter()
            .map(|&(reason, count)| pb::SuppressionCount { reason, count })
            .collect(),
        deliveries: per_channel.iter().map(|r| r.1).sum(),
        delivered: per_channel.iter().map(|r| r.2).sum(),
        failed: per_channel.iter().map(|r| r.3).sum(),
        clicked: per_channel.iter().map(|r| r.4).sum(),
        per_channel: per_channel
            .iter()
            .map(
                |(channel_id, deliveries, delivered, _, _)| pb::ChannelDeliveryCount {
                    channel_id: channel_id.clone(),
                    deliveries: *deliveries,
                    delivered: *delivered,
                },
            )
            .collect(),
    })
}

fn policy_pb(max: i32, updated_at: DateTime<Utc>) -> pb::ContactPolicy {
    pb::ContactPolicy {
        max_deliveries_per_week: max,
        updated_at: Some(ts(updated_at)),
    }
}

#[tonic::async_trait]
impl CampaignService for Grpc {
    async fn create_campaign(
        &self,
        request: Request<pb::CreateCampaignRequest>,
    ) -> Reply<pb::CreateCampaignResponse> {
        const SCOPE: &str = "crm.create_campaign";
        let who = caller(&request, WRITERS)?;
        let caller = who.id.as_str();
        let req = request.into_inner();
        let c = req.campaign.clone().unwrap_or_default();
        let segment = validate(&c)?;
        // A manager limited to channels reaches customers through its own channels only.
        who.scope.require_channels(&c.channel_ids)?;
        let mut tx = self.pool.begin().await.map_err(Error::from)?;
        if let Some(reply) =
            idem::replay(&mut tx, SCOPE, caller, &req.idempotency_key, &req).await?
        {
            return Ok(Response::new(reply));
        }
        check_references(&mut tx, &c, segment).await?;
        let row: CampaignRow = sqlx::query_as(
            "INSERT INTO campaigns (id, name, segment_id, content, channel_ids)
             VALUES ($1, $2, $3, $4, $5) RETURNING *",
        )
        .bind(Uuid::now_v7())
        .bind(c.name.trim())
        .bind(segment)
        .bind(c.content.unwrap_or_default().encode_to_vec())
        .bind(&c.channel_ids)
        .fetch_one(&mut *tx)
        .await
        .map_err(Error::from)?;
        let reply = pb::CreateCampaignResponse {
            campaign: Some(campaign_pb(&row)),
        };
        idem::remember(&mut tx, SCOPE, caller, &req.idempotency_key, None, &reply).await?;
        tx.commit().await.map_err(Error::from)?;
        Ok(Response::new(reply))
    }

    async fn update_campaign(
        &self,
        request: Request<pb::UpdateCampaignRequest>,
    ) -> Reply<pb::UpdateCampaignResponse> {
        let who = caller(&request, WRITERS)?;
        let c = request.into_inner().campaign.unwrap_or_default();
        let id = parse_id(&c.id, "campaign.id")?;
        let segment = validate(&c)?;
        who.scope.require_channels(&c.channel_ids)?;
        let mut tx = self.pool.begin().await.map_err(Error::from)?;
        let current = campaign(&mut tx, id, true).await?;
        who.scope.require_channels(&current.channel_ids)?;
        if current.version != c.version {
            return Err(Error::Aborted(format!(
                "campaign {id} is at version {}, not {}",
                current.version, c.version
            ))
            .into());
        }
        if current.status != DRAFT {
            return Err(Error::precondition(
                "CAMPAIGN_STATUS",
                format!("campaign/{id}"),
                "only a draft campaign can change",
            )
            .into());
        }
        check_references(&mut tx, &c, segment).await?;
        let row: CampaignRow = sqlx::query_as(
            "UPDATE campaigns SET name = $2, segment_id = $3, content = $4, channel_ids = $5,
                 version = version + 1
             WHERE id = $1 RETURNING *",
        )
        .bind(id)
        .bind(c.name.trim())
        .bind(segment)
        .bind(c.content.unwrap_or_default().encode_to_vec())
        .bind(&c.channel_ids)
        .fetch_one(&mut *tx)
        .await
        .map_err(Error::from)?;
        tx.commit().await.map_err(Error::from)?;
        Ok(Response::new(pb::UpdateCampaignResponse {
            campaign: Some(campaign_pb(&row)),
        }))
    }

    async fn get_campaign(
        &self,
        request: Request<pb::GetCampaignRequest>,
    ) -> Reply<pb::GetCampaignResponse> {
        caller(&request, ANALYSTS)?;
        let id = parse_id(&request.get_ref().campaign_id, "campaign_id")?;
        let mut conn = self.pool.acquire().await.map_err(Error::from)?;
        let row = campaign(&mut conn, id, false).await?;
        Ok(Response::new(pb::GetCampaignResponse {
            campaign: Some(campaign_pb(&row)),
        }))
    }

    async fn list_campaigns(
        &self,
        request: Request<pb::ListCampaignsRequest>,
    ) -> Reply<pb::ListCampaignsResponse> {
        caller(&request, ANALYSTS)?;
        let req = request.into_inner();
        let size = paging::page_size(req.page_size)?;
        let after = paging::decode_token(&req.page_token)?
            .map(|t| parse_id(&t, "page_token"))
            .transpose()?
            .unwrap_or(Uuid::nil());
        let mut conn = self.pool.acquire().await.map_err(Error::from)?;
        let rows: Vec<CampaignRow> = sqlx::query_as(
            "SELECT * FROM campaigns WHERE id > $1
                 AND (cardinality($2::INT[]) = 0 OR status = ANY($2))
             ORDER BY id LIMIT $3",
        )
        .bind(after)
        .bind(&req.statuses)
        .bind(size)
        .fetch_all(&mut *conn)
        .await
        .map_err(Error::from)?;
        Ok(Response::new(pb::ListCampaignsResponse {
            next_page_token: paging::next_token(
                rows.len(),
                size,
                rows.last().map(|r| r.id.to_string()),
            ),
            campaigns: rows.iter().map(campaign_pb).collect(),
        }))
    }

    async fn send_campaign(
        &self,
        request: Request<pb::SendCampaignRequest>,
    ) -> Reply<pb::SendCampaignResponse> {
        let who = caller(&request, WRITERS)?;
        let id = parse_id(&request.get_ref().campaign_id, "campaign_id")?;
        let channels: Option<Vec<String>> =
            sqlx::query_scalar("SELECT channel_ids FROM campaigns WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(Error::from)?;
        if let Some(channels) = channels {
            who.scope.require_channels(&channels)?;
        }
        Ok(Response::new(
            self.send(&who.id, request.into_inner()).await?,
        ))
    }

    async fn get_campaign_report(
        &self,
        request: Request<pb::GetCampaignReportRequest>,
    ) -> Reply<pb::GetCampaignReportResponse> {
        caller(&request, ANALYSTS)?;
        let id = parse_id(&request.get_ref().campaign_id, "campaign_id")?;
        let mut conn = self.pool.acquire().await.map_err(Error::from)?;
        campaign(&mut conn, id, false).await?;
        Ok(Response::new(pb::GetCampaignReportResponse {
            report: Some(report(&mut conn, id).await?),
        }))
    }

    async fn list_deliveries(
        &self,
        request: Request<pb::ListDeliveriesRequest>,
    ) -> Reply<pb::ListDeliveriesResponse> {
        caller(&request, ANALYSTS)?;
        let req = request.into_inner();
        let campaign_id = if req.campaign_id.is_empty() {
            None
        } else {
            Some(parse_id(&req.campaign_id, "campaign_id")?)
        };
        let customer = if req.customer_id.is_empty() {
            String::new()
        } else {
            customer_id(&req.customer_id)?
        };
        let size = paging::page_size(req.page_size)?;
        let after = paging::decode_token(&req.page_token)?
            .map(|t| parse_id(&t, "page_token"))
            .transpose()?
            .unwrap_or(Uuid::nil());
        let mut conn = self.pool.acquire().await.map_err(Error::from)?;
        let customer = if customer.is_empty() {
            customer
        } else {
            crate::store::resolve(&mut conn, &customer).await?
        };
        let rows: Vec<DeliveryRow> = sqlx::query_as(
            "SELECT id, campaign_id, offer_rule_id, customer_id, channel_id, content, coupon_code,
                 status, created_at, updated_at
             FROM deliveries
             WHERE id > $1 AND ($2::UUID IS NULL OR campaign_id = $2)
                 AND ($3 = '' OR customer_id = $3)
             ORDER BY id LIMIT $4",
        )
        .bind(after)
        .bind(campaign_id)
        .bind(&customer)
        .bind(size)
        .fetch_all(&mut *conn)
        .await
        .map_err(Error::from)?;
        Ok(Response::new(pb::ListDeliveriesResponse {
            next_page_token: paging::next_token(
                rows.len(),
                size,
                rows.last().map(|r| r.id.to_string()),
            ),
            deliveries: rows.iter().map(delivery_pb).collect(),
        }))
    }

    async fn report_delivery_outcome(
        &self,
        request: Request<pb::ReportDeliveryOutcomeRequest>,
    ) -> Reply<pb::ReportDeliveryOutcomeResponse> {
        let who = caller(&request, ADAPTERS)?;
        let req = request.into_inner();
        let id = parse_id(&req.delivery_id, "delivery_id")?;
        if !matches!(req.status, DELIVERED | FAILED | CLICKED) {
            return Err(Error::invalid("status", "DELIVERED, FAILED or CLICKED").into());
        }
        let at = from_ts(req.occurred_at.as_ref()).unwrap_or_else(Utc::now);
        let mut tx = self.pool.begin().await.map_err(Error::from)?;
        let current: Option<(i32, String, String, Option<Uuid>)> = sqlx::query_as(
            "SELECT status, customer_id, channel_id, campaign_id FROM deliveries
             WHERE id = $1 FOR UPDATE",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(Error::from)?;
        let Some((status, customer, channel, campaign_id)) = current else {
            return Err(Error::not_found(format!("delivery {id}")).into());
        };
        // The adapter of the channel that sent it reports its outcome.
        who.require_channel(&channel)?;
        // Outcomes only move forward: pending -> delivered or failed -> clicked.
        let rank = |s: i32| match s {
            PENDING => 0,
            DELIVERED | FAILED => 1,
            _ => 2,
        };
        if rank(req.status) < rank(status)
            || (rank(req.status) == rank(status) && req.status != status)
        {
            return Err(Error::precondition(
                "DELIVERY_STATUS",
                format!("delivery/{id}"),
                "the delivery already has a later outcome",
            )
            .into());
        }
        let row: DeliveryRow = sqlx::query_as(
            "UPDATE deliveries SET status = $2, updated_at = $3 WHERE id = $1
             RETURNING id, campaign_id, offer_rule_id, customer_id, channel_id, content,
                 coupon_code, status, created_at, updated_at",
        )
        .bind(id)
        .bind(req.status)
        .bind(at)
        .fetch_one(&mut *tx)
        .await
        .map_err(Error::from)?;
        if req.status == CLICKED && status != CLICKED {
            sqlx::query(
                "INSERT INTO interactions (id, customer_id, kind, channel_id, reference, note,
                     occurred_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(Uuid::now_v7())
            .bind(&customer)
            .bind(INTERACTION_CLICK)
            .bind(&channel)
            .bind(
                campaign_id
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| id.to_string()),
            )
            .bind(&req.detail)
            .bind(at)
            .execute(&mut *tx)
            .await
            .map_err(Error::from)?;
        }
        tx.commit().await.map_err(Error::from)?;
        Ok(Response::new(pb::ReportDeliveryOutcomeResponse {
            delivery: Some(delivery_pb(&row)),
        }))
    }

    async fn get_contact_policy(
        &self,
        request: Request<pb::GetContactPolicyRequest>,
    ) -> Reply<pb::GetContactPolicyResponse> {
        caller(&request, ANALYSTS)?;
        let (max, at): (i32, DateTime<Utc>) =
            sqlx::query_as("SELECT max_deliveries_per_week, updated_at FROM contact_policy")
                .fetch_one(&self.pool)
                .await
                .map_err(Error::from)?;
        Ok(Response::new(pb::GetContactPolicyResponse {
            policy: Some(policy_pb(max, at)),
        }))
    }

    async fn set_contact_policy(
        &self,
        request: Request<pb::SetContactPolicyRequest>,
    ) -> Reply<pb::SetContactPolicyResponse> {
        caller(&request, &[Role::Admin])?;
        let p = request.into_inner().policy.unwrap_or_default();
        if !(0..=1_000).contains(&p.max_deliveries_per_week) {
            return Err(Error::invalid(
                "policy.max_deliveries_per_week",
                "between 0 (no cap) and 1000",
            )
            .into());
        }
        let (max, at): (i32, DateTime<Utc>) = sqlx::query_as(
            "UPDATE contact_policy SET max_deliveries_per_week = $1, updated_at = now()
             RETURNING max_deliveries_per_week, updated_at",
        )
        .bind(p.max_deliveries_per_week)
        .fetch_one(&self.pool)
        .await
        .map_err(Error::from)?;
        Ok(Response::new(pb::SetContactPolicyResponse {
            policy: Some(policy_pb(max, at)),
        }))
    }

    async fn create_offer_rule(
        &self,
        request: Request<pb::CreateOfferRuleRequest>,
    ) -> Reply<pb::CreateOfferRuleResponse> {
        let who = caller(&request, WRITERS)?;
        who.scope
            .require_channels(offers::delivery_channels(request.get_ref().rule.as_ref()))?;
        Ok(Response::new(
            self.create_offer_rule(&who.id, request.into_inner())
                .await?,
        ))
    }

    async fn update_offer_rule(
        &self,
        request: Request<pb::UpdateOfferRuleRequest>,
    ) -> Reply<pb::UpdateOfferRuleResponse> {
        let who = caller(&request, WRITERS)?;
        let rule = self
            .update_offer_rule(&who.scope, request.into_inner().rule.unwrap_or_default())
            .await?;
        Ok(Response::new(pb::UpdateOfferRuleResponse {
            rule: Some(rule),
        }))
    }

    async fn list_offer_rules(
        &self,
        request: Request<pb::ListOfferRulesRequest>,
    ) -> Reply<pb::ListOfferRulesResponse> {
        caller(&request, ANALYSTS)?;
        Ok(Response::new(
            self.list_offer_rules(request.into_inner()).await?,
        ))
    }
}

//! Feedback (CSAT 1-5 or NPS 0-10, tied to a channel and optionally an order or a ticket,
//! summarised per channel and store) and the interactions log (store visits, livestream likes,
//! deliveries, clicks...). A recorded interaction may fire triggered offers.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use omni_proto::common::{Date, DateRange};
use omni_proto::events::FeedbackRecorded;
use omni_proto::events::event::Payload;
use omni_proto::omni::crm::v1 as pb;
use omni_proto::omni::crm::v1::engagement_service_server::EngagementService;
use omni_runtime::Error;
use omni_runtime::auth::{Role, Scope};
use omni_runtime::error::Violations;
use omni_runtime::paging;
use sqlx::PgConnection;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::grpc::{Grpc, caller, customer_id, from_ts, ts};
use crate::idem;
use crate::offers::{self, Happening};
use crate::store;

const RECORDERS: &[Role] = &[
    Role::Admin,
    Role::ChannelApp,
    Role::StoreAssociate,
    Role::Service,
];
const READERS: &[Role] = &[
    Role::Admin,
    Role::ChannelManager,
    Role::StoreAssociate,
    Role::Analyst,
    Role::ChannelApp,
    Role::Service,
];
const CSAT: i32 = 1;
const NPS: i32 = 2;

type Reply<T> = Result<Response<T>, Status>;

#[derive(Debug, Clone, sqlx::FromRow)]
struct FeedbackRow {
    id: Uuid,
    customer_id: String,
    channel_id: String,
    store_id: String,
    order_id: String,
    ticket_id: String,
    scale: i32,
    score: i32,
    comment: String,
    recorded_at: DateTime<Utc>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct InteractionRow {
    id: Uuid,
    customer_id: String,
    kind: i32,
    channel_id: String,
    store_id: String,
    sku_id: String,
    reference: String,
    note: String,
    occurred_at: DateTime<Utc>,
}

fn feedback_pb(f: FeedbackRow) -> pb::Feedback {
    pb::Feedback {
        id: f.id.to_string(),
        customer_id: f.customer_id,
        channel_id: f.channel_id,
        store_id: f.store_id,
        order_id: f.order_id,
        ticket_id: f.ticket_id,
        scale: f.scale,
        score: f.score,
        comment: f.comment,
        recorded_at: Some(ts(f.recorded_at)),
    }
}

fn interaction_pb(i: InteractionRow) -> pb::Interaction {
    pb::Interaction {
        id: i.id.to_string(),
        customer_id: i.customer_id,
        kind: i.kind,
        channel_id: i.channel_id,
        store_id: i.store_id,
        sku_id: i.sku_id,
        reference: i.reference,
        note: i.note,
        occurred_at: Some(ts(i.occurred_at)),
    }
}

/// Running totals of one summary row.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Tally {
    pub csat_count: i64,
    pub csat_sum: i64,
    pub nps_count: i64,
    pub promoters: i64,
    pub passives: i64,
    pub detractors: i64,
}

impl Tally {
    pub fn add(&mut self, scale: i32, score: i32) {
        if scale == CSAT {
            self.csat_count += 1;
            self.csat_sum += i64::from(score);
        } else {
            self.nps_count += 1;
            match score {
                9.. => self.promoters += 1,
                7..=8 => self.passives += 1,
                _ => self.detractors += 1,
            }
        }
    }

    pub fn summary(&self, channel_id: &str, store_id: &str) -> pb::FeedbackSummary {
        pb::FeedbackSummary {
            channel_id: channel_id.to_owned(),
            store_id: store_id.to_owned(),
            csat_count: self.csat_count,
            csat_average: (self.csat_count > 0)
                .then(|| self.csat_sum as f64 / self.csat_count as f64),
            nps_count: self.nps_count,
            promoters: self.promoters,
            passives: self.passives,
            detractors: self.detractors,
            nps: (self.nps_count > 0)
                .then(|| (self.promoters - self.detractors) as f64 / self.nps_count as f64 * 100.0),
        }
    }
}

fn day(d: Option<&Date>, field: &str) -> Result<Option<NaiveDate>, Error> {
    match d {
        None => Ok(None),
        Some(d) => NaiveDate::from_ymd_opt(d.year, d.month as u32, d.day as u32)
            .map(Some)
            .ok_or_else(|| Error::invalid(field, "not a calendar day")),
    }
}

/// [start, end) instants of a day range; unset ends are open.
/// A half-open span of time; `None` ends are open.
type Span = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

fn range(r: Option<&DateRange>) -> Result<Span, Error> {
    let start = day(r.and_then(|r| r.start.as_ref()), "days.start")?;
    let end = day(r.and_then(|r| r.end.as_ref()), "days.end")?;
    if let (Some(s), Some(e)) = (start, end)
        && e < s
    {
        return Err(Error::invalid("days.end", "must not be before the start"));
    }
    let at = |d: NaiveDate| d.and_hms_opt(0, 0, 0).map(|t| t.and_utc());
    Ok((
        start.and_then(at),
        end.and_then(|e| e.succ_opt()).and_then(at),
    ))
}

/// Recent interactions of a customer, newest first (for the customer view).
/// The customer's `limit` most recent interactions that `scope` reaches.
pub async fn recent(
    conn: &mut PgConnection,
    customer_id: &str,
    scope: &Scope,
    limit: i64,
) -> Result<Vec<pb::Interaction>, Error> {
    let (stores, channels) = scope.sql_lists();
    let rows: Vec<InteractionRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT * FROM interactions WHERE customer_id = $1 AND {}
         ORDER BY occurred_at DESC, id DESC LIMIT $2",
        Scope::reaches_sql("channel_id", "store_id", 3, 4)
    )))
    .bind(customer_id)
    .bind(limit)
    .bind(stores)
    .bind(channels)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(interaction_pb).collect())
}

impl Grpc {
    async fn record_feedback(
        &self,
        caller: &str,
        req: pb::RecordFeedbackRequest,
    ) -> Result<pb::RecordFeedbackResponse, Error> {
        const SCOPE: &str = "crm.record_feedback";
        let f = req.feedback.clone().unwrap_or_default();
        let mut v = Violations::new();
        if f.channel_id.trim().is_empty() || f.channel_id.len() > 64 {
            v.add("feedback.channel_id", "1 to 64 characters");
        }
        match f.scale {
            CSAT if !(1..=5).contains(&f.score) => {
                v.add("feedback.score", "a satisfaction score is 1 to 5");
            }
            NPS if !(0..=10).contains(&f.score) => {
                v.add("feedback.score", "a net promoter score is 0 to 10");
            }
            CSAT | NPS => {}
            _ => v.add("feedback.scale", "CSAT or NPS"),
        }
        if f.comment.len() > 5_000 {
            v.add("feedback.comment", "at most 5000 characters");
        }
        let ticket = if f.ticket_id.is_empty() {
            None
        } else {
            match f.ticket_id.trim().parse::<Uuid>() {
                Ok(t) => Some(t),
                Err(_) => {
                    v.add("feedback.ticket_id", "must be a UUID");
                    None
                }
            }
        };
        v.finish()?;
        let mut tx = self.pool.begin().await?;
        if let Some(reply) =
            idem::replay(&mut tx, SCOPE, caller, &req.idempotency_key, &req).await?
        {
            return Ok(reply);
        }
        let customer = if f.customer_id.is_empty() {
            String::new()
        } else {
            let asked = customer_id(&f.customer_id).map_err(|e| e.within("feedback."))?;
            let id = store::resolve(&mut tx, &asked).await?;
            if store::customer(&mut tx, &id).await?.is_none() {
                return Err(Error::not_found_at(
                    "feedback.customer_id",
                    format!("customer {asked}"),
                ));
            }
            id
        };
        if let Some(t) = ticket {
            let exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tickets WHERE id = $1)")
                    .bind(t)
                    .fetch_one(&mut *tx)
                    .await?;
            if !exists {
                return Err(Error::not_found_at(
                    "feedback.ticket_id",
                    format!("ticket {t}"),
                ));
            }
        }
        let row: FeedbackRow = sqlx::query_as(
            "INSERT INTO feedback (id, customer_id, channel_id, store_id, order_id, ticket_id,
                 scale, score, comment)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING *",
        )
        .bind(Uuid::now_v7())
        .bind(&customer)
        .bind(f.channel_id.trim())
        .bind(f.store_id.trim())
        .bind(f.order_id.trim())
        .bind(f.ticket_id.trim())
        .bind(f.scale)
        .bind(f.score)
        .bind(&f.comment)
        .fetch_one(&mut *tx)
        .await?;
        self.outbox
            .add(
                &mut tx,
                "crm.feedback_recorded",
                &row.id.to_string(),
                "",
                Payload::FeedbackRecorded(FeedbackRecorded {
                    feedback_id: row.id.to_string(),
                    customer_id: row.customer_id.clone(),
                    channel_id: row.channel_id.clone(),
                    store_id: row.store_id.clone(),
                    order_id: row.order_id.clone(),
                    ticket_id: row.ticket_id.clone(),
                    scale: row.scale,
                    score: row.score,
                    recorded_at: Some(ts(row.recorded_at)),
                }),
            )
            .await?;
        let reply = pb::RecordFeedbackResponse {
            feedback: Some(feedback_pb(row)),
        };
        idem::remember(
            &mut tx,
            SCOPE,
            caller,
            &req.idempotency_key,
            Some(&customer),
            &reply,
        )
        .await?;
        tx.commit().await?;
        self.outbox.wake();
        Ok(reply)
    }

    async fn record_interaction(
        &self,
        caller: &str,
        req: pb::RecordInteractionRequest,
    ) -> Result<pb::RecordInteractionResponse, Error> {
        const SCOPE: &str = "crm.record_interaction";
        let i = req.interaction.clone().unwrap_or_default();
        let mut v = Violations::new();
        let asked = match customer_id(&i.customer_id) {
            Ok(c) => c,
            Err(_) => {
                v.add("interaction.customer_id", "1 to 64 characters");
                String::new()
            }
        };
        if !(1..=8).contains(&i.kind) {
            v.add("interaction.kind", "an interaction kind");
        }
        if i.channel_id.trim().is_empty() || i.channel_id.len() > 64 {
            v.add("interaction.channel_id", "1 to 64 characters");
        }
        if i.note.len() > 5_000 {
            v.add("interaction.note", "at most 5000 characters");
        }
        v.finish()?;
        let at = from_ts(i.occurred_at.as_ref()).unwrap_or_else(Utc::now);
        let mut tx = self.pool.begin().await?;
        if let Some(reply) =
            idem::replay(&mut tx, SCOPE, caller, &req.idempotency_key, &req).await?
        {
            return Ok(reply);
        }
        let customer = store::resolve(&mut tx, &asked).await?;
        if store::customer(&mut tx, &customer).await?.is_none() {
            return Err(Error::not_found_at(
                "interaction.customer_id",
                format!("customer {asked}"),
            ));
        }
        let row: InteractionRow = sqlx::query_as(
            "INSERT INTO interactions (id, customer_id, kind, channel_id, store_id, sku_id,
                 reference, note, occurred_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING *",
        )
        .bind(Uuid::now_v7())
        .bind(&customer)
        .bind(i.kind)
        .bind(i.channel_id.trim())
        .bind(i.store_id.trim())
        .bind(i.sku_id.trim())
        .bind(&i.reference)
        .bind(&i.note)
        .bind(at)
        .fetch_one(&mut *tx)
        .await?;
        let channel_kind: Option<i32> =
            sqlx::query_scalar("SELECT kind FROM channels WHERE channel_id = $1")
                .bind(&row.channel_id)
                .fetch_optional(&mut *tx)
                .await?;
        let happening = Happening {
            trigger: offers::INTERACTION,
            interaction_kind: row.kind,
            channel_kind: channel_kind.unwrap_or_default(),
            store_id: row.store_id.clone(),
            category_ids: Vec::new(),
            sku_ids: if row.sku_id.is_empty() {
                Vec::new()
            } else {
                vec![row.sku_id.clone()]
            },
        };
        self.fire_offers(&mut tx, &customer, &happening).await?;
        let reply = pb::RecordInteractionResponse {
            interaction: Some(interaction_pb(row)),
        };
        idem::remember(
            &mut tx,
            SCOPE,
            caller,
            &req.idempotency_key,
            Some(&customer),
            &reply,
        )
        .await?;
        tx.commit().await?;
        self.outbox.wake();
        Ok(reply)
    }
}

#[tonic::async_trait]
impl EngagementService for Grpc {
    async fn record_feedback(
        &self,
        request: Request<pb::RecordFeedbackRequest>,
    ) -> Reply<pb::RecordFeedbackResponse> {
        let who = caller(&request, RECORDERS)?;
        let (channel, store) = request
            .get_ref()
            .feedback
            .as_ref()
            .map_or(("", ""), |f| (f.channel_id.as_str(), f.store_id.as_str()));
        who.require_reach("feedback", channel, [store])?;
        Ok(Response::new(
            Grpc::record_feedback(self, &who.id, request.into_inner()).await?,
        ))
    }

    async fn list_feedback(
        &self,
        request: Request<pb::ListFeedbackRequest>,
    ) -> Reply<pb::ListFeedbackResponse> {
        let who = caller(&request, READERS)?;
        let req = request.into_inner();
        let (from, until) = range(req.days.as_ref())?;
        let size = paging::page_size(req.page_size)?;
        let before = paging::decode_token(&req.page_token)?
            .map(|t| t.parse::<Uuid>())
            .transpose()
            .map_err(|_| Error::invalid("page_token", "is not a token this service issued"))?
            .unwrap_or(Uuid::max());
        let mut conn = self.pool.acquire().await.map_err(Error::from)?;
        let customer = if req.customer_id.is_empty() {
            String::new()
        } else {
            store::resolve(&mut conn, &customer_id(&req.customer_id)?).await?
        };
        let (stores, channels) = who.scope.sql_lists();
        let rows: Vec<FeedbackRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT * FROM feedback WHERE id < $1
                 AND ($2 = '' OR customer_id = $2)
                 AND ($3 = '' OR channel_id = $3)
                 AND ($4 = '' OR store_id = $4)
                 AND ($5::TIMESTAMPTZ IS NULL OR recorded_at >= $5)
                 AND ($6::TIMESTAMPTZ IS NULL OR recorded_at < $6)
                 AND {}
             ORDER BY id DESC LIMIT $7",
            Scope::reaches_sql("channel_id", "store_id", 8, 9)
        )))
        .bind(before)
        .bind(&customer)
        .bind(req.channel_id.trim())
        .bind(req.store_id.trim())
        .bind(from)
        .bind(until)
        .bind(size)
        .bind(stores)
        .bind(channels)
        .fetch_all(&mut *conn)
        .await
        .map_err(Error::from)?;
        Ok(Response::new(pb::ListFeedbackResponse {
            next_page_token: paging::next_token(
                rows.len(),
                size,
                rows.last().map(|r| r.id.to_string()),
            ),
            feedback: rows.into_iter().map(feedback_pb).collect(),
        }))
    }

    async fn summarize_feedback(
        &self,
        request: Request<pb::SummarizeFeedbackRequest>,
    ) -> Reply<pb::SummarizeFeedbackResponse> {
        let who = caller(&request, READERS)?;
        let req = request.into_inner();
        let (from, until) = range(req.days.as_ref())?;
        let (stores, channels) = who.scope.sql_lists();
        let rows: Vec<(String, String, i32, i32)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT channel_id, store_id, scale, score FROM feedback
             WHERE (cardinality($1::TEXT[]) = 0 OR channel_id = ANY($1))
                 AND ($2::TIMESTAMPTZ IS NULL OR recorded_at >= $2)
                 AND ($3::TIMESTAMPTZ IS NULL OR recorded_at < $3)
                 AND {}",
            Scope::reaches_sql("channel_id", "store_id", 4, 5)
        )))
        .bind(&req.channel_ids)
        .bind(from)
        .bind(until)
        .bind(stores)
        .bind(channels)
        .fetch_all(&self.pool)
        .await
        .map_err(Error::from)?;
        // Key (channel, store): store "" is the whole channel.
        let mut tallies: BTreeMap<(String, String), Tally> = BTreeMap::new();
        for (channel, store, scale, score) in rows {
            tallies
                .entry((channel.clone(), String::new()))
                .or_default()
                .add(scale, score);
            if req.by_store && !store.is_empty() {
                tallies
                    .entry((channel, store))
                    .or_default()
                    .add(scale, score);
            }
        }
        Ok(Response::new(pb::SummarizeFeedbackResponse {
            summaries: tallies
                .iter()
                .map(|((channel, store), t)| t.summary(channel, store))
                .collect(),
        }))
    }

    async fn record_interaction(
        &self,
        request: Request<pb::RecordInteractionRequest>,
    ) -> Reply<pb::RecordInteractionResponse> {
        let who = caller(&request, RECORDERS)?;
        let (channel, store) = request
            .get_ref()
            .interaction
            .as_ref()
            .map_or(("", ""), |i| (i.channel_id.as_str(), i.store_id.as_str()));
        who.require_reach("interaction", channel, [store])?;
        Ok(Response::new(
            Grpc::record_interaction(self, &who.id, request.into_inner()).await?,
        ))
    }

    async fn list_interactions(
        &self,
        request: Request<pb::ListInteractionsRequest>,
    ) -> Reply<pb::ListInteractionsResponse> {
        let who = caller(&request, READERS)?;
        let req = request.into_inner();
        let asked = customer_id(&req.customer_id)?;
        let since = from_ts(req.since.as_ref());
        let size = paging::page_size(req.page_size)?;
        let before = paging::decode_token(&req.page_token)?
            .map(|t| t.parse::<Uuid>())
            .transpose()
            .map_err(|_| Error::invalid("page_token", "is not a token this service issued"))?
            .unwrap_or(Uuid::max());
        let mut conn = self.pool.acquire().await.map_err(Error::from)?;
        let customer = store::resolve(&mut conn, &asked).await?;
        if store::customer(&mut conn, &customer).await?.is_none() {
            return Err(Error::not_found(format!("customer {asked}")).into());
        }
        let (stores, channels) = who.scope.sql_lists();
        let rows: Vec<InteractionRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT * FROM interactions WHERE customer_id = $1 AND id < $2
                 AND (cardinality($3::INT[]) = 0 OR kind = ANY($3))
                 AND ($4 = '' OR channel_id = $4)
                 AND ($5::TIMESTAMPTZ IS NULL OR occurred_at >= $5)
                 AND {}
             ORDER BY id DESC LIMIT $6",
            Scope::reaches_sql("channel_id", "store_id", 7, 8)
        )))
        .bind(&customer)
        .bind(before)
        .bind(&req.kinds)
        .bind(req.channel_id.trim())
        .bind(since)
        .bind(size)
        .bind(stores)
        .bind(channels)
        .fetch_all(&mut *conn)
        .await
        .map_err(Error::from)?;
        Ok(Response::new(pb::ListInteractionsResponse {
            next_page_token: paging::next_token(
                rows.len(),
                size,
                rows.last().map(|r| r.id.to_string()),
            ),
            interactions: rows.into_iter().map(interaction_pb).collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nps_is_promoters_minus_detractors_over_all() {
        let mut t = Tally::default();
        for score in [10, 9, 8, 6, 0] {
            t.add(NPS, score);
        }
        t.add(CSAT, 4);
        t.add(CSAT, 5);
        let s = t.summary("web", "");
        assert_eq!((s.promoters, s.passives, s.detractors), (2, 1, 2));
        assert_eq!(s.nps, Some(0.0));
        assert_eq!(s.csat_average, Some(4.5));
        assert_eq!(Tally::default().summary("web", "").nps, None);
    }
}

//! Service tickets: complaints, questions and after-sales cases opened in any channel and
//! visible from every channel, with notes, an assignee, a status machine and service levels
//! (response and resolution targets per kind, shorter for a tier when one is set).

use chrono::{DateTime, Duration, Utc};
use omni_proto::omni::crm::v1 as pb;
use omni_proto::omni::crm::v1::ticket_service_server::TicketService;
use omni_runtime::Error;
use omni_runtime::auth::Role;
use omni_runtime::error::Violations;
use omni_runtime::paging;
use sqlx::PgConnection;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::facts;
use crate::grpc::{Grpc, caller, customer_id, from_ts, ts};
use crate::idem;
use crate::store;

const WORKERS: &[Role] = &[
    Role::Admin,
    Role::ChannelManager,
    Role::StoreAssociate,
    Role::ChannelApp,
];
const READERS: &[Role] = &[
    Role::Admin,
    Role::ChannelManager,
    Role::StoreAssociate,
    Role::ChannelApp,
    Role::Analyst,
];

pub const OPEN: i32 = 1;
pub const IN_PROGRESS: i32 = 2;
pub const WAITING: i32 = 3;
pub const RESOLVED: i32 = 4;
pub const CLOSED: i32 = 5;
const RESPONSE: i32 = 1;
const RESOLUTION: i32 = 2;

type Reply<T> = Result<Response<T>, Status>;

/// Whether a ticket may move from `from` to `to`:
/// open -> in_progress <-> waiting_on_customer -> resolved -> closed, resolved -> in_progress.
pub fn legal(from: i32, to: i32) -> bool {
    matches!(
        (from, to),
        (OPEN, IN_PROGRESS)
            | (IN_PROGRESS, WAITING)
            | (WAITING, IN_PROGRESS)
            | (IN_PROGRESS, RESOLVED)
            | (WAITING, RESOLVED)
            | (RESOLVED, CLOSED)
            | (RESOLVED, IN_PROGRESS)
    )
}

/// Which target an open ticket has missed at `at`, and by how long: the resolution target
/// when both are missed.
pub fn overdue(
    response_due: DateTime<Utc>,
    resolution_due: DateTime<Utc>,
    responded: bool,
    at: DateTime<Utc>,
) -> Option<(i32, Duration)> {
    if at > resolution_due {
        Some((RESOLUTION, at - resolution_due))
    } else if !responded && at > response_due {
        Some((RESPONSE, at - response_due))
    } else {
        None
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct TicketRow {
    id: Uuid,
    customer_id: String,
    kind: i32,
    channel_id: String,
    store_id: String,
    order_id: String,
    subject: String,
    description: String,
    status: i32,
    assignee_id: String,
    response_due_at: DateTime<Utc>,
    resolution_due_at: DateTime<Utc>,
    first_response_at: Option<DateTime<Utc>>,
    resolved_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct NoteRow {
    author_id: String,
    channel_id: String,
    body: String,
    customer_visible: bool,
    created_at: DateTime<Utc>,
}

fn duration_pb(secs: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: secs,
        nanos: 0,
    }
}

async fn ticket_pb(conn: &mut PgConnection, t: TicketRow) -> Result<pb::Ticket, Error> {
    let notes: Vec<NoteRow> = sqlx::query_as(
        "SELECT author_id, channel_id, body, customer_visible, created_at FROM ticket_notes
         WHERE ticket_id = $1 ORDER BY id",
    )
    .bind(t.id)
    .fetch_all(conn)
    .await?;
    Ok(pb::Ticket {
        id: t.id.to_string(),
        customer_id: t.customer_id,
        kind: t.kind,
        channel_id: t.channel_id,
        store_id: t.store_id,
        order_id: t.order_id,
        subject: t.subject,
        description: t.description,
        status: t.status,
        assignee_id: t.assignee_id,
        notes: notes
            .into_iter()
            .map(|n| pb::TicketNote {
                author_id: n.author_id,
                channel_id: n.channel_id,
                body: n.body,
                customer_visible: n.customer_visible,
                created_at: Some(ts(n.created_at)),
            })
            .collect(),
        response_due_at: Some(ts(t.response_due_at)),
        resolution_due_at: Some(ts(t.resolution_due_at)),
        first_response_at: t.first_response_at.map(ts),
        resolved_at: t.resolved_at.map(ts),
        created_at: Some(ts(t.created_at)),
        updated_at: Some(ts(t.updated_at)),
    })
}

fn parse_ticket_id(raw: &str) -> Result<Uuid, Error> {
    raw.trim()
        .parse()
        .map_err(|_| Error::invalid("ticket_id", "must be a UUID"))
}

async fn ticket(conn: &mut PgConnection, id: Uuid, lock: bool) -> Result<TicketRow, Error> {
    let sql = if lock {
        "SELECT * FROM tickets WHERE id = $1 FOR UPDATE"
    } else {
        "SELECT * FROM tickets WHERE id = $1"
    };
    sqlx::query_as(sql)
        .bind(id)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| Error::not_found(format!("ticket {id}")))
}

/// The open tickets of a customer, newest first (for the customer view).
pub async fn open_of(conn: &mut PgConnection, customer_id: &str) -> Result<Vec<pb::Ticket>, Error> {
    let rows: Vec<TicketRow> = sqlx::query_as(
        "SELECT * FROM tickets WHERE customer_id = $1 AND status < $2 ORDER BY id DESC",
    )
    .bind(customer_id)
    .bind(RESOLVED)
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        out.push(ticket_pb(conn, row).await?);
    }
    Ok(out)
}

/// (response, resolution) seconds for a kind and tier: the tier's own level, else the default.
async fn level(conn: &mut PgConnection, kind: i32, tier: &str) -> Result<(i64, i64), Error> {
    let row: Option<(i64, i64)> = sqlx::query_as(
        "SELECT response_secs, resolution_secs FROM ticket_levels
         WHERE kind = $1 AND tier IN ($2, '') ORDER BY tier = '' LIMIT 1",
    )
    .bind(kind)
    .bind(tier)
    .fetch_optional(conn)
    .await?;
    row.ok_or_else(|| {
        Error::precondition(
            "TICKET_LEVEL",
            format!("ticket_kind/{kind}"),
            "no service level is set for this ticket kind",
        )
    })
}

impl Grpc {
    async fn open_ticket(
        &self,
        caller: &str,
        req: pb::OpenTicketRequest,
    ) -> Result<pb::OpenTicketResponse, Error> {
        const SCOPE: &str = "crm.open_ticket";
        let asked = customer_id(&req.customer_id)?;
        let mut v = Violations::new();
        if !(1..=3).contains(&req.kind) {
            v.add("kind", "COMPLAINT, QUESTION or AFTER_SALES");
        }
        if req.channel_id.trim().is_empty() || req.channel_id.len() > 64 {
            v.add(
                "channel_id",
                "the channel the ticket is opened in: 1 to 64 characters",
            );
        }
        if req.subject.trim().is_empty() || req.subject.len() > 200 {
            v.add("subject", "1 to 200 characters");
        }
        if req.description.len() > 10_000 {
            v.add("description", "at most 10000 characters");
        }
        v.finish()?;
        let mut tx = self.pool.begin().await?;
        if let Some(reply) =
            idem::replay(&mut tx, SCOPE, caller, &req.idempotency_key, &req).await?
        {
            return Ok(reply);
        }
        let id = store::resolve(&mut tx, &asked).await?;
        if store::customer(&mut tx, &id).await?.is_none() {
            return Err(Error::not_found_at(
                "customer_id",
                format!("customer {asked}"),
            ));
        }
        let now = Utc::now();
        let customer = [id.clone()];
        let tier = facts::load(&mut tx, Some(&customer), now, &[])
            .await?
            .pop()
            .map(|f| f.tier)
            .unwrap_or_default();
        let (response, resolution) = level(&mut tx, req.kind, &tier).await?;
        let row: TicketRow = sqlx::query_as(
            "INSERT INTO tickets (id, customer_id, kind, channel_id, store_id, order_id, subject,
                 description, response_due_at, resolution_due_at, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11) RETURNING *",
        )
        .bind(Uuid::now_v7())
        .bind(&id)
        .bind(req.kind)
        .bind(req.channel_id.trim())
        .bind(req.store_id.trim())
        .bind(req.order_id.trim())
        .bind(req.subject.trim())
        .bind(&req.description)
        .bind(now + Duration::seconds(response))
        .bind(now + Duration::seconds(resolution))
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let reply = pb::OpenTicketResponse {
            ticket: Some(ticket_pb(&mut tx, row).await?),
        };
        idem::remember(
            &mut tx,
            SCOPE,
            caller,
            &req.idempotency_key,
            Some(&id),
            &reply,
        )
        .await?;
        tx.commit().await?;
        Ok(reply)
    }

    async fn add_note(
        &self,
        author: &str,
        req: pb::AddTicketNoteRequest,
    ) -> Result<pb::AddTicketNoteResponse, Error> {
        const SCOPE: &str = "crm.add_ticket_note";
        let id = parse_ticket_id(&req.ticket_id)?;
        if req.body.trim().is_empty() || req.body.len() > 10_000 {
            return Err(Error::invalid("body", "1 to 10000 characters"));
        }
        let mut tx = self.pool.begin().await?;
        if let Some(reply) =
            idem::replay(&mut tx, SCOPE, author, &req.idempotency_key, &req).await?
        {
            return Ok(reply);
        }
        let t = ticket(&mut tx, id, true).await?;
        if t.status == CLOSED {
            return Err(Error::precondition(
                "TICKET_CLOSED",
                format!("ticket/{id}"),
                "a closed ticket takes no more notes",
            ));
        }
        note(
            &mut tx,
            id,
            author,
            &req.channel_id,
            &req.body,
            req.customer_visible,
        )
        .await?;
        let row: TicketRow = sqlx::query_as(
            "UPDATE tickets SET updated_at = now(),
                 first_response_at = CASE WHEN $2 THEN COALESCE(first_response_at, now())
                     ELSE first_response_at END
             WHERE id = $1 RETURNING *",
        )
        .bind(id)
        .bind(req.customer_visible)
        .fetch_one(&mut *tx)
        .await?;
        let customer = row.customer_id.clone();
        let reply = pb::AddTicketNoteResponse {
            ticket: Some(ticket_pb(&mut tx, row).await?),
        };
        idem::remember(
            &mut tx,
            SCOPE,
            author,
            &req.idempotency_key,
            Some(&customer),
            &reply,
        )
        .await?;
        tx.commit().await?;
        Ok(reply)
    }

    async fn transition(
        &self,
        author: &str,
        req: pb::TransitionTicketRequest,
    ) -> Result<pb::Ticket, Error> {
        let id = parse_ticket_id(&req.ticket_id)?;
        if !(OPEN..=CLOSED).contains(&req.status) {
            return Err(Error::invalid("status", "a ticket status"));
        }
        let mut tx = self.pool.begin().await?;
        let t = ticket(&mut tx, id, true).await?;
        if t.status == req.status {
            return ticket_pb(&mut tx, t).await;
        }
        if !legal(t.status, req.status) {
            return Err(Error::precondition(
                "TICKET_TRANSITION",
                format!("ticket/{id}"),
                format!(
                    "a ticket cannot go from {} to {}",
                    status_name(t.status),
                    status_name(req.status)
                ),
            ));
        }
        if !req.note.trim().is_empty() {
            note(&mut tx, id, author, "", &req.note, false).await?;
        }
        let row: TicketRow = sqlx::query_as(
            "UPDATE tickets SET status = $2, updated_at = now(),
                 resolved_at = CASE WHEN $2 = $3 THEN now() WHEN $2 = $4 THEN resolved_at
                     ELSE NULL END
             WHERE id = $1 RETURNING *",
        )
        .bind(id)
        .bind(req.status)
        .bind(RESOLVED)
        .bind(CLOSED)
        .fetch_one(&mut *tx)
        .await?;
        let ticket = ticket_pb(&mut tx, row).await?;
        tx.commit().await?;
        Ok(ticket)
    }
}

fn status_name(s: i32) -> &'static str {
    match s {
        OPEN => "open",
        IN_PROGRESS => "in progress",
        WAITING => "waiting on customer",
        RESOLVED => "resolved",
        CLOSED => "closed",
        _ => "unknown",
    }
}

async fn note(
    conn: &mut PgConnection,
    ticket_id: Uuid,
    author: &str,
    channel_id: &str,
    body: &str,
    customer_visible: bool,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO ticket_notes (id, ticket_id, author_id, channel_id, body, customer_visible)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(Uuid::now_v7())
    .bind(ticket_id)
    .bind(author)
    .bind(channel_id)
    .bind(body)
    .bind(customer_visible)
    .execute(conn)
    .await?;
    Ok(())
}

#[tonic::async_trait]
impl TicketService for Grpc {
    async fn open_ticket(
        &self,
        request: Request<pb::OpenTicketRequest>,
    ) -> Reply<pb::OpenTicketResponse> {
        let who = caller(&request, WORKERS)?;
        Ok(Response::new(
            Grpc::open_ticket(self, &who.id, request.into_inner()).await?,
        ))
    }

    async fn get_ticket(
        &self,
        request: Request<pb::GetTicketRequest>,
    ) -> Reply<pb::GetTicketResponse> {
        caller(&request, READERS)?;
        let id = parse_ticket_id(&request.get_ref().ticket_id)?;
        let mut conn = self.pool.acquire().await.map_err(Error::from)?;
        let t = ticket(&mut conn, id, false).await?;
        Ok(Response::new(pb::GetTicketResponse {
            ticket: Some(ticket_pb(&mut conn, t).await?),
        }))
    }

    async fn list_tickets(
        &self,
        request: Request<pb::ListTicketsRequest>,
    ) -> Reply<pb::ListTicketsResponse> {
        caller(&request, READERS)?;
        let req = request.into_inner();
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
        let rows: Vec<TicketRow> = sqlx::query_as(
            "SELECT * FROM tickets WHERE id < $1
                 AND ($2 = '' OR customer_id = $2)
                 AND (cardinality($3::INT[]) = 0 OR status = ANY($3))
                 AND ($4 = '' OR assignee_id = $4)
                 AND ($5 = '' OR channel_id = $5)
             ORDER BY id DESC LIMIT $6",
        )
        .bind(before)
        .bind(&customer)
        .bind(&req.statuses)
        .bind(req.assignee_id.trim())
        .bind(req.channel_id.trim())
        .bind(size)
        .fetch_all(&mut *conn)
        .await
        .map_err(Error::from)?;
        let next = paging::next_token(rows.len(), size, rows.last().map(|r| r.id.to_string()));
        let mut tickets = Vec::with_capacity(rows.len());
        for row in rows {
            tickets.push(ticket_pb(&mut conn, row).await?);
        }
        Ok(Response::new(pb::ListTicketsResponse {
            tickets,
            next_page_token: next,
        }))
    }

    async fn assign_ticket(
        &self,
        request: Request<pb::AssignTicketRequest>,
    ) -> Reply<pb::AssignTicketResponse> {
        caller(&request, WORKERS)?;
        let req = request.into_inner();
        let id = parse_ticket_id(&req.ticket_id)?;
        if req.assignee_id.len() > 64 {
            return Err(Error::invalid("assignee_id", "at most 64 characters").into());
        }
        let mut tx = self.pool.begin().await.map_err(Error::from)?;
        let t = ticket(&mut tx, id, true).await?;
        if t.status == CLOSED {
            return Err(Error::precondition(
                "TICKET_CLOSED",
                format!("ticket/{id}"),
                "a closed ticket cannot be reassigned",
            )
            .into());
        }
        let row: TicketRow = sqlx::query_as(
            "UPDATE tickets SET assignee_id = $2, updated_at = now() WHERE id = $1 RETURNING *",
        )
        .bind(id)
        .bind(req.assignee_id.trim())
        .fetch_one(&mut *tx)
        .await
        .map_err(Error::from)?;
        let ticket = ticket_pb(&mut tx, row).await?;
        tx.commit().await.map_err(Error::from)?;
        Ok(Response::new(pb::AssignTicketResponse {
            ticket: Some(ticket),
        }))
    }

    async fn add_ticket_note(
        &self,
        request: Request<pb::AddTicketNoteRequest>,
    ) -> Reply<pb::AddTicketNoteResponse> {
        let who = caller(&request, WORKERS)?;
        Ok(Response::new(
            self.add_note(&who.id, request.into_inner()).await?,
        ))
    }

    async fn transition_ticket(
        &self,
        request: Request<pb::TransitionTicketRequest>,
    ) -> Reply<pb::TransitionTicketResponse> {
        let who = caller(&request, WORKERS)?;
        let ticket = self.transition(&who.id, request.into_inner()).await?;
        Ok(Response::new(pb::TransitionTicketResponse {
            ticket: Some(ticket),
        }))
    }

    async fn list_overdue_tickets(
        &self,
        request: Request<pb::ListOverdueTicketsRequest>,
    ) -> Reply<pb::ListOverdueTicketsResponse> {
        caller(&request, READERS)?;
        let req = request.into_inner();
        let at = from_ts(req.as_of.as_ref()).unwrap_or_else(Utc::now);
        let size = paging::page_size(req.page_size)?;
        let skip: usize = paging::decode_token(&req.page_token)?
            .map(|t| t.parse())
            .transpose()
            .map_err(|_| Error::invalid("page_token", "is not a token this service issued"))?
            .unwrap_or(0);
        let mut conn = self.pool.acquire().await.map_err(Error::from)?;
        let rows: Vec<TicketRow> = sqlx::query_as(
            "SELECT * FROM tickets WHERE status < $1
                 AND (resolution_due_at < $2 OR (first_response_at IS NULL AND response_due_at < $2))
                 AND ($3 = '' OR channel_id = $3)
                 AND ($4 = '' OR assignee_id = $4)",
        )
        .bind(RESOLVED)
        .bind(at)
        .bind(req.channel_id.trim())
        .bind(req.assignee_id.trim())
        .fetch_all(&mut *conn)
        .await
        .map_err(Error::from)?;
        let mut late: Vec<(TicketRow, i32, Duration)> = rows
            .into_iter()
            .filter_map(|t| {
                overdue(
                    t.response_due_at,
                    t.resolution_due_at,
                    t.first_response_at.is_some(),
                    at,
                )
                .map(|(kind, by)| (t, kind, by))
            })
            .collect();
        late.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.id.cmp(&b.0.id)));
        let page: Vec<_> = late.into_iter().skip(skip).take(size as usize).collect();
        let next = paging::next_token(page.len(), size, Some((skip + page.len()).to_string()));
        let mut tickets = Vec::with_capacity(page.len());
        for (t, kind, by) in page {
            tickets.push(pb::OverdueTicket {
                ticket: Some(ticket_pb(&mut conn, t).await?),
                overdue: kind,
                overdue_by: Some(duration_pb(by.num_seconds())),
            });
        }
        Ok(Response::new(pb::ListOverdueTicketsResponse {
            tickets,
            next_page_token: next,
        }))
    }

    async fn set_ticket_service_level(
        &self,
        request: Request<pb::SetTicketServiceLevelRequest>,
    ) -> Reply<pb::SetTicketServiceLevelResponse> {
        caller(&request, &[Role::Admin])?;
        let l = request.into_inner().level.unwrap_or_default();
        let mut v = Violations::new();
        if !(1..=3).contains(&l.kind) {
            v.add("level.kind", "COMPLAINT, QUESTION or AFTER_SALES");
        }
        if l.tier.len() > 32 {
            v.add("level.tier", "at most 32 characters");
        }
        let response = l.response_target.as_ref().map_or(0, |d| d.seconds);
        let resolution = l.resolution_target.as_ref().map_or(0, |d| d.seconds);
        if response <= 0 {
            v.add("level.response_target", "must be positive");
        }
        if resolution <= 0 {
            v.add("level.resolution_target", "must be positive");
        }
        if response > 0 && resolution > 0 && resolution < response {
            v.add(
                "level.resolution_target",
                "must not be shorter than the response target",
            );
        }
        v.finish()?;
        sqlx::query(
            "INSERT INTO ticket_levels (kind, tier, response_secs, resolution_secs)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (kind, tier) DO UPDATE SET response_secs = EXCLUDED.response_secs,
                 resolution_secs = EXCLUDED.resolution_secs",
        )
        .bind(l.kind)
        .bind(l.tier.trim())
        .bind(response)
        .bind(resolution)
        .execute(&self.pool)
        .await
        .map_err(Error::from)?;
        Ok(Response::new(pb::SetTicketServiceLevelResponse {
            level: Some(pb::TicketServiceLevel {
                kind: l.kind,
                tier: l.tier.trim().to_owned(),
                response_target: Some(duration_pb(response)),
                resolution_target: Some(duration_pb(resolution)),
            }),
        }))
    }

    async fn list_ticket_service_levels(
        &self,
        request: Request<pb::ListTicketServiceLevelsRequest>,
    ) -> Reply<pb::ListTicketServiceLevelsResponse> {
        caller(&request, READERS)?;
        let req = request.into_inner();
        let size = paging::page_size(req.page_size)?;
        let skip: i64 = paging::decode_token(&req.page_token)?
            .map(|t| t.parse())
            .transpose()
            .map_err(|_| Error::invalid("page_token", "is not a token this service issued"))?
            .unwrap_or(0);
        let rows: Vec<(i32, String, i64, i64)> = sqlx::query_as(
            "SELECT kind, tier, response_secs, resolution_secs FROM ticket_levels
             ORDER BY kind, tier OFFSET $1 LIMIT $2",
        )
        .bind(skip)
        .bind(size)
        .fetch_all(&self.pool)
        .await
        .map_err(Error::from)?;
        Ok(Response::new(pb::ListTicketServiceLevelsResponse {
            next_page_token: paging::next_token(
                rows.len(),
                size,
                Some((skip + rows.len() as i64).to_string()),
            ),
            levels: rows
                .into_iter()
                .map(
                    |(kind, tier, response, resolution)| pb::TicketServiceLevel {
                        kind,
                        tier,
                        response_target: Some(duration_pb(response)),
                        resolution_target: Some(duration_pb(resolution)),
                    },
                )
                .collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_documented_transitions_are_legal() {
        assert!(legal(OPEN, IN_PROGRESS));
        assert!(legal(IN_PROGRESS, WAITING) && legal(WAITING, IN_PROGRESS));
        assert!(legal(RESOLVED, IN_PROGRESS) && legal(RESOLVED, CLOSED));
        assert!(!legal(OPEN, CLOSED));
        assert!(!legal(OPEN, RESOLVED));
        assert!(!legal(CLOSED, IN_PROGRESS));
        assert!(!legal(WAITING, CLOSED));
    }

    #[test]
    fn a_missed_resolution_outranks_a_missed_response() {
        let now = Utc::now();
        let h = Duration::hours;
        assert_eq!(overdue(now + h(1), now + h(5), false, now), None);
        assert_eq!(
            overdue(now - h(1), now + h(5), false, now),
            Some((RESPONSE, h(1)))
        );
        assert_eq!(overdue(now - h(1), now + h(5), true, now), None);
        assert_eq!(
            overdue(now - h(3), now - h(2), true, now),
            Some((RESOLUTION, h(2)))
        );
    }
}

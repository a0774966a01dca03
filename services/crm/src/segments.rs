//! Rule-based segments with materialised membership. A segment's members are recomputed for
//! the whole base when it is created or changed and when a campaign is sent to it, and for one
//! customer whenever that customer's events arrive (see [`crate::events`]).

use chrono::{DateTime, Utc};
use omni_proto::omni::crm::v1 as pb;
use omni_proto::omni::crm::v1::segment_service_server::SegmentService;
use omni_runtime::Error;
use omni_runtime::auth::Role;
use omni_runtime::error::Violations;
use omni_runtime::paging;
use sqlx::PgConnection;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::facts::{self, Facts};
use crate::grpc::{Grpc, caller, ts};
use crate::idem;
use crate::segment_rule::{self, Expr};

const WRITERS: &[Role] = &[Role::Admin, Role::ChannelManager];
const READERS: &[Role] = &[Role::Admin, Role::ChannelManager, Role::Analyst];

type Reply<T> = Result<Response<T>, Status>;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SegmentRow {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub rule: String,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn parse_rule(rule: &str, field: &str) -> Result<Expr, Error> {
    segment_rule::parse(rule).map_err(|e| Error::invalid(field, e.to_string()))
}

pub fn parse_id(raw: &str, field: &str) -> Result<Uuid, Error> {
    raw.trim()
        .parse()
        .map_err(|_| Error::invalid(field, "must be a UUID"))
}

fn validate(s: &pb::Segment) -> Result<Expr, Error> {
    let mut v = Violations::new();
    let name = s.name.trim();
    if name.is_empty() || name.len() > 200 {
        v.add("segment.name", "1 to 200 characters");
    }
    if s.description.len() > 2_000 {
        v.add("segment.description", "at most 2000 characters");
    }
    let rule = match segment_rule::parse(&s.rule) {
        Ok(rule) => Some(rule),
        Err(e) => {
            v.add("segment.rule", e.to_string());
            None
        }
    };
    v.finish()?;
    rule.ok_or_else(|| Error::internal("a rule that failed to parse passed validation"))
}

pub async fn segment(conn: &mut PgConnection, id: Uuid) -> Result<SegmentRow, Error> {
    sqlx::query_as("SELECT * FROM segments WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| Error::not_found(format!("segment {id}")))
}

async fn member_count(conn: &mut PgConnection, id: Uuid) -> Result<i64, Error> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM segment_members WHERE segment_id = $1")
            .bind(id)
            .fetch_one(conn)
            .await?,
    )
}

fn segment_pb(s: &SegmentRow, members: i64) -> pb::Segment {
    pb::Segment {
        id: s.id.to_string(),
        name: s.name.clone(),
        description: s.description.clone(),
        rule: s.rule.clone(),
        member_count: members,
        version: s.version,
        created_at: Some(ts(s.created_at)),
        updated_at: Some(ts(s.updated_at)),
    }
}

/// The live customers the rule matches now.
async fn matching(conn: &mut PgConnection, rule: &Expr) -> Result<Vec<String>, Error> {
    let base = facts::load(conn, None, Utc::now(), &rule.purchase_filters()).await?;
    Ok(base
        .iter()
        .filter(|f| rule.matches(f))
        .map(|f| f.customer_id.clone())
        .collect())
}

/// Recomputes the whole membership of one segment; returns the member count.
#[tracing::instrument(name = "crm.segment_refresh", skip_all, fields(segment_id = %id), err)]
pub async fn refresh(conn: &mut PgConnection, id: Uuid, rule: &str) -> Result<i64, Error> {
    let rule = parse_rule(rule, "segment.rule")?;
    let members = matching(conn, &rule).await?;
    sqlx::query("DELETE FROM segment_members WHERE segment_id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO segment_members (segment_id, customer_id) SELECT $1, unnest($2::TEXT[])",
    )
    .bind(id)
    .bind(&members)
    .execute(conn)
    .await?;
    Ok(members.len() as i64)
}

/// Recomputes the membership of every segment for `customers`, after their events: their
/// facts are loaded once (with the purchase filters of every rule counted), then two
/// statements per segment.
#[tracing::instrument(name = "crm.segment_refresh_customers", skip_all, fields(customers = customers.len()), err)]
pub async fn refresh_customers(conn: &mut PgConnection, customers: &[String]) -> Result<(), Error> {
    let segments: Vec<(Uuid, String)> = sqlx::query_as("SELECT id, rule FROM segments")
        .fetch_all(&mut *conn)
        .await?;
    if segments.is_empty() || customers.is_empty() {
        return Ok(());
    }
    let rules: Vec<(Uuid, segment_rule::Expr)> = segments
        .into_iter()
        .filter_map(|(id, rule)| match segment_rule::parse(&rule) {
            Ok(rule) => Some((id, rule)),
            Err(_) => {
                tracing::warn!(segment_id = %id, "stored segment rule no longer parses");
                None
            }
        })
        .collect();
    if rules.is_empty() {
        return Ok(());
    }
    let mut filters = Vec::new();
    for (_, rule) in &rules {
        for filter in rule.purchase_filters() {
            if !filters.contains(&filter) {
                filters.push(filter);
            }
        }
    }
    let facts = facts::load(conn, Some(customers), Utc::now(), &filters).await?;
    for (id, rule) in rules {
        let (members, others): (Vec<&Facts>, Vec<&Facts>) =
            facts.iter().partition(|f| rule.matches(f));
        let ids = |fs: Vec<&Facts>| {
            fs.into_iter()
                .map(|f| f.customer_id.clone())
                .collect::<Vec<_>>()
        };
        sqlx::query(
            "INSERT INTO segment_members (segment_id, customer_id)
             SELECT $1, unnest($2::TEXT[]) ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(ids(members))
        .execute(&mut *conn)
        .await?;
        sqlx::query("DELETE FROM segment_members WHERE segment_id = $1 AND customer_id = ANY($2)")
            .bind(id)
            .bind(ids(others))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// The segments a customer belongs to.
pub async fn of_customer(
    conn: &mut PgConnection,
    customer_id: &str,
) -> Result<Vec<pb::SegmentRef>, Error> {
    let rows: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT s.id, s.name FROM segment_members m JOIN segments s ON s.id = m.segment_id
         WHERE m.customer_id = $1 ORDER BY s.name, s.id",
    )
    .bind(customer_id)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, name)| pb::SegmentRef {
            segment_id: id.to_string(),
            name,
        })
        .collect())
}

/// The current members of a segment.
pub async fn members(conn: &mut PgConnection, id: Uuid) -> Result<Vec<String>, Error> {
    Ok(sqlx::query_scalar(
        "SELECT customer_id FROM segment_members WHERE segment_id = $1 ORDER BY customer_id",
    )
    .bind(id)
    .fetch_all(conn)
    .await?)
}

impl Grpc {
    async fn create_segment(
        &self,
        caller: &str,
        req: pb::CreateSegmentRequest,
    ) -> Result<pb::CreateSegmentResponse, Error> {
        let s = req.segment.clone().unwrap_or_default();
        let rule = validate(&s)?;
        let mut tx = self.pool.begin().await?;
        if req.validate_only {
            let count = matching(&mut tx, &rule).await?.len() as i64;
            return Ok(pb::CreateSegmentResponse {
                segment: Some(pb::Segment {
                    member_count: count,
                    ..s
                }),
            });
        }
        if let Some(reply) = idem::replay(
            &mut tx,
            "crm.create_segment",
            caller,
            &req.idempotency_key,
            &req,
        )
        .await?
        {
            return Ok(reply);
        }
        let row: SegmentRow = sqlx::query_as(
            "INSERT INTO segments (id, name, description, rule) VALUES ($1, $2, $3, $4)
             RETURNING *",
        )
        .bind(Uuid::now_v7())
        .bind(s.name.trim())
        .bind(&s.description)
        .bind(s.rule.trim())
        .fetch_one(&mut *tx)
        .await?;
        let count = refresh(&mut tx, row.id, &row.rule).await?;
        let reply = pb::CreateSegmentResponse {
            segment: Some(segment_pb(&row, count)),
        };
        idem::remember(
            &mut tx,
            "crm.create_segment",
            caller,
            &req.idempotency_key,
            None,
            &reply,
        )
        .await?;
        tx.commit().await?;
        Ok(reply)
    }

    async fn update_segment(&self, req: pb::UpdateSegmentRequest) -> Result<pb::Segment, Error> {
        let s = req.segment.unwrap_or_default();
        let id = parse_id(&s.id, "segment.id")?;
        let rule = validate(&s)?;
        let mut tx = self.pool.begin().await?;
        let current: SegmentRow = sqlx::query_as("SELECT * FROM segments WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| Error::not_found(format!("segment {id}")))?;
        if current.version != s.version {
            return Err(Error::Aborted(format!(
                "segment {id} is at version {}, not {}",
                current.version, s.version
            )));
        }
        if req.validate_only {
            let count = matching(&mut tx, &rule).await?.len() as i64;
            // What the segment would be, unsaved.
            return Ok(pb::Segment {
                member_count: count,
                created_at: Some(ts(current.created_at)),
                updated_at: Some(ts(current.updated_at)),
                ..s
            });
        }
        let row: SegmentRow = sqlx::query_as(
            "UPDATE segments SET name = $2, description = $3, rule = $4, version = version + 1,
                 updated_at = now()
             WHERE id = $1 RETURNING *",
        )
        .bind(id)
        .bind(s.name.trim())
        .bind(&s.description)
        .bind(s.rule.trim())
        .fetch_one(&mut *tx)
        .await?;
        let count = refresh(&mut tx, row.id, &row.rule).await?;
        tx.commit().await?;
        Ok(segment_pb(&row, count))
    }
}

#[tonic::async_trait]
impl SegmentService for Grpc {
    async fn create_segment(
        &self,
        request: Request<pb::CreateSegmentRequest>,
    ) -> Reply<pb::CreateSegmentResponse> {
        let who = caller(&request, WRITERS)?;
        Ok(Response::new(
            Grpc::create_segment(self, &who.id, request.into_inner()).await?,
        ))
    }

    async fn update_segment(
        &self,
        request: Request<pb::UpdateSegmentRequest>,
    ) -> Reply<pb::UpdateSegmentResponse> {
        caller(&request, WRITERS)?;
        let segment = Grpc::update_segment(self, request.into_inner()).await?;
        Ok(Response::new(pb::UpdateSegmentResponse {
            segment: Some(segment),
        }))
    }

    async fn get_segment(
        &self,
        request: Request<pb::GetSegmentRequest>,
    ) -> Reply<pb::GetSegmentResponse> {
        caller(&request, READERS)?;
        let id = parse_id(&request.get_ref().segment_id, "segment_id")?;
        let mut conn = self.pool.acquire().await.map_err(Error::from)?;
        let row = segment(&mut conn, id).await?;
        let count = member_count(&mut conn, id).await?;
        Ok(Response::new(pb::GetSegmentResponse {
            segment: Some(segment_pb(&row, count)),
        }))
    }

    async fn list_segments(
        &self,
        request: Request<pb::ListSegmentsRequest>,
    ) -> Reply<pb::ListSegmentsResponse> {
        caller(&request, READERS)?;
        let req = request.into_inner();
        let size = paging::page_size(req.page_size)?;
        let after = paging::decode_token(&req.page_token)?;
        let after = after
            .map(|a| parse_id(&a, "page_token"))
            .transpose()?
            .unwrap_or(Uuid::nil());
        let mut conn = self.pool.acquire().await.map_err(Error::from)?;
        let rows: Vec<SegmentRow> =
            sqlx::query_as("SELECT * FROM segments WHERE id > $1 ORDER BY id LIMIT $2")
                .bind(after)
                .bind(size)
                .fetch_all(&mut *conn)
                .await
                .map_err(Error::from)?;
        let mut segments = Vec::with_capacity(rows.len());
        for row in &rows {
            let count = member_count(&mut conn, row.id).await?;
            segments.push(segment_pb(row, count));
        }
        Ok(Response::new(pb::ListSegmentsResponse {
            next_page_token: paging::next_token(
                rows.len(),
                size,
                rows.last().map(|r| r.id.to_string()),
            ),
            segments,
        }))
    }

    async fn list_segment_members(
        &self,
        request: Request<pb::ListSegmentMembersRequest>,
    ) -> Reply<pb::ListSegmentMembersResponse> {
        caller(&request, READERS)?;
        let req = request.into_inner();
        let id = parse_id(&req.segment_id, "segment_id")?;
        let size = paging::page_size(req.page_size)?;
        let after = paging::decode_token(&req.page_token)?.unwrap_or_default();
        let mut conn = self.pool.acquire().await.map_err(Error::from)?;
        segment(&mut conn, id).await?;
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT customer_id FROM segment_members WHERE segment_id = $1 AND customer_id > $2
             ORDER BY customer_id LIMIT $3",
        )
        .bind(id)
        .bind(&after)
        .bind(size)
        .fetch_all(&mut *conn)
        .await
        .map_err(Error::from)?;
        let members = crate::associates::summaries(&mut conn, &ids).await?;
        Ok(Response::new(pb::ListSegmentMembersResponse {
            next_page_token: paging::next_token(ids.len(), size, ids.last().cloned()),
            members,
        }))
    }
}

//! Store associates and their customers: a customer may be assigned to one associate, and an
//! associate lists only its own customers. Also the customer summary lines lists share.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use omni_proto::common::Money;
use omni_proto::omni::crm::v1 as pb;
use omni_runtime::Error;
use omni_runtime::auth::{Principal, Role};
use omni_runtime::paging;
use sqlx::PgConnection;

use crate::facts;
use crate::grpc::{Grpc, customer_id, ts};
use crate::store;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AssignmentRow {
    pub associate_id: String,
    pub store_id: String,
    pub assigned_at: DateTime<Utc>,
}

pub fn assignment_pb(a: &AssignmentRow) -> pb::AssociateAssignment {
    pb::AssociateAssignment {
        associate_id: a.associate_id.clone(),
        store_id: a.store_id.clone(),
        assigned_at: Some(ts(a.assigned_at)),
    }
}

pub async fn assignment(
    conn: &mut PgConnection,
    customer_id: &str,
) -> Result<Option<AssignmentRow>, Error> {
    Ok(sqlx::query_as(
        "SELECT associate_id, store_id, assigned_at FROM associates WHERE customer_id = $1",
    )
    .bind(customer_id)
    .fetch_optional(conn)
    .await?)
}

/// Summary lines for `ids`, in that order (unknown ids are left out).
pub async fn summaries(
    conn: &mut PgConnection,
    ids: &[String],
) -> Result<Vec<pb::CustomerSummary>, Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let people: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT customer_id, name, member_number FROM customers WHERE customer_id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    let people: HashMap<String, (String, String)> = people
        .into_iter()
        .map(|(id, name, number)| (id, (name, number)))
        .collect();
    let currency: Option<String> =
        sqlx::query_scalar("SELECT currency FROM customer_orders LIMIT 1")
            .fetch_optional(&mut *conn)
            .await?;
    let facts: HashMap<String, facts::Facts> = facts::load(conn, Some(ids), Utc::now(), &[])
        .await?
        .into_iter()
        .map(|f| (f.customer_id.clone(), f))
        .collect();
    Ok(ids
        .iter()
        .filter_map(|id| {
            let (name, number) = people.get(id)?;
            let f = facts.get(id)?;
            Some(pb::CustomerSummary {
                customer_id: id.clone(),
                name: name.clone(),
                member_number: number.clone(),
                tier: f.tier.clone(),
                lifecycle_stage: f.lifecycle,
                last_purchase_at: f.last_purchase.map(ts),
                total_spend: Some(Money {
                    minor_units: f.total_spend,
                    currency: currency.clone().unwrap_or_default(),
                }),
            })
        })
        .collect())
}

impl Grpc {
    pub(crate) async fn assign_associate(
        &self,
        who: &Principal,
        req: pb::AssignAssociateRequest,
    ) -> Result<Option<pb::AssociateAssignment>, Error> {
        let asked = customer_id(&req.customer_id)?;
        let associate = req.associate_id.trim();
        if associate.len() > 64 {
            return Err(Error::invalid("associate_id", "at most 64 characters"));
        }
        if !associate.is_empty() && req.store_id.trim().is_empty() {
            return Err(Error::invalid(
                "store_id",
                "required: the store the associate works in",
            ));
        }
        // Within the caller's stores only (every store for a caller not limited to stores):
        // the new assignment's, and the one it replaces.
        if !associate.is_empty() {
            who.require_store(req.store_id.trim())?;
        }
        let mut tx = self.pool.begin().await?;
        let id = store::resolve(&mut tx, &asked).await?;
        if store::customer(&mut tx, &id).await?.is_none() {
            return Err(Error::not_found_at(
                "customer_id",
                format!("customer {asked}"),
            ));
        }
        if let Some(current) = assignment(&mut tx, &id).await? {
            who.require_store(&current.store_id)?;
        }
        let row = if associate.is_empty() {
            sqlx::query("DELETE FROM associates WHERE customer_id = $1")
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            None
        } else {
            Some(
                sqlx::query_as::<_, AssignmentRow>(
                    "INSERT INTO associates (customer_id, associate_id, store_id) VALUES ($1, $2, $3)
                     ON CONFLICT (customer_id) DO UPDATE SET associate_id = EXCLUDED.associate_id,
                         store_id = EXCLUDED.store_id, assigned_at = now()
                     RETURNING associate_id, store_id, assigned_at",
                )
                .bind(&id)
                .bind(associate)
                .bind(req.store_id.trim())
                .fetch_one(&mut *tx)
                .await?,
            )
        };
        tx.commit().await?;
        Ok(row.as_ref().map(assignment_pb))
    }

    pub(crate) async fn associate_customers(
        &self,
        who: &Principal,
        req: pb::ListAssociateCustomersRequest,
    ) -> Result<pb::ListAssociateCustomersResponse, Error> {
        let associate = if req.associate_id.trim().is_empty() {
            who.id.clone()
        } else {
            req.associate_id.trim().to_owned()
        };
        if !who.has_any(&[Role::Admin, Role::ChannelManager]) && associate != who.id {
            return Err(Error::permission_denied(
                "an associate may list only its own customers",
            ));
        }
        let size = paging::page_size(req.page_size)?;
        let after = paging::decode_token(&req.page_token)?.unwrap_or_default();
        let mut conn = self.pool.acquire().await?;
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT customer_id FROM associates WHERE associate_id = $1 AND customer_id > $2
             ORDER BY customer_id LIMIT $3",
        )
        .bind(&associate)
        .bind(&after)
        .bind(size)
        .fetch_all(&mut *conn)
        .await?;
        Ok(pb::ListAssociateCustomersResponse {
            customers: summaries(&mut conn, &ids).await?,
            next_page_token: paging::next_token(ids.len(), size, ids.last().cloned()),
        })
    }
}

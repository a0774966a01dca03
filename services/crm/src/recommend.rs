//! Suggestions for store associates: next-best products from co-purchase across all customers
//! (bought A, then B within 30 days) and repurchase reminders from each customer's typical
//! interval in a category.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use omni_proto::omni::crm::v1 as pb;
use omni_proto::omni::crm::v1::recommendation_service_server::RecommendationService;
use omni_runtime::Error;
use omni_runtime::auth::Role;
use omni_runtime::paging;
use tonic::{Request, Response, Status};

use crate::facts::CANCELLED;
use crate::grpc::{Grpc, caller, customer_id, ts};
use crate::store;

const READERS: &[Role] = &[
    Role::Admin,
    Role::ChannelManager,
    Role::StoreAssociate,
    Role::ChannelApp,
];
const DEFAULT_LIMIT: i64 = 10;
/// "Often buys B within this many days of A".
pub const CO_PURCHASE_DAYS: i32 = 30;

type Reply<T> = Result<Response<T>, Status>;

/// The typical number of days between purchases on distinct days (the median gap), or `None`
/// with fewer than two such days.
pub fn typical_interval(purchases: &[DateTime<Utc>]) -> Option<i64> {
    let mut days: Vec<NaiveDate> = purchases.iter().map(|t| t.date_naive()).collect();
    days.sort();
    days.dedup();
    let mut gaps: Vec<i64> = days.windows(2).map(|w| (w[1] - w[0]).num_days()).collect();
    if gaps.is_empty() {
        return None;
    }
    gaps.sort();
    let mid = gaps.len() / 2;
    Some(if gaps.len() % 2 == 1 {
        gaps[mid]
    } else {
        (gaps[mid - 1] + gaps[mid] + 1) / 2
    })
}

/// The last day to include for `due_by` (unset: today), as the first instant after it.
fn due_limit(due_by: Option<&omni_proto::common::Date>) -> Result<DateTime<Utc>, Error> {
    let day = match due_by {
        None => Utc::now().date_naive(),
        Some(d) => NaiveDate::from_ymd_opt(d.year, d.month as u32, d.day as u32)
            .ok_or_else(|| Error::invalid("due_by", "not a calendar day"))?,
    };
    Ok((day + Duration::days(1))
        .and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc())
        .unwrap_or_else(Utc::now))
}

impl Grpc {
    async fn next_best(
        &self,
        req: pb::GetNextBestProductsRequest,
    ) -> Result<Vec<pb::ProductSuggestion>, Error> {
        let asked = customer_id(&req.customer_id)?;
        let limit = match req.limit {
            0 => DEFAULT_LIMIT,
            n if !(0..=100).contains(&n) => {
                return Err(Error::invalid("limit", "between 0 and 100"));
            }
            n => i64::from(n),
        };
        let mut conn = self.pool.acquire().await?;
        let id = store::resolve(&mut conn, &asked).await?;
        if store::customer(&mut conn, &id).await?.is_none() {
            return Err(Error::not_found(format!("customer {asked}")));
        }
        // For each product A the customer bought: among every customer who bought A, the share
        // who bought B (one the customer has not bought) on or after A within the window.
        let rows: Vec<(String, String, String, f64, i64)> = sqlx::query_as(
            "WITH bought AS (
                 SELECT DISTINCT l.customer_id, l.product_id, l.category_id, o.placed_at
                 FROM order_lines l JOIN customer_orders o ON o.order_id = l.order_id
                 WHERE o.status <> $2 AND l.product_id <> ''
             ),
             mine AS (SELECT DISTINCT product_id FROM bought WHERE customer_id = $1),
             buyers AS (
                 SELECT product_id, count(DISTINCT customer_id) AS n FROM bought
                 WHERE product_id IN (SELECT product_id FROM mine) GROUP BY product_id
             ),
             pairs AS (
                 SELECT a.product_id AS a, b.product_id AS b, max(b.category_id) AS category,
                     count(DISTINCT a.customer_id) AS support
                 FROM bought a JOIN bought b ON b.customer_id = a.customer_id
                     AND b.product_id <> a.product_id
                     AND b.placed_at >= a.placed_at
                     AND b.placed_at <= a.placed_at + make_interval(days => $3)
                 WHERE a.product_id IN (SELECT product_id FROM mine)
                     AND b.product_id NOT IN (SELECT product_id FROM mine)
                 GROUP BY a.product_id, b.product_id
             )
             SELECT p.b, p.category, p.a, p.support::FLOAT8 / buyers.n, p.support
             FROM pairs p JOIN buyers ON buyers.product_id = p.a
             ORDER BY 4 DESC, 5 DESC, p.b, p.a",
        )
        .bind(&id)
        .bind(CANCELLED)
        .bind(CO_PURCHASE_DAYS)
        .fetch_all(&mut *conn)
        .await?;
        let mut seen = std::collections::HashSet::new();
        Ok(rows
            .into_iter()
            .filter(|(b, ..)| seen.insert(b.clone()))
            .take(limit as usize)
            .map(
                |(product_id, category_id, because, confidence, support)| pb::ProductSuggestion {
                    product_id,
                    category_id,
                    because_of_product_id: because,
                    confidence,
                    support,
                },
            )
            .collect())
    }

    async fn repurchase_due(
        &self,
        who: &omni_runtime::auth::Principal,
        req: pb::ListRepurchaseDueRequest,
    ) -> Result<pb::ListRepurchaseDueResponse, Error> {
        let managers = [Role::Admin, Role::ChannelManager, Role::ChannelApp];
        let associate = if !who.has_any(&managers) {
            if !req.associate_id.is_empty() && req.associate_id != who.id {
                return Err(Error::permission_denied(
                    "an associate may list only its own customers",
                ));
            }
            who.id.clone()
        } else {
            req.associate_id.trim().to_owned()
        };
        let limit = due_limit(req.due_by.as_ref())?;
        let size = paging::page_size(req.page_size)?;
        let after = paging::decode_token(&req.page_token)?.unwrap_or_default();
        let mut conn = self.pool.acquire().await?;
        let rows: Vec<(String, String, DateTime<Utc>, String, String)> = sqlx::query_as(
            "SELECT DISTINCT o.customer_id, l.category_id, o.placed_at, c.name,
                 COALESCE(a.associate_id, '')
             FROM order_lines l
             JOIN customer_orders o ON o.order_id = l.order_id
             JOIN customers c ON c.customer_id = o.customer_id
             LEFT JOIN associates a ON a.customer_id = o.customer_id
             WHERE o.status <> $1 AND l.category_id <> ''
                 AND ($2 = '' OR a.associate_id = $2)
                 AND ($3 = '' OR l.category_id = $3)
                 AND ($4 = '' OR EXISTS (SELECT 1 FROM customer_orders s
                      WHERE s.customer_id = o.customer_id AND s.store_id = $4))",
        )
        .bind(CANCELLED)
        .bind(&associate)
        .bind(req.category_id.trim())
        .bind(req.store_id.trim())
        .fetch_all(&mut *conn)
        .await?;
        /// Purchase times, customer name and associate per (customer, category).
        type Groups = BTreeMap<(String, String), (Vec<DateTime<Utc>>, String, String)>;
        let mut groups = Groups::new();
        for (customer, category, at, name, associate) in rows {
            groups
                .entry((customer, category))
                .or_insert_with(|| (Vec::new(), name, associate))
                .0
                .push(at);
        }
        let mut reminders = Vec::new();
        let mut last_key = None;
        for ((customer, category), (dates, name, associate)) in groups {
            let key = format!("{customer}\u{1f}{category}");
            if key <= after {
                continue;
            }
            let Some(interval) = typical_interval(&dates) else {
                continue;
            };
            let Some(last) = dates.iter().max().copied() else {
                continue;
            };
            let due = last + Duration::days(interval);
            if due >= limit {
                continue;
            }
            reminders.push(pb::RepurchaseReminder {
                customer_id: customer,
                customer_name: name,
                category_id: category,
                last_purchase_at: Some(ts(last)),
                typical_interval_days: interval as i32,
                due_at: Some(ts(due)),
                associate_id: associate,
            });
            last_key = Some(key);
            if reminders.len() as i64 >= size {
                break;
            }
        }
        Ok(pb::ListRepurchaseDueResponse {
            next_page_token: paging::next_token(reminders.len(), size, last_key),
            reminders,
        })
    }
}

#[tonic::async_trait]
impl RecommendationService for Grpc {
    async fn get_next_best_products(
        &self,
        request: Request<pb::GetNextBestProductsRequest>,
    ) -> Reply<pb::GetNextBestProductsResponse> {
        caller(&request, READERS)?;
        let suggestions = self.next_best(request.into_inner()).await?;
        Ok(Response::new(pb::GetNextBestProductsResponse {
            suggestions,
        }))
    }

    async fn list_repurchase_due(
        &self,
        request: Request<pb::ListRepurchaseDueRequest>,
    ) -> Reply<pb::ListRepurchaseDueResponse> {
        let who = caller(&request, READERS)?;
        Ok(Response::new(
            self.repurchase_due(&who, request.into_inner()).await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_typical_interval_is_the_median_gap_between_purchase_days() {
        let t0 = Utc::now() - Duration::days(200);
        let at = |d: i64| t0 + Duration::days(d);
        assert_eq!(typical_interval(&[at(0)]), None);
        assert_eq!(typical_interval(&[at(0), at(0)]), None);
        assert_eq!(typical_interval(&[at(0), at(30)]), Some(30));
        assert_eq!(
            typical_interval(&[at(60), at(0), at(30), at(100)]),
            Some(30)
        );
        assert_eq!(typical_interval(&[at(0), at(20), at(60)]), Some(30));
    }
}

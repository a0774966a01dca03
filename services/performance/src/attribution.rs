//! Cross-channel attribution: the acquisition matrix (customers acquired in one channel buying
//! in another), associate credit, store credit for other channels' orders a store fulfilled,
//! and coupon credit to the issuing channel. Read from rollups, per-customer days and the small
//! per-order link tables, never from a scan of every fact.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use omni_proto::common::Money;
use omni_proto::omni::performance::v1 as pb;
use omni_proto::omni::performance::v1::attribution_service_server::AttributionService;
use omni_runtime::auth::{self, Role};
use omni_runtime::error::Violations;
use omni_runtime::{Error, Result};
use sqlx::{PgConnection, PgPool};
use tonic::{Request, Response, Status};

use crate::domain::DayRange;

const READERS: &[Role] = &[Role::Admin, Role::ChannelManager, Role::Analyst];

type Reply<T> = std::result::Result<Response<T>, Status>;

#[derive(Debug, Clone)]
pub struct Attribution {
    pool: PgPool,
    currency: String,
}

impl Attribution {
    pub fn new(pool: PgPool, currency: String) -> Self {
        Self { pool, currency }
    }

    fn money(&self, minor_units: i64) -> Option<Money> {
        Some(Money {
            minor_units,
            currency: self.currency.clone(),
        })
    }
}

fn range(raw: Option<&omni_proto::common::DateRange>) -> Result<DayRange> {
    let mut v = Violations::new();
    let day = |d: Option<&omni_proto::common::Date>| {
        d.and_then(|d| {
            NaiveDate::from_ymd_opt(
                d.year,
                u32::try_from(d.month).ok()?,
                u32::try_from(d.day).ok()?,
            )
        })
    };
    let (start, end) = match raw {
        None => {
            v.add("range", "is required");
            (None, None)
        }
        Some(r) => {
            let start = day(r.start.as_ref());
            let end = day(r.end.as_ref());
            if start.is_none() {
                v.add("range.start", "is required and must be a valid date");
            }
            if end.is_none() {
                v.add("range.end", "is required and must be a valid date");
            }
            (start, end)
        }
    };
    v.finish()?;
    match (start, end) {
        (Some(s), Some(e)) => DayRange::new(s, e).map_err(|msg| Error::invalid("range", msg)),
        _ => Err(Error::invalid("range", "is required")),
    }
}

/// What an order's latest event says about who to credit: the stores that fulfilled it (with
/// their role) and the coupons it used (code, issuing channel, discount).
#[derive(Debug, Default)]
pub struct Links {
    pub order_id: String,
    pub credits: Vec<(String, &'static str)>,
    pub coupons: Vec<(String, String, i64)>,
}

/// Replaces each order's store credits and coupons when its latest event carries them (an
/// event without any leaves those known before), in four statements at most for the batch.
/// One order appears once in `links`.
pub async fn replace_links(conn: &mut PgConnection, links: &[Links]) -> Result<()> {
    let credited: Vec<&Links> = links.iter().filter(|l| !l.credits.is_empty()).collect();
    if !credited.is_empty() {
        let ids: Vec<&str> = credited.iter().map(|l| l.order_id.as_str()).collect();
        sqlx::query("DELETE FROM order_store_credits WHERE order_id = ANY($1)")
            .bind(&ids)
            .execute(&mut *conn)
            .await?;
        let rows: Vec<(&str, &str, &str)> = credited
            .iter()
            .flat_map(|l| {
                l.credits
                    .iter()
                    .map(|(store, role)| (l.order_id.as_str(), store.as_str(), *role))
            })
            .collect();
        sqlx::query(
            "INSERT INTO order_store_credits (order_id, store_id, role) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[]) ON CONFLICT DO NOTHING",
        )
        .bind(rows.iter().map(|r| r.0).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.1).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.2).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    let couponed: Vec<&Links> = links.iter().filter(|l| !l.coupons.is_empty()).collect();
    if !couponed.is_empty() {
        let ids: Vec<&str> = couponed.iter().map(|l| l.order_id.as_str()).collect();
        sqlx::query("DELETE FROM order_coupons WHERE order_id = ANY($1)")
            .bind(&ids)
            .execute(&mut *conn)
            .await?;
        // One row per order and code (the last the event lists), as one statement may not
        // touch a row twice.
        let mut rows: BTreeMap<(&str, &str), (&str, i64)> = BTreeMap::new();
        for l in &couponed {
            for (code, issuing, discount) in &l.coupons {
                rows.insert((&l.order_id, code), (issuing, *discount));
            }
        }
        sqlx::query(
            "INSERT INTO order_coupons (order_id, code, issuing_channel_id, discount) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[]) \
             ON CONFLICT (order_id, code) DO UPDATE SET \
               issuing_channel_id = excluded.issuing_channel_id, discount = excluded.discount",
        )
        .bind(rows.keys().map(|k| k.0).collect::<Vec<_>>())
        .bind(rows.keys().map(|k| k.1).collect::<Vec<_>>())
        .bind(rows.values().map(|v| v.0).collect::<Vec<_>>())
        .bind(rows.values().map(|v| v.1).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

#[tonic::async_trait]
impl AttributionService for Attribution {
    #[tracing::instrument(name = "performance.acquisition_matrix", skip_all, err)]
    async fn get_acquisition_matrix(
        &self,
        request: Request<pb::GetAcquisitionMatrixRequest>,
    ) -> Reply<pb::GetAcquisitionMatrixResponse> {
        auth::principal(&request)?.require_any(READERS)?;
        let r = range(request.get_ref().range.as_ref())?;
        let rows: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(
            "SELECT c.acquisition_channel_id, d.channel_id, \
               (count(DISTINCT d.customer_id) FILTER (WHERE d.orders > 0))::bigint, \
               sum(d.orders)::bigint, sum(d.net_sales)::bigint \
             FROM customer_days d JOIN customers c ON c.customer_id = d.customer_id \
             WHERE d.day BETWEEN $1 AND $2 GROUP BY 1, 2 HAVING sum(d.orders) > 0 \
             ORDER BY 1, 2",
        )
        .bind(r.start)
        .bind(r.end)
        .fetch_all(&self.pool)
        .await
        .map_err(Error::from)?;
        Ok(Response::new(pb::GetAcquisitionMatrixResponse {
            cells: rows
                .into_iter()
                .map(|(acq, buy, customers, orders, net)| pb::AcquisitionCell {
                    acquisition_channel_id: acq,
                    purchase_channel_id: buy,
                    customers,
                    orders,
                    net_sales: self.money(net),
                })
                .collect(),
        }))
    }

    #[tracing::instrument(name = "performance.associate_credit", skip_all, err)]
    async fn get_associate_credit(
        &self,
        request: Request<pb::GetAssociateCreditRequest>,
    ) -> Reply<pb::GetAssociateCreditResponse> {
        auth::principal(&request)?.require_any(READERS)?;
        let r = range(request.get_ref().range.as_ref())?;
        let stores = request.get_ref().store_ids.clone();
        let rows: Vec<(String, String, String, i64, i64)> = sqlx::query_as(
            "SELECT associate_id, store_id, channel_id, sum(orders)::bigint, \
               (sum(sales) - sum(returns))::bigint FROM daily_rollups \
             WHERE day BETWEEN $1 AND $2 AND associate_id <> '' \
               AND (cardinality($3::text[]) = 0 OR store_id = ANY($3)) \
             GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        )
        .bind(r.start)
        .bind(r.end)
        .bind(&stores)
        .fetch_all(&self.pool)
        .await
        .map_err(Error::from)?;
        Ok(Response::new(pb::GetAssociateCreditResponse {
            credits: rows
                .into_iter()
                .map(
                    |(associate, store, channel, orders, net)| pb::AssociateCredit {
                        associate_id: associate,
                        store_id: store,
                        channel_id: channel,
                        orders,
                        net_sales: self.money(net),
                    },
                )
                .collect(),
        }))
    }

    #[tracing::instrument(name = "performance.store_credit", skip_all, err)]
    async fn get_store_credit(
        &self,
        request: Request<pb::GetStoreCreditRequest>,
    ) -> Reply<pb::GetStoreCreditResponse> {
        auth::principal(&request)?.require_any(READERS)?;
        let r = range(request.get_ref().range.as_ref())?;
        let stores = request.get_ref().store_ids.clone();
        let rows: Vec<(String, String, String, i64, i64)> = sqlx::query_as(
            "SELECT s.store_id, f.channel_id, s.role, count(*)::bigint, sum(f.sales)::bigint \
             FROM order_store_credits s JOIN order_facts f ON f.order_id = s.order_id \
             WHERE f.day BETWEEN $1 AND $2 AND NOT f.cancelled AND f.store_id <> s.store_id \
               AND (cardinality($3::text[]) = 0 OR s.store_id = ANY($3)) \
             GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        )
        .bind(r.start)
        .bind(r.end)
        .bind(&stores)
        .fetch_all(&self.pool)
        .await
        .map_err(Error::from)?;
        Ok(Response::new(pb::GetStoreCreditResponse {
            credits: rows
                .into_iter()
                .map(|(store, channel, role, orders, net)| pb::StoreCredit {
                    store_id: store,
                    channel_id: channel,
                    role: if role == "pickup" {
                        pb::FulfilmentRole::Pickup
                    } else {
                        pb::FulfilmentRole::ShipFromStore
                    } as i32,
                    orders,
                    net_sales: self.money(net),
                })
                .collect(),
        }))
    }

    #[tracing::instrument(name = "performance.coupon_credit", skip_all, err)]
    async fn get_coupon_credit(
        &self,
        request: Request<pb::GetCouponCreditRequest>,
    ) -> Reply<pb::GetCouponCreditResponse> {
        auth::principal(&request)?.require_any(READERS)?;
        let r = range(request.get_ref().range.as_ref())?;
        let rows: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(
            "SELECT c.issuing_channel_id, f.channel_id, count(*)::bigint, \
               sum(c.discount)::bigint, sum(f.sales)::bigint \
             FROM order_coupons c JOIN order_facts f ON f.order_id = c.order_id \
             WHERE f.day BETWEEN $1 AND $2 AND NOT f.cancelled AND c.issuing_channel_id <> '' \
             GROUP BY 1, 2 ORDER BY 1, 2",
        )
        .bind(r.start)
        .bind(r.end)
        .fetch_all(&self.pool)
        .await
        .map_err(Error::from)?;
        Ok(Response::new(pb::GetCouponCreditResponse {
            credits: rows
                .into_iter()
                .map(
                    |(issuing, redeeming, redemptions, discount, net)| pb::CouponCredit {
                        issuing_channel_id: issuing,
                        redeeming_channel_id: redeeming,
                        redemptions,
                        discount: self.money(discount),
                        net_sales: self.money(net),
                    },
                )
                .collect(),
        }))
    }
}

//! performance's gRPC layer: checks roles and scopes, validates requests, runs them against
//! [`crate::store`] and [`crate::domain`], and maps results into the contract's messages.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use omni_proto::common::{Date, DateRange, Money};
use omni_proto::omni::performance::v1 as pb;
use omni_proto::omni::performance::v1::input_service_server::InputService;
use omni_proto::omni::performance::v1::kpi_service_server::KpiService;
use omni_proto::omni::performance::v1::scorecard_service_server::ScorecardService;
use omni_runtime::auth::{self, Principal, Role};
use omni_runtime::error::Violations;
use omni_runtime::idempotency::{self, Claim};
use omni_runtime::{Error, Result, paging};
use prost::Message as _;
use sqlx::PgPool;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::domain::{self, DayRange, Figure, Kpi, Kpis, Rule, Sums};
use crate::store::{self, Dimension, Key, Selection, Source};

const INPUT_WRITERS: &[Role] = &[
    Role::Admin,
    Role::ChannelManager,
    Role::ChannelApp,
    Role::Service,
];
const INPUT_READERS: &[Role] = &[
    Role::Admin,
    Role::ChannelManager,
    Role::ChannelApp,
    Role::Service,
    Role::Analyst,
];
const KPI_READERS: &[Role] = &[
    Role::Admin,
    Role::ChannelManager,
    Role::Analyst,
    Role::StoreAssociate,
];
const ADMIN: &[Role] = &[Role::Admin];
const SCORECARD_READERS: &[Role] = &[Role::Admin, Role::ChannelManager, Role::Analyst];

type Reply<T> = std::result::Result<Response<T>, Status>;

#[derive(Debug, Clone)]
pub struct Grpc {
    pool: PgPool,
    currency: String,
    sales_changed: broadcast::Sender<()>,
    /// Reports read at once (see [`Snapshot::take`]).
    reports: Arc<Semaphore>,
}

/// One moment of the database for a report's reads, which run side by side on several
/// connections: a read-only repeatable-read transaction exports its snapshot and every read
/// imports it. Without it, an event applied between two reads made a report whose rows did
/// not add up to its total.
struct Snapshot {
    /// Holds the snapshot open until the report is read.
    _lead: sqlx::Transaction<'static, sqlx::Postgres>,
    /// The report's turn among those read at once.
    _turn: OwnedSemaphorePermit,
    id: String,
}

impl Snapshot {
    /// Opens a report's snapshot once it is the report's turn. The snapshot's connection is
    /// held while the reads wait for theirs: were every pooled connection a snapshot's, no read
    /// could run and each report would wait out the pool's acquire timeout. So at most half the
    /// pool's connections hold snapshots, and the reads always find the rest.
    async fn take(pool: &PgPool, reports: &Arc<Semaphore>) -> Result<Self> {
        let turn = reports
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::internal("the report semaphore closed"))?;
        let mut lead = pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *lead)
            .await?;
        let id: String = sqlx::query_scalar("SELECT pg_export_snapshot()")
            .fetch_one(&mut *lead)
            .await?;
        if !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            return Err(Error::internal(format!("unexpected snapshot id {id:?}")));
        }
        Ok(Self {
            _lead: lead,
            _turn: turn,
            id,
        })
    }

    /// A transaction of its own that sees exactly the snapshot.
    async fn join(&self, pool: &PgPool) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        let mut tx = pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        // The id is Postgres's own, checked to be hex digits and dashes.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SET TRANSACTION SNAPSHOT '{}'",
            self.id
        )))
        .execute(&mut *tx)
        .await?;
        Ok(tx)
    }
}

impl Grpc {
    pub fn new(pool: PgPool, currency: String, sales_changed: broadcast::Sender<()>) -> Self {
        let reports = (pool.options().get_max_connections() / 2).max(1) as usize;
        Self {
            pool,
            currency,
            sales_changed,
            reports: Arc::new(Semaphore::new(reports)),
        }
    }

    fn money(&self, minor_units: i64) -> Option<Money> {
        Some(Money {
            minor_units,
            currency: self.currency.clone(),
        })
    }
}

fn caller<T>(request: &Request<T>, roles: &[Role]) -> std::result::Result<Principal, Status> {
    let principal = auth::principal(request)?.clone();
    principal.require_any(roles)?;
    Ok(principal)
}

fn date(d: &Date) -> std::result::Result<NaiveDate, String> {
    let (Ok(month), Ok(day)) = (u32::try_from(d.month), u32::try_from(d.day)) else {
        return Err("is not a valid date".into());
    };
    NaiveDate::from_ymd_opt(d.year, month, day).ok_or_else(|| "is not a valid date".into())
}

fn date_pb(d: NaiveDate) -> Option<Date> {
    use chrono::Datelike as _;
    Some(Date {
        year: d.year(),
        month: d.month() as i32,
        day: d.day() as i32,
    })
}

fn range_pb(r: DayRange) -> Option<DateRange> {
    Some(DateRange {
        start: date_pb(r.start),
        end: date_pb(r.end),
    })
}

fn timestamp(t: DateTime<Utc>) -> Option<prost_types::Timestamp> {
    Some(omni_runtime::time::timestamp(t))
}

/// A required date range: both ends set, valid, not reversed.
fn day_range(v: &mut Violations, field: &str, raw: Option<&DateRange>) -> Option<DayRange> {
    let Some(raw) = raw else {
        v.add(field, "is required");
        return None;
    };
    let start = match &raw.start {
        None => {
            v.add(format!("{field}.start"), "is required");
            None
        }
        Some(d) => v.check(&format!("{field}.start"), date(d)),
    };
    let end = match &raw.end {
        None => {
            v.add(format!("{field}.end"), "is required");
            None
        }
        Some(d) => v.check(&format!("{field}.end"), date(d)),
    };
    let (start, end) = (start?, end?);
    v.check(field, DayRange::new(start, end))
}

fn source(v: &mut Violations, raw: i32) -> Source {
    match pb::KpiSource::try_from(raw) {
        Ok(pb::KpiSource::Unspecified | pb::KpiSource::Rollups) => Source::Rollups,
        Ok(pb::KpiSource::RawFacts) => Source::RawFacts,
        Err(_) => {
            v.add("source", "is not a KPI source");
            Source::Rollups
        }
    }
}

fn channel_ids(v: &mut Violations, field: &str, ids: &[String]) -> Vec<String> {
    for (i, id) in ids.iter().enumerate() {
        if let Err(e) = domain::check_channel_id(id) {
            v.add(format!("{field}[{i}]"), e);
        }
    }
    let mut unique: Vec<String> = ids.to_vec();
    unique.sort();
    unique.dedup();
    unique
}

impl Grpc {
    /// `INVALID_ARGUMENT` naming every channel this service has never heard of.
    async fn require_known(&self, field: &str, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let unknown = store::unknown_channels(&self.pool, ids).await?;
        let mut v = Violations::new();
        for id in unknown {
            v.add(field, format!("unknown channel {id}"));
        }
        v.finish()
    }

    /// Every row's KPIs over one period; shares are of every channel's figures together.
    /// Rows absent from a period get the KPIs of nothing (`Kpis` for empty sums against all).
    /// Every read is made on `snapshot` (see [`Snapshot`]), so the rows add up to the total.
    async fn kpis(
        &self,
        snapshot: &Snapshot,
        sel: &Selection,
    ) -> Result<(BTreeMap<Key, Kpis>, Kpis, Kpis)> {
        let total_sel = Selection {
            dimension: Dimension::Total,
            ..sel.clone()
        };
        let all_sel = Selection {
            dimension: Dimension::Total,
            channels: Vec::new(),
            stores: Vec::new(),
            ..sel.clone()
        };
        let filtered = !sel.channels.is_empty() || !sel.stores.is_empty();
        let sums = async |sel: &Selection| -> Result<BTreeMap<Key, Sums>> {
            let mut tx = snapshot.join(&self.pool).await?;
            store::report_sums(&mut tx, sel).await
        };
        // Independent reads: run them side by side on the pool, on one snapshot.
        let (rows, total, all) = tokio::try_join!(sums(sel), sums(&total_sel), async {
            if filtered {
                sums(&all_sel).await.map(Some)
            } else {
                Ok(None)
            }
        },)?;
        let total = single(total);
        let all = all.map_or_else(|| total.clone(), single);
        let rows = rows
            .into_iter()
            .map(|(k, s)| (k, domain::derive(&s, &all)))
            .collect();
        Ok((
            rows,
            domain::derive(&total, &all),
            domain::derive(&Sums::default(), &all),
        ))
    }

    fn values(&self, k: &Kpis) -> pb::KpiValues {
        let money = |v: i64| self.money(v);
        let opt = |v: Option<i64>| v.and_then(|v| self.money(v));
        pb::KpiValues {
            net_sales: money(k.net_sales),
            gross_sales: money(k.gross_sales),
            returns: money(k.returns),
            cost_of_goods_sold: money(k.cost_of_goods_sold),
            gross_margin: money(k.gross_margin),
            sales_share: k.sales_share,
            orders: k.orders,
            average_order_value: opt(k.average_order_value),
            new_customers: k.new_customers,
            acquisition_share: k.acquisition_share,
            customer_acquisition_cost: opt(k.customer_acquisition_cost),
            visits: k.visits,
            conversion_rate: k.conversion_rate,
            customers: k.customers,
            repeat_purchase_rate: k.repeat_purchase_rate,
            new_customer_repeat_rate: k.new_customer_repeat_rate,
            repurchase_share: k.repurchase_share,
            return_rate: k.return_rate,
            customer_lifetime_value: opt(k.customer_lifetime_value),
            inventory_turnover: k.inventory_turnover,
            average_inventory_value: opt(k.average_inventory_value),
            pickup_orders: k.pickup_orders,
            pickup_sla_hit_rate: k.pickup_sla_hit_rate,
            impressions: k.impressions,
            interactions: k.interactions,
            interaction_rate: k.interaction_rate,
            reach: k.reach,
            marketing_spend: money(k.marketing_spend),
            operations_spend: money(k.operations_spend),
            channel_roi: k.channel_roi,
            satisfaction: k.satisfaction,
            nps: k.nps,
            feedback_count: k.feedback_count,
        }
    }

    fn figure(&self, kpi: i32, f: Figure) -> pb::KpiFigure {
        use pb::kpi_figure::Figure as F;
        pb::KpiFigure {
            kpi,
            figure: match f {
                Figure::Money(v) => self.money(v).map(F::Amount),
                Figure::Count(v) => Some(F::Count(v)),
                Figure::Ratio(v) => Some(F::Ratio(v)),
                Figure::Undefined => None,
            },
        }
    }
}

fn single(rows: BTreeMap<Key, Sums>) -> Sums {
    rows.into_values().next().unwrap_or_default()
}

fn kpi_of(raw: i32) -> Option<Kpi> {
    use pb::Kpi as P;
    Some(match P::try_from(raw).ok()? {
        P::Unspecified => return None,
        P::NetSales => Kpi::NetSales,
        P::SalesShare => Kpi::SalesShare,
        P::Orders => Kpi::Orders,
        P::AverageOrderValue => Kpi::AverageOrderValue,
        P::NewCustomers => Kpi::NewCustomers,
        P::AcquisitionShare => Kpi::AcquisitionShare,
        P::CustomerAcquisitionCost => Kpi::CustomerAcquisitionCost,
        P::ConversionRate => Kpi::ConversionRate,
        P::RepeatPurchaseRate => Kpi::RepeatPurchaseRate,
        P::NewCustomerRepeatRate => Kpi::NewCustomerRepeatRate,
        P::RepurchaseShare => Kpi::RepurchaseShare,
        P::ReturnRate => Kpi::ReturnRate,
        P::CustomerLifetimeValue => Kpi::CustomerLifetimeValue,
        P::InventoryTurnover => Kpi::InventoryTurnover,
        P::PickupSlaHitRate => Kpi::PickupSlaHitRate,
        P::InteractionRate => Kpi::InteractionRate,
        P::Reach => Kpi::Reach,
        P::GrossMargin => Kpi::GrossMargin,
        P::ChannelRoi => Kpi::ChannelRoi,
        P::Satisfaction => Kpi::Satisfaction,
        P::Nps => Kpi::Nps,
    })
}

fn traffic_pb(t: store::TrafficRow) -> pb::Traffic {
    pb::Traffic {
        channel_id: t.channel_id,
        day: date_pb(t.day),
        visits: t.visits,
        impressions: t.impressions,
        interactions: t.interactions,
        reach: t.reach,
        recorded_at: timestamp(t.recorded_at),
    }
}

impl Grpc {
    fn spend_pb(&self, s: store::SpendRow) -> pb::Spend {
        pb::Spend {
            channel_id: s.channel_id,
            day: date_pb(s.day),
            category: if s.category == "marketing" {
                pb::SpendCategory::Marketing as i32
            } else {
                pb::SpendCategory::ChannelOperations as i32
            },
            amount: self.money(s.amount),
            recorded_at: timestamp(s.recorded_at),
        }
    }
}

#[tonic::async_trait]
impl InputService for Grpc {
    #[tracing::instrument(name = "performance.record_traffic", skip_all, err)]
    async fn record_traffic(
        &self,
        request: Request<pb::RecordTrafficRequest>,
    ) -> Reply<pb::RecordTrafficResponse> {
        let principal = caller(&request, INPUT_WRITERS)?;
        let t = request.into_inner().traffic.unwrap_or_default();
        let mut v = Violations::new();
        v.check(
            "traffic.channel_id",
            domain::check_channel_id(&t.channel_id),
        );
        let day = match &t.day {
            None => {
                v.add("traffic.day", "is required");
                None
            }
            Some(d) => v.check("traffic.day", date(d)),
        };
        for (field, value) in [
            ("traffic.visits", t.visits),
            ("traffic.impressions", t.impressions),
            ("traffic.interactions", t.interactions),
            ("traffic.reach", t.reach),
        ] {
            if value < 0 {
                v.add(field, "must not be negative");
            }
        }
        v.finish()?;
        let Some(day) = day else {
            return Err(Error::invalid("traffic.day", "is required").into());
        };
        // A caller limited to channels (an app, a channel's manager) records its own.
        principal.require_channel(&t.channel_id)?;
        self.require_known("traffic.channel_id", std::slice::from_ref(&t.channel_id))
            .await?;
        let row = store::record_traffic(
            &self.pool,
            &store::TrafficRow {
                channel_id: t.channel_id,
                day,
                visits: t.visits,
                impressions: t.impressions,
                interactions: t.interactions,
                reach: t.reach,
                recorded_at: Utc::now(),
            },
        )
        .await?;
        Ok(Response::new(pb::RecordTrafficResponse {
            traffic: Some(traffic_pb(row)),
        }))
    }

    #[tracing::instrument(name = "performance.record_spend", skip_all, err)]
    async fn record_spend(
        &self,
        request: Request<pb::RecordSpendRequest>,
    ) -> Reply<pb::RecordSpendResponse> {
        let principal = caller(&request, INPUT_WRITERS)?;
        let s = request.into_inner().spend.unwrap_or_default();
        let mut v = Violations::new();
        v.check("spend.channel_id", domain::check_channel_id(&s.channel_id));
        let day = match &s.day {
            None => {
                v.add("spend.day", "is required");
                None
            }
            Some(d) => v.check("spend.day", date(d)),
        };
        let category = match pb::SpendCategory::try_from(s.category) {
            Ok(pb::SpendCategory::Marketing) => "marketing",
            Ok(pb::SpendCategory::ChannelOperations) => "operations",
            _ => {
                v.add("spend.category", "must be MARKETING or CHANNEL_OPERATIONS");
                ""
            }
        };
        let amount = match &s.amount {
            None => {
                v.add("spend.amount", "is required");
                0
            }
            Some(m) if m.currency != self.currency => {
                v.add(
                    "spend.amount.currency",
                    format!("must be the reporting currency {}", self.currency),
                );
                0
            }
            Some(m) if m.minor_units < 0 => {
                v.add("spend.amount", "must not be negative");
                0
            }
            Some(m) => m.minor_units,
        };
        v.finish()?;
        let Some(day) = day else {
            return Err(Error::invalid("spend.day", "is required").into());
        };
        principal.require_channel(&s.channel_id)?;
        self.require_known("spend.channel_id", std::slice::from_ref(&s.channel_id))
            .await?;
        let row = store::record_spend(
            &self.pool,
            &store::SpendRow {
                channel_id: s.channel_id,
                day,
                category: category.to_owned(),
                amount,
                recorded_at: Utc::now(),
            },
        )
        .await?;
        Ok(Response::new(pb::RecordSpendResponse {
            spend: Some(self.spend_pb(row)),
        }))
    }

    #[tracing::instrument(name = "performance.list_traffic", skip_all, err)]
    async fn list_traffic(
        &self,
        request: Request<pb::ListTrafficRequest>,
    ) -> Reply<pb::ListTrafficResponse> {
        let principal = caller(&request, INPUT_READERS)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        let range = day_range(&mut v, "days", r.days.as_ref());
        let channels = channel_ids(&mut v, "channel_ids", &r.channel_ids);
        let size = v.check(
            "page_size",
            paging::page_size(r.page_size).map_err(|e| e.to_string()),
        );
        let after = v.check(
            "page_token",
            paging::decode_token(&r.page_token)
                .map_err(|e| e.to_string())
                .and_then(|t| match t {
                    None => Ok(None),
                    Some(t) => t
                        .split_once('/')
                        .and_then(|(d, c)| Some((d.parse().ok()?, c.to_owned())))
                        .map(Some)
                        .ok_or_else(|| "is not a token this service issued".to_owned()),
                }),
        );
        v.finish()?;
        let channels = principal.scope.channels_within(&channels)?;
        let (Some(range), Some(size), Some(after)) = (range, size, after) else {
            return Err(Error::invalid("days", "is required").into());
        };
        let rows = store::list_traffic(&self.pool, range, &channels, after, size).await?;
        let last = rows.last().map(|t| format!("{}/{}", t.day, t.channel_id));
        Ok(Response::new(pb::ListTrafficResponse {
            next_page_token: paging::next_token(rows.len(), size, last),
            traffic: rows.into_iter().map(traffic_pb).collect(),
        }))
    }

    #[tracing::instrument(name = "performance.list_spend", skip_all, err)]
    async fn list_spend(
        &self,
        request: Request<pb::ListSpendRequest>,
    ) -> Reply<pb::ListSpendResponse> {
        let principal = caller(&request, INPUT_READERS)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        let range = day_range(&mut v, "days", r.days.as_ref());
        let channels = channel_ids(&mut v, "channel_ids", &r.channel_ids);
        let category = match pb::SpendCategory::try_from(r.category) {
            Ok(pb::SpendCategory::Unspecified) => None,
            Ok(pb::SpendCategory::Marketing) => Some("marketing"),
            Ok(pb::SpendCategory::ChannelOperations) => Some("operations"),
            Err(_) => {
                v.add("category", "is not a spend category");
                None
            }
        };
        let size = v.check(
            "page_size",
            paging::page_size(r.page_size).map_err(|e| e.to_string()),
        );
        let after = v.check(
            "page_token",
            paging::decode_token(&r.page_token)
                .map_err(|e| e.to_string())
                .and_then(|t| match t {
                    None => Ok(None),
                    Some(t) => {
                        let parts: Vec<&str> = t.splitn(3, '/').collect();
                        match parts.as_slice() {
                            [d, c, k] => d
                                .parse()
                                .map(|d| Some((d, (*c).to_owned(), (*k).to_owned())))
                                .map_err(|_| "is not a token this service issued".to_owned()),
                            _ => Err("is not a token this service issued".to_owned()),
                        }
                    }
                }),
        );
        v.finish()?;
        let channels = principal.scope.channels_within(&channels)?;
        let (Some(range), Some(size), Some(after)) = (range, size, after) else {
            return Err(Error::invalid("days", "is required").into());
        };
        let rows = store::list_spend(&self.pool, range, &channels, category, after, size).await?;
        let last = rows
            .last()
            .map(|s| format!("{}/{}/{}", s.day, s.channel_id, s.category));
        Ok(Response::new(pb::ListSpendResponse {
            next_page_token: paging::next_token(rows.len(), size, last),
            spend: rows.into_iter().map(|s| self.spend_pb(s)).collect(),
        }))
    }
}

type LiveStream =
    Pin<Box<dyn Stream<Item = std::result::Result<pb::WatchLiveSalesResponse, Status>> + Send>>;

#[tonic::async_trait]
impl KpiService for Grpc {
    #[tracing::instrument(name = "performance.kpi_report", skip_all, err)]
    async fn get_kpi_report(
        &self,
        request: Request<pb::GetKpiReportRequest>,
    ) -> Reply<pb::GetKpiReportResponse> {
        let principal = caller(&request, KPI_READERS)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        let range = day_range(&mut v, "range", r.range.as_ref());
        let dimension = match pb::KpiDimension::try_from(r.dimension) {
            Ok(pb::KpiDimension::Unspecified | pb::KpiDimension::Channel) => Dimension::Channel,
            Ok(pb::KpiDimension::Store) => Dimension::Store,
            Ok(pb::KpiDimension::Associate) => Dimension::Associate,
            Err(_) => {
                v.add("dimension", "is not a KPI dimension");
                Dimension::Channel
            }
        };
        let source = source(&mut v, r.source);
        let channels = channel_ids(&mut v, "channel_ids", &r.channel_ids);
        let mut stores: Vec<String> = r.store_ids.clone();
        stores.sort();
        stores.dedup();
        if stores.iter().any(|s| s.is_empty() || s.len() > 64) {
            v.add("store_ids", "each 1 to 64 characters");
        }
        v.finish()?;
        let Some(range) = range else {
            return Err(Error::invalid("range", "is required").into());
        };
        // A caller limited to stores reports on those stores (whatever its role), one limited
        // to channels only on those channels.
        let channels = if principal.scope.stores.is_empty() {
            principal.scope.channels_within(&channels)?
        } else {
            channels
        };
        if !principal.scope.stores.is_empty() {
            if stores.is_empty() {
                stores = principal.scope.stores.clone();
            }
            for s in &stores {
                principal.require_store(s)?;
            }
        } else if !principal.has_any(&[Role::Admin, Role::ChannelManager, Role::Analyst]) {
            return Err(
                Error::permission_denied("store associates report on their own stores").into(),
            );
        }
        self.require_known("channel_ids", &channels).await?;
        let sel = Selection {
            range,
            dimension,
            channels,
            stores,
            source,
        };
        let previous_range = range.previous();
        let previous_sel = Selection {
            range: previous_range,
            ..sel.clone()
        };
        let snapshot = Snapshot::take(&self.pool, &self.reports).await?;
        let ((current, current_total, current_empty), (previous, previous_total, previous_empty)) =
            tokio::try_join!(
                self.kpis(&snapshot, &sel),
                self.kpis(&snapshot, &previous_sel)
            )?;
        let keys: BTreeSet<&Key> = current.keys().chain(previous.keys()).collect();
        let rows = keys
            .into_iter()
            .map(|k| pb::KpiRow {
                channel_id: k.0.clone(),
                store_id: k.1.clone(),
                associate_id: k.2.clone(),
                current: Some(self.values(current.get(k).unwrap_or(&current_empty))),
                previous: Some(self.values(previous.get(k).unwrap_or(&previous_empty))),
            })
            .collect();
        Ok(Response::new(pb::GetKpiReportResponse {
            range: range_pb(range),
            previous_range: range_pb(previous_range),
            rows,
            total: Some(pb::KpiRow {
                current: Some(self.values(&current_total)),
                previous: Some(self.values(&previous_total)),
                ..Default::default()
            }),
            computed_at: timestamp(Utc::now()),
        }))
    }

    #[tracing::instrument(name = "performance.clv_report", skip_all, err)]
    async fn get_clv_report(
        &self,
        request: Request<pb::GetClvReportRequest>,
    ) -> Reply<pb::GetClvReportResponse> {
        let principal = caller(&request, SCORECARD_READERS)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        let acquired = day_range(&mut v, "acquired", r.acquired.as_ref());
        let channels = channel_ids(&mut v, "channel_ids", &r.channel_ids);
        let source = source(&mut v, r.source);
        v.finish()?;
        let channels = principal.scope.channels_within(&channels)?;
        let Some(acquired) = acquired else {
            return Err(Error::invalid("acquired", "is required").into());
        };
        self.require_known("channel_ids", &channels).await?;
        let (cohorts, groups) = store::clv(&self.pool, acquired, &channels, source).await?;
        let group = |multi: bool| {
            let g = groups
                .iter()
                .find(|g| g.multi_channel == multi)
                .cloned()
                .unwrap_or_default();
            pb::ClvGroup {
                customers: g.customers,
                clv: domain::per(g.net_sales, g.customers).and_then(|v| self.money(v)),
                average_orders: domain::ratio(g.orders, g.customers).unwrap_or(0.0),
            }
        };
        Ok(Response::new(pb::GetClvReportResponse {
            cohorts: cohorts
                .into_iter()
                .map(|c| pb::ClvCohort {
                    month: date_pb(c.month),
                    acquisition_channel_id: c.channel_id,
                    customers: c.customers,
                    clv: domain::per(c.net_sales, c.customers).and_then(|v| self.money(v)),
                })
                .collect(),
            multi_channel: Some(group(true)),
            single_channel: Some(group(false)),
        }))
    }

    #[tracing::instrument(name = "performance.cohort_retention", skip_all, err)]
    async fn get_cohort_retention(
        &self,
        request: Request<pb::GetCohortRetentionRequest>,
    ) -> Reply<pb::GetCohortRetentionResponse> {
        let principal = caller(&request, SCORECARD_READERS)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        let acquired = day_range(&mut v, "acquired", r.acquired.as_ref());
        let channels = channel_ids(&mut v, "channel_ids", &r.channel_ids);
        let source = source(&mut v, r.source);
        let months = match r.months {
            0 => 12,
            m if (1..=60).contains(&m) => m,
            _ => {
                v.add("months", "0 (12) to 60");
                12
            }
        };
        v.finish()?;
        let channels = principal.scope.channels_within(&channels)?;
        let Some(acquired) = acquired else {
            return Err(Error::invalid("acquired", "is required").into());
        };
        self.require_known("channel_ids", &channels).await?;
        let rows = store::retention(&self.pool, acquired, &channels, months, source).await?;
        let mut cohorts: Vec<pb::RetentionCohort> = Vec::new();
        for row in rows {
            let month = date_pb(row.month);
            let fresh = cohorts
                .last()
                .is_none_or(|c| c.month != month || c.acquisition_channel_id != row.channel_id);
            if fresh {
                cohorts.push(pb::RetentionCohort {
                    month,
                    acquisition_channel_id: row.channel_id.clone(),
                    customers: row.customers,
                    retention: vec![0.0; usize::try_from(months).unwrap_or(12)],
                });
            }
            if let (Some(cohort), Ok(index)) =
                (cohorts.last_mut(), usize::try_from(row.month_offset - 1))
                && let Some(slot) = cohort.retention.get_mut(index)
            {
                *slot = domain::ratio(row.buying, row.customers).unwrap_or(0.0);
            }
        }
        Ok(Response::new(pb::GetCohortRetentionResponse { cohorts }))
    }

    type WatchLiveSalesStream = LiveStream;

    #[tracing::instrument(name = "performance.watch_live_sales", skip_all, err)]
    async fn watch_live_sales(
        &self,
        request: Request<pb::WatchLiveSalesRequest>,
    ) -> Reply<Self::WatchLiveSalesStream> {
        let principal = caller(&request, KPI_READERS)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        let channels = channel_ids(&mut v, "channel_ids", &r.channel_ids);
        v.finish()?;
        let channels = principal.scope.channels_within(&channels)?;
        self.require_known("channel_ids", &channels).await?;
        let mut changes = self.sales_changed.subscribe();
        let this = self.clone();
        let first = this.live(&channels).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tokio::spawn(async move {
            let mut last = first.clone();
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
            loop {
                // Events commit just after they signal; the ticker also catches changes
                // applied by other instances of this service.
                let woke = tokio::select! {
                    () = tx.closed() => return,
                    changed = changes.recv() => !matches!(changed, Err(broadcast::error::RecvError::Closed)),
                    () = tokio::time::sleep(Duration::from_millis(500)) => true,
                };
                if !woke {
                    return;
                }
                match this.live(&channels).await {
                    Ok(now) if now.channels != last.channels || now.day != last.day => {
                        last = now.clone();
                        if tx.send(Ok(now)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = tx.send(Err(Status::from(e))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    #[tracing::instrument(name = "performance.rebuild_rollups", skip_all, err)]
    async fn rebuild_rollups(
        &self,
        request: Request<pb::RebuildRollupsRequest>,
    ) -> Reply<pb::RebuildRollupsResponse> {
        caller(&request, ADMIN)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        let range = r
            .range
            .as_ref()
            .and_then(|range| day_range(&mut v, "range", Some(range)));
        v.finish()?;
        let rebuilt = store::rebuild(&self.pool, range).await?;
        tracing::info!(
            facts = rebuilt.facts_scanned,
            written = rebuilt.rows_written,
            changed = rebuilt.rows_changed,
            "rollups rebuilt"
        );
        Ok(Response::new(pb::RebuildRollupsResponse {
            facts_scanned: rebuilt.facts_scanned,
            rollup_rows_written: rebuilt.rows_written,
            rollup_rows_changed: rebuilt.rows_changed,
        }))
    }
}

impl Grpc {
    /// Today's (UTC) sales per channel, from the rollups.
    async fn live(&self, channels: &[String]) -> Result<pb::WatchLiveSalesResponse> {
        let today = Utc::now().date_naive();
        let rows = store::live_sales(&self.pool, today, channels).await?;
        let total_net: i64 = rows.iter().map(|r| r.net_sales).sum();
        let total_orders: i64 = rows.iter().map(|r| r.orders).sum();
        Ok(pb::WatchLiveSalesResponse {
            day: date_pb(today),
            channels: rows
                .into_iter()
                .map(|r| pb::LiveChannelSales {
                    channel_id: r.channel_id,
                    orders: r.orders,
                    units: r.units,
                    net_sales: self.money(r.net_sales),
                    last_order_at: r.last_order_at.and_then(timestamp),
                })
                .collect(),
            total_net_sales: self.money(total_net),
            total_orders,
            as_of: timestamp(Utc::now()),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Scorecards

impl Grpc {
    /// Checks a scorecard's conditions and payout rules, naming each bad field.
    async fn check_scorecard(&self, s: &pb::Scorecard) -> Result<()> {
        use pb::scorecard_condition::Threshold;
        let mut v = Violations::new();
        if s.name.trim().is_empty() || s.name.len() > 200 {
            v.add("scorecard.name", "1 to 200 characters");
        }
        v.check(
            "scorecard.channel_id",
            domain::check_channel_id(&s.channel_id),
        );
        if s.conditions.is_empty() {
            v.add("scorecard.conditions", "at least one condition");
        }
        let mut ids = HashSet::new();
        let mut channels = vec![s.channel_id.clone()];
        for (i, c) in s.conditions.iter().enumerate() {
            let f = |name: &str| format!("scorecard.conditions[{i}].{name}");
            if c.id.trim().is_empty() || c.id.len() > 64 {
                v.add(f("id"), "1 to 64 characters");
            } else if !ids.insert(c.id.as_str()) {
                v.add(f("id"), "must be unique within the scorecard");
            }
            let kpi = kpi_of(c.kpi);
            if kpi.is_none() {
                v.add(f("kpi"), "is not a known KPI");
            }
            for (j, id) in c.channel_ids.iter().enumerate() {
                if let Err(e) = domain::check_channel_id(id) {
                    v.add(format!("scorecard.conditions[{i}].channel_ids[{j}]"), e);
                }
            }
            channels.extend(c.channel_ids.iter().cloned());
            if omni_proto::common::ChannelKind::try_from(c.channel_kind).is_err() {
                v.add(f("channel_kind"), "is not a channel kind");
            }
            if c.channel_kind != 0 && !c.channel_ids.is_empty() {
                v.add(
                    f("channel_kind"),
                    "give channel_ids or channel_kind, not both",
                );
            }
            match (pb::Comparison::try_from(c.comparison), &c.threshold) {
                (
                    Ok(pb::Comparison::IncreaseByAtLeast | pb::Comparison::DecreaseByAtLeast),
                    Some(Threshold::ChangeBps(bps)),
                ) => {
                    if *bps < 0 {
                        v.add(f("change_bps"), "must not be negative");
                    }
                }
                (Ok(pb::Comparison::IncreaseByAtLeast | pb::Comparison::DecreaseByAtLeast), _) => {
                    v.add(
                        f("change_bps"),
                        "is required for INCREASE/DECREASE comparisons",
                    );
                }
                (
                    Ok(pb::Comparison::AtLeast | pb::Comparison::AtMost),
                    Some(Threshold::Amount(m)),
                ) => {
                    if kpi.is_some_and(|k| !k.is_money()) {
                        v.add(f("amount"), "the KPI is not money: give value");
                    }
                    if m.currency != self.currency {
                        v.add(
                            f("amount.currency"),
                            format!("must be the reporting currency {}", self.currency),
                        );
                    }
                }
                (
                    Ok(pb::Comparison::AtLeast | pb::Comparison::AtMost),
                    Some(Threshold::Value(x)),
                ) => {
                    if kpi.is_some_and(Kpi::is_money) {
                        v.add(f("value"), "the KPI is money: give amount");
                    }
                    if !x.is_finite() {
                        v.add(f("value"), "must be a finite number");
                    }
                }
                (Ok(pb::Comparison::AtLeast | pb::Comparison::AtMost), _) => {
                    v.add(
                        f("threshold"),
                        "amount or value is required for AT_LEAST/AT_MOST",
                    );
                }
                _ => v.add(f("comparison"), "is required"),
            }
        }
        if s.payout_rules.is_empty() {
            v.add("scorecard.payout_rules", "at least one payout rule");
        }
        for (i, rule) in s.payout_rules.iter().enumerate() {
            let f = |name: &str| format!("scorecard.payout_rules[{i}].{name}");
            if rule.condition_ids.is_empty() {
                v.add(f("condition_ids"), "at least one condition");
            }
            for id in &rule.condition_ids {
                if !s.conditions.iter().any(|c| &c.id == id) {
                    v.add(f("condition_ids"), format!("no condition {id}"));
                }
            }
            if rule.min_met < 0 || rule.min_met as usize > rule.condition_ids.len() {
                v.add(f("min_met"), "0 (all) to the number of conditions");
            }
            if !(0..=10_000).contains(&rule.payout_bps) {
                v.add(f("payout_bps"), "0 to 10000");
            }
        }
        v.finish()?;
        channels.sort();
        channels.dedup();
        let unknown = store::unknown_channels(&self.pool, &channels).await?;
        if !unknown.is_empty() {
            let mut v = Violations::new();
            if unknown.contains(&s.channel_id) {
                v.add(
                    "scorecard.channel_id",
                    format!("unknown channel {}", s.channel_id),
                );
            }
            for (i, c) in s.conditions.iter().enumerate() {
                for id in c.channel_ids.iter().filter(|id| unknown.contains(id)) {
                    v.add(
                        format!("scorecard.conditions[{i}].channel_ids"),
                        format!("unknown channel {id}"),
                    );
                }
            }
            v.finish()?;
        }
        Ok(())
    }

    async fn load_scorecard(&self, id: &str) -> Result<pb::Scorecard> {
        let uuid =
            Uuid::parse_str(id).map_err(|_| Error::invalid("scorecard_id", "is not an id"))?;
        let row = store::scorecard(&self.pool, uuid)
            .await?
            .ok_or_else(|| Error::not_found(format!("scorecard {id}")))?;
        scorecard_pb(row)
    }
}

fn scorecard_pb(row: store::ScorecardRow) -> Result<pb::Scorecard> {
    let mut s = pb::Scorecard::decode(row.body.as_slice())
        .map_err(|e| Error::Internal(anyhow::anyhow!("stored scorecard does not decode: {e}")))?;
    s.id = row.id.to_string();
    s.version = row.version;
    s.created_at = timestamp(row.created_at);
    s.updated_at = timestamp(row.updated_at);
    Ok(s)
}

/// What is stored of a scorecard: its definition without id, version and times.
fn body(s: &pb::Scorecard) -> Vec<u8> {
    pb::Scorecard {
        id: String::new(),
        version: 0,
        created_at: None,
        updated_at: None,
        ..s.clone()
    }
    .encode_to_vec()
}

#[tonic::async_trait]
impl ScorecardService for Grpc {
    #[tracing::instrument(name = "performance.create_scorecard", skip_all, err)]
    async fn create_scorecard(
        &self,
        request: Request<pb::CreateScorecardRequest>,
    ) -> Reply<pb::CreateScorecardResponse> {
        let who = caller(&request, ADMIN)?;
        let r = request.into_inner();
        let s = r.scorecard.clone().unwrap_or_default();
        self.check_scorecard(&s).await?;
        let mut tx = self.pool.begin().await.map_err(Error::from)?;
        let scope = "performance.create_scorecard";
        if let Claim::Replay(reply) = idempotency::claim(
            &mut tx,
            scope,
            &who.id,
            "idempotency_key",
            &r.idempotency_key,
            &r,
        )
        .await?
        {
            return Ok(Response::new(reply));
        }
        let row =
            store::insert_scorecard(&mut tx, Uuid::now_v7(), &s.channel_id, &body(&s)).await?;
        let reply = pb::CreateScorecardResponse {
            scorecard: Some(scorecard_pb(row)?),
        };
        idempotency::complete(&mut tx, scope, &who.id, &r.idempotency_key, &reply).await?;
        tx.commit().await.map_err(Error::from)?;
        Ok(Response::new(reply))
    }

    #[tracing::instrument(name = "performance.update_scorecard", skip_all, err)]
    async fn update_scorecard(
        &self,
        request: Request<pb::UpdateScorecardRequest>,
    ) -> Reply<pb::UpdateScorecardResponse> {
        caller(&request, ADMIN)?;
        let s = request.into_inner().scorecard.unwrap_or_default();
        let id =
            Uuid::parse_str(&s.id).map_err(|_| Error::invalid("scorecard.id", "is not an id"))?;
        self.check_scorecard(&s).await?;
        let row =
            store::update_scorecard(&self.pool, id, s.version, &s.channel_id, &body(&s)).await?;
        let Some(row) = row else {
            // Either it does not exist or the version is stale.
            self.load_scorecard(&s.id).await?;
            return Err(Error::Aborted(
                "the scorecard changed since it was read; read it again".into(),
            )
            .into());
        };
        Ok(Response::new(pb::UpdateScorecardResponse {
            scorecard: Some(scorecard_pb(row)?),
        }))
    }

    async fn get_scorecard(
        &self,
        request: Request<pb::GetScorecardRequest>,
    ) -> Reply<pb::GetScorecardResponse> {
        caller(&request, SCORECARD_READERS)?;
        let id = request.into_inner().scorecard_id;
        Ok(Response::new(pb::GetScorecardResponse {
            scorecard: Some(self.load_scorecard(&id).await?),
        }))
    }

    async fn list_scorecards(
        &self,
        request: Request<pb::ListScorecardsRequest>,
    ) -> Reply<pb::ListScorecardsResponse> {
        caller(&request, SCORECARD_READERS)?;
        let r = request.into_inner();
        let size = paging::page_size(r.page_size)?;
        let after =
            match paging::decode_token(&r.page_token)? {
                None => None,
                Some(t) => Some(Uuid::parse_str(&t).map_err(|_| {
                    Error::invalid("page_token", "is not a token this service issued")
                })?),
            };
        let rows = store::list_scorecards(&self.pool, &r.channel_id, after, size).await?;
        let last = rows.last().map(|r| r.id.to_string());
        let count = rows.len();
        let scorecards = rows
            .into_iter()
            .map(scorecard_pb)
            .collect::<Result<Vec<_>>>()?;
        Ok(Response::new(pb::ListScorecardsResponse {
            scorecards,
            next_page_token: paging::next_token(count, size, last),
        }))
    }

    #[tracing::instrument(name = "performance.evaluate_scorecard", skip_all, err)]
    async fn evaluate_scorecard(
        &self,
        request: Request<pb::EvaluateScorecardRequest>,
    ) -> Reply<pb::EvaluateScorecardResponse> {
        use pb::scorecard_condition::Threshold;
        caller(&request, SCORECARD_READERS)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        let range = day_range(&mut v, "range", r.range.as_ref());
        let baseline = r
            .baseline_range
            .as_ref()
            .and_then(|b| day_range(&mut v, "baseline_range", Some(b)));
        v.finish()?;
        let Some(range) = range else {
            return Err(Error::invalid("range", "is required").into());
        };
        let baseline = baseline.unwrap_or_else(|| range.previous());
        let scorecard = self.load_scorecard(&r.scorecard_id).await?;
        let mut results = Vec::new();
        let mut met_ids = Vec::new();
        for c in &scorecard.conditions {
            let Some(kpi) = kpi_of(c.kpi) else {
                return Err(Error::internal("a stored scorecard names an unknown KPI").into());
            };
            let channels = if c.channel_kind != 0 {
                let of_kind = store::channels_of_kind(&self.pool, c.channel_kind).await?;
                if of_kind.is_empty() {
                    // No channel of the kind: nothing matches, not everything.
                    vec![String::new()]
                } else {
                    of_kind
                }
            } else {
                c.channel_ids.clone()
            };
            let at = |range: DayRange| Selection {
                range,
                dimension: Dimension::Total,
                channels: channels.clone(),
                stores: Vec::new(),
                source: Source::Rollups,
            };
            let (now_sel, before_sel) = (at(range), at(baseline));
            let snapshot = Snapshot::take(&self.pool, &self.reports).await?;
            let ((_, current, _), (_, before, _)) = tokio::try_join!(
                self.kpis(&snapshot, &now_sel),
                self.kpis(&snapshot, &before_sel)
            )?;
            let (now_fig, base_fig) = (kpi.figure(&current), kpi.figure(&before));
            let rule = match (pb::Comparison::try_from(c.comparison), &c.threshold) {
                (Ok(pb::Comparison::IncreaseByAtLeast), Some(Threshold::ChangeBps(b))) => {
                    Rule::IncreaseBy(*b)
                }
                (Ok(pb::Comparison::DecreaseByAtLeast), Some(Threshold::ChangeBps(b))) => {
                    Rule::DecreaseBy(*b)
                }
                (Ok(pb::Comparison::AtLeast), Some(Threshold::Amount(m))) => {
                    Rule::AtLeast(m.minor_units as f64)
                }
                (Ok(pb::Comparison::AtLeast), Some(Threshold::Value(x))) => Rule::AtLeast(*x),
                (Ok(pb::Comparison::AtMost), Some(Threshold::Amount(m))) => {
                    Rule::AtMost(m.minor_units as f64)
                }
                (Ok(pb::Comparison::AtMost), Some(Threshold::Value(x))) => Rule::AtMost(*x),
                _ => {
                    return Err(Error::internal("a stored scorecard condition is malformed").into());
                }
            };
            let met = domain::met(rule, now_fig, base_fig);
            if met {
                met_ids.push(c.id.clone());
            }
            results.push(pb::ConditionResult {
                condition_id: c.id.clone(),
                label: c.label.clone(),
                current: Some(self.figure(c.kpi, now_fig)),
                baseline: Some(self.figure(c.kpi, base_fig)),
                change_bps: domain::change_bps(now_fig, base_fig),
                met,
                condition: Some(c.clone()),
                inputs: kpi
                    .inputs()
                    .iter()
                    .map(|input| pb::FigureInput {
                        name: input.name().to_owned(),
                        current: Some(self.figure(0, input.figure(&current))),
                        baseline: Some(self.figure(0, input.figure(&before))),
                    })
                    .collect(),
            });
        }
        let rules: Vec<domain::PayoutRule> = scorecard
            .payout_rules
            .iter()
            .map(|r| domain::PayoutRule {
                conditions: r.condition_ids.clone(),
                min_met: usize::try_from(r.min_met).unwrap_or(0),
                payout_bps: r.payout_bps,
            })
            .collect();
        let (payout_bps, index) = domain::payout(&rules, &met_ids);
        Ok(Response::new(pb::EvaluateScorecardResponse {
            evaluation: Some(pb::ScorecardEvaluation {
                scorecard_id: scorecard.id.clone(),
                range: range_pb(range),
                baseline_range: range_pb(baseline),
                conditions: results,
                conditions_met: met_ids.len() as i32,
                payout_bps,
                payout_rule_index: index.map(|i| i as i32),
                evaluated_at: timestamp(Utc::now()),
            }),
        }))
    }
}

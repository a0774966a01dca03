//! The gRPC surface of crm: validates requests, checks roles and maps rows to the contract.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use omni_proto::common::Money;
use omni_proto::omni::crm::v1 as pb;
use omni_proto::omni::crm::v1::customer_view_service_server::CustomerViewService;
use omni_proto::omni::crm::v1::loyalty_service_server::LoyaltyService;
use omni_runtime::Error;
use omni_runtime::auth::{self, Principal, Role, Scope};
use omni_runtime::error::Violations;
use omni_runtime::outbox::Outbox;
use omni_runtime::paging;
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::store::{self, EntryRow, OrderRow};
use crate::{associates, engagement, facts, idem, segments, tickets, tiers};

const READERS: &[Role] = &[
    Role::Admin,
    Role::ChannelManager,
    Role::StoreAssociate,
    Role::ChannelApp,
    Role::Service,
];
const REDEEMERS: &[Role] = &[
    Role::Admin,
    Role::StoreAssociate,
    Role::ChannelApp,
    Role::Service,
];
const DEFAULT_ORDER_LIMIT: usize = 20;
const MAX_LIMIT: i32 = 200;
const ASSIGNERS: &[Role] = &[Role::Admin, Role::ChannelManager, Role::StoreAssociate];
const MAX_REDEEM: i64 = 10_000_000;
/// Order statuses that count as spend.
const CANCELLED: i32 = 8;

type Reply<T> = Result<Response<T>, Status>;

#[derive(Debug, Clone)]
pub struct Grpc {
    pub(crate) pool: PgPool,
    pub(crate) outbox: Outbox,
}

impl Grpc {
    pub fn new(pool: PgPool, outbox: Outbox) -> Self {
        Self { pool, outbox }
    }
}

pub(crate) fn caller<T>(request: &Request<T>, roles: &[Role]) -> Result<Principal, Status> {
    let principal = auth::principal(request)?.clone();
    principal.require_any(roles)?;
    Ok(principal)
}

pub(crate) fn customer_id(raw: &str) -> Result<String, Error> {
    let id = raw.trim();
    if id.is_empty() || id.len() > 64 {
        return Err(Error::invalid("customer_id", "1 to 64 characters"));
    }
    Ok(id.to_owned())
}

pub(crate) fn ts(t: DateTime<Utc>) -> prost_types::Timestamp {
    omni_runtime::time::timestamp(t)
}

pub(crate) fn from_ts(t: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    t.and_then(|t| DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
}

fn money(minor_units: i64, currency: &str) -> Money {
    Money {
        minor_units,
        currency: currency.to_owned(),
    }
}

fn entry(e: EntryRow) -> pb::PointsEntry {
    pb::PointsEntry {
        id: e.id.to_string(),
        customer_id: e.customer_id,
        kind: e.kind,
        points: e.points,
        balance_after: e.balance_after,
        channel_id: e.channel_id,
        order_id: e.order_id,
        return_id: e.return_id,
        reason: e.reason,
        created_at: Some(ts(e.created_at)),
    }
}

fn net(o: &OrderRow) -> i64 {
    if o.status == CANCELLED {
        0
    } else {
        o.total_minor - o.refunded_minor
    }
}

impl Grpc {
    /// The single customer view as a caller with `scope` sees it. The customer-level figures
    /// (profile, points, tier, RFM, lifecycle, segments, order count, total spend, first and
    /// last purchase) are the customer's whoever asks: an associate serves the whole customer.
    /// So are open service tickets: customer service is one desk across channels (a store
    /// hears of a livestream complaint), as `ListTickets` shows them. The channel records
    /// (orders, spend per channel, interactions) are those the scope reaches
    /// ([`omni_runtime::auth::Scope::reaches`]).
    async fn view(
        &self,
        req: pb::GetCustomerViewRequest,
        scope: &Scope,
    ) -> Result<pb::CustomerView, Error> {
        let asked = customer_id(&req.customer_id)?;
        let mut v = Violations::new();
        if !(0..=MAX_LIMIT).contains(&req.order_limit) {
            v.add("order_limit", format!("between 0 and {MAX_LIMIT}"));
        }
        if !(0..=MAX_LIMIT).contains(&req.interaction_limit) {
            v.add("interaction_limit", format!("between 0 and {MAX_LIMIT}"));
        }
        v.finish()?;
        let interaction_limit = if req.interaction_limit == 0 {
            DEFAULT_ORDER_LIMIT as i64
        } else {
            i64::from(req.interaction_limit)
        };
        // One snapshot for every read, so orders and balance agree even while events land.
        let mut conn = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *conn)
            .await?;
        let id = store::resolve(&mut conn, &asked).await?;
        let Some(c) = store::customer(&mut conn, &id).await? else {
            return Err(Error::not_found(format!("customer {asked}")));
        };
        let orders = store::orders(&mut conn, &id).await?;
        let balance = store::balance(&mut conn, &id).await?;
        let now = Utc::now();
        let facts::Facts {
            rfm: score,
            lifecycle,
            tier,
            ..
        } = facts::load(&mut conn, Some(std::slice::from_ref(&id)), now, &[])
            .await?
            .pop()
            .unwrap_or_default();
        let segments = segments::of_customer(&mut conn, &id).await?;
        let open_tickets = tickets::open_of(&mut conn, &id).await?;
        let reaches = |channel_id: &str, store_id: &str| scope.reaches(channel_id, [store_id]);
        let interactions = engagement::recent(&mut conn, &id, scope, interaction_limit).await?;
        let associate = associates::assignment(&mut conn, &id).await?;
        let opt_ins = store::opt_ins(&mut conn, &id).await?;
        conn.commit().await?;
        let currency = orders
            .first()
            .map(|o| o.currency.clone())
            .unwrap_or_default();
        let counted: Vec<&OrderRow> = orders.iter().filter(|o| o.status != CANCELLED).collect();
        let mut per_channel: BTreeMap<&str, pb::ChannelSpend> = BTreeMap::new();
        for o in counted
            .iter()
            .filter(|o| reaches(&o.channel_id, &o.store_id))
        {
            let spend =
                per_channel
                    .entry(o.channel_id.as_str())
                    .or_insert_with(|| pb::ChannelSpend {
                        channel_id: o.channel_id.clone(),
                        channel_kind: o.channel_kind,
                        order_count: 0,
                        net_spend: Some(money(0, &o.currency)),
                        last_purchase_at: None,
                    });
            spend.order_count += 1;
            if let Some(m) = spend.net_spend.as_mut() {
                m.minor_units += net(o);
            }
            let at = ts(o.placed_at);
            if spend
                .last_purchase_at
                .as_ref()
                .is_none_or(|l| l.seconds < at.seconds)
            {
                spend.last_purchase_at = Some(at);
            }
        }
        let first = counted.iter().min_by_key(|o| o.placed_at);
        let last = counted.iter().max_by_key(|o| o.placed_at);
        let limit = if req.order_limit == 0 {
            DEFAULT_ORDER_LIMIT
        } else {
            req.order_limit as usize
        };
        let erased = c.erased;
        Ok(pb::CustomerView {
            profile: Some(pb::CustomerProfile {
                customer_id: c.customer_id,
                member_number: c.member_number,
                name: c.name,
                phone: c.phone,
                email: c.email,
                marketing_opt_ins: opt_ins,
                erased,
                registered_at: c.registered_at.map(ts),
            }),
            order_count: counted.len() as i64,
            total_spend: Some(money(counted.iter().map(|o| net(o)).sum(), &currency)),
            first_purchase_at: first.map(|o| ts(o.placed_at)),
            last_purchase_at: last.map(|o| ts(o.placed_at)),
            acquisition_channel_id: first.map(|o| o.channel_id.clone()).unwrap_or_default(),
            spend_per_channel: per_channel.into_values().collect(),
            orders: orders
                .iter()
                .filter(|o| reaches(&o.channel_id, &o.store_id))
                .take(limit)
                .map(|o| pb::OrderSummary {
                    order_id: o.order_id.clone(),
                    order_number: o.order_number.clone(),
                    channel_id: o.channel_id.clone(),
                    channel_kind: o.channel_kind,
                    store_id: o.store_id.clone(),
                    status: o.status,
                    total: Some(money(o.total_minor, &o.currency)),
                    refunded: Some(money(o.refunded_minor, &o.currency)),
                    item_count: o.item_count,
                    placed_at: Some(ts(o.placed_at)),
                })
                .collect(),
            points_balance: balance,
            tier,
            rfm: Some(pb::RfmScore {
                recency: score.recency,
                frequency: score.frequency,
                monetary: score.monetary,
                computed_at: Some(ts(now)),
            }),
            lifecycle_stage: lifecycle,
            segments,
            open_tickets,
            recent_interactions: interactions,
            associate: associate.as_ref().map(associates::assignment_pb),
        })
    }

    async fn adjust(
        &self,
        caller: &str,
        req: pb::AdjustPointsRequest,
    ) -> Result<pb::AdjustPointsResponse, Error> {
        const SCOPE: &str = "crm.adjust_points";
        let id = customer_id(&req.customer_id)?;
        let mut v = Violations::new();
        if req.points == 0 || req.points.abs() > MAX_REDEEM {
            v.add(
                "points",
                format!("non-zero, at most {MAX_REDEEM} either way"),
            );
        }
        if req.reason.trim().is_empty() || req.reason.len() > 500 {
            v.add("reason", "1 to 500 characters: why the correction");
        }
        v.finish()?;
        let mut tx = self.pool.begin().await?;
        if let Some(reply) =
            idem::replay(&mut tx, SCOPE, caller, &req.idempotency_key, &req).await?
        {
            return Ok(reply);
        }
        let id = store::resolve(&mut tx, &id).await?;
        if store::customer(&mut tx, &id).await?.is_none() {
            return Err(Error::not_found(format!("customer {id}")));
        }
        let Some(row) = store::adjust(&mut tx, &id, req.points, req.reason.trim()).await? else {
            return Err(Error::precondition(
                "POINTS_BALANCE",
                format!("customer/{id}"),
                "the correction would take the balance below zero",
            ));
        };
        let reply = pb::AdjustPointsResponse {
            entry: Some(entry(row)),
        };
        idem::remember(&mut tx, SCOPE, caller, &req.idempotency_key, None, &reply).await?;
        tx.commit().await?;
        Ok(reply)
    }

    async fn cancel_redemption(
        &self,
        caller: &Principal,
        req: pb::CancelPointsRedemptionRequest,
    ) -> Result<pb::CancelPointsRedemptionResponse, Error> {
        const SCOPE: &str = "crm.cancel_points_redemption";
        let entry_id: uuid::Uuid = req
            .entry_id
            .trim()
            .parse()
            .map_err(|_| Error::invalid("entry_id", "must be a UUID"))?;
        let mut tx = self.pool.begin().await?;
        if let Some(reply) =
            idem::replay(&mut tx, SCOPE, &caller.id, &req.idempotency_key, &req).await?
        {
            return Ok(reply);
        }
        let Some(redeemed) = store::entry_for_update(&mut tx, entry_id).await? else {
            return Err(Error::not_found(format!("points entry {entry_id}")));
        };
        // Cancelled through the channel the points were spent in.
        caller.require_channel(&redeemed.channel_id)?;
        if redeemed.kind != store::KIND_REDEEM {
            return Err(Error::precondition(
                "POINTS_ENTRY_KIND",
                format!("points_entry/{entry_id}"),
                "only a redemption can be cancelled",
            ));
        }
        // Cancelling twice gives the points back once: the second call sees the first.
        let row = match store::cancellation_of(&mut tx, entry_id).await? {
            Some(done) => done,
            None => store::cancel_redemption(&mut tx, &redeemed, req.reason.trim()).await?,
        };
        let reply = pb::CancelPointsRedemptionResponse {
            entry: Some(entry(row)),
        };
        idem::remember(
            &mut tx,
            SCOPE,
            &caller.id,
            &req.idempotency_key,
            None,
            &reply,
        )
        .await?;
        tx.commit().await?;
        Ok(reply)
    }

    async fn redeem(
        &self,
        caller: &str,
        req: pb::RedeemPointsRequest,
    ) -> Result<pb::RedeemPointsResponse, Error> {
        const SCOPE: &str = "crm.redeem_points";
        let id = customer_id(&req.customer_id)?;
        if req.points <= 0 || req.points > MAX_REDEEM {
            return Err(Error::invalid(
                "points",
                format!("must be between 1 and {MAX_REDEEM}"),
            ));
        }
        let mut tx = self.pool.begin().await?;
        if let Some(reply) =
            idem::replay(&mut tx, SCOPE, caller, &req.idempotency_key, &req).await?
        {
            return Ok(reply);
        }
        let id = store::resolve(&mut tx, &id).await?;
        if store::customer(&mut tx, &id).await?.is_none() {
            return Err(Error::not_found(format!("customer {id}")));
        }
        let Some(row) =
            store::redeem(&mut tx, &id, req.points, &req.channel_id, &req.order_id).await?
        else {
            return Err(Error::precondition(
                "POINTS_BALANCE",
                format!("customer/{id}"),
                "the points balance does not cover this redemption",
            ));
        };
        let balance_after = row.balance_after;
        let rules = tiers::load(&mut tx).await?;
        let reply = pb::RedeemPointsResponse {
            entry: Some(entry(row)),
            value: (rules.point_value > 0)
                .then(|| money(req.points * rules.point_value, &rules.currency)),
        };
        idem::remember(&mut tx, SCOPE, caller, &req.idempotency_key, None, &reply).await?;
        tx.commit().await?;
        tracing::info!(points = req.points, balance_after, "points redeemed");
        Ok(reply)
    }
}

#[tonic::async_trait]
impl CustomerViewService for Grpc {
    async fn get_customer_view(
        &self,
        request: Request<pb::GetCustomerViewRequest>,
    ) -> Reply<pb::GetCustomerViewResponse> {
        let who = caller(&request, READERS)?;
        let view = self.view(request.into_inner(), &who.scope).await?;
        Ok(Response::new(pb::GetCustomerViewResponse {
            view: Some(view),
        }))
    }

    async fn assign_associate(
        &self,
        request: Request<pb::AssignAssociateRequest>,
    ) -> Reply<pb::AssignAssociateResponse> {
        let who = caller(&request, ASSIGNERS)?;
        let assignment = Grpc::assign_associate(self, &who, request.into_inner()).await?;
        Ok(Response::new(pb::AssignAssociateResponse { assignment }))
    }

    async fn list_associate_customers(
        &self,
        request: Request<pb::ListAssociateCustomersRequest>,
    ) -> Reply<pb::ListAssociateCustomersResponse> {
        let who = caller(&request, ASSIGNERS)?;
        Ok(Response::new(
            self.associate_customers(&who, request.into_inner()).await?,
        ))
    }
}

#[tonic::async_trait]
impl LoyaltyService for Grpc {
    async fn get_loyalty_account(
        &self,
        request: Request<pb::GetLoyaltyAccountRequest>,
    ) -> Reply<pb::GetLoyaltyAccountResponse> {
        caller(&request, READERS)?;
        let asked = customer_id(&request.get_ref().customer_id)?;
        // Asked on every order placed: two statements, the rules and then the account's
        // figures aggregated in Postgres (not the customer's whole order history).
        let mut conn = self.pool.acquire().await.map_err(Error::from)?;
        let rules = tiers::load(&mut conn).await?;
        let since = Utc::now() - chrono::Duration::days(rules.window_days);
        let Some(account) = store::loyalty_figures(&mut conn, &asked, since).await? else {
            return Err(Error::not_found(format!("customer {asked}")).into());
        };
        let store::LoyaltyFigures {
            customer_id: id,
            balance,
            spend,
            currency,
        } = account;
        let (tier, next) = rules.tier_for(spend);
        Ok(Response::new(pb::GetLoyaltyAccountResponse {
            account: Some(pb::LoyaltyAccount {
                customer_id: id,
                points_balance: balance,
                tier: tier.to_owned(),
                rolling_spend: Some(money(spend, &currency)),
                next_tier: next.map(|n| n.0.to_owned()).unwrap_or_default(),
                spend_to_next_tier: next.map(|n| money(n.1, &currency)),
                tier_since: None,
            }),
        }))
    }

    async fn list_points_entries(
        &self,
        request: Request<pb::ListPointsEntriesRequest>,
    ) -> Reply<pb::ListPointsEntriesResponse> {
        caller(&request, READERS)?;
        let req = request.into_inner();
        let asked = customer_id(&req.customer_id)?;
        let size = paging::page_size(req.page_size)?;
        let before = paging::decode_token(&req.page_token)?
            .map(|t| t.parse::<uuid::Uuid>())
            .transpose()
            .map_err(|_| Error::invalid("page_token", "is not a token this service issued"))?
            .unwrap_or(uuid::Uuid::max());
        let mut conn = self.pool.acquire().await.map_err(Error::from)?;
        let id = store::resolve(&mut conn, &asked).await?;
        if store::customer(&mut conn, &id).await?.is_none() {
            return Err(Error::not_found(format!("customer {asked}")).into());
        }
        let rows = store::entries(&mut conn, &id, before, size).await?;
        Ok(Response::new(pb::ListPointsEntriesResponse {
            next_page_token: paging::next_token(
                rows.len(),
                size,
                rows.last().map(|r| r.id.to_string()),
            ),
            entries: rows.into_iter().map(entry).collect(),
        }))
    }

    async fn redeem_points(
        &self,
        request: Request<pb::RedeemPointsRequest>,
    ) -> Reply<pb::RedeemPointsResponse> {
        let who = caller(&request, REDEEMERS)?;
        who.require_channel(&request.get_ref().channel_id)?;
        Ok(Response::new(
            self.redeem(&who.id, request.into_inner()).await?,
        ))
    }

    async fn cancel_points_redemption(
        &self,
        request: Request<pb::CancelPointsRedemptionRequest>,
    ) -> Reply<pb::CancelPointsRedemptionResponse> {
        let who = caller(&request, REDEEMERS)?;
        Ok(Response::new(
            self.cancel_redemption(&who, request.into_inner()).await?,
        ))
    }

    async fn adjust_points(
        &self,
        request: Request<pb::AdjustPointsRequest>,
    ) -> Reply<pb::AdjustPointsResponse> {
        let who = caller(&request, &[Role::Admin])?;
        Ok(Response::new(
            self.adjust(&who.id, request.into_inner()).await?,
        ))
    }

    async fn get_loyalty_rules(
        &self,
        request: Request<pb::GetLoyaltyRulesRequest>,
    ) -> Reply<pb::GetLoyaltyRulesResponse> {
        caller(&request, READERS)?;
        let mut conn = self.pool.acquire().await.map_err(Error::from)?;
        let rules = tiers::load(&mut conn).await?;
        Ok(Response::new(pb::GetLoyaltyRulesResponse {
            rules: Some(rules.to_pb()),
        }))
    }

    async fn set_loyalty_rules(
        &self,
        request: Request<pb::SetLoyaltyRulesRequest>,
    ) -> Reply<pb::SetLoyaltyRulesResponse> {
        caller(&request, &[Role::Admin])?;
        let Some(asked) = request.into_inner().rules else {
            return Err(Error::invalid("rules", "required").into());
        };
        let rules = tiers::Rules::from_pb(&asked)?;
        let mut conn = self.pool.acquire().await.map_err(Error::from)?;
        let saved = tiers::save(&mut conn, &rules).await?;
        tracing::info!(tiers = saved.tiers.len(), "loyalty rules replaced");
        Ok(Response::new(pb::SetLoyaltyRulesResponse {
            rules: Some(saved.to_pb()),
        }))
    }
}

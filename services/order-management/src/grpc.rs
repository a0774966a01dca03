//! order-management's gRPC layer: roles and scopes, request validation (every violation in one
//! INVALID_ARGUMENT, before anything is written), and the mapping onto [`crate::app`].

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use omni_proto::omni::identity::v1 as identity;
use omni_proto::omni::orders::v1 as pb;
use omni_proto::omni::orders::v1::fulfilment_service_server::FulfilmentService;
use omni_proto::omni::orders::v1::order_service_server::OrderService;
use omni_proto::omni::orders::v1::return_service_server::ReturnService;
use omni_proto::omni::orders::v1::sourcing_service_server::SourcingService;
use omni_runtime::auth::{self, Principal, Role};
use omni_runtime::error::Violations;
use omni_runtime::{Error, paging};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::app::{
    self, App, CustomerInput, ExchangeInput, PlaceInput, PreviewInput, ReturnInput, ReturnLineSpec,
};
use crate::domain::{self, Want};
use crate::store::{self, OrderFilter, ReturnFilter};

const ANY: &[Role] = &Role::ALL;
const PLACERS: &[Role] = &[
    Role::ChannelApp,
    Role::StoreAssociate,
    Role::Admin,
    Role::Service,
];
const CANCELLERS: &[Role] = &[
    Role::ChannelApp,
    Role::StoreAssociate,
    Role::ChannelManager,
    Role::Admin,
];
const ADDRESS_CHANGERS: &[Role] = &[Role::ChannelApp, Role::ChannelManager, Role::Admin];
const WATCHERS: &[Role] = &[
    Role::ChannelApp,
    Role::StoreAssociate,
    Role::Admin,
    Role::ChannelManager,
    Role::Service,
];
const FULFILLERS: &[Role] = &[
    Role::StoreAssociate,
    Role::Admin,
    Role::ChannelManager,
    Role::Service,
];
const RETURNERS: &[Role] = &[
    Role::StoreAssociate,
    Role::ChannelApp,
    Role::ChannelManager,
    Role::Admin,
];
const RETURN_READERS: &[Role] = &[
    Role::StoreAssociate,
    Role::ChannelApp,
    Role::ChannelManager,
    Role::Admin,
    Role::Analyst,
    Role::Service,
];
const MANAGERS: &[Role] = &[Role::Admin, Role::ChannelManager];
const MAX_LINES: usize = 100;
const MAX_QUANTITY: i32 = 10_000;

type Reply<T> = Result<Response<T>, Status>;

#[derive(Debug, Clone)]
pub struct Grpc {
    app: Arc<App>,
}

impl Grpc {
    pub fn new(app: Arc<App>) -> Self {
        Self { app }
    }
}

fn caller<T>(request: &Request<T>, roles: &[Role]) -> Result<Principal, Status> {
    let principal = auth::principal(request)?.clone();
    principal.require_any(roles)?;
    Ok(principal)
}

/// Whether the caller's scope reaches the order: [`omni_runtime::auth::Scope::reaches`] over
/// the stores it was taken, picked up or fulfilled at. Either way, what a caller does goes
/// through its own channels and stores: the channel of an order it places, of a return or
/// exchange it takes, and the store it acts at must be in its scope.
fn sees(principal: &Principal, order: &pb::Order) -> bool {
    principal.scope.reaches(
        &order.channel_id,
        std::iter::once(order.store_id.as_str())
            .chain(order.delivery.iter().map(|d| d.store_id.as_str()))
            .chain(order.fulfilments.iter().map(|f| f.location_id.as_str())),
    )
}

/// A return is reached by a caller that reaches its order, or, for store staff, by being taken
/// at one of the caller's stores (returns are accepted anywhere).
fn sees_return(principal: &Principal, order: &pb::Order, location_id: &str) -> bool {
    sees(principal, order)
        || (!principal.scope.stores.is_empty() && principal.scope.allows_store(location_id))
}

fn require_sees_return(
    principal: &Principal,
    order: &pb::Order,
    location_id: &str,
) -> Result<(), Error> {
    if sees_return(principal, order, location_id) {
        Ok(())
    } else {
        Err(Error::permission_denied(format!(
            "order {} is outside the caller's channels and stores",
            order.order_number
        )))
    }
}

fn require_sees(principal: &Principal, order: &pb::Order) -> Result<(), Error> {
    if sees(principal, order) {
        Ok(())
    } else {
        Err(Error::permission_denied(format!(
            "order {} is outside the caller's channels and stores",
            order.order_number
        )))
    }
}

fn uuid(v: &mut Violations, field: &str, value: &str) -> Option<Uuid> {
    v.check(
        field,
        Uuid::parse_str(value).map_err(|_| "must be a UUID".to_owned()),
    )
}

fn time(t: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    t.and_then(omni_runtime::time::from_timestamp)
}

fn lines(v: &mut Violations, field: &str, input: &[pb::OrderLineInput]) -> Vec<Want> {
    if input.is_empty() {
        v.add(field, "at least one line is required");
    }
    if input.len() > MAX_LINES {
        v.add(field, format!("at most {MAX_LINES} lines"));
    }
    let mut seen = HashSet::new();
    let mut wants = Vec::new();
    for (i, line) in input.iter().enumerate() {
        uuid(v, &format!("{field}[{i}].sku_id"), &line.sku_id);
        if line.quantity <= 0 || line.quantity > MAX_QUANTITY {
            v.add(
                format!("{field}[{i}].quantity"),
                format!("must be between 1 and {MAX_QUANTITY}"),
            );
        }
        if !seen.insert(line.sku_id.as_str()) {
            v.add(
                format!("{field}[{i}].sku_id"),
                "appears on an earlier line; put the whole quantity on one line",
            );
        }
        wants.push(Want {
            sku_id: line.sku_id.clone(),
            quantity: i64::from(line.quantity),
        });
    }
    wants
}

fn delivery(v: &mut Violations, field: &str, d: Option<&pb::Delivery>) -> pb::Delivery {
    let Some(d) = d else {
        v.add(field, "is required");
        return pb::Delivery::default();
    };
    match d.kind() {
        pb::DeliveryKind::Unspecified => v.add(format!("{field}.kind"), "is required"),
        pb::DeliveryKind::Ship => address(v, &format!("{field}.address"), d.address.as_ref()),
        pb::DeliveryKind::Pickup | pb::DeliveryKind::CarryOut => {
            uuid(v, &format!("{field}.store_id"), &d.store_id);
        }
    }
    d.clone()
}

fn address(v: &mut Violations, field: &str, a: Option<&omni_proto::common::Address>) {
    let Some(a) = a else {
        v.add(field, "is required to ship an order");
        return;
    };
    if a.lines.iter().all(|l| l.trim().is_empty()) {
        v.add(
            format!("{field}.lines"),
            "at least one address line is required",
        );
    }
    if a.city.trim().is_empty() {
        v.add(format!("{field}.city"), "is required");
    }
    if a.country_code.len() != 2 || !a.country_code.chars().all(|c| c.is_ascii_uppercase()) {
        v.add(
            format!("{field}.country_code"),
            "must be an ISO 3166-1 alpha-2 code, e.g. FR",
        );
    }
    if let Some(p) = &a.location
        && (!(-90.0..=90.0).contains(&p.latitude) || !(-180.0..=180.0).contains(&p.longitude))
    {
        v.add(
            format!("{field}.location"),
            "latitude must be within ±90 and longitude ±180",
        );
    }
}

fn payment(v: &mut Violations, field: &str, p: &pb::Payment) {
    match &p.amount {
        None => v.add(format!("{field}.amount"), "is required"),
        Some(m) if m.minor_units < 0 => v.add(format!("{field}.amount"), "must not be negative"),
        Some(m) if m.currency.len() != 3 => v.add(
            format!("{field}.amount.currency"),
            "must be an ISO 4217 code",
        ),
        _ => {}
    }
    if p.method() == pb::PaymentMethod::Unspecified {
        v.add(format!("{field}.method"), "is required");
    }
}

fn customer(
    v: &mut Violations,
    c: Option<&pb::CustomerRef>,
    kind: pb::DeliveryKind,
) -> CustomerInput {
    let c = c.cloned().unwrap_or_default();
    if !c.customer_id.is_empty() {
        uuid(v, "customer.customer_id", &c.customer_id);
        return CustomerInput::Id(c.customer_id);
    }
    if c.channel_account.is_some() || !c.phone.is_empty() || !c.member_number.is_empty() {
        return CustomerInput::Resolve(identity::ResolveCustomerRequest {
            channel_account: c.channel_account,
            phone: c.phone,
            member_number: c.member_number,
            name: c.name,
            email: c.email,
        });
    }
    if kind != pb::DeliveryKind::CarryOut {
        v.add(
            "customer",
            "one of customer_id, channel_account, phone and member_number is required (only a carry-out sale may be anonymous)",
        );
    }
    CustomerInput::Anonymous
}

fn coupon_codes(v: &mut Violations, codes: &[String]) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, code) in codes.iter().enumerate() {
        let code = code.trim().to_uppercase();
        if code.is_empty() {
            v.add(format!("coupon_codes[{i}]"), "must not be empty");
        } else if !seen.insert(code.clone()) {
            v.add(format!("coupon_codes[{i}]"), "appears twice");
        } else {
            out.push(code);
        }
    }
    out
}

fn return_lines(
    v: &mut Violations,
    field: &str,
    input: &[pb::ReturnLineInput],
    received: bool,
) -> Vec<ReturnLineSpec> {
    if input.is_empty() {
        v.add(field, "at least one line is required");
    }
    let mut seen = HashSet::new();
    input
        .iter()
        .enumerate()
        .map(|(i, l)| {
            if l.order_line_id.is_empty() {
                v.add(format!("{field}[{i}].order_line_id"), "is required");
            } else if !seen.insert(l.order_line_id.as_str()) {
                v.add(format!("{field}[{i}].order_line_id"), "appears twice");
            }
            if l.quantity <= 0 {
                v.add(format!("{field}[{i}].quantity"), "must be at least 1");
            }
            if l.reason() == pb::ReturnReason::Unspecified {
                v.add(format!("{field}[{i}].reason"), "is required");
            }
            if received && l.condition() == pb::ItemCondition::Unspecified {
                v.add(
                    format!("{field}[{i}].condition"),
                    "is required when the items are in hand",
                );
            }
            ReturnLineSpec {
                order_line_id: l.order_line_id.clone(),
                quantity: l.quantity,
                reason: l.reason(),
                condition: l.condition(),
            }
        })
        .collect()
}

/// One order of an ImportOrders batch: every shape rule, each violation under `orders[i]`.
fn historical_order(
    v: &mut Violations,
    i: usize,
    o: &pb::HistoricalOrder,
    refs: &mut HashSet<(String, String)>,
    now: DateTime<Utc>,
) {
    let at = |field: &str| format!("orders[{i}].{field}");
    uuid(v, &at("channel_id"), &o.channel_id);
    if o.channel_order_ref.trim().is_empty() {
        v.add(
            at("channel_order_ref"),
            "is required: it tells a resent order from a new one",
        );
    } else if !refs.insert((o.channel_id.clone(), o.channel_order_ref.clone())) {
        v.add(
            at("channel_order_ref"),
            "appears twice in the batch for this channel",
        );
    }
    let delivery = delivery(v, &at("delivery"), o.delivery.as_ref());
    let kind = delivery.kind();
    if o.customer_id.is_empty() {
        if kind != pb::DeliveryKind::CarryOut {
            v.add(
                at("customer_id"),
                "is required (only a carry-out sale may be anonymous)",
            );
        }
    } else {
        uuid(v, &at("customer_id"), &o.customer_id);
    }
    if !o.store_id.is_empty() {
        uuid(v, &at("store_id"), &o.store_id);
    }
    let wanted: Vec<pb::OrderLineInput> = o
        .lines
        .iter()
        .map(|l| pb::OrderLineInput {
            sku_id: l.sku_id.clone(),
            quantity: l.quantity,
        })
        .collect();
    lines(v, &at("lines"), &wanted);
    for (j, l) in o.lines.iter().enumerate() {
        let field = at(&format!("lines[{j}].location_id"));
        if !l.location_id.is_empty() {
            uuid(v, &field, &l.location_id);
        } else if kind == pb::DeliveryKind::Ship {
            v.add(field, "is required for a shipped order: where it left from");
        }
    }
    let completed = match o.status() {
        pb::OrderStatus::Completed => true,
        pb::OrderStatus::Cancelled => false,
        _ => {
            v.add(at("status"), "must be COMPLETED or CANCELLED");
            true
        }
    };
    let placed = time(o.placed_at.as_ref());
    let closed = time(o.closed_at.as_ref());
    match placed {
        None => v.add(at("placed_at"), "is required"),
        Some(t) if t > now => v.add(at("placed_at"), "must not be in the future"),
        Some(_) => {}
    }
    match (placed, closed) {
        (_, None) => v.add(at("closed_at"), "is required"),
        (_, Some(t)) if t > now => v.add(at("closed_at"), "must not be in the future"),
        (Some(p), Some(t)) if t < p => v.add(at("closed_at"), "must not be before placed_at"),
        _ => {}
    }
    if let Some(ready) = time(o.ready_at.as_ref()) {
        if !(completed && kind == pb::DeliveryKind::Pickup) {
            v.add(at("ready_at"), "applies to completed PICKUP orders only");
        } else if placed.is_some_and(|p| ready < p) || closed.is_some_and(|c| ready > c) {
            v.add(at("ready_at"), "must lie between placed_at and closed_at");
        }
    } else if o.ready_at.is_some() {
        v.add(at("ready_at"), "is not a valid time");
    }
    if !o.returns.is_empty() && !completed {
        v.add(at("returns"), "only a completed order can have returns");
    }
    let mut left: HashMap<&str, i32> = o
        .lines
        .iter()
        .map(|l| (l.sku_id.as_str(), l.quantity))
        .collect();
    let mut previous = closed;
    for (j, r) in o.returns.iter().enumerate() {
        let at = |field: &str| format!("orders[{i}].returns[{j}].{field}");
        uuid(v, &at("channel_id"), &r.channel_id);
        uuid(v, &at("location_id"), &r.location_id);
        match time(r.completed_at.as_ref()) {
            None => v.add(at("completed_at"), "is required"),
            Some(t) if t > now => v.add(at("completed_at"), "must not be in the future"),
            Some(t) if previous.is_some_and(|p| t < p) => v.add(
                at("completed_at"),
                "must not be before the order closed or the return before it",
            ),
            Some(t) => previous = Some(t),
        }
        if r.lines.is_empty() {
            v.add(at("lines"), "at least one line is required");
        }
        for (k, l) in r.lines.iter().enumerate() {
            let at = |field: &str| format!("orders[{i}].returns[{j}].lines[{k}].{field}");
            match left.get_mut(l.sku_id.as_str()) {
                None => v.add(at("sku_id"), "is not a SKU of the order's lines"),
                Some(_) if l.quantity <= 0 => v.add(at("quantity"), "must be at least 1"),
                Some(n) if l.quantity > *n => v.add(
                    at("quantity"),
                    format!("only {n} left to return of what was bought"),
                ),
                Some(n) => *n -= l.quantity,
            }
            if l.reason() == pb::ReturnReason::Unspecified {
                v.add(at("reason"), "is required");
            }
            if l.condition() == pb::ItemCondition::Unspecified {
                v.add(at("condition"), "is required");
            }
        }
    }
}

/// `order_id` or `order_number`.
async fn find(app: &App, key: Option<&pb::get_order_request::Key>) -> Result<pb::Order, Error> {
    match key {
        Some(pb::get_order_request::Key::OrderId(id)) => {
            let id =
                Uuid::parse_str(id).map_err(|_| Error::invalid("order_id", "must be a UUID"))?;
            Ok(app.order(id, "order_id").await?.order)
        }
        Some(pb::get_order_request::Key::OrderNumber(n)) => {
            if !domain::order_number_valid(n) {
                return Err(Error::invalid(
                    "order_number",
                    "is not an order number (O-YYMM-NNNNN-C) or its check digit is wrong",
                ));
            }
            Ok(app.order_by_number(n, "order_number").await?.order)
        }
        None => Err(Error::invalid(
            "key",
            "order_id or order_number is required",
        )),
    }
}

impl Grpc {
    /// The order a return belongs to.
    async fn order_of(&self, r: &pb::Return) -> Result<pb::Order, Error> {
        let id = Uuid::parse_str(&r.order_id)
            .map_err(|_| Error::internal("a stored return names an order by a bad id"))?;
        Ok(self.app.order(id, "order_id").await?.order)
    }

    /// Loads the order for a caller that must see it.
    async fn visible(&self, principal: &Principal, id: Uuid) -> Result<pb::Order, Error> {
        let order = self.app.order(id, "order_id").await?.order;
        require_sees(principal, &order)?;
        Ok(order)
    }
}

fn page_after(token: &str) -> Result<Option<(DateTime<Utc>, Uuid)>, Error> {
    let Some(key) = paging::decode_token(token)? else {
        return Ok(None);
    };
    let (at, id) = key
        .split_once('|')
        .ok_or_else(|| Error::invalid("page_token", "is not a token this service issued"))?;
    let at = DateTime::parse_from_rfc3339(at)
        .map_err(|_| Error::invalid("page_token", "is not a token this service issued"))?;
    let id = Uuid::parse_str(id)
        .map_err(|_| Error::invalid("page_token", "is not a token this service issued"))?;
    Ok(Some((at.with_timezone(&Utc), id)))
}

fn page_key(at: Option<&prost_types::Timestamp>, id: &str) -> Option<String> {
    time(at).map(|t| format!("{}|{id}", t.to_rfc3339()))
}

/// Cuts `rows` (read with one extra) to the page and returns the token of the next page, made
/// from the last row kept by `key`.
fn paginate<T>(rows: &mut Vec<T>, limit: i64, key: impl Fn(&T) -> Option<String>) -> String {
    let more = rows.len() as i64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    if more {
        rows.last()
            .and_then(key)
            .map(|k| paging::encode_token(&k))
            .unwrap_or_default()
    } else {
        String::new()
    }
}

#[tonic::async_trait]
impl OrderService for Grpc {
    async fn place_order(
        &self,
        request: Request<pb::PlaceOrderRequest>,
    ) -> Reply<pb::PlaceOrderResponse> {
        let principal = caller(&request, PLACERS)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        uuid(&mut v, "channel_id", &r.channel_id);
        let wants = lines(&mut v, "lines", &r.lines);
        let delivery = delivery(&mut v, "delivery", r.delivery.as_ref());
        let customer = customer(&mut v, r.customer.as_ref(), delivery.kind());
        let codes = coupon_codes(&mut v, &r.coupon_codes);
        if !r.store_id.is_empty() {
            uuid(&mut v, "store_id", &r.store_id);
        }
        if let Some(p) = &r.payment {
            payment(&mut v, "payment", p);
        }
        if r.idempotency_key.trim().is_empty() {
            v.add(
                "idempotency_key",
                "is required: a retry with the same key returns the first order",
            );
        }
        v.finish()?;
        principal.require_channel(&r.channel_id)?;
        if !principal.scope.stores.is_empty() {
            let store = if r.store_id.is_empty() {
                &delivery.store_id
            } else {
                &r.store_id
            };
            principal.require_store(store)?;
        }
        let associate_id =
            if r.associate_id.is_empty() && principal.roles.contains(&Role::StoreAssociate) {
                principal.id.clone()
            } else {
                r.associate_id.clone()
            };
        let input = PlaceInput {
            idempotency_key: r.idempotency_key.clone(),
            channel_id: r.channel_id.clone(),
            channel_order_ref: r.channel_order_ref.clone(),
            customer,
            lines: wants,
            delivery,
            coupon_codes: codes,
            store_id: r.store_id.clone(),
            associate_id,
            payment: r.payment.clone(),
            exchange_of: None,
            request: r,
        };
        Ok(Response::new(self.app.place(input, &principal.id).await?))
    }

    async fn import_orders(
        &self,
        request: Request<pb::ImportOrdersRequest>,
    ) -> Reply<pb::ImportOrdersResponse> {
        let principal = caller(&request, &[Role::Admin])?;
        let r = request.into_inner();
        let mut v = Violations::new();
        if r.orders.is_empty() || r.orders.len() > app::MAX_IMPORT {
            v.add(
                "orders",
                format!("between 1 and {} orders per call", app::MAX_IMPORT),
            );
        }
        let now = Utc::now();
        let mut refs = HashSet::new();
        for (i, o) in r.orders.iter().enumerate() {
            historical_order(&mut v, i, o, &mut refs, now);
        }
        v.finish()?;
        // An admin limited to channels or stores imports their history only.
        if let Some((i, o)) = r.orders.iter().enumerate().find(|(_, o)| {
            !principal.scope.reaches(
                &o.channel_id,
                [
                    o.store_id.as_str(),
                    o.delivery.as_ref().map_or("", |d| d.store_id.as_str()),
                ],
            )
        }) {
            return Err(Error::permission_denied(format!(
                "orders[{i}]: channel {} is outside the caller's scope",
                o.channel_id
            ))
            .into());
        }
        Ok(Response::new(
            self.app.import(r.orders, &principal.id).await?,
        ))
    }

    async fn record_payment(
        &self,
        request: Request<pb::RecordPaymentRequest>,
    ) -> Reply<pb::RecordPaymentResponse> {
        let principal = caller(&request, PLACERS)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        let id = uuid(&mut v, "order_id", &r.order_id);
        match &r.payment {
            Some(p) => payment(&mut v, "payment", p),
            None => v.add("payment", "is required"),
        }
        v.finish()?;
        let id = id.ok_or_else(|| Error::invalid("order_id", "must be a UUID"))?;
        self.visible(&principal, id).await?;
        let order = self
            .app
            .record_payment(&r, id, r.payment.clone().unwrap_or_default(), &principal.id)
            .await?;
        Ok(Response::new(pb::RecordPaymentResponse {
            order: Some(order),
        }))
    }

    async fn cancel_order(
        &self,
        request: Request<pb::CancelOrderRequest>,
    ) -> Reply<pb::CancelOrderResponse> {
        let principal = caller(&request, CANCELLERS)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        let id = uuid(&mut v, "order_id", &r.order_id);
        if r.reason() == pb::CancellationReason::Unspecified {
            v.add("reason", "is required");
        }
        v.finish()?;
        let id = id.ok_or_else(|| Error::invalid("order_id", "must be a UUID"))?;
        self.visible(&principal, id).await?;
        let order = self
            .app
            .cancel(&r, id, r.reason(), &r.note, &principal.id)
            .await?;
        Ok(Response::new(pb::CancelOrderResponse {
            order: Some(order),
        }))
    }

    async fn change_delivery_address(
        &self,
        request: Request<pb::ChangeDeliveryAddressRequest>,
    ) -> Reply<pb::ChangeDeliveryAddressResponse> {
        let principal = caller(&request, ADDRESS_CHANGERS)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        let id = uuid(&mut v, "order_id", &r.order_id);
        address(&mut v, "address", r.address.as_ref());
        v.finish()?;
        let id = id.ok_or_else(|| Error::invalid("order_id", "must be a UUID"))?;
        self.visible(&principal, id).await?;
        let (order, resourced) = self
            .app
            .change_address(&r, id, r.address.clone().unwrap_or_default(), &principal.id)
            .await?;
        Ok(Response::new(pb::ChangeDeliveryAddressResponse {
            order: Some(order),
            resourced,
        }))
    }

    async fn get_order(
        &self,
        request: Request<pb::GetOrderRequest>,
    ) -> Reply<pb::GetOrderResponse> {
        let principal = caller(&request, ANY)?;
        let order = find(&self.app, request.get_ref().key.as_ref()).await?;
        require_sees(&principal, &order)?;
        Ok(Response::new(pb::GetOrderResponse { order: Some(order) }))
    }

    async fn list_orders(
        &self,
        request: Request<pb::ListOrdersRequest>,
    ) -> Reply<pb::ListOrdersResponse> {
        let principal = caller(&request, ANY)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        if !r.customer_id.is_empty() {
            uuid(&mut v, "customer_id", &r.customer_id);
        }
        if !r.channel_id.is_empty() {
            uuid(&mut v, "channel_id", &r.channel_id);
        }
        if !r.store_id.is_empty() {
            uuid(&mut v, "store_id", &r.store_id);
        }
        v.finish()?;
        let limit = paging::page_size(r.page_size)?;
        let mut store_ids = (!r.store_id.is_empty()).then(|| vec![r.store_id.clone()]);
        if !principal.scope.stores.is_empty() {
            store_ids = Some(match store_ids {
                Some(asked) => asked
                    .into_iter()
                    .filter(|s| principal.scope.allows_store(s))
                    .collect(),
                None => principal.scope.stores.clone(),
            });
        }
        if !r.channel_id.is_empty() {
            principal.require_channel(&r.channel_id)?;
        }
        let filter = OrderFilter {
            customer_id: (!r.customer_id.is_empty()).then(|| r.customer_id.clone()),
            channel_id: (!r.channel_id.is_empty()).then(|| r.channel_id.clone()),
            store_ids,
            statuses: r.statuses.iter().map(|s| *s as i16).collect(),
            placed_since: time(r.placed_since.as_ref()),
            placed_until: time(r.placed_until.as_ref()),
            after: page_after(&r.page_token)?,
            limit: limit + 1,
        };
        let mut orders = store::list_orders(&self.app.pool, &filter)
            .await
            .map_err(Status::from)?;
        let next_page_token = paginate(&mut orders, limit, |o| {
            page_key(o.placed_at.as_ref(), &o.id)
        });
        let orders = orders.into_iter().filter(|o| sees(&principal, o)).collect();
        Ok(Response::new(pb::ListOrdersResponse {
            orders,
            next_page_token,
        }))
    }

    type WatchOrderStream =
        Pin<Box<dyn Stream<Item = Result<pb::WatchOrderResponse, Status>> + Send>>;

    async fn watch_order(
        &self,
        request: Request<pb::WatchOrderRequest>,
    ) -> Reply<Self::WatchOrderStream> {
        let principal = caller(&request, WATCHERS)?;
        let key = request.get_ref().key.clone().map(|k| match k {
            pb::watch_order_request::Key::OrderId(id) => pb::get_order_request::Key::OrderId(id),
            pb::watch_order_request::Key::OrderNumber(n) => {
                pb::get_order_request::Key::OrderNumber(n)
            }
        });
        // Subscribe before the first read, so no change between them is missed.
        let mut changes = self.app.changes.subscribe();
        let first = find(&self.app, key.as_ref()).await?;
        require_sees(&principal, &first)?;
        let app = self.app.clone();
        let stream = async_stream(move |tx| async move {
            let id = first.id.clone();
            let mut seen = first.history.len();
            let mut status = first.status();
            if tx
                .send(Ok(pb::WatchOrderResponse {
                    order: Some(first),
                    change: None,
                    previous_status: 0,
                }))
                .await
                .is_err()
            {
                return;
            }
            loop {
                match changes.recv().await {
                    Ok(changed) if changed == id => {}
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
                let Ok(order_id) = Uuid::parse_str(&id) else {
                    return;
                };
                let order = match app.order(order_id, "order_id").await {
                    Ok(s) => s.order,
                    Err(e) => {
                        let _ = tx.send(Err(Status::from(e))).await;
                        return;
                    }
                };
                // One message per recorded change, oldest first.
                let history = order.history.clone();
                for change in history.iter().skip(seen) {
                    let message = pb::WatchOrderResponse {
                        order: Some(order.clone()),
                        change: Some(change.clone()),
                        previous_status: status as i32,
                    };
                    if change.fulfilment_id.is_empty() {
                        status = change.status();
                    }
                    if tx.send(Ok(message)).await.is_err() {
                        return;
                    }
                }
                seen = history.len();
                status = order.status();
                // Nothing follows a final status.
                if matches!(
                    status,
                    pb::OrderStatus::Completed | pb::OrderStatus::Cancelled
                ) {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// A stream fed by a spawned task through a bounded channel; the task stops when the client
/// goes away.
fn async_stream<T, F, Fut>(producer: F) -> impl Stream<Item = T> + Send
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(producer(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

fn order_id(v: &mut Violations, value: &str) -> Option<Uuid> {
    uuid(v, "order_id", value)
}

#[tonic::async_trait]
impl FulfilmentService for Grpc {
    async fn list_pickup_queue(
        &self,
        request: Request<pb::ListPickupQueueRequest>,
    ) -> Reply<pb::ListPickupQueueResponse> {
        let principal = caller(&request, FULFILLERS)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        uuid(&mut v, "store_id", &r.store_id);
        v.finish()?;
        principal.require_store(&r.store_id)?;
        let limit = paging::page_size(r.page_size)?;
        let offset: usize = match paging::decode_token(&r.page_token)? {
            Some(k) => k
                .parse()
                .map_err(|_| Error::invalid("page_token", "is not a token this service issued"))?,
            None => 0,
        };
        let wanted: Vec<pb::PickupQueueState> = if r.states.is_empty() {
            vec![
                pb::PickupQueueState::Due,
                pb::PickupQueueState::Overdue,
                pb::PickupQueueState::AwaitingCustomer,
            ]
        } else {
            r.states().collect()
        };
        let now = Utc::now();
        let orders = store::pickup_orders(&self.app.pool, &r.store_id)
            .await
            .map_err(Status::from)?;
        // A caller limited to channels sees its channels' orders in the queue, not the
        // store's others.
        let mut entries: Vec<pb::PickupQueueEntry> = orders
            .iter()
            .filter(|o| sees(&principal, o))
            .filter_map(|o| app::pickup_entry(o, now))
            .collect();
        let due_count = entries
            .iter()
            .filter(|e| e.state() == pb::PickupQueueState::Due)
            .count();
        let overdue_count = entries
            .iter()
            .filter(|e| e.state() == pb::PickupQueueState::Overdue)
            .count();
        entries.retain(|e| wanted.contains(&e.state()));
        // Most urgent first: overdue, then due by promise, then waiting customers.
        entries.sort_by_key(|e| {
            let order = match e.state() {
                pb::PickupQueueState::Overdue => 0,
                pb::PickupQueueState::Due => 1,
                pb::PickupQueueState::Uncollected => 2,
                _ => 3,
            };
            (order, -e.minutes_late)
        });
        let page: Vec<_> = entries
            .iter()
            .skip(offset)
            .take(usize::try_from(limit).unwrap_or(100))
            .cloned()
            .collect();
        let next = offset + page.len();
        let next_page_token = if next < entries.len() {
            paging::encode_token(&next.to_string())
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListPickupQueueResponse {
            entries: page,
            next_page_token,
            due_count: i32::try_from(due_count).unwrap_or(i32::MAX),
            overdue_count: i32::try_from(overdue_count).unwrap_or(i32::MAX),
        }))
    }

    async fn start_picking(
        &self,
        request: Request<pb::StartPickingRequest>,
    ) -> Reply<pb::StartPickingResponse> {
        let principal = caller(&request, FULFILLERS)?;
        let r = request.into_inner();
        let order = self
            .step(&principal, &r.order_id, &r.fulfilment_id, app::Step::Pick)
            .await?;
        Ok(Response::new(pb::StartPickingResponse {
            order: Some(order),
        }))
    }

    async fn mark_ready_for_pickup(
        &self,
        request: Request<pb::MarkReadyForPickupRequest>,
    ) -> Reply<pb::MarkReadyForPickupResponse> {
        let principal = caller(&request, FULFILLERS)?;
        let r = request.into_inner();
        let order = self
            .step(&principal, &r.order_id, "", app::Step::Ready)
            .await?;
        Ok(Response::new(pb::MarkReadyForPickupResponse {
            order: Some(order),
        }))
    }

    async fn hand_over_pickup(
        &self,
        request: Request<pb::HandOverPickupRequest>,
    ) -> Reply<pb::HandOverPickupResponse> {
        let principal = caller(&request, FULFILLERS)?;
        let r = request.into_inner();
        if r.pickup_code.trim().is_empty() {
            return Err(Error::invalid("pickup_code", "is required").into());
        }
        let order = self
            .step(
                &principal,
                &r.order_id,
                "",
                app::Step::HandOver {
                    pickup_code: r.pickup_code.clone(),
                },
            )
            .await?;
        Ok(Response::new(pb::HandOverPickupResponse {
            order: Some(order),
        }))
    }

    async fn ship_fulfilment(
        &self,
        request: Request<pb::ShipFulfilmentRequest>,
    ) -> Reply<pb::ShipFulfilmentResponse> {
        let principal = caller(&request, FULFILLERS)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        if r.carrier.trim().is_empty() {
            v.add("carrier", "is required");
        }
        if r.tracking_number.trim().is_empty() {
            v.add("tracking_number", "is required");
        }
        v.finish()?;
        let order = self
            .step(
                &principal,
                &r.order_id,
                &r.fulfilment_id,
                app::Step::Ship {
                    carrier: r.carrier.clone(),
                    tracking_number: r.tracking_number.clone(),
                },
            )
            .await?;
        Ok(Response::new(pb::ShipFulfilmentResponse {
            order: Some(order),
        }))
    }

    async fn confirm_delivery(
        &self,
        request: Request<pb::ConfirmDeliveryRequest>,
    ) -> Reply<pb::ConfirmDeliveryResponse> {
        let principal = caller(&request, FULFILLERS)?;
        let r = request.into_inner();
        let at = time(r.delivered_at.as_ref());
        if at.is_some_and(|t| t > Utc::now() + chrono::Duration::minutes(5)) {
            return Err(Error::invalid("delivered_at", "must not be in the future").into());
        }
        let order = self
            .step(
                &principal,
                &r.order_id,
                &r.fulfilment_id,
                app::Step::Deliver { at },
            )
            .await?;
        Ok(Response::new(pb::ConfirmDeliveryResponse {
            order: Some(order),
        }))
    }
}

impl Grpc {
    async fn step(
        &self,
        principal: &Principal,
        order_id: &str,
        fulfilment_id: &str,
        step: app::Step,
    ) -> Result<pb::Order, Error> {
        let mut v = Violations::new();
        let id = self::order_id(&mut v, order_id);
        v.finish()?;
        let id = id.ok_or_else(|| Error::invalid("order_id", "must be a UUID"))?;
        let order = self.visible(principal, id).await?;
        // Store staff act on fulfilments leaving their own stores, and hand over the pickups
        // collected at them.
        if !principal.scope.stores.is_empty() {
            let pickup_here = matches!(step, app::Step::Ready | app::Step::HandOver { .. })
                && order.delivery.as_ref().is_some_and(|d| {
                    !d.store_id.is_empty() && principal.scope.allows_store(&d.store_id)
                });
            let ok = pickup_here
                || order
                    .fulfilments
                    .iter()
                    .filter(|f| fulfilment_id.is_empty() || f.id == fulfilment_id)
                    .any(|f| principal.scope.allows_store(&f.location_id));
            if !ok {
                return Err(Error::permission_denied(
                    "the fulfilment leaves from a store outside the caller's scope",
                ));
            }
        }
        self.app.step(id, fulfilment_id, step, &principal.id).await
    }
}

#[tonic::async_trait]
impl ReturnService for Grpc {
    async fn create_return(
        &self,
        request: Request<pb::CreateReturnRequest>,
    ) -> Reply<pb::CreateReturnResponse> {
        let principal = caller(&request, RETURNERS)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        let id = order_id(&mut v, &r.order_id);
        uuid(&mut v, "channel_id", &r.channel_id);
        uuid(&mut v, "location_id", &r.location_id);
        let lines = return_lines(&mut v, "lines", &r.lines, r.items_received);
        if r.idempotency_key.trim().is_empty() {
            v.add("idempotency_key", "is required");
        }
        v.finish()?;
        // Returns anywhere: through the caller's channel, at the caller's store, of an order the
        // caller reaches (store staff take back any order at their counter).
        principal.require_channel(&r.channel_id)?;
        principal.require_store(&r.location_id)?;
        let order_id = id.ok_or_else(|| Error::invalid("order_id", "must be a UUID"))?;
        let order = self.app.order(order_id, "order_id").await?.order;
        require_sees_return(&principal, &order, &r.location_id)?;
        let input = ReturnInput {
            order_id,
            lines,
            channel_id: r.channel_id.clone(),
            location_id: r.location_id.clone(),
            items_received: r.items_received,
            note: r.note.clone(),
            restock_key: Some(omni_runtime::idempotency::derived_key(
                "return/restock",
                &principal.id,
                &r.idempotency_key,
            )),
        };
        let created = self.app.create_return(&r, input, &principal.id).await?;
        Ok(Response::new(pb::CreateReturnResponse {
            order_return: Some(created),
        }))
    }

    async fn receive_return(
        &self,
        request: Request<pb::ReceiveReturnRequest>,
    ) -> Reply<pb::ReceiveReturnResponse> {
        let principal = caller(&request, RETURNERS)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        let id = uuid(&mut v, "return_id", &r.return_id);
        if r.idempotency_key.trim().is_empty() {
            v.add("idempotency_key", "is required");
        }
        if r.lines.is_empty() {
            v.add("lines", "the condition of every return line is required");
        }
        for (i, l) in r.lines.iter().enumerate() {
            if l.condition() == pb::ItemCondition::Unspecified {
                v.add(format!("lines[{i}].condition"), "is required");
            }
        }
        v.finish()?;
        let id = id.ok_or_else(|| Error::invalid("return_id", "must be a UUID"))?;
        let existing = self.app.get_return(id).await?;
        principal.require_store(&existing.location_id)?;
        let order = self.order_of(&existing).await?;
        require_sees_return(&principal, &order, &existing.location_id)?;
        let conditions = r
            .lines
            .iter()
            .map(|l| (l.order_line_id.clone(), l.condition()))
            .collect();
        let received = self
            .app
            .receive_return(&r, id, conditions, &principal.id)
            .await?;
        Ok(Response::new(pb::ReceiveReturnResponse {
            order_return: Some(received),
        }))
    }

    async fn create_exchange(
        &self,
        request: Request<pb::CreateExchangeRequest>,
    ) -> Reply<pb::CreateExchangeResponse> {
        let principal = caller(&request, RETURNERS)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        let id = order_id(&mut v, &r.order_id);
        uuid(&mut v, "channel_id", &r.channel_id);
        uuid(&mut v, "location_id", &r.location_id);
        let returned = return_lines(&mut v, "returned", &r.returned, true);
        let replacements = lines(&mut v, "replacements", &r.replacements);
        let delivery = delivery(&mut v, "delivery", r.delivery.as_ref());
        if r.idempotency_key.trim().is_empty() {
            v.add("idempotency_key", "is required");
        }
        v.finish()?;
        // The replacement is an order placed through the caller's channel, like PlaceOrder's.
        principal.require_channel(&r.channel_id)?;
        principal.require_store(&r.location_id)?;
        let order_id = id.ok_or_else(|| Error::invalid("order_id", "must be a UUID"))?;
        let order = self.app.order(order_id, "order_id").await?.order;
        require_sees_return(&principal, &order, &r.location_id)?;
        let input = ExchangeInput {
            idempotency_key: r.idempotency_key.clone(),
            order_id,
            returned,
            replacements,
            delivery,
            channel_id: r.channel_id.clone(),
            location_id: r.location_id.clone(),
            associate_id: if r.associate_id.is_empty() {
                principal.id.clone()
            } else {
                r.associate_id.clone()
            },
            request: r,
        };
        Ok(Response::new(
            self.app.exchange(input, &principal.id).await?,
        ))
    }

    async fn record_refund(
        &self,
        request: Request<pb::RecordRefundRequest>,
    ) -> Reply<pb::RecordRefundResponse> {
        let principal = caller(
            &request,
            &[
                Role::Admin,
                Role::ChannelManager,
                Role::ChannelApp,
                Role::Service,
            ],
        )?;
        let r = request.into_inner();
        let mut v = Violations::new();
        let id = uuid(&mut v, "return_id", &r.return_id);
        if r.amount.is_none() {
            v.add("amount", "is required");
        }
        if r.idempotency_key.trim().is_empty() {
            v.add("idempotency_key", "is required");
        }
        v.finish()?;
        let id = id.ok_or_else(|| Error::invalid("return_id", "must be a UUID"))?;
        let existing = self.app.get_return(id).await?;
        let order = self.order_of(&existing).await?;
        require_sees_return(&principal, &order, &existing.location_id)?;
        let refunded = self.app.record_refund(&r, id, &principal.id).await?;
        Ok(Response::new(pb::RecordRefundResponse {
            order_return: Some(refunded),
        }))
    }

    async fn get_return(
        &self,
        request: Request<pb::GetReturnRequest>,
    ) -> Reply<pb::GetReturnResponse> {
        let principal = caller(&request, RETURN_READERS)?;
        let id = Uuid::parse_str(&request.get_ref().return_id)
            .map_err(|_| Error::invalid("return_id", "must be a UUID"))?;
        let r = self.app.get_return(id).await?;
        let order = self.order_of(&r).await?;
        require_sees_return(&principal, &order, &r.location_id)?;
        Ok(Response::new(pb::GetReturnResponse {
            order_return: Some(r),
        }))
    }

    async fn list_returns(
        &self,
        request: Request<pb::ListReturnsRequest>,
    ) -> Reply<pb::ListReturnsResponse> {
        let principal = caller(&request, RETURN_READERS)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        let order = if r.order_id.is_empty() {
            None
        } else {
            uuid(&mut v, "order_id", &r.order_id)
        };
        v.finish()?;
        let limit = paging::page_size(r.page_size)?;
        let mut location_id = (!r.store_id.is_empty()).then(|| r.store_id.clone());
        if !principal.scope.stores.is_empty() {
            match &location_id {
                Some(s) => principal.require_store(s)?,
                None if principal.scope.stores.len() == 1 => {
                    location_id = principal.scope.stores.first().cloned()
                }
                None => {
                    return Err(Error::invalid(
                        "store_id",
                        "is required for callers limited to several stores",
                    )
                    .into());
                }
            }
        }
        // Callers limited to channels only list the returns of their channels' orders.
        let order_channels = (principal.scope.stores.is_empty()
            && !principal.scope.channels.is_empty())
        .then(|| principal.scope.channels.clone());
        let filter = ReturnFilter {
            order_id: order,
            customer_id: (!r.customer_id.is_empty()).then(|| r.customer_id.clone()),
            location_id,
            channel_id: (!r.channel_id.is_empty()).then(|| r.channel_id.clone()),
            order_channels,
            after: page_after(&r.page_token)?,
            limit: limit + 1,
        };
        let mut returns = store::list_returns(&self.app.pool, &filter)
            .await
            .map_err(Status::from)?;
        let next_page_token = paginate(&mut returns, limit, |x| {
            page_key(x.created_at.as_ref(), &x.id)
        });
        Ok(Response::new(pb::ListReturnsResponse {
            returns,
            next_page_token,
        }))
    }
}

#[tonic::async_trait]
impl SourcingService for Grpc {
    async fn set_sourcing_config(
        &self,
        request: Request<pb::SetSourcingConfigRequest>,
    ) -> Reply<pb::SetSourcingConfigResponse> {
        let principal = caller(&request, MANAGERS)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        let Some(config) = r.config else {
            return Err(Error::invalid("config", "is required").into());
        };
        uuid(&mut v, "config.channel_id", &config.channel_id);
        if config.strategy() == pb::SourcingStrategy::Unspecified {
            v.add("config.strategy", "is required");
        }
        if !config.experiment_id.is_empty() {
            uuid(&mut v, "config.experiment_id", &config.experiment_id);
            if config.variant_strategies.is_empty() {
                v.add(
                    "config.variant_strategies",
                    "must map each experiment variant to a strategy",
                );
            }
        }
        for (variant, strategy) in &config.variant_strategies {
            if pb::SourcingStrategy::try_from(*strategy).is_err() || *strategy == 0 {
                v.add(
                    format!("config.variant_strategies[{variant}]"),
                    "must be a strategy",
                );
            }
        }
        v.finish()?;
        // A channel manager sets the sourcing of its own channels only.
        principal.require_channel(&config.channel_id)?;
        let config = self.app.set_sourcing_config(config).await?;
        Ok(Response::new(pb::SetSourcingConfigResponse {
            config: Some(config),
        }))
    }

    async fn get_sourcing_config(
        &self,
        request: Request<pb::GetSourcingConfigRequest>,
    ) -> Reply<pb::GetSourcingConfigResponse> {
        let principal = caller(&request, ANY)?;
        let id = &request.get_ref().channel_id;
        Uuid::parse_str(id).map_err(|_| Error::invalid("channel_id", "must be a UUID"))?;
        principal.require_channel(id)?;
        let config = self.app.sourcing_config(id).await?;
        Ok(Response::new(pb::GetSourcingConfigResponse {
            config: Some(config),
        }))
    }

    async fn list_sourcing_configs(
        &self,
        request: Request<pb::ListSourcingConfigsRequest>,
    ) -> Reply<pb::ListSourcingConfigsResponse> {
        let principal = caller(&request, ANY)?;
        let r = request.into_inner();
        let limit = paging::page_size(r.page_size)?;
        let after = paging::decode_token(&r.page_token)?;
        // A caller limited to channels lists its channels' configs.
        let (_, channels) = principal.scope.sql_lists();
        let mut configs =
            store::list_sourcing_configs(&self.app.pool, channels, after.as_deref(), limit + 1)
                .await
                .map_err(Status::from)?;
        let next_page_token = paginate(&mut configs, limit, |c| Some(c.channel_id.clone()));
        Ok(Response::new(pb::ListSourcingConfigsResponse {
            configs,
            next_page_token,
        }))
    }

    async fn preview_sourcing(
        &self,
        request: Request<pb::PreviewSourcingRequest>,
    ) -> Reply<pb::PreviewSourcingResponse> {
        let principal = caller(&request, ANY)?;
        let r = request.into_inner();
        let mut v = Violations::new();
        uuid(&mut v, "channel_id", &r.channel_id);
        let wants = lines(&mut v, "lines", &r.lines);
        let delivery = delivery(&mut v, "delivery", r.delivery.as_ref());
        v.finish()?;
        principal.require_channel(&r.channel_id)?;
        let (decision, alternative_store_ids) = self
            .app
            .preview_sourcing(PreviewInput {
                channel_id: r.channel_id.clone(),
                lines: wants,
                delivery,
                strategy: match r.strategy() {
                    pb::SourcingStrategy::Unspecified => None,
                    s => Some(s),
                },
            })
            .await?;
        Ok(Response::new(pb::PreviewSourcingResponse {
            decision: Some(decision),
            alternative_store_ids,
        }))
    }
}

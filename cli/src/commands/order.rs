//! `omni order`: place an order in any channel, show it, record its payment, get a pickup
//! ready and hand it over, take a return anywhere, change a delivery address
//! (order-management).

use clap::{Args, Subcommand};
use omni_proto::common::{Address, GeoPoint, Money};
use omni_proto::omni::orders::v1 as pb;
use omni_proto::omni::orders::v1::fulfilment_service_client::FulfilmentServiceClient;
use omni_proto::omni::orders::v1::order_service_client::OrderServiceClient;
use omni_proto::omni::orders::v1::return_service_client::ReturnServiceClient;
use serde_json::json;

use crate::config::Service;
use crate::ctx::{Ctx, key, parse_item};
use crate::protojson::to_json;
use crate::render::{
    Answer as _, CliError, CliResult, Fields, Output, Table, label, money, or_dash, required, time,
};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Place an order: items as SKU:QTY, a customer, and how it reaches them.
    Place(Box<PlaceArgs>),
    /// Show an order by id or order number.
    Show { order: String },
    /// Record the payment of an order (the amount defaults to what is due).
    Pay {
        order: String,
        /// The amount paid, e.g. 20.00; must equal the order total.
        #[arg(long)]
        amount: Option<String>,
        /// card, cash, wallet, bank-transfer, gift-card or other.
        #[arg(long, default_value = "card")]
        method: String,
    },
    /// Get a pickup order ready at its store (starts picking first if needed).
    Ready { order: String },
    /// Hand a ready pickup over against the customer's pickup code.
    Pickup {
        order: String,
        #[arg(long)]
        code: String,
    },
    /// Take a return, items in hand (all remaining items unless --item is given).
    Return {
        order: String,
        /// Items as SKU:QTY (repeatable); default: everything not yet returned.
        #[arg(long = "item")]
        items: Vec<String>,
        /// The store receiving the items (code or id).
        #[arg(long)]
        store: Option<String>,
        /// The channel the return is made through (id or name); default: the store's channel,
        /// or the order's.
        #[arg(long)]
        channel: Option<String>,
        /// damaged, wrong-item, wrong-size, not-as-described, no-longer-wanted, other.
        #[arg(long, default_value = "no-longer-wanted")]
        reason: String,
        /// The items are damaged (written off, not restocked).
        #[arg(long)]
        damaged: bool,
    },
    /// Change the delivery address of a shipped order (within 24 hours, before shipment).
    ChangeAddress {
        order: String,
        #[command(flatten)]
        address: AddressArgs,
    },
}

#[derive(Debug, Args)]
pub struct PlaceArgs {
    /// The channel (id or name).
    #[arg(long)]
    channel: String,
    /// Items as SKU:QTY.
    #[arg(required = true)]
    items: Vec<String>,
    /// The customer's phone.
    #[arg(long)]
    phone: Option<String>,
    /// The customer's member number.
    #[arg(long)]
    member: Option<String>,
    /// The customer's id.
    #[arg(long)]
    customer: Option<String>,
    /// The customer's name (used when identity creates them).
    #[arg(long)]
    name: Option<String>,
    /// Pick up at this store (code or id).
    #[arg(long, conflicts_with_all = ["carry_out", "ship"])]
    pickup: Option<String>,
    /// Taken away now at this store's till (code or id).
    #[arg(long, conflicts_with = "ship")]
    carry_out: Option<String>,
    /// Ship to the address given with --line, --city...
    #[arg(long)]
    ship: bool,
    #[command(flatten)]
    address: OptionalAddress,
    /// Coupon codes (repeatable).
    #[arg(long = "coupon")]
    coupons: Vec<String>,
    /// Record the payment with the order (a till); the amount is the catalog's quote, without
    /// tier prices or coupons.
    #[arg(long)]
    pay: bool,
    /// The store where the order is taken (code or id), for POS and associates.
    #[arg(long)]
    taken_at: Option<String>,
    /// Retrying with the same key returns the same order.
    #[arg(long)]
    idempotency_key: Option<String>,
}

#[derive(Debug, Args)]
pub struct OptionalAddress {
    /// Street line of the address.
    #[arg(long)]
    line: Option<String>,
    #[arg(long)]
    city: Option<String>,
    #[arg(long)]
    postal_code: Option<String>,
    /// ISO 3166-1 alpha-2.
    #[arg(long)]
    country: Option<String>,
    #[arg(long, allow_hyphen_values = true)]
    lat: Option<f64>,
    #[arg(long, allow_hyphen_values = true)]
    lon: Option<f64>,
    #[arg(long)]
    recipient: Option<String>,
}

#[derive(Debug, Args)]
pub struct AddressArgs {
    #[arg(long)]
    line: String,
    #[arg(long)]
    city: String,
    #[arg(long)]
    postal_code: String,
    #[arg(long)]
    country: String,
    #[arg(long, allow_hyphen_values = true)]
    lat: Option<f64>,
    #[arg(long, allow_hyphen_values = true)]
    lon: Option<f64>,
    #[arg(long)]
    recipient: Option<String>,
}

impl AddressArgs {
    fn address(&self) -> Address {
        Address {
            recipient_name: self.recipient.clone().unwrap_or_default(),
            lines: vec![self.line.clone()],
            city: self.city.clone(),
            postal_code: self.postal_code.clone(),
            country_code: self.country.clone(),
            location: self
                .lat
                .zip(self.lon)
                .map(|(latitude, longitude)| GeoPoint {
                    latitude,
                    longitude,
                }),
            ..Default::default()
        }
    }
}

pub async fn run(ctx: &Ctx, command: Command) -> CliResult<Output> {
    let mut orders = OrderServiceClient::new(ctx.authed(Service::Orders)?);
    match command {
        Command::Place(args) => {
            let order = place(ctx, *args).await?;
            order_output(&order)
        }
        Command::Show { order } => order_output(&get(ctx, &order).await?),
        Command::Pay {
            order,
            amount,
            method,
        } => {
            let current = get(ctx, &order).await?;
            let due = required(current.total.clone(), "total")?;
            let amount = match amount {
                Some(a) => Money {
                    minor_units: crate::ctx::parse_amount(&a)?,
                    currency: due.currency.clone(),
                },
                None => due,
            };
            let response = orders
                .record_payment(pb::RecordPaymentRequest {
                    idempotency_key: key(),
                    order_id: current.id,
                    payment: Some(pb::Payment {
                        amount: Some(amount),
                        method: payment_method(&method)? as i32,
                        provider_reference: format!("omni-cli-{}", key()),
                        paid_at: None,
                    }),
                })
                .await
                .answer("order-management")?;
            order_output(&required(response.order, "order")?)
        }
        Command::Ready { order } => order_output(&ready(ctx, &order).await?),
        Command::Pickup { order, code } => {
            let current = get(ctx, &order).await?;
            let response = FulfilmentServiceClient::new(ctx.authed(Service::Orders)?)
                .hand_over_pickup(pb::HandOverPickupRequest {
                    order_id: current.id,
                    pickup_code: code,
                })
                .await
                .answer("order-management")?;
            order_output(&required(response.order, "order")?)
        }
        Command::Return {
            order,
            items,
            store,
            channel,
            reason,
            damaged,
        } => {
            let r = take_return(
                ctx,
                &order,
                &items,
                store.as_deref(),
                channel.as_deref(),
                &reason,
                damaged,
            )
            .await?;
            let mut fields = Fields::new();
            fields
                .add("return", &r.id)
                .add("order", &r.order_number)
                .add("status", label(r.status().as_str_name(), "RETURN_STATUS_"))
                .add("refund", money(r.refund_total.as_ref()))
                .add(
                    "refund status",
                    label(r.refund_status().as_str_name(), "REFUND_STATUS_"),
                );
            let skus: Vec<String> = r.lines.iter().map(|l| l.sku_id.clone()).collect();
            let names = crate::commands::stock::Names::load(ctx, &skus).await?;
            let mut table = Table::new(&["sku", "qty", "condition", "refund"]);
            for l in &r.lines {
                table.row(vec![
                    names.sku(&l.sku_id),
                    l.quantity.to_string(),
                    label(l.condition().as_str_name(), "ITEM_CONDITION_"),
                    money(l.refund_amount.as_ref()),
                ]);
            }
            Ok(Output::new(
                to_json(&r, "omni.orders.v1.Return"),
                format!("{}\n{}", fields.render(), table.render()),
            ))
        }
        Command::ChangeAddress { order, address } => {
            let current = get(ctx, &order).await?;
            let response = orders
                .change_delivery_address(pb::ChangeDeliveryAddressRequest {
                    idempotency_key: key(),
                    order_id: current.id,
                    address: Some(address.address()),
                })
                .await
                .answer("order-management")?;
            let order = required(response.order.clone(), "order")?;
            let mut human = if response.resourced {
                "address changed; the order now leaves from another location\n".to_owned()
            } else {
                "address changed\n".to_owned()
            };
            human.push_str(&describe(&order));
            Ok(Output::new(
                to_json(&response, "omni.orders.v1.ChangeDeliveryAddressResponse"),
                human,
            ))
        }
    }
}

fn order_output(order: &pb::Order) -> CliResult<Output> {
    Ok(Output::new(
        to_json(order, "omni.orders.v1.Order"),
        describe(order),
    ))
}

pub async fn place(ctx: &Ctx, args: PlaceArgs) -> CliResult<pb::Order> {
    let channel_id = ctx.channel_id(&args.channel).await?;
    let mut lines = Vec::new();
    for item in &args.items {
        let (sku, quantity) = parse_item(item)?;
        lines.push(pb::OrderLineInput {
            sku_id: ctx.sku_id(&sku).await?,
            quantity: i32::try_from(quantity)
                .map_err(|_| CliError::Usage(format!("{item:?}: quantity too large")))?,
        });
    }
    let delivery = if let Some(store) = &args.pickup {
        pb::Delivery {
            kind: pb::DeliveryKind::Pickup as i32,
            address: None,
            store_id: ctx.location_id(store).await?,
        }
    } else if let Some(store) = &args.carry_out {
        pb::Delivery {
            kind: pb::DeliveryKind::CarryOut as i32,
            address: None,
            store_id: ctx.location_id(store).await?,
        }
    } else if args.ship {
        let a = &args.address;
        let (Some(line), Some(city), Some(country)) = (&a.line, &a.city, &a.country) else {
            return Err(CliError::Usage(
                "--ship needs --line, --city and --country (and --lat/--lon for sourcing)".into(),
            ));
        };
        pb::Delivery {
            kind: pb::DeliveryKind::Ship as i32,
            address: Some(
                AddressArgs {
                    line: line.clone(),
                    city: city.clone(),
                    postal_code: a.postal_code.clone().unwrap_or_default(),
                    country: country.clone(),
                    lat: a.lat,
                    lon: a.lon,
                    recipient: a.recipient.clone().or_else(|| args.name.clone()),
                }
                .address(),
            ),
            store_id: String::new(),
        }
    } else {
        return Err(CliError::Usage(
            "say how the order reaches the customer: --pickup STORE, --carry-out STORE or --ship"
                .into(),
        ));
    };
    let customer = if args.customer.is_none() && args.phone.is_none() && args.member.is_none() {
        None
    } else {
        Some(pb::CustomerRef {
            customer_id: args.customer.clone().unwrap_or_default(),
            phone: args.phone.clone().unwrap_or_default(),
            member_number: args.member.clone().unwrap_or_default(),
            name: args.name.clone().unwrap_or_default(),
            ..Default::default()
        })
    };
    let store_id = match &args.taken_at {
        Some(s) => ctx.location_id(s).await?,
        None => match &args.carry_out {
            Some(s) => ctx.location_id(s).await?,
            None => String::new(),
        },
    };
    let idempotency_key = args.idempotency_key.clone().unwrap_or_else(key);
    let mut orders = OrderServiceClient::new(ctx.authed(Service::Orders)?);
    let mut request = pb::PlaceOrderRequest {
        idempotency_key: idempotency_key.clone(),
        channel_id,
        channel_order_ref: format!("cli-{idempotency_key}"),
        customer,
        lines,
        delivery: Some(delivery),
        coupon_codes: args.coupons.clone(),
        store_id,
        ..Default::default()
    };
    if args.pay {
        // A till takes the money with the order: price it first to know what is due.
        let total = preview_total(ctx, &request).await?;
        request.payment = Some(pb::Payment {
            amount: Some(total),
            method: pb::PaymentMethod::Card as i32,
            provider_reference: format!("omni-cli-{}", key()),
            paid_at: None,
        });
    }
    let response = orders
        .place_order(request)
        .await
        .answer("order-management")?;
    required(response.order, "order")
}

/// What an order would cost, priced by the catalog's Quote for the customer's tier.
async fn preview_total(ctx: &Ctx, request: &pb::PlaceOrderRequest) -> CliResult<Money> {
    use omni_proto::omni::catalog::v1 as cat;
    use omni_proto::omni::catalog::v1::quote_service_client::QuoteServiceClient;
    if !request.coupon_codes.is_empty() {
        return Err(CliError::Usage(
            "--pay with --coupon is not supported: place the order, then `omni order pay`".into(),
        ));
    }
    let response = QuoteServiceClient::new(ctx.authed(Service::Catalog)?)
        .quote(cat::QuoteRequest {
            channel_id: request.channel_id.clone(),
            lines: request
                .lines
                .iter()
                .map(|l| cat::QuoteLineInput {
                    sku_id: l.sku_id.clone(),
                    quantity: l.quantity,
                    line_ref: String::new(),
                })
                .collect(),
            ..Default::default()
        })
        .await
        .answer("catalog")?;
    required(response.total, "total")
}

pub async fn get(ctx: &Ctx, reference: &str) -> CliResult<pb::Order> {
    let key = if crate::ctx::is_uuid(reference) {
        pb::get_order_request::Key::OrderId(reference.to_owned())
    } else {
        pb::get_order_request::Key::OrderNumber(reference.to_owned())
    };
    let response = OrderServiceClient::new(ctx.authed(Service::Orders)?)
        .get_order(pb::GetOrderRequest { key: Some(key) })
        .await
        .answer("order-management")?;
    required(response.order, "order")
}

/// Starts picking when the order is only allocated, then marks it ready for pickup.
pub async fn ready(ctx: &Ctx, reference: &str) -> CliResult<pb::Order> {
    let current = get(ctx, reference).await?;
    let mut fulfilment = FulfilmentServiceClient::new(ctx.authed(Service::Orders)?);
    if current.status() == pb::OrderStatus::Allocated {
        fulfilment
            .start_picking(pb::StartPickingRequest {
                order_id: current.id.clone(),
                fulfilment_id: String::new(),
            })
            .await
            .answer("order-management")?;
    }
    let response = fulfilment
        .mark_ready_for_pickup(pb::MarkReadyForPickupRequest {
            order_id: current.id,
        })
        .await
        .answer("order-management")?;
    required(response.order, "order")
}

/// Creates a return with the items in hand; `items` empty returns everything not yet returned.
pub async fn take_return(
    ctx: &Ctx,
    reference: &str,
    items: &[String],
    store: Option<&str>,
    channel: Option<&str>,
    reason: &str,
    damaged: bool,
) -> CliResult<pb::Return> {
    let order = get(ctx, reference).await?;
    let reason = return_reason(reason)?;
    let condition = if damaged {
        pb::ItemCondition::Damaged
    } else {
        pb::ItemCondition::Resellable
    };
    let mut lines = Vec::new();
    if items.is_empty() {
        for l in &order.lines {
            if l.quantity > l.returned_quantity {
                lines.push(pb::ReturnLineInput {
                    order_line_id: l.id.clone(),
                    quantity: l.quantity - l.returned_quantity,
                    reason: reason as i32,
                    condition: condition as i32,
                });
            }
        }
    } else {
        for item in items {
            let (sku, quantity) = parse_item(item)?;
            let sku_id = ctx.sku_id(&sku).await?;
            let line = order
                .lines
                .iter()
                .find(|l| l.sku_id == sku_id)
                .ok_or_else(|| CliError::Usage(format!("{sku} is not on the order")))?;
            lines.push(pb::ReturnLineInput {
                order_line_id: line.id.clone(),
                quantity: i32::try_from(quantity)
                    .map_err(|_| CliError::Usage(format!("{item:?}: quantity too large")))?,
                reason: reason as i32,
                condition: condition as i32,
            });
        }
    }
    let location = match store {
        Some(s) => {
            let id = ctx.location_id(s).await?;
            ctx.locations().await?.into_iter().find(|l| l.id == id)
        }
        None => None,
    };
    let location_id = location.as_ref().map(|l| l.id.clone()).unwrap_or_default();
    // Returned through the store's own channel when taken at a store, else the order's.
    let channel_id = match (channel, &location) {
        (Some(c), _) => ctx.channel_id(c).await?,
        (None, Some(l)) if !l.channel_id.is_empty() => l.channel_id.clone(),
        (None, _) => order.channel_id.clone(),
    };
    let response = ReturnServiceClient::new(ctx.authed(Service::Orders)?)
        .create_return(pb::CreateReturnRequest {
            idempotency_key: key(),
            order_id: order.id,
            lines,
            channel_id,
            location_id,
            items_received: true,
            note: String::new(),
        })
        .await
        .answer("order-management")?;
    required(response.order_return, "return")
}

pub fn describe(o: &pb::Order) -> String {
    let mut fields = Fields::new();
    fields
        .add("order", format!("{} ({})", o.order_number, o.id))
        .add("status", label(o.status().as_str_name(), "ORDER_STATUS_"))
        .add(
            "channel",
            label(o.channel_kind().as_str_name(), "CHANNEL_KIND_"),
        )
        .add("customer", or_dash(&o.customer_id))
        .add(
            "placed",
            if o.imported {
                format!("{} (imported)", time(o.placed_at.as_ref()))
            } else {
                time(o.placed_at.as_ref())
            },
        );
    if let Some(d) = &o.delivery {
        fields.add(
            "delivery",
            format!(
                "{}{}",
                label(d.kind().as_str_name(), "DELIVERY_KIND_"),
                d.address
                    .as_ref()
                    .map(|a| format!(" to {}, {}", a.lines.join(", "), a.city))
                    .unwrap_or_default()
            ),
        );
    }
    fields
        .add("subtotal", money(o.subtotal.as_ref()))
        .add("discounts", money(o.discount_total.as_ref()))
        .add("total", money(o.total.as_ref()));
    if o.payment.is_some() {
        fields.add("paid", "yes");
    } else if o.payment_due_at.is_some() && o.status() == pb::OrderStatus::PendingPayment {
        fields.add("payment due", time(o.payment_due_at.as_ref()));
    }
    if o.refunded_total.as_ref().is_some_and(|m| m.minor_units > 0) {
        fields.add("refunded", money(o.refunded_total.as_ref()));
    }
    for c in &o.coupons {
        fields.add(
            "coupon",
            format!("{} -{}", c.code, money(c.discount.as_ref())),
        );
    }
    if let Some(p) = &o.pickup {
        fields
            .add("pickup code", or_dash(&p.pickup_code))
            .add("promised ready", time(p.promised_ready_at.as_ref()));
        if p.ready_at.is_some() {
            fields.add(
                "ready",
                format!(
                    "{} ({})",
                    time(p.ready_at.as_ref()),
                    if p.ready_within_promise {
                        "within the promise"
                    } else {
                        "late"
                    }
                ),
            );
        }
    }
    if let Some(s) = &o.sourcing {
        fields.add("sourcing", or_dash(&s.reason));
    }
    let mut table = Table::new(&["sku", "product", "qty", "net", "returned"]);
    for l in &o.lines {
        table.row(vec![
            l.sku_code.clone(),
            l.product_name.clone(),
            l.quantity.to_string(),
            money(l.net_amount.as_ref()),
            l.returned_quantity.to_string(),
        ]);
    }
    format!("{}\n{}", fields.render(), table.render())
}

fn payment_method(text: &str) -> CliResult<pb::PaymentMethod> {
    Ok(match text.to_ascii_lowercase().replace('_', "-").as_str() {
        "card" => pb::PaymentMethod::Card,
        "cash" => pb::PaymentMethod::Cash,
        "wallet" => pb::PaymentMethod::Wallet,
        "bank-transfer" => pb::PaymentMethod::BankTransfer,
        "gift-card" => pb::PaymentMethod::GiftCard,
        "other" => pb::PaymentMethod::Other,
        _ => return Err(CliError::Usage(format!("{text:?} is not a payment method"))),
    })
}

fn return_reason(text: &str) -> CliResult<pb::ReturnReason> {
    Ok(match text.to_ascii_lowercase().replace('_', "-").as_str() {
        "damaged" => pb::ReturnReason::Damaged,
        "wrong-item" => pb::ReturnReason::WrongItem,
        "wrong-size" => pb::ReturnReason::WrongSize,
        "not-as-described" => pb::ReturnReason::NotAsDescribed,
        "no-longer-wanted" => pb::ReturnReason::NoLongerWanted,
        "other" => pb::ReturnReason::Other,
        _ => return Err(CliError::Usage(format!("{text:?} is not a return reason"))),
    })
}

/// The JSON of a list of orders (used by the demo's summary).
pub fn orders_json(orders: &[pb::Order]) -> serde_json::Value {
    json!(
        orders
            .iter()
            .map(|o| to_json(o, "omni.orders.v1.Order"))
            .collect::<Vec<_>>()
    )
}

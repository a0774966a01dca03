//! The rows of order-management (`omni.orders.v1`: OrderService, FulfilmentService,
//! ReturnService, SourcingService) and inventory (`omni.inventory.v1`: AvailabilityService,
//! LocationService, ReservationService, StockService, TransferService).
//!
//! The records: e-shop orders picked up in Lyon (one paid and waiting, one to pay, one to
//! cancel, one handed over with its returns), an e-shop order shipped home, the e-shop's
//! sourcing config and mug quota, holds the in-scope channel app placed, and a transfer from
//! the warehouse to Lyon.

use super::{Rule, Side, key, req, token};
use omni_proto::common::Money;
use omni_proto::omni::inventory::v1 as inv;
use omni_proto::omni::inventory::v1::reservation_service_client::ReservationServiceClient;
use omni_proto::omni::inventory::v1::stock_service_client::StockServiceClient;
use omni_proto::omni::inventory::v1::transfer_service_client::TransferServiceClient;
use omni_proto::omni::orders::v1 as pb;
use omni_runtime::auth::Role;
use omni_runtime::client::AuthChannel;
use omni_testkit::world::{World, at_store, home_villeurbanne, line, payment, ship_to};

/// The buyer of every order of this file (no other file's customer).
const PHONE: &str = "+33 6 55 44 33 22";
/// The e-shop's cap on mugs: far above anything the suite sells.
const QUOTA: i64 = 1_000_000;

const NETWORK_STOCK: &str =
    "availability is the one network's stock, which every channel and store sells from";
const LOCATIONS: &str =
    "locations are the network every channel and store uses (pickup, sourcing, nearby stores)";
const ADMIN_LOCATIONS: &str = "admin only: the network of locations is the same for every channel";

/// The records the rows below are about, made before any row is tried.
pub struct Fixtures {
    customer: String,
    /// Paid and allocated at Lyon: the fulfilment steps, reads and watches.
    order: String,
    fulfilment: String,
    pickup_code: String,
    to_cancel: String,
    /// Pending payment, and the amount due.
    to_pay: String,
    due: i64,
    /// To be shipped to an address, unpaid.
    to_readdress: String,
    /// Handed over at Lyon: three tees S and a tee M.
    handed_over: String,
    tee_s_line: String,
    tee_m_line: String,
    /// One tee S back in hand (completed, refund pending) and one on its way.
    return_done: String,
    refund: Option<Money>,
    return_awaiting: String,
    /// Holds of the in-scope e-shop app.
    held: String,
    to_fulfil: String,
    to_release: String,
    /// Warehouse to Lyon, in transit.
    transfer: String,
}

pub async fn setup(w: &World) -> Fixtures {
    for sku in [&w.tee_s, &w.tee_m, &w.tee_l, &w.mug] {
        w.receive(&w.lyon, sku, 100).await;
    }
    w.receive(&w.warehouse, &w.tee_s, 20).await;
    w.receive(&w.warehouse, &w.tee_l, 20).await;

    let order = w
        .pay(&place(w, vec![line(&w.tee_m, 1)], pickup_at_lyon(w)).await)
        .await;
    let to_cancel = place(w, vec![line(&w.tee_m, 1)], pickup_at_lyon(w)).await;
    let to_pay = place(w, vec![line(&w.tee_m, 1)], pickup_at_lyon(w)).await;
    let to_readdress = place(w, vec![line(&w.tee_m, 1)], ship_to(home_villeurbanne())).await;
    let paid = w
        .pay(
            &place(
                w,
                vec![line(&w.tee_s, 3), line(&w.tee_m, 1)],
                pickup_at_lyon(w),
            )
            .await,
        )
        .await;
    let handed_over = hand_over(w, &paid).await;
    let line_of = |sku: &str| {
        handed_over
            .lines
            .iter()
            .find(|l| l.sku_id == sku)
            .expect("the line of the SKU")
            .id
            .clone()
    };
    let (tee_s_line, tee_m_line) = (line_of(w.tee_s.as_str()), line_of(w.tee_m.as_str()));

    let mut returns = w.returns_admin();
    let return_done = returns
        .create_return(return_of(w, &handed_over.id, &tee_s_line, true))
        .await
        .expect("a return in hand")
        .into_inner()
        .order_return
        .expect("return");
    let return_awaiting = returns
        .create_return(return_of(w, &handed_over.id, &tee_s_line, false))
        .await
        .expect("a return on its way")
        .into_inner()
        .order_return
        .expect("return");

    let mut app = ReservationServiceClient::new(w.shop.inventory.with_token(&token(
        w,
        Role::ChannelApp,
        Side::In,
    )));
    let held = hold(&mut app, w).await;
    let to_fulfil = hold(&mut app, w).await;
    let to_release = hold(&mut app, w).await;

    let transfer = TransferServiceClient::new(w.shop.inventory.admin())
        .create_transfer(inv::CreateTransferRequest {
            idempotency_key: key(),
            from_location_id: w.warehouse.clone(),
            to_location_id: w.lyon.clone(),
            lines: vec![inv::SkuQuantity {
                sku_id: w.tee_l.clone(),
                quantity: 10,
            }],
            expected_at: None,
            reason: "restock Lyon".into(),
        })
        .await
        .expect("a transfer to Lyon")
        .into_inner()
        .transfer
        .expect("transfer")
        .id;
    StockServiceClient::new(w.shop.inventory.admin())
        .set_channel_quota(mug_quota(w))
        .await
        .expect("the e-shop's mug quota");
    w.sourcing()
        .set_sourcing_config(eshop_sourcing(w))
        .await
        .expect("the e-shop's sourcing");

    Fixtures {
        customer: order.customer_id.clone(),
        fulfilment: order.fulfilments.first().expect("a fulfilment").id.clone(),
        pickup_code: order.pickup.as_ref().expect("pickup").pickup_code.clone(),
        order: order.id,
        to_cancel: to_cancel.id,
        due: to_pay.total.as_ref().expect("total").minor_units,
        to_pay: to_pay.id,
        to_readdress: to_readdress.id,
        handed_over: handed_over.id.clone(),
        tee_s_line,
        tee_m_line,
        refund: return_done.refund_total.clone(),
        return_done: return_done.id,
        return_awaiting: return_awaiting.id,
        held,
        to_fulfil,
        to_release,
        transfer,
    }
}

/// The rule of `method` ("omni.orders.v1.OrderService/GetOrder"), None for a method this
/// file does not cover.
pub fn rule(method: &str, w: &World, f: &Fixtures) -> Option<Rule> {
    Some(match method {
        // inventory: availability and locations.
        "omni.inventory.v1.AvailabilityService/FindNearby" => Rule::Shared(NETWORK_STOCK),
        "omni.inventory.v1.AvailabilityService/GetAvailability" => Rule::Shared(NETWORK_STOCK),
        "omni.inventory.v1.AvailabilityService/WatchAvailability" => Rule::Shared(NETWORK_STOCK),
        "omni.inventory.v1.LocationService/CreateLocation" => Rule::Shared(ADMIN_LOCATIONS),
        "omni.inventory.v1.LocationService/GetLocation" => Rule::Shared(LOCATIONS),
        "omni.inventory.v1.LocationService/ListLocations" => Rule::Shared(LOCATIONS),
        "omni.inventory.v1.LocationService/UpdateLocation" => Rule::Shared(ADMIN_LOCATIONS),

        // inventory: reservations, the maker's (the in-scope e-shop app's).
        "omni.inventory.v1.ReservationService/ExtendReservation" => {
            Rule::Owner(req(inv::ExtendReservationRequest {
                reservation_id: f.held.clone(),
                expiry: Some(inv::extend_reservation_request::Expiry::NoExpiry(true)),
            }))
        }
        "omni.inventory.v1.ReservationService/Fulfil" => Rule::Owner(req(inv::FulfilRequest {
            idempotency_key: key(),
            reservation_id: f.to_fulfil.clone(),
            lines: Vec::new(),
            reference: "scope".into(),
        })),
        "omni.inventory.v1.ReservationService/GetReservation" => {
            Rule::Owner(req(inv::GetReservationRequest {
                reservation_id: f.held.clone(),
            }))
        }
        "omni.inventory.v1.ReservationService/Release" => Rule::Owner(req(inv::ReleaseRequest {
            idempotency_key: key(),
            reservation_id: f.to_release.clone(),
            lines: Vec::new(),
            reason: "scope".into(),
        })),
        // A new hold needs its channel in scope.
        "omni.inventory.v1.ReservationService/Reserve" => Rule::Denied(req(reserve(w, 60))),

        // inventory: stock. Store-limited callers read and move their stores' stock only.
        // A quota is its channel's record: a caller limited to other channels lists none of it.
        "omni.inventory.v1.StockService/ListChannelQuotas" => Rule::Hidden(
            req(inv::ListChannelQuotasRequest {
                sku_id: w.mug.clone(),
                ..Default::default()
            }),
            w.eshop.id.clone(),
        ),
        "omni.inventory.v1.StockService/ListHotSkus" => {
            Rule::Shared("a SKU is hot for every channel at once")
        }
        "omni.inventory.v1.StockService/ListInventoryValues" => {
            Rule::Denied(req(inv::ListInventoryValuesRequest {
                days: Some(omni_proto::common::DateRange {
                    start: Some(today()),
                    end: Some(today()),
                }),
                location_ids: vec![w.lyon.clone()],
                ..Default::default()
            }))
        }
        "omni.inventory.v1.StockService/ListMovements" => {
            Rule::Denied(req(inv::ListMovementsRequest {
                sku_id: w.tee_m.clone(),
                location_id: w.lyon.clone(),
                ..Default::default()
            }))
        }
        "omni.inventory.v1.StockService/ListStockLevels" => {
            Rule::Denied(req(inv::ListStockLevelsRequest {
                sku_ids: vec![w.tee_m.clone()],
                location_id: w.lyon.clone(),
                ..Default::default()
            }))
        }
        "omni.inventory.v1.StockService/RecordMovement" => {
            Rule::Denied(req(inv::RecordMovementRequest {
                idempotency_key: key(),
                location_id: w.lyon.clone(),
                kind: inv::MovementKind::Receipt as i32,
                lines: vec![inv::MovementLine {
                    sku_id: w.tee_l.clone(),
                    quantity: 1,
                }],
                reason: "delivery".into(),
                reference: String::new(),
            }))
        }
        // A quota change needs its channel in scope.
        "omni.inventory.v1.StockService/SetChannelQuota" => Rule::Denied(req(mug_quota(w))),
        "omni.inventory.v1.StockService/SetHotSku" => {
            Rule::Shared("a SKU is hot for every channel at once")
        }
        "omni.inventory.v1.StockService/SetStockSettings" => {
            Rule::Denied(req(inv::SetStockSettingsRequest {
                sku_id: w.mug.clone(),
                location_id: w.lyon.clone(),
                safety_stock: 0,
                low_stock_threshold: 1,
            }))
        }

        // inventory: transfers, at the caller's stores.
        // Sent from Lyon: an associate sends from its own store.
        "omni.inventory.v1.TransferService/CreateTransfer" => {
            Rule::Denied(req(inv::CreateTransferRequest {
                idempotency_key: key(),
                from_location_id: w.lyon.clone(),
                to_location_id: w.warehouse.clone(),
                lines: vec![inv::SkuQuantity {
                    sku_id: w.tee_l.clone(),
                    quantity: 1,
                }],
                expected_at: None,
                reason: "back to the warehouse".into(),
            }))
        }
        // The warehouse's transfer to Lyon: neither end is Villeurbanne's.
        "omni.inventory.v1.TransferService/GetTransfer" => {
            Rule::Denied(req(inv::GetTransferRequest {
                transfer_id: f.transfer.clone(),
            }))
        }
        // Lyon's transfers, named as ListMovements and ListStockLevels name the store.
        "omni.inventory.v1.TransferService/ListTransfers" => {
            Rule::Denied(req(inv::ListTransfersRequest {
                location_id: w.lyon.clone(),
                ..Default::default()
            }))
        }
        // Received at Lyon: an associate receives at its own store.
        "omni.inventory.v1.TransferService/ReceiveTransfer" => {
            Rule::Denied(req(inv::ReceiveTransferRequest {
                idempotency_key: key(),
                transfer_id: f.transfer.clone(),
                lines: vec![inv::SkuQuantity {
                    sku_id: w.tee_l.clone(),
                    quantity: 1,
                }],
            }))
        }
        // A dry run between the caller's stores.
        "omni.inventory.v1.TransferService/SuggestRebalance" => {
            Rule::Denied(req(inv::SuggestRebalanceRequest {
                location_ids: vec![w.lyon.clone()],
                ..Default::default()
            }))
        }

        // order-management: fulfilment of the paid e-shop order waiting at Lyon.
        "omni.orders.v1.FulfilmentService/ConfirmDelivery" => {
            Rule::Denied(req(pb::ConfirmDeliveryRequest {
                order_id: f.order.clone(),
                fulfilment_id: f.fulfilment.clone(),
                delivered_at: None,
            }))
        }
        "omni.orders.v1.FulfilmentService/HandOverPickup" => {
            Rule::Denied(req(pb::HandOverPickupRequest {
                order_id: f.order.clone(),
                pickup_code: f.pickup_code.clone(),
            }))
        }
        // Lyon's queue holds the e-shop order: a caller that does not reach it is refused.
        "omni.orders.v1.FulfilmentService/ListPickupQueue" => {
            Rule::Denied(req(pb::ListPickupQueueRequest {
                store_id: w.lyon.clone(),
                ..Default::default()
            }))
        }
        "omni.orders.v1.FulfilmentService/MarkReadyForPickup" => {
            Rule::Denied(req(pb::MarkReadyForPickupRequest {
                order_id: f.order.clone(),
            }))
        }
        "omni.orders.v1.FulfilmentService/ShipFulfilment" => {
            Rule::Denied(req(pb::ShipFulfilmentRequest {
                order_id: f.order.clone(),
                fulfilment_id: f.fulfilment.clone(),
                carrier: "Colissimo".into(),
                tracking_number: "6A00SCOPE".into(),
            }))
        }
        "omni.orders.v1.FulfilmentService/StartPicking" => {
            Rule::Denied(req(pb::StartPickingRequest {
                order_id: f.order.clone(),
                fulfilment_id: f.fulfilment.clone(),
            }))
        }

        // order-management: orders.
        "omni.orders.v1.OrderService/CancelOrder" => Rule::Denied(req(pb::CancelOrderRequest {
            idempotency_key: key(),
            order_id: f.to_cancel.clone(),
            reason: pb::CancellationReason::CustomerRequest as i32,
            note: String::new(),
        })),
        "omni.orders.v1.OrderService/ChangeDeliveryAddress" => {
            Rule::Denied(req(pb::ChangeDeliveryAddressRequest {
                idempotency_key: key(),
                order_id: f.to_readdress.clone(),
                address: Some(home_villeurbanne()),
            }))
        }
        "omni.orders.v1.OrderService/GetOrder" => Rule::Denied(req(pb::GetOrderRequest {
            key: Some(pb::get_order_request::Key::OrderId(f.order.clone())),
        })),
        // A closed e-shop order of the previous system, collected at Lyon last week.
        "omni.orders.v1.OrderService/ImportOrders" => {
            let days_ago = |days: i64| {
                let at = chrono::Utc::now() - chrono::Duration::days(days);
                prost_types::Timestamp {
                    seconds: at.timestamp(),
                    nanos: 0,
                }
            };
            Rule::Denied(req(pb::ImportOrdersRequest {
                orders: vec![pb::HistoricalOrder {
                    channel_id: w.eshop.id.clone(),
                    channel_order_ref: format!("legacy-{}", key()),
                    customer_id: f.customer.clone(),
                    lines: vec![pb::HistoricalOrderLine {
                        sku_id: w.mug.clone(),
                        quantity: 1,
                        location_id: String::new(),
                    }],
                    delivery: pickup_at_lyon(w),
                    status: pb::OrderStatus::Completed as i32,
                    placed_at: Some(days_ago(8)),
                    closed_at: Some(days_ago(7)),
                    ..Default::default()
                }],
            }))
        }
        // The buyer's orders: the e-shop order collected at Lyon only for callers reaching it.
        "omni.orders.v1.OrderService/ListOrders" => Rule::Hidden(
            req(pb::ListOrdersRequest {
                customer_id: f.customer.clone(),
                ..Default::default()
            }),
            f.order.clone(),
        ),
        // Through the e-shop, picked up at Lyon.
        "omni.orders.v1.OrderService/PlaceOrder" => Rule::Denied(req(order_request(
            w,
            vec![line(&w.tee_m, 1)],
            pickup_at_lyon(w),
        ))),
        "omni.orders.v1.OrderService/RecordPayment" => {
            Rule::Denied(req(pb::RecordPaymentRequest {
                idempotency_key: key(),
                order_id: f.to_pay.clone(),
                payment: Some(payment(f.due)),
            }))
        }
        "omni.orders.v1.OrderService/WatchOrder" => Rule::Denied(req(pb::WatchOrderRequest {
            key: Some(pb::watch_order_request::Key::OrderId(f.order.clone())),
        })),

        // order-management: returns of the order handed over at Lyon, through the e-shop.
        "omni.orders.v1.ReturnService/CreateExchange" => {
            Rule::Denied(req(pb::CreateExchangeRequest {
                idempotency_key: key(),
                order_id: f.handed_over.clone(),
                returned: vec![pb::ReturnLineInput {
                    order_line_id: f.tee_m_line.clone(),
                    quantity: 1,
                    reason: pb::ReturnReason::WrongSize as i32,
                    condition: pb::ItemCondition::Resellable as i32,
                }],
                replacements: vec![line(&w.tee_l, 1)],
                delivery: pickup_at_lyon(w),
                channel_id: w.eshop.id.clone(),
                location_id: w.lyon.clone(),
                associate_id: String::new(),
            }))
        }
        "omni.orders.v1.ReturnService/CreateReturn" => {
            Rule::Denied(req(return_of(w, &f.handed_over, &f.tee_s_line, false)))
        }
        "omni.orders.v1.ReturnService/GetReturn" => Rule::Denied(req(pb::GetReturnRequest {
            return_id: f.return_done.clone(),
        })),
        "omni.orders.v1.ReturnService/ListReturns" => Rule::Hidden(
            req(pb::ListReturnsRequest {
                order_id: f.handed_over.clone(),
                ..Default::default()
            }),
            f.return_done.clone(),
        ),
        "omni.orders.v1.ReturnService/ReceiveReturn" => {
            Rule::Denied(req(pb::ReceiveReturnRequest {
                idempotency_key: key(),
                return_id: f.return_awaiting.clone(),
                lines: vec![pb::ReturnLineCondition {
                    order_line_id: f.tee_s_line.clone(),
                    condition: pb::ItemCondition::Resellable as i32,
                }],
            }))
        }
        "omni.orders.v1.ReturnService/RecordRefund" => Rule::Denied(req(pb::RecordRefundRequest {
            idempotency_key: key(),
            return_id: f.return_done.clone(),
            amount: f.refund.clone(),
            provider_reference: "psp-scope-refund".into(),
        })),

        // order-management: the caller's channels' sourcing.
        "omni.orders.v1.SourcingService/GetSourcingConfig" => {
            Rule::Denied(req(pb::GetSourcingConfigRequest {
                channel_id: w.eshop.id.clone(),
            }))
        }
        "omni.orders.v1.SourcingService/ListSourcingConfigs" => Rule::Hidden(
            req(pb::ListSourcingConfigsRequest::default()),
            w.eshop.id.clone(),
        ),
        "omni.orders.v1.SourcingService/PreviewSourcing" => {
            Rule::Denied(req(pb::PreviewSourcingRequest {
                channel_id: w.eshop.id.clone(),
                lines: vec![line(&w.tee_m, 1)],
                delivery: pickup_at_lyon(w),
                strategy: 0,
            }))
        }
        "omni.orders.v1.SourcingService/SetSourcingConfig" => Rule::Denied(req(eshop_sourcing(w))),

        _ => return None,
    })
}

fn pickup_at_lyon(w: &World) -> Option<pb::Delivery> {
    at_store(pb::DeliveryKind::Pickup, &w.lyon)
}

/// An e-shop order of this file's buyer.
fn order_request(
    w: &World,
    lines: Vec<pb::OrderLineInput>,
    delivery: Option<pb::Delivery>,
) -> pb::PlaceOrderRequest {
    pb::PlaceOrderRequest {
        customer: Some(pb::CustomerRef {
            phone: PHONE.into(),
            name: "Scope Buyer".into(),
            ..Default::default()
        }),
        ..w.request(&w.eshop, lines, delivery)
    }
}

async fn place(
    w: &World,
    lines: Vec<pb::OrderLineInput>,
    delivery: Option<pb::Delivery>,
) -> pb::Order {
    w.place(order_request(w, lines, delivery))
        .await
        .expect("an e-shop order")
}

/// Picks, readies and hands over a paid pickup order.
async fn hand_over(w: &World, paid: &pb::Order) -> pb::Order {
    let mut fulfilment = w.fulfilment_admin();
    fulfilment
        .start_picking(pb::StartPickingRequest {
            order_id: paid.id.clone(),
            fulfilment_id: String::new(),
        })
        .await
        .expect("picking");
    fulfilment
        .mark_ready_for_pickup(pb::MarkReadyForPickupRequest {
            order_id: paid.id.clone(),
        })
        .await
        .expect("ready");
    fulfilment
        .hand_over_pickup(pb::HandOverPickupRequest {
            order_id: paid.id.clone(),
            pickup_code: paid.pickup.as_ref().expect("pickup").pickup_code.clone(),
        })
        .await
        .expect("handed over")
        .into_inner()
        .order
        .expect("order")
}

/// One unit of a line back at Lyon through the e-shop, in hand or on its way.
fn return_of(w: &World, order_id: &str, line_id: &str, in_hand: bool) -> pb::CreateReturnRequest {
    pb::CreateReturnRequest {
        idempotency_key: key(),
        order_id: order_id.into(),
        lines: vec![pb::ReturnLineInput {
            order_line_id: line_id.into(),
            quantity: 1,
            reason: pb::ReturnReason::NoLongerWanted as i32,
            condition: if in_hand {
                pb::ItemCondition::Resellable as i32
            } else {
                pb::ItemCondition::Unspecified as i32
            },
        }],
        channel_id: w.eshop.id.clone(),
        location_id: w.lyon.clone(),
        items_received: in_hand,
        note: String::new(),
    }
}

/// A tee S held at the warehouse for the e-shop, for `ttl_secs`.
fn reserve(w: &World, ttl_secs: i64) -> inv::ReserveRequest {
    inv::ReserveRequest {
        idempotency_key: key(),
        lines: vec![inv::ReserveLine {
            sku_id: w.tee_s.clone(),
            quantity: 1,
            location_ids: vec![w.warehouse.clone()],
        }],
        channel_id: w.eshop.id.clone(),
        ttl: Some(prost_types::Duration {
            seconds: ttl_secs,
            nanos: 0,
        }),
        reference: "scope".into(),
    }
}

async fn hold(app: &mut ReservationServiceClient<AuthChannel>, w: &World) -> String {
    app.reserve(reserve(w, 24 * 3600))
        .await
        .expect("a hold of the e-shop app")
        .into_inner()
        .reservation
        .expect("reservation")
        .id
}

fn mug_quota(w: &World) -> inv::SetChannelQuotaRequest {
    inv::SetChannelQuotaRequest {
        sku_id: w.mug.clone(),
        channel_id: w.eshop.id.clone(),
        limit: Some(QUOTA),
        reset_used: false,
    }
}

fn eshop_sourcing(w: &World) -> pb::SetSourcingConfigRequest {
    pb::SetSourcingConfigRequest {
        config: Some(pb::SourcingConfig {
            channel_id: w.eshop.id.clone(),
            strategy: pb::SourcingStrategy::Nearest as i32,
            ..Default::default()
        }),
    }
}

/// Today (UTC), as the contracts write a date.
fn today() -> omni_proto::common::Date {
    use chrono::Datelike as _;
    let now = chrono::Utc::now().date_naive();
    omni_proto::common::Date {
        year: now.year(),
        month: now.month() as i32,
        day: now.day() as i32,
    }
}

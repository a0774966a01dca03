//! The customer journeys across channels, on the real identity, catalog, inventory and crm.

use std::time::Duration;

use omni_proto::omni::orders::v1 as pb;
use omni_testkit::OrderClocks;
use tokio_stream::StreamExt as _;

use crate::support::*;

#[tokio::test]
async fn buy_online_pick_up_in_store_within_30_minutes() {
    let w = World::start().await;
    w.receive(&w.lyon, &w.tee_m, 3).await;
    let mut request = w.request(
        &w.eshop,
        vec![line(&w.tee_m, 1)],
        at_store(pb::DeliveryKind::Pickup, &w.lyon),
    );
    // The customer is known by phone only: identity creates her.
    request.customer = by_phone("06 12 34 56 78");
    let placed = w.place(request).await.expect("placed");
    assert_eq!(placed.status(), pb::OrderStatus::PendingPayment);
    assert_eq!(placed.total.as_ref().unwrap().minor_units, TEE_PRICE);
    assert!(!placed.customer_id.is_empty());
    assert_eq!(
        w.level(&w.lyon, &w.tee_m).await,
        (3, 1),
        "held at the pickup store"
    );

    let paid = w.pay(&placed).await;
    assert_eq!(paid.status(), pb::OrderStatus::Allocated);
    let pickup = paid.pickup.clone().expect("pickup");
    let confirmed = paid.confirmed_at.unwrap().seconds;
    assert_eq!(
        pickup.promised_ready_at.unwrap().seconds - confirmed,
        30 * 60
    );

    let mut store = w.fulfilment(&w.lyon);
    let queue = store
        .list_pickup_queue(pb::ListPickupQueueRequest {
            store_id: w.lyon.clone(),
            ..Default::default()
        })
        .await
        .expect("queue")
        .into_inner();
    assert_eq!(queue.due_count, 1);
    assert_eq!(queue.entries[0].order_id, paid.id);
    assert_eq!(queue.entries[0].state(), pb::PickupQueueState::Due);
    assert!(queue.entries[0].minutes_late <= 0);

    // Another store's associate cannot touch it.
    let other = w
        .fulfilment(&w.villeurbanne)
        .start_picking(pb::StartPickingRequest {
            order_id: paid.id.clone(),
            fulfilment_id: String::new(),
        })
        .await
        .expect_err("outside the associate's store");
    assert_eq!(other.code(), tonic::Code::PermissionDenied);

    store
        .start_picking(pb::StartPickingRequest {
            order_id: paid.id.clone(),
            fulfilment_id: String::new(),
        })
        .await
        .expect("picking");
    let ready = store
        .mark_ready_for_pickup(pb::MarkReadyForPickupRequest {
            order_id: paid.id.clone(),
        })
        .await
        .expect("ready")
        .into_inner()
        .order
        .unwrap();
    assert_eq!(ready.status(), pb::OrderStatus::ReadyForPickup);
    let pickup = ready.pickup.clone().unwrap();
    assert!(pickup.ready_within_promise, "ready inside the 30 minutes");
    assert!(pickup.pickup_deadline.is_some());

    let wrong = store
        .hand_over_pickup(pb::HandOverPickupRequest {
            order_id: paid.id.clone(),
            pickup_code: "000000".into(),
        })
        .await
        .expect_err("wrong code");
    assert_eq!(wrong.code(), tonic::Code::InvalidArgument);
    assert_eq!(fields(&wrong), ["pickup_code"]);
    assert_eq!(
        w.level(&w.lyon, &w.tee_m).await,
        (3, 1),
        "nothing left the store"
    );

    let done = store
        .hand_over_pickup(pb::HandOverPickupRequest {
            order_id: paid.id.clone(),
            pickup_code: pickup.pickup_code.clone(),
        })
        .await
        .expect("handed over")
        .into_inner()
        .order
        .unwrap();
    assert_eq!(done.status(), pb::OrderStatus::Completed);
    assert!(done.pickup.unwrap().handed_over_at.is_some());
    assert_eq!(
        w.level(&w.lyon, &w.tee_m).await,
        (2, 0),
        "the unit left with the customer"
    );
    let statuses: Vec<_> = done.history.iter().map(|h| h.status()).collect();
    assert_eq!(
        statuses,
        [
            pb::OrderStatus::PendingPayment,
            pb::OrderStatus::Confirmed,
            pb::OrderStatus::Allocated,
            pb::OrderStatus::Picking,
            pb::OrderStatus::ReadyForPickup,
            pb::OrderStatus::Completed,
        ]
    );
    assert!(done.history.iter().all(|h| h.changed_at.is_some()));
    assert_eq!(
        w.count("SELECT count(*) FROM outbox WHERE event_type = 'orders.order_fulfilled'")
            .await,
        1
    );
    let empty = store
        .list_pickup_queue(pb::ListPickupQueueRequest {
            store_id: w.lyon.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(empty.entries.is_empty());
}

#[tokio::test]
async fn a_pickup_the_store_cannot_serve_names_the_nearest_stores_that_can() {
    let w = World::start().await;
    w.receive(&w.villeurbanne, &w.tee_s, 2).await;
    w.receive(&w.warehouse, &w.tee_s, 50).await;
    let refused = w
        .place(w.request(
            &w.eshop,
            vec![line(&w.tee_s, 1)],
            at_store(pb::DeliveryKind::Pickup, &w.lyon),
        ))
        .await
        .expect_err("nothing at Lyon");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert_eq!(
        preconditions(&refused),
        [(
            "PICKUP_UNAVAILABLE".to_owned(),
            format!("location/{}", w.villeurbanne)
        )],
        "{refused:?}"
    );
    // A store that does no pickup at all is refused as such.
    let no_pickup = w
        .place(w.request(
            &w.eshop,
            vec![line(&w.tee_s, 1)],
            at_store(pb::DeliveryKind::Pickup, &w.paris),
        ))
        .await
        .expect_err("Paris does no pickup");
    assert_eq!(preconditions(&no_pickup)[0].0, "PICKUP_NOT_OFFERED");
    assert_eq!(w.count("SELECT count(*) FROM orders").await, 0);
    assert_eq!(w.level(&w.villeurbanne, &w.tee_s).await, (2, 0));
}

#[tokio::test]
async fn a_livestream_order_ships_from_the_nearest_store_that_has_it() {
    let w = World::start().await;
    w.receive(&w.warehouse, &w.tee_l, 100).await;
    w.receive(&w.villeurbanne, &w.tee_l, 2).await;
    w.receive(&w.lyon, &w.tee_l, 2).await;
    let order = w
        .place(w.request(
            &w.livestream,
            vec![line(&w.tee_l, 1)],
            ship_to(home_villeurbanne()),
        ))
        .await
        .expect("placed");
    let sourcing = order.sourcing.clone().unwrap();
    assert!(!sourcing.split);
    assert_eq!(sourcing.allocations.len(), 1);
    assert_eq!(sourcing.allocations[0].location_id, w.villeurbanne);
    assert!(sourcing.reason.contains("VIL-01"), "{}", sourcing.reason);
    assert_eq!(order.lines[0].location_id, w.villeurbanne);
    let paid = w.pay(&order).await;
    let done = w.complete_shipping(&paid).await;
    assert_eq!(done.status(), pb::OrderStatus::Completed);
    assert_eq!(done.fulfilments[0].carrier, "Colissimo");
    assert_eq!(w.level(&w.villeurbanne, &w.tee_l).await, (1, 0));
    assert_eq!(w.level(&w.warehouse, &w.tee_l).await, (100, 0));
}

#[tokio::test]
async fn an_order_splits_across_two_locations_only_when_it_must() {
    let w = World::start().await;
    w.receive(&w.villeurbanne, &w.tee_s, 5).await;
    w.receive(&w.warehouse, &w.mug, 5).await;
    let lines = || vec![line(&w.tee_s, 1), line(&w.mug, 1)];
    let split = w
        .place(w.request(&w.eshop, lines(), ship_to(home_villeurbanne())))
        .await
        .expect("placed");
    let sourcing = split.sourcing.clone().unwrap();
    assert!(sourcing.split, "{}", sourcing.reason);
    assert_eq!(split.fulfilments.len(), 2);
    assert_eq!(split.lines[0].location_id, w.villeurbanne);
    assert_eq!(split.lines[1].location_id, w.warehouse);

    // Once one location has both, one shipment, even though a store is nearer.
    w.receive(&w.warehouse, &w.tee_s, 5).await;
    let whole = w
        .place(w.request(&w.eshop, lines(), ship_to(home_villeurbanne())))
        .await
        .expect("placed");
    let sourcing = whole.sourcing.clone().unwrap();
    assert!(!sourcing.split);
    assert_eq!(whole.fulfilments.len(), 1);
    assert_eq!(whole.fulfilments[0].location_id, w.warehouse);

    // The preview agrees and holds nothing.
    let preview = w
        .sourcing()
        .preview_sourcing(pb::PreviewSourcingRequest {
            channel_id: w.eshop.id.clone(),
            lines: lines(),
            delivery: ship_to(home_villeurbanne()),
            strategy: 0,
        })
        .await
        .expect("preview")
        .into_inner()
        .decision
        .unwrap();
    assert_eq!(preview.allocations.len(), 1);
    assert_eq!(preview.allocations[0].location_id, w.warehouse);
    // A channel that drains overstocked locations takes the biggest pile, and says so.
    w.receive(&w.warehouse, &w.tee_s, 20).await;
    w.sourcing()
        .set_sourcing_config(pb::SetSourcingConfigRequest {
            config: Some(pb::SourcingConfig {
                channel_id: w.eshop.id.clone(),
                strategy: pb::SourcingStrategy::DrainOverstock as i32,
                ..Default::default()
            }),
        })
        .await
        .expect("config");
    let drained = w
        .place(w.request(
            &w.eshop,
            vec![line(&w.tee_s, 1)],
            ship_to(home_villeurbanne()),
        ))
        .await
        .expect("placed");
    let decision = drained.sourcing.unwrap();
    assert_eq!(decision.strategy(), pb::SourcingStrategy::DrainOverstock);
    assert_eq!(
        decision.allocations[0].location_id, w.warehouse,
        "the warehouse holds more"
    );
}

#[tokio::test]
async fn an_online_order_is_returned_in_a_store_and_restocked_there() {
    let w = World::start().await;
    w.receive(&w.warehouse, &w.tee_m, 10).await;
    w.receive(&w.warehouse, &w.mug, 10).await;
    let order = w
        .place(w.request(
            &w.eshop,
            vec![line(&w.tee_m, 3), line(&w.mug, 1)],
            ship_to(home_lyon_south()),
        ))
        .await
        .expect("placed");
    let done = w.complete_shipping(&w.pay(&order).await).await;
    let tee_line = done.lines[0].id.clone();

    let mut counter = w.returns_at(&w.lyon);
    let returned = counter
        .create_return(pb::CreateReturnRequest {
            idempotency_key: key(),
            order_id: done.id.clone(),
            lines: vec![pb::ReturnLineInput {
                order_line_id: tee_line.clone(),
                quantity: 2,
                reason: pb::ReturnReason::WrongSize as i32,
                condition: pb::ItemCondition::Resellable as i32,
            }],
            channel_id: w.store_channel.id.clone(),
            location_id: w.lyon.clone(),
            items_received: true,
            note: String::new(),
        })
        .await
        .expect("returned")
        .into_inner()
        .order_return
        .unwrap();
    assert_eq!(returned.status(), pb::ReturnStatus::Completed);
    assert_eq!(returned.refund_total.unwrap().minor_units, 2 * TEE_PRICE);
    assert_eq!(
        w.level(&w.lyon, &w.tee_m).await,
        (2, 0),
        "restocked where it came back"
    );
    assert_eq!(w.level(&w.warehouse, &w.tee_m).await, (7, 0));

    // One unit is left to return; three more is refused and writes nothing.
    let too_many = counter
        .create_return(pb::CreateReturnRequest {
            idempotency_key: key(),
            order_id: done.id.clone(),
            lines: vec![pb::ReturnLineInput {
                order_line_id: tee_line.clone(),
                quantity: 2,
                reason: pb::ReturnReason::NoLongerWanted as i32,
                condition: pb::ItemCondition::Resellable as i32,
            }],
            channel_id: w.store_channel.id.clone(),
            location_id: w.lyon.clone(),
            items_received: true,
            note: String::new(),
        })
        .await
        .expect_err("more than bought");
    assert_eq!(too_many.code(), tonic::Code::FailedPrecondition);
    assert_eq!(preconditions(&too_many)[0].0, "RETURN_EXCEEDS_PURCHASE");
    assert_eq!(w.count("SELECT count(*) FROM returns").await, 1);

    // A damaged unit comes back by post: awaited, then written off rather than restocked.
    let by_post = w
        .returns_admin()
        .create_return(pb::CreateReturnRequest {
            idempotency_key: key(),
            order_id: done.id.clone(),
            lines: vec![pb::ReturnLineInput {
                order_line_id: tee_line.clone(),
                quantity: 1,
                reason: pb::ReturnReason::Damaged as i32,
                condition: 0,
            }],
            channel_id: w.eshop.id.clone(),
            location_id: w.warehouse.clone(),
            items_received: false,
            note: String::new(),
        })
        .await
        .expect("awaiting")
        .into_inner()
        .order_return
        .unwrap();
    assert_eq!(by_post.status(), pb::ReturnStatus::AwaitingItems);
    let received = w
        .returns_admin()
        .receive_return(pb::ReceiveReturnRequest {
            idempotency_key: key(),
            return_id: by_post.id.clone(),
            lines: vec![pb::ReturnLineCondition {
                order_line_id: tee_line,
                condition: pb::ItemCondition::Damaged as i32,
            }],
        })
        .await
        .expect("received")
        .into_inner()
        .order_return
        .unwrap();
    assert_eq!(received.status(), pb::ReturnStatus::Completed);
    assert_eq!(
        w.level(&w.warehouse, &w.tee_m).await,
        (7, 0),
        "damaged: not restocked"
    );
    let order = w.get(&done.id).await;
    assert_eq!(order.refunded_total.unwrap().minor_units, 3 * TEE_PRICE);
    assert_eq!(order.lines[0].returned_quantity, 3);
    assert_eq!(
        w.count("SELECT count(*) FROM outbox WHERE event_type = 'orders.return_completed'")
            .await,
        2
    );
}

#[tokio::test]
async fn a_pos_carry_out_sale_completes_in_one_call() {
    let w = World::start().await;
    w.receive(&w.lyon, &w.mug, 4).await;
    let mut till = w.orders_at(&w.lyon);
    let sale = till
        .place_order(pb::PlaceOrderRequest {
            idempotency_key: key(),
            channel_id: w.store_channel.id.clone(),
            store_id: w.lyon.clone(),
            lines: vec![line(&w.mug, 2)],
            delivery: at_store(pb::DeliveryKind::CarryOut, &w.lyon),
            payment: Some(payment(2 * MUG_PRICE)),
            ..Default::default()
        })
        .await
        .expect("sold")
        .into_inner()
        .order
        .unwrap();
    assert_eq!(sale.status(), pb::OrderStatus::Completed);
    assert!(sale.customer_id.is_empty(), "an anonymous sale");
    assert!(
        !sale.associate_id.is_empty(),
        "credited to the associate at the till"
    );
    assert_eq!(w.level(&w.lyon, &w.mug).await, (2, 0));
    // The same till cannot sell from another store.
    let elsewhere = till
        .place_order(pb::PlaceOrderRequest {
            idempotency_key: key(),
            channel_id: w.store_channel.id.clone(),
            store_id: w.villeurbanne.clone(),
            lines: vec![line(&w.mug, 1)],
            delivery: at_store(pb::DeliveryKind::CarryOut, &w.villeurbanne),
            payment: Some(payment(MUG_PRICE)),
            ..Default::default()
        })
        .await
        .expect_err("another store");
    assert_eq!(elsewhere.code(), tonic::Code::PermissionDenied);
}

#[tokio::test]
async fn the_address_changes_inside_24_hours_and_re_sources() {
    let w = World::start().await;
    w.receive(&w.villeurbanne, &w.tee_s, 3).await;
    w.receive(&w.lyon, &w.tee_s, 3).await;
    let order = w
        .place(w.request(
            &w.eshop,
            vec![line(&w.tee_s, 1)],
            ship_to(home_villeurbanne()),
        ))
        .await
        .expect("placed");
    assert_eq!(order.lines[0].location_id, w.villeurbanne);
    let order = w.pay(&order).await;
    let changed = w
        .orders()
        .change_delivery_address(pb::ChangeDeliveryAddressRequest {
            idempotency_key: key(),
            order_id: order.id.clone(),
            address: Some(address("1 place Bellecour", "Lyon", 45.7578, 4.8320)),
        })
        .await
        .expect("changed")
        .into_inner();
    assert!(changed.resourced);
    let moved = changed.order.unwrap();
    assert_eq!(moved.lines[0].location_id, w.lyon);
    assert_eq!(moved.delivery.unwrap().address.unwrap().city, "Lyon");
    assert_eq!(
        w.level(&w.villeurbanne, &w.tee_s).await,
        (3, 0),
        "old hold released"
    );
    assert_eq!(
        w.level(&w.lyon, &w.tee_s).await,
        (3, 1),
        "held at the new location"
    );

    // After shipment, no more changes.
    let shipped = w.complete_shipping(&moved_order(&w, &order.id).await).await;
    let refused = w
        .orders()
        .change_delivery_address(pb::ChangeDeliveryAddressRequest {
            idempotency_key: key(),
            order_id: shipped.id.clone(),
            address: Some(home_villeurbanne()),
        })
        .await
        .expect_err("shipped");
    assert_eq!(preconditions(&refused)[0].0, "ALREADY_SHIPPED");
}

async fn moved_order(w: &World, id: &str) -> pb::Order {
    w.get(id).await
}

#[tokio::test]
async fn the_address_cannot_change_after_24_hours() {
    let w = World::start_with(OrderClocks {
        address_change_window: Duration::ZERO,
        ..OrderClocks::default()
    })
    .await;
    w.receive(&w.warehouse, &w.tee_s, 3).await;
    let order = w
        .place(w.request(
            &w.eshop,
            vec![line(&w.tee_s, 1)],
            ship_to(home_villeurbanne()),
        ))
        .await
        .expect("placed");
    let refused = w
        .orders()
        .change_delivery_address(pb::ChangeDeliveryAddressRequest {
            idempotency_key: key(),
            order_id: order.id.clone(),
            address: Some(home_lyon_south()),
        })
        .await
        .expect_err("window closed");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert_eq!(preconditions(&refused)[0].0, "ADDRESS_CHANGE_WINDOW_CLOSED");
    let unchanged = w.get(&order.id).await;
    assert_eq!(
        unchanged.delivery.unwrap().address.unwrap().city,
        "Villeurbanne"
    );
}

#[tokio::test]
async fn cancelling_releases_the_stock_and_the_coupon() {
    let w = World::start().await;
    w.receive(&w.warehouse, &w.tee_s, 5).await;
    let customer = w.customer("+33 6 12 34 56 78").await;
    let code = w.coupon(&customer.id, 500, &w.livestream.id).await;
    let mut request = w.request(
        &w.eshop,
        vec![line(&w.tee_s, 2)],
        ship_to(home_villeurbanne()),
    );
    request.coupon_codes = vec![code.to_lowercase()];
    let order = w.place(request).await.expect("placed");
    assert_eq!(
        order.total.as_ref().unwrap().minor_units,
        2 * TEE_PRICE - 500
    );
    assert_eq!(order.coupons[0].issuing_channel_id, w.livestream.id);
    assert_eq!(w.available(&w.tee_s).await, 3);

    let mut again = w.request(
        &w.eshop,
        vec![line(&w.tee_s, 1)],
        ship_to(home_villeurbanne()),
    );
    again.coupon_codes = vec![code.clone()];
    let used = w.place(again.clone()).await.expect_err("used coupon");
    assert_eq!(used.code(), tonic::Code::FailedPrecondition);
    assert_eq!(preconditions(&used)[0].0, "COUPON_NOT_USABLE");

    let cancelled = w
        .orders()
        .cancel_order(pb::CancelOrderRequest {
            idempotency_key: key(),
            order_id: order.id.clone(),
            reason: pb::CancellationReason::CustomerRequest as i32,
            note: "changed her mind".into(),
        })
        .await
        .expect("cancelled")
        .into_inner()
        .order
        .unwrap();
    assert_eq!(cancelled.status(), pb::OrderStatus::Cancelled);
    assert_eq!(w.available(&w.tee_s).await, 5, "stock back");
    assert_eq!(
        w.reservation(&order.reservation_id).await.status(),
        omni_proto::omni::inventory::v1::ReservationStatus::Released
    );
    // The coupon works again, on another channel.
    again.idempotency_key = key();
    again.channel_id = w.livestream.id.clone();
    let reused = w.place(again).await.expect("coupon given back");
    assert_eq!(reused.coupons[0].code, code);
}

#[tokio::test]
async fn unpaid_orders_expire_and_release_their_stock() {
    let w = World::start_with(OrderClocks {
        payment_window: Duration::from_millis(300),
        ..OrderClocks::default()
    })
    .await;
    w.receive(&w.warehouse, &w.mug, 2).await;
    let order = w
        .place(w.request(
            &w.eshop,
            vec![line(&w.mug, 2)],
            ship_to(home_villeurbanne()),
        ))
        .await
        .expect("placed");
    assert_eq!(w.available(&w.mug).await, 0);
    eventually(async || w.get(&order.id).await.status() == pb::OrderStatus::Cancelled).await;
    let expired = w.get(&order.id).await;
    assert_eq!(
        expired.cancellation_reason(),
        pb::CancellationReason::PaymentExpired
    );
    assert_eq!(w.available(&w.mug).await, 2);
    let late = w
        .orders_admin()
        .record_payment(pb::RecordPaymentRequest {
            idempotency_key: key(),
            order_id: order.id.clone(),
            payment: Some(payment(2 * MUG_PRICE)),
        })
        .await
        .expect_err("expired");
    assert_eq!(preconditions(&late)[0].0, "ORDER_NOT_AWAITING_PAYMENT");
}

#[tokio::test]
async fn a_pickup_not_collected_in_time_is_cancelled_and_its_stock_released() {
    let w = World::start_with(OrderClocks {
        pickup_hold: Duration::from_millis(300),
        ..OrderClocks::default()
    })
    .await;
    w.receive(&w.lyon, &w.tee_m, 2).await;
    let paid = w.paid_pickup(&w.tee_m, &w.lyon).await;
    w.make_ready(&paid, &w.lyon).await;
    eventually(async || w.get(&paid.id).await.status() == pb::OrderStatus::Cancelled).await;
    assert_eq!(
        w.get(&paid.id).await.cancellation_reason(),
        pb::CancellationReason::NotCollected
    );
    assert_eq!(
        w.level(&w.lyon, &w.tee_m).await,
        (2, 0),
        "back on the shelf"
    );
}

/// The sweeper asks every second which orders ran out of time. Its question is answered from
/// the lapsed orders' own partial indexes, so a sweep reads what is due, not every order ever
/// placed: even with sequential scans priced out, the old question walked the whole table
/// through `orders_placed_idx`.
#[tokio::test]
async fn a_sweep_reads_only_the_orders_that_are_due() {
    let w = World::start().await;
    let db = w.shop.orders.db().await.expect("db");
    let mut conn = db.acquire().await.expect("connection");
    sqlx::query("SET enable_seqscan = off")
        .execute(&mut *conn)
        .await
        .expect("set");
    let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXPLAIN {}",
        order_management::store::LAPSED_ORDERS
    )))
    .bind(chrono::Utc::now())
    .bind(100_i64)
    .fetch_all(&mut *conn)
    .await
    .expect("explain");
    let plan = plan.join("\n");
    // The query and its indexes name the statuses by number.
    assert_eq!(pb::OrderStatus::PendingPayment as i32, 1);
    assert_eq!(pb::OrderStatus::ReadyForPickup as i32, 5);
    for index in ["orders_unpaid_idx", "orders_lapsed_pickup_idx"] {
        assert!(plan.contains(index), "{index} unused:\n{plan}");
    }
    assert!(
        !plan.contains("Seq Scan") && !plan.contains("orders_placed_idx"),
        "a sweep reads every order:\n{plan}"
    );
    drop(conn);
    db.close().await;
}

#[tokio::test]
async fn an_exchange_returns_one_size_and_hands_over_another() {
    let w = World::start().await;
    w.receive(&w.lyon, &w.tee_s, 2).await;
    w.receive(&w.lyon, &w.tee_l, 2).await;
    w.receive(&w.lyon, &w.mug, 2).await;
    let mut request = w.request(
        &w.store_channel,
        vec![line(&w.tee_s, 1)],
        at_store(pb::DeliveryKind::CarryOut, &w.lyon),
    );
    request.store_id = w.lyon.clone();
    request.payment = Some(payment(TEE_PRICE));
    let bought = w.place(request).await.expect("bought");
    assert_eq!(bought.status(), pb::OrderStatus::Completed);
    let exchanged = w
        .returns_at(&w.lyon)
        .create_exchange(pb::CreateExchangeRequest {
            idempotency_key: key(),
            order_id: bought.id.clone(),
            returned: vec![pb::ReturnLineInput {
                order_line_id: bought.lines[0].id.clone(),
                quantity: 1,
                reason: pb::ReturnReason::WrongSize as i32,
                condition: pb::ItemCondition::Resellable as i32,
            }],
            replacements: vec![line(&w.tee_l, 1)],
            delivery: at_store(pb::DeliveryKind::CarryOut, &w.lyon),
            channel_id: w.store_channel.id.clone(),
            location_id: w.lyon.clone(),
            associate_id: String::new(),
        })
        .await
        .expect("exchanged")
        .into_inner();
    assert_eq!(exchanged.difference.unwrap().minor_units, 0, "same price");
    let replacement = exchanged.replacement.unwrap();
    assert_eq!(replacement.exchange_of_order_id, bought.id);
    assert_eq!(replacement.status(), pb::OrderStatus::Completed);
    assert_eq!(
        exchanged.order_return.unwrap().exchange_order_id,
        replacement.id
    );
    assert_eq!(
        w.level(&w.lyon, &w.tee_s).await,
        (2, 0),
        "the small one is back"
    );
    assert_eq!(
        w.level(&w.lyon, &w.tee_l).await,
        (1, 0),
        "the large one left"
    );

    // Trading up costs the difference, and the replacement waits for it.
    let up = w
        .returns_at(&w.lyon)
        .create_exchange(pb::CreateExchangeRequest {
            idempotency_key: key(),
            order_id: replacement.id.clone(),
            returned: vec![pb::ReturnLineInput {
                order_line_id: replacement.lines[0].id.clone(),
                quantity: 1,
                reason: pb::ReturnReason::NoLongerWanted as i32,
                condition: pb::ItemCondition::Resellable as i32,
            }],
            replacements: vec![line(&w.tee_l, 1), line(&w.mug, 1)],
            delivery: at_store(pb::DeliveryKind::CarryOut, &w.lyon),
            channel_id: w.store_channel.id.clone(),
            location_id: w.lyon.clone(),
            associate_id: String::new(),
        })
        .await
        .expect("traded up")
        .into_inner();
    assert_eq!(up.difference.unwrap().minor_units, MUG_PRICE);
    let pending = up.replacement.unwrap();
    assert_eq!(pending.status(), pb::OrderStatus::PendingPayment);
    let wrong = w
        .orders_admin()
        .record_payment(pb::RecordPaymentRequest {
            idempotency_key: key(),
            order_id: pending.id.clone(),
            payment: Some(payment(TEE_PRICE + MUG_PRICE)),
        })
        .await
        .expect_err("only the difference is due");
    assert_eq!(preconditions(&wrong)[0].0, "PAYMENT_AMOUNT_MISMATCH");
    let paid = w
        .orders_admin()
        .record_payment(pb::RecordPaymentRequest {
            idempotency_key: key(),
            order_id: pending.id.clone(),
            payment: Some(payment(MUG_PRICE)),
        })
        .await
        .expect("difference paid")
        .into_inner()
        .order
        .unwrap();
    assert_eq!(paid.status(), pb::OrderStatus::Completed);
}

#[tokio::test]
async fn watching_an_order_streams_each_status_change() {
    let w = World::start().await;
    w.receive(&w.lyon, &w.mug, 1).await;
    let order = w
        .place(w.request(
            &w.eshop,
            vec![line(&w.mug, 1)],
            at_store(pb::DeliveryKind::Pickup, &w.lyon),
        ))
        .await
        .expect("placed");
    let mut stream = w
        .orders()
        .watch_order(pb::WatchOrderRequest {
            key: Some(pb::watch_order_request::Key::OrderNumber(
                order.order_number.clone(),
            )),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.change.is_none());
    assert_eq!(
        first.order.unwrap().status(),
        pb::OrderStatus::PendingPayment
    );
    w.pay(&order).await;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let message = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("a change within 10 s")
            .unwrap()
            .unwrap();
        seen.push((message.previous_status(), message.change.unwrap().status()));
    }
    assert_eq!(
        seen,
        [
            (pb::OrderStatus::PendingPayment, pb::OrderStatus::Confirmed),
            (pb::OrderStatus::Confirmed, pb::OrderStatus::Allocated),
        ]
    );
}

#[tokio::test]
async fn a_pickup_past_its_promise_is_overdue_and_marked_late() {
    // A promise of zero minutes: late as soon as it is paid.
    let w = World::start_with(OrderClocks {
        pickup_promise: Duration::ZERO,
        ..OrderClocks::default()
    })
    .await;
    w.receive(&w.lyon, &w.mug, 1).await;
    let paid = w.paid_pickup(&w.mug, &w.lyon).await;
    let mut store = w.fulfilment(&w.lyon);
    eventually(async || {
        let queue = store
            .list_pickup_queue(pb::ListPickupQueueRequest {
                store_id: w.lyon.clone(),
                ..Default::default()
            })
            .await
            .expect("queue")
            .into_inner();
        queue.overdue_count == 1
            && queue.entries[0].state() == pb::PickupQueueState::Overdue
            && queue.entries[0].order_id == paid.id
    })
    .await;
    store
        .start_picking(pb::StartPickingRequest {
            order_id: paid.id.clone(),
            fulfilment_id: String::new(),
        })
        .await
        .expect("picking");
    let ready = store
        .mark_ready_for_pickup(pb::MarkReadyForPickupRequest {
            order_id: paid.id.clone(),
        })
        .await
        .expect("ready")
        .into_inner()
        .order
        .unwrap();
    assert!(
        !ready.pickup.unwrap().ready_within_promise,
        "the promise was missed"
    );
    // Waiting for the customer now, no longer overdue.
    let queue = store
        .list_pickup_queue(pb::ListPickupQueueRequest {
            store_id: w.lyon.clone(),
            ..Default::default()
        })
        .await
        .expect("queue")
        .into_inner();
    assert_eq!(queue.overdue_count, 0);
    assert_eq!(
        queue.entries[0].state(),
        pb::PickupQueueState::AwaitingCustomer
    );
}

#[tokio::test]
async fn orders_list_per_customer_across_channels_and_per_store_for_its_staff() {
    let w = World::start().await;
    // Shipped from the warehouse, then picked up at Lyon.
    w.receive(&w.warehouse, &w.mug, 10).await;
    let mut placed = Vec::new();
    for (channel, delivery) in [
        (&w.eshop, ship_to(home_lyon_south())),
        (&w.livestream, ship_to(home_lyon_south())),
    ] {
        placed.push(
            w.place(w.request(channel, vec![line(&w.mug, 1)], delivery))
                .await
                .expect("placed"),
        );
    }
    w.receive(&w.lyon, &w.mug, 10).await;
    placed.push(
        w.place(w.request(
            &w.eshop,
            vec![line(&w.mug, 1)],
            at_store(pb::DeliveryKind::Pickup, &w.lyon),
        ))
        .await
        .expect("placed"),
    );
    let customer = placed[0].customer_id.clone();
    assert!(
        placed.iter().all(|o| o.customer_id == customer),
        "one customer across channels"
    );

    let page = |token: String, client: &mut pb::order_service_client::OrderServiceClient<_>| {
        let request = pb::ListOrdersRequest {
            customer_id: customer.clone(),
            page_size: 2,
            page_token: token,
            ..Default::default()
        };
        let mut client = client.clone();
        async move {
            client
                .list_orders(request)
                .await
                .expect("list")
                .into_inner()
        }
    };
    let mut admin = w.orders_admin();
    let first = page(String::new(), &mut admin).await;
    assert_eq!(first.orders.len(), 2);
    assert!(!first.next_page_token.is_empty());
    let second = page(first.next_page_token.clone(), &mut admin).await;
    assert_eq!(second.orders.len(), 1);
    assert!(second.next_page_token.is_empty());
    let listed: Vec<String> = first
        .orders
        .iter()
        .chain(&second.orders)
        .map(|o| o.id.clone())
        .collect();
    let newest_first: Vec<String> = placed.iter().rev().map(|o| o.id.clone()).collect();
    assert_eq!(listed, newest_first);

    // A Lyon associate sees the order picked up at Lyon only.
    let mut lyon = w.orders_at(&w.lyon);
    let at_lyon = page(String::new(), &mut lyon).await;
    assert_eq!(at_lyon.orders.len(), 1);
    assert_eq!(at_lyon.orders[0].id, placed[2].id);
    let hidden = lyon
        .get_order(pb::GetOrderRequest {
            key: Some(pb::get_order_request::Key::OrderId(placed[0].id.clone())),
        })
        .await
        .expect_err("shipped from the warehouse");
    assert_eq!(hidden.code(), tonic::Code::PermissionDenied);
}

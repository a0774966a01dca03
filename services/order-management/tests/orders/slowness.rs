//! The order path when a dependency is slow, loses a reply, or the process stops between a
//! remote effect and its commit.

use std::sync::Arc;
use std::time::Duration;

use omni_proto::omni::inventory::v1 as inv;
use omni_proto::omni::orders::v1 as pb;
use omni_testkit::OrderClocks;
use tokio::time::Instant;

use crate::support::*;

fn cancel_request(order: &pb::Order) -> pb::CancelOrderRequest {
    pb::CancelOrderRequest {
        idempotency_key: key(),
        order_id: order.id.clone(),
        reason: pb::CancellationReason::CustomerRequest as i32,
        note: String::new(),
    }
}

fn pay_request(order: &pb::Order) -> pb::RecordPaymentRequest {
    pb::RecordPaymentRequest {
        idempotency_key: key(),
        order_id: order.id.clone(),
        payment: Some(payment(order.total.as_ref().expect("total").minor_units)),
    }
}

fn within<T>(message: T, deadline: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(deadline);
    request
}

/// inventory answers every call 3 s late while 50 payments and cancellations run: they take
/// that long, but nothing else order-management serves waits behind them (no row lock or
/// pooled connection is held across the calls), no hold leaks, and each order ends as asked.
#[tokio::test]
async fn a_slow_inventory_delays_only_the_calls_that_need_it() {
    let w = Arc::new(World::start().await);
    w.receive(&w.warehouse, &w.tee_l, 100).await;
    let mut orders = Vec::new();
    for _ in 0..50 {
        let order = w
            .place(w.request(
                &w.eshop,
                vec![line(&w.tee_l, 1)],
                ship_to(home_villeurbanne()),
            ))
            .await
            .expect("placed");
        orders.push(order);
    }
    let picked = w
        .place(w.request(
            &w.eshop,
            vec![line(&w.tee_l, 1)],
            ship_to(home_villeurbanne()),
        ))
        .await
        .expect("placed");
    let picked = w.pay(&picked).await;

    w.shop.inventory_link.delay_replies(Duration::from_secs(3));
    let started = Instant::now();
    let mut steps = tokio::task::JoinSet::new();
    for (i, order) in orders.iter().enumerate() {
        let w = w.clone();
        let order = order.clone();
        steps.spawn(async move {
            let mut orders = w.orders_admin();
            if i % 2 == 0 {
                orders.record_payment(pay_request(&order)).await.map(|_| ())
            } else {
                orders
                    .cancel_order(cancel_request(&order))
                    .await
                    .map(|_| ())
            }
        });
    }
    // Meanwhile reads, and changes that need no other service, answer at once.
    let mut answered = 0;
    while started.elapsed() < Duration::from_millis(2500) {
        let mut orders = w.orders_admin();
        orders
            .get_order(within(
                pb::GetOrderRequest {
                    key: Some(pb::get_order_request::Key::OrderId(picked.id.clone())),
                },
                Duration::from_secs(1),
            ))
            .await
            .expect("GetOrder answers while inventory is slow");
        orders
            .list_orders(within(
                pb::ListOrdersRequest {
                    page_size: 20,
                    ..Default::default()
                },
                Duration::from_secs(1),
            ))
            .await
            .expect("ListOrders answers while inventory is slow");
        answered += 2;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    w.fulfilment_admin()
        .start_picking(within(
            pb::StartPickingRequest {
                order_id: picked.id.clone(),
                fulfilment_id: picked.fulfilments[0].id.clone(),
            },
            Duration::from_secs(1),
        ))
        .await
        .expect("picking starts while inventory is slow");
    assert!(answered >= 10, "{answered} calls answered");
    for result in steps.join_all().await {
        result.expect("every payment and cancellation completes, late");
    }
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "inventory really was slow"
    );
    w.shop.inventory_link.delay_replies(Duration::ZERO);

    for (i, order) in orders.iter().enumerate() {
        let order = w.get(&order.id).await;
        let hold = w.reservation(&order.reservation_id).await;
        if i % 2 == 0 {
            assert_eq!(order.status(), pb::OrderStatus::Allocated);
            assert_eq!(hold.status(), inv::ReservationStatus::Active);
            assert_eq!(hold.expires_at, None, "a paid order's hold does not expire");
        } else {
            assert_eq!(order.status(), pb::OrderStatus::Cancelled);
            assert_eq!(hold.status(), inv::ReservationStatus::Released);
        }
    }
    assert_eq!(
        w.level(&w.warehouse, &w.tee_l).await,
        (100, 26),
        "held: the 25 paid orders and the one being picked"
    );
    assert_eq!(
        w.count("SELECT count(*) FROM orders WHERE pending IS NOT NULL")
            .await,
        0
    );
}

/// Places `request` while inventory holds its stock but the reply reaches order-management
/// only after it stopped waiting (its upstream timeout must be under 3 s): the hold exists,
/// the order does not. Returns when the link carries replies on time again.
async fn lose_the_reply_to_a_hold(w: &World, request: &pb::PlaceOrderRequest) {
    // inventory lingers a moment while writing a hold, so the test can hold its reply back.
    let inventory = w.shop.inventory.db().await.expect("inventory db");
    sqlx::raw_sql(
        "CREATE FUNCTION linger() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM pg_sleep(0.5); RETURN NEW; END $$;
         CREATE TRIGGER linger BEFORE INSERT ON reservations
             FOR EACH ROW EXECUTE FUNCTION linger();",
    )
    .execute(&inventory)
    .await
    .expect("trigger");
    let placing = {
        let orders = w.orders_admin();
        let request = request.clone();
        tokio::spawn(async move { orders.clone().place_order(request).await })
    };
    eventually(async || {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event = 'PgSleep'",
        )
        .fetch_one(&inventory)
        .await
        .expect("activity")
            > 0
    })
    .await;
    // The hold is being written: its reply arrives after order-management stopped waiting.
    w.shop.inventory_link.delay_replies(Duration::from_secs(3));
    let lost = placing
        .await
        .expect("task")
        .expect_err("the reply came too late");
    assert_eq!(lost.code(), tonic::Code::Unavailable, "{lost:?}");
    eventually(async || {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM reservations")
            .fetch_one(&inventory)
            .await
            .expect("holds")
            == 1
    })
    .await;
    assert_eq!(w.count("SELECT count(*) FROM orders").await, 0);
    sqlx::raw_sql("DROP TRIGGER linger ON reservations")
        .execute(&inventory)
        .await
        .expect("drop");
    inventory.close().await;
    w.shop.inventory_link.delay_replies(Duration::ZERO);
}

/// The client retries with the same key until the link has drained the late reply.
async fn retry_until_placed(w: &World, request: &pb::PlaceOrderRequest) -> pb::Order {
    let since = Instant::now();
    loop {
        match w.place(request.clone()).await {
            Ok(placed) => break placed,
            Err(e) if e.code() == tonic::Code::Unavailable && since.elapsed().as_secs() < 10 => {}
            Err(e) => panic!("the retry places the order: {e:?}"),
        }
    }
}

/// inventory holds the stock but its reply never reaches order-management in time; the
/// client's retry with the same key gets that hold back: one hold, not two.
#[tokio::test]
async fn a_reserve_whose_reply_is_lost_is_retried_into_one_hold() {
    let w = World::start_with(OrderClocks {
        upstream_timeout: Duration::from_secs(1),
        ..OrderClocks::default()
    })
    .await;
    w.receive(&w.warehouse, &w.tee_l, 5).await;
    let request = w.request(
        &w.eshop,
        vec![line(&w.tee_l, 2)],
        ship_to(home_villeurbanne()),
    );
    lose_the_reply_to_a_hold(&w, &request).await;
    assert_eq!(w.level(&w.warehouse, &w.tee_l).await, (5, 2));
    let placed = retry_until_placed(&w, &request).await;
    assert_eq!(
        w.level(&w.warehouse, &w.tee_l).await,
        (5, 2),
        "one hold: the retry got the first one back"
    );
    assert_eq!(
        w.reservation(&placed.reservation_id).await.status(),
        inv::ReservationStatus::Active
    );
}

/// A retry that gets an earlier try's hold back (as after a replica died mid-placement and
/// its lease ran out) renews it: the order's stock is held past its payment deadline, so a
/// payment made in time always finds it. (Found by killing a replica mid-run: the hold was
/// kept as it was and ended seconds after the order committed.)
#[tokio::test]
async fn a_hold_a_retry_gets_back_outlasts_the_payment_deadline() {
    let w = World::start_with(OrderClocks {
        upstream_timeout: Duration::from_secs(1),
        payment_window: Duration::from_secs(5),
        ..OrderClocks::default()
    })
    .await;
    w.receive(&w.warehouse, &w.tee_l, 5).await;
    let request = w.request(
        &w.eshop,
        vec![line(&w.tee_l, 1)],
        ship_to(home_villeurbanne()),
    );
    lose_the_reply_to_a_hold(&w, &request).await;
    // The hold lasts the payment window and as long again (10 s here); the retry comes more
    // than a window after it was taken.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let placed = retry_until_placed(&w, &request).await;
    assert_eq!(w.level(&w.warehouse, &w.tee_l).await, (5, 1), "one hold");
    let hold = w.reservation(&placed.reservation_id).await;
    let ends = hold.expires_at.expect("an unpaid order's hold expires");
    let due = placed.payment_due_at.expect("payment due");
    assert!(
        ends.seconds > due.seconds,
        "the hold ends after the payment deadline: hold until {ends:?}, payment due {due:?}"
    );
    let paid = w.pay(&placed).await;
    assert_eq!(paid.status(), pb::OrderStatus::Allocated);
}

/// A payment and a cancellation whose calls to inventory went through but whose commit never
/// happened (the process stopped): the order stays as it was meanwhile and refuses other
/// changes, and the sweeper finishes both steps once the database takes writes again.
#[tokio::test]
async fn a_step_stopped_before_its_commit_is_finished_by_the_sweeper() {
    let w = World::start_with(OrderClocks {
        resume_after: Duration::from_secs(1),
        ..OrderClocks::default()
    })
    .await;
    w.receive(&w.warehouse, &w.tee_l, 5).await;
    let place = async || {
        w.place(w.request(
            &w.eshop,
            vec![line(&w.tee_l, 1)],
            ship_to(home_villeurbanne()),
        ))
        .await
        .expect("placed")
    };
    let to_pay = place().await;
    let to_cancel = place().await;
    let to_cancel = w.pay(&to_cancel).await;

    // Every commit that would settle a step fails, as if the process died right before it.
    let db = w.shop.orders.db().await.expect("db");
    sqlx::raw_sql(
        "CREATE FUNCTION process_gone() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'process gone'; END $$;
         CREATE TRIGGER process_gone BEFORE UPDATE ON orders FOR EACH ROW
             WHEN (OLD.pending IS NOT NULL AND NEW.pending IS NULL)
             EXECUTE FUNCTION process_gone();",
    )
    .execute(&db)
    .await
    .expect("trigger");

    w.orders_admin()
        .record_payment(pay_request(&to_pay))
        .await
        .expect_err("the payment's commit fails");
    assert_eq!(
        w.reservation(&to_pay.reservation_id).await.expires_at,
        None,
        "inventory made the hold permanent"
    );
    assert_eq!(
        w.get(&to_pay.id).await.status(),
        pb::OrderStatus::PendingPayment
    );
    let busy = w
        .orders_admin()
        .cancel_order(cancel_request(&to_pay))
        .await
        .expect_err("another change waits for the pending payment");
    assert_eq!(busy.code(), tonic::Code::Aborted, "{busy:?}");

    w.orders_admin()
        .cancel_order(cancel_request(&to_cancel))
        .await
        .expect_err("the cancellation's commit fails");
    assert_eq!(
        w.reservation(&to_cancel.reservation_id).await.status(),
        inv::ReservationStatus::Released
    );
    assert_eq!(
        w.get(&to_cancel.id).await.status(),
        pb::OrderStatus::Allocated
    );

    sqlx::raw_sql("DROP TRIGGER process_gone ON orders")
        .execute(&db)
        .await
        .expect("drop");
    eventually(async || {
        w.get(&to_pay.id).await.status() == pb::OrderStatus::Allocated
            && w.get(&to_cancel.id).await.status() == pb::OrderStatus::Cancelled
    })
    .await;
    assert_eq!(
        w.level(&w.warehouse, &w.tee_l).await,
        (5, 1),
        "the paid order holds its unit; the cancelled one's is free"
    );
    assert_eq!(
        w.count("SELECT count(*) FROM orders WHERE pending IS NOT NULL")
            .await,
        0
    );
    db.close().await;
}

/// The caller gives up while its payment is under way (its deadline passes while inventory is
/// slow): the server drops the call between inventory's answer and the commit, as a killed
/// task would. The payment is recorded as a pending step, and the sweeper finishes it.
#[tokio::test]
async fn a_payment_whose_caller_gave_up_is_finished_by_the_sweeper() {
    let w = World::start_with(OrderClocks {
        resume_after: Duration::from_secs(1),
        ..OrderClocks::default()
    })
    .await;
    w.receive(&w.warehouse, &w.tee_l, 5).await;
    let order = w
        .place(w.request(
            &w.eshop,
            vec![line(&w.tee_l, 1)],
            ship_to(home_villeurbanne()),
        ))
        .await
        .expect("placed");

    w.shop.inventory_link.delay_replies(Duration::from_secs(2));
    let gave_up = w
        .orders_admin()
        .record_payment(within(pay_request(&order), Duration::from_millis(500)))
        .await
        .expect_err("the caller's deadline passes first");
    assert!(
        matches!(
            gave_up.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{gave_up:?}"
    );
    assert_eq!(
        w.get(&order.id).await.status(),
        pb::OrderStatus::PendingPayment,
        "nothing committed yet"
    );
    w.shop.inventory_link.delay_replies(Duration::ZERO);
    eventually(async || w.get(&order.id).await.status() == pb::OrderStatus::Allocated).await;
    assert_eq!(
        w.reservation(&order.reservation_id).await.expires_at,
        None,
        "the paid order's hold is permanent"
    );
    assert_eq!(
        w.count("SELECT count(*) FROM orders WHERE pending IS NOT NULL")
            .await,
        0
    );
}

/// A return taken in store while inventory cannot be reached: the return commits (inventory is
/// not called under the order's lock), and its restock is made once, by the sweeper, when
/// inventory is back.
#[tokio::test]
async fn a_return_restock_inventory_missed_is_made_once_by_the_sweeper() {
    let w = World::start_with(OrderClocks {
        resume_after: Duration::from_secs(1),
        ..OrderClocks::default()
    })
    .await;
    w.receive(&w.warehouse, &w.tee_m, 5).await;
    let order = w
        .place(w.request(
            &w.eshop,
            vec![line(&w.tee_m, 2)],
            ship_to(home_villeurbanne()),
        ))
        .await
        .expect("placed");
    let done = w.complete_shipping(&w.pay(&order).await).await;

    w.shop.inventory_link.cut();
    let returned = w
        .returns_at(&w.lyon)
        .create_return(pb::CreateReturnRequest {
            idempotency_key: key(),
            order_id: done.id.clone(),
            lines: vec![pb::ReturnLineInput {
                order_line_id: done.lines[0].id.clone(),
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
        .expect("the return commits without inventory")
        .into_inner()
        .order_return
        .expect("return");
    assert_eq!(returned.status(), pb::ReturnStatus::Completed);
    assert_eq!(
        w.level(&w.lyon, &w.tee_m).await,
        (0, 0),
        "not restocked yet"
    );

    w.shop.inventory_link.restore();
    eventually(async || w.level(&w.lyon, &w.tee_m).await == (2, 0)).await;
    // Made, so no longer owed: the sweeper has nothing left to repeat.
    eventually(async || {
        w.count("SELECT count(*) FROM returns WHERE restock_key IS NOT NULL")
            .await
            == 0
    })
    .await;
    assert_eq!(w.level(&w.lyon, &w.tee_m).await, (2, 0));
}

/// A try keeps its key for as long as it works, past its lease: a retry arriving then waits for
/// its reply instead of starting a second try. (The lease is short so that a retry takes over
/// from a try whose replica died; the running try renews it.)
#[tokio::test]
async fn a_try_still_working_past_its_lease_keeps_its_key() {
    let w = World::start_with(OrderClocks {
        upstream_timeout: Duration::from_secs(20),
        ..OrderClocks::default()
    })
    .await;
    w.receive(&w.warehouse, &w.tee_l, 5).await;
    let request = w.request(
        &w.eshop,
        vec![line(&w.tee_l, 1)],
        ship_to(home_villeurbanne()),
    );
    w.shop.inventory_link.delay_replies(Duration::from_secs(12));
    let first = {
        let orders = w.orders_admin();
        let request = request.clone();
        tokio::spawn(async move { orders.clone().place_order(request).await })
    };
    eventually(async || w.count("SELECT count(*) FROM placement_attempts").await == 1).await;
    // Past the 10 s lease: a try that had died would have lost its key by now.
    tokio::time::sleep(Duration::from_secs(11)).await;
    w.shop.inventory_link.delay_replies(Duration::ZERO);
    let retry = w.place(request.clone()).await;
    let first = first
        .await
        .expect("task")
        .expect("the first try places the order")
        .into_inner()
        .order
        .expect("order");
    match retry {
        Ok(order) => assert_eq!(order.id, first.id, "the retry got the first try's order"),
        Err(e) => assert_eq!(e.code(), tonic::Code::Aborted, "{e:?}"),
    }
    assert_eq!(
        w.count("SELECT max(tries)::bigint FROM placement_attempts")
            .await,
        1,
        "the retry never started a second try"
    );
    assert_eq!(w.count("SELECT count(*) FROM orders").await, 1);
    assert_eq!(w.level(&w.warehouse, &w.tee_l).await, (5, 1), "one hold");
}

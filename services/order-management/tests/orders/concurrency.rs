//! Placement under contention and failure: never an oversell, never a second order for one
//! key, never stock held by an order that does not exist.

use std::sync::Arc;

use crate::support::*;

#[tokio::test]
async fn a_hundred_buyers_for_the_last_ten_units_make_exactly_ten_orders() {
    let w = Arc::new(World::start().await);
    w.receive(&w.warehouse, &w.tee_m, 10).await;
    let mut buyers = Vec::new();
    for i in 0..100 {
        let w = w.clone();
        buyers.push(tokio::spawn(async move {
            let mut request = w.request(
                &w.livestream,
                vec![line(&w.tee_m, 1)],
                ship_to(home_villeurbanne()),
            );
            request.customer = by_phone(&format!("+33 6 00 00 {:02} {:02}", i / 100, i % 100));
            // As a channel would: an overloaded service (UNAVAILABLE) is retried with the
            // same idempotency key, which never places a second order.
            let mut tries = 0;
            loop {
                match w.place(request.clone()).await {
                    Err(status) if status.code() == tonic::Code::Unavailable && tries < 100 => {
                        tries += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                    placed => break placed,
                }
            }
        }));
    }
    let mut placed = 0;
    for buyer in buyers {
        match buyer.await.expect("buyer task") {
            Ok(_) => placed += 1,
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
                assert_eq!(preconditions(&status)[0].0, "STOCK_SHORTAGE");
            }
        }
    }
    assert_eq!(placed, 10);
    assert_eq!(w.count("SELECT count(*) FROM orders").await, 10);
    assert_eq!(w.level(&w.warehouse, &w.tee_m).await, (10, 10));
    assert_eq!(w.available(&w.tee_m).await, 0);
}

#[tokio::test]
async fn the_same_order_retried_twenty_times_at_once_is_placed_once() {
    let w = Arc::new(World::start().await);
    w.receive(&w.warehouse, &w.mug, 50).await;
    let request = w.request(
        &w.eshop,
        vec![line(&w.mug, 2)],
        ship_to(home_villeurbanne()),
    );
    let mut retries = Vec::new();
    for _ in 0..20 {
        let (w, request) = (w.clone(), request.clone());
        retries.push(tokio::spawn(async move {
            w.orders_admin()
                .place_order(request)
                .await
                .map(|r| r.into_inner())
        }));
    }
    let mut ids = std::collections::HashSet::new();
    let mut created = 0;
    for retry in retries {
        let reply = retry.await.expect("task").expect("placed");
        ids.insert(reply.order.unwrap().id);
        created += usize::from(reply.created);
    }
    assert_eq!(ids.len(), 1, "one order");
    assert_eq!(created, 1, "created by exactly one of the calls");
    assert_eq!(w.count("SELECT count(*) FROM orders").await, 1);
    assert_eq!(w.level(&w.warehouse, &w.mug).await, (50, 2), "held once");

    // The same key with another payload is refused.
    let mut changed = request.clone();
    changed.lines[0].quantity = 3;
    let refused = w.place(changed).await.expect_err("different payload");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert_eq!(fields(&refused), ["idempotency_key"]);
}

#[tokio::test]
async fn a_failure_after_reserving_leaves_no_stock_held() {
    let w = World::start().await;
    w.receive(&w.warehouse, &w.tee_l, 5).await;
    let customer = w.customer("+33 6 12 34 56 78").await;
    let code = w.coupon(&customer.id, 300, &w.eshop.id).await;
    // Inject a failure at the last step, after stock is held and the coupon redeemed: the
    // database refuses this order's row.
    let db = w.shop.orders.db().await.expect("db");
    sqlx::query(
        "CREATE FUNCTION refuse_doomed() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.order_number IS NOT NULL AND position('doomed' in encode(NEW.doc, 'escape')) > 0 THEN
             RAISE EXCEPTION 'injected failure';
           END IF;
           RETURN NEW;
         END $$",
    )
    .execute(&db)
    .await
    .expect("function");
    sqlx::query("CREATE TRIGGER refuse_doomed BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION refuse_doomed()")
        .execute(&db)
        .await
        .expect("trigger");

    let mut request = w.request(
        &w.eshop,
        vec![line(&w.tee_l, 2)],
        ship_to(home_villeurbanne()),
    );
    request.channel_order_ref = "doomed".into();
    request.coupon_codes = vec![code.clone()];
    let failed = w
        .place(request.clone())
        .await
        .expect_err("injected failure");
    assert_eq!(failed.code(), tonic::Code::Internal, "{failed:?}");
    assert_eq!(w.count("SELECT count(*) FROM orders").await, 0);
    assert_eq!(
        w.level(&w.warehouse, &w.tee_l).await,
        (5, 0),
        "the hold was released"
    );
    assert_eq!(w.count("SELECT count(*) FROM outbox").await, 0);

    // The coupon was given back: the order goes through once the fault is gone.
    sqlx::query("DROP TRIGGER refuse_doomed ON orders")
        .execute(&db)
        .await
        .expect("drop");
    db.close().await;
    let placed = w.place(request).await.expect("placed after the fault");
    assert_eq!(placed.coupons[0].code, code);
    assert_eq!(w.level(&w.warehouse, &w.tee_l).await, (5, 2));
}

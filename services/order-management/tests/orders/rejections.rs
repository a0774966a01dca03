//! Bad input: each its own status with details, and nothing written anywhere.

use omni_proto::omni::orders::v1 as pb;
use uuid::Uuid;

use crate::support::*;

async fn nothing_written(w: &World) {
    assert_eq!(w.count("SELECT count(*) FROM orders").await, 0);
    assert_eq!(w.count("SELECT count(*) FROM outbox").await, 0);
    assert_eq!(w.available(&w.tee_s).await, 5, "no stock held");
}

#[tokio::test]
async fn bad_orders_are_refused_with_details_and_write_nothing() {
    let w = World::start().await;
    w.receive(&w.warehouse, &w.tee_s, 5).await;
    let ship = || ship_to(home_villeurbanne());

    // Malformed: every violation at once.
    let mut malformed = w.request(&w.eshop, vec![line(&w.tee_s, 0), line("nope", 1)], ship());
    malformed.idempotency_key = String::new();
    let status = w.place(malformed).await.expect_err("malformed");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let f = fields(&status);
    for expected in ["lines[0].quantity", "lines[1].sku_id", "idempotency_key"] {
        assert!(f.contains(&expected.to_owned()), "{expected} in {f:?}");
    }

    // An unknown SKU, named by its line.
    let unknown_sku = Uuid::now_v7().to_string();
    let status = w
        .place(w.request(
            &w.eshop,
            vec![line(&w.tee_s, 1), line(&unknown_sku, 1)],
            ship(),
        ))
        .await
        .expect_err("unknown sku");
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(fields(&status), ["lines[1].sku_id"]);

    // An unknown customer.
    let mut request = w.request(&w.eshop, vec![line(&w.tee_s, 1)], ship());
    request.customer = Some(pb::CustomerRef {
        customer_id: Uuid::now_v7().to_string(),
        ..Default::default()
    });
    let status = w.place(request).await.expect_err("unknown customer");
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(fields(&status), ["customer.customer_id"]);

    // An unknown store.
    let status = w
        .place(w.request(
            &w.eshop,
            vec![line(&w.tee_s, 1)],
            at_store(pb::DeliveryKind::Pickup, &Uuid::now_v7().to_string()),
        ))
        .await
        .expect_err("unknown store");
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(fields(&status), ["delivery.store_id"]);

    // An unknown coupon.
    let mut request = w.request(&w.eshop, vec![line(&w.tee_s, 1)], ship());
    request.coupon_codes = vec!["NOPE-1234".into()];
    let status = w.place(request).await.expect_err("unknown coupon");
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(fields(&status), ["coupon_codes[0]"]);

    // More than any location has.
    let status = w
        .place(w.request(&w.eshop, vec![line(&w.tee_s, 6)], ship()))
        .await
        .expect_err("shortage");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        preconditions(&status),
        [("STOCK_SHORTAGE".to_owned(), "lines[0]".to_owned())]
    );

    // A payment of the wrong amount at placement.
    let mut request = w.request(&w.eshop, vec![line(&w.tee_s, 1)], ship());
    request.payment = Some(payment(TEE_PRICE - 1));
    let status = w.place(request).await.expect_err("wrong amount");
    assert_eq!(preconditions(&status)[0].0, "PAYMENT_AMOUNT_MISMATCH");

    nothing_written(&w).await;
}

#[tokio::test]
async fn illegal_transitions_and_wrong_payments_change_nothing() {
    let w = World::start().await;
    w.receive(&w.warehouse, &w.tee_s, 5).await;
    let order = w
        .place(w.request(
            &w.eshop,
            vec![line(&w.tee_s, 1)],
            ship_to(home_villeurbanne()),
        ))
        .await
        .expect("placed");
    let wrong = w
        .orders_admin()
        .record_payment(pb::RecordPaymentRequest {
            idempotency_key: key(),
            order_id: order.id.clone(),
            payment: Some(payment(1)),
        })
        .await
        .expect_err("wrong amount");
    assert_eq!(preconditions(&wrong)[0].0, "PAYMENT_AMOUNT_MISMATCH");
    // Shipping an unpaid order is not a legal transition.
    let illegal = w
        .fulfilment_admin()
        .ship_fulfilment(pb::ShipFulfilmentRequest {
            order_id: order.id.clone(),
            fulfilment_id: String::new(),
            carrier: "DHL".into(),
            tracking_number: "1".into(),
        })
        .await
        .expect_err("unpaid");
    assert_eq!(illegal.code(), tonic::Code::FailedPrecondition);
    assert_eq!(preconditions(&illegal)[0].0, "ILLEGAL_TRANSITION");
    // Returning something not yet delivered.
    let early = w
        .returns_admin()
        .create_return(pb::CreateReturnRequest {
            idempotency_key: key(),
            order_id: order.id.clone(),
            lines: vec![pb::ReturnLineInput {
                order_line_id: order.lines[0].id.clone(),
                quantity: 1,
                reason: pb::ReturnReason::Other as i32,
                condition: pb::ItemCondition::Resellable as i32,
            }],
            channel_id: w.eshop.id.clone(),
            location_id: w.lyon.clone(),
            items_received: true,
            note: String::new(),
        })
        .await
        .expect_err("not delivered");
    assert_eq!(preconditions(&early)[0].0, "NOT_HANDED_OVER");
    let unchanged = w.get(&order.id).await;
    assert_eq!(unchanged.status(), pb::OrderStatus::PendingPayment);
    assert_eq!(unchanged.history.len(), 1);
    assert_eq!(w.count("SELECT count(*) FROM returns").await, 0);
    // A mistyped order number is caught by its check digit.
    let typo = w
        .orders()
        .get_order(pb::GetOrderRequest {
            key: Some(pb::get_order_request::Key::OrderNumber(
                order.order_number.replace('-', "").chars().rev().collect(),
            )),
        })
        .await
        .expect_err("typo");
    assert_eq!(fields(&typo), ["order_number"]);
}
